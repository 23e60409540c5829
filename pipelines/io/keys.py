"""Stable, unique, safe keys: from the source uri (hash + sanitised stem) and segment times.

WebDataset splits a member name at its first dot, and keys end up in file names, so keys hold
only [A-Za-z0-9_-]. The hash of the full uri keeps equal base names in different folders apart.
"""
import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def source_id(uri: str) -> str:
    stem = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    safe = _UNSAFE.sub("_", stem).strip("_-")[:48] or "audio"
    digest = hashlib.sha1(uri.encode("utf-8")).hexdigest()[:12]
    return f"{safe}-{digest}"


def segment_key(source: str, start: float, end: float) -> str:
    return f"{source}-{round(start * 1000):09d}-{round(end * 1000):09d}"
