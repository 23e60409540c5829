"""Every path is an fsspec URL; this module alone knows how to commit a file atomically.

Local files are written under a temporary name in the same folder and renamed, so a reader
never sees a partial file. Object stores get a single upload that only becomes visible once
complete (S3 PUT / multipart-complete semantics).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the protocol-less path for `url`."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A full URL for a path `fs` returned (fsspec strips the protocol)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


@contextlib.contextmanager
def atomic_local_file(url: str, suffix: str = "") -> Iterator[Path]:
    """Yield a local scratch path; on clean exit its content is committed whole at `url`."""
    fs, path = filesystem(url)
    if is_local(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        scratch = Path(f"{path}.tmp-{uuid.uuid4().hex}{suffix}")
    else:
        fd, name = tempfile.mkstemp(prefix="voxmill-", suffix=suffix)
        os.close(fd)
        scratch = Path(name)
    try:
        yield scratch
        _commit(fs, scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def _commit(fs: fsspec.AbstractFileSystem, scratch: Path, path: str) -> None:
    if is_local(fs):
        with open(scratch, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(scratch, path)
    else:
        fs.put_file(str(scratch), path)


def write_bytes(url: str, data: bytes) -> None:
    with atomic_local_file(url) as scratch:
        scratch.write_bytes(data)


def write_json(url: str, obj: object) -> None:
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(url: str, missing: object = ...) -> object:
    """The parsed file; `missing` instead when given and the file does not exist."""
    fs, path = filesystem(url)
    if missing is not ... and not fs.exists(path):
        return missing
    with fs.open(path, "rb") as fh:
        return json.load(fh)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def list_files(url: str, suffix: str = "", prefix: str = "") -> list[str]:
    """Full URLs of committed files directly under `url` (scratch files excluded)."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    names = [p for p in fs.ls(path, detail=False)
             if p.endswith(suffix) and p.rsplit("/", 1)[-1].startswith(prefix) and ".tmp-" not in p]
    return sorted(to_url(fs, p) for p in names)


class OutputError(OSError):
    """The output cannot be written (missing bucket, no permission): raised before any work."""


def ensure_writable(url: str) -> None:
    """Write and delete a probe under `url`, so a bad bucket or credential fails up front."""
    probe = join(url, f"_probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"ok")
        fs, path = filesystem(probe)
        fs.rm(path)
    except Exception as err:  # noqa: BLE001 - every backend raises its own type
        raise OutputError(f"cannot write to output {url}: {type(err).__name__}: {err}") from err
