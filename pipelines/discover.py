"""Discover: list the input through fsspec and read each file's header, never its audio."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import av
import fsspec
import pyarrow as pa
import soundfile as sf

from pipelines import storage
from pipelines.audio import describe_error
from pipelines.keys import source_id
from schemas.config import DiscoverConfig
from schemas.tables import MANIFEST_SCHEMA

_GLOB_CHARS = set("*?[")


@dataclass
class HeaderFacts:
    container: Optional[str] = None
    codec: Optional[str] = None
    sample_rate: Optional[int] = None
    channels: Optional[int] = None
    duration: Optional[float] = None
    error: Optional[str] = None


class InputError(ValueError):
    """The input cannot be listed (missing, empty, unreadable): raised before any work starts."""


class Discover:
    """Turns an input URL (folder, glob or single file) into a manifest table."""

    def __init__(self, config: DiscoverConfig, probe_threads: int = 16):
        self.extensions = {e.lower().lstrip(".") for e in config.extensions}
        self.probe_threads = probe_threads

    def __call__(self, input_url: str) -> pa.Table:
        return self.manifest(*self.list_audio(input_url))

    def manifest(self, fs: fsspec.AbstractFileSystem, found: list[tuple[str, int]]) -> pa.Table:
        """Probe the headers of listed (path, bytes) files in parallel threads."""
        with ThreadPoolExecutor(self.probe_threads) as pool:
            rows = list(pool.map(lambda item: self._row(fs, *item), found))
        return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)

    def list_audio(self, input_url: str) -> tuple[fsspec.AbstractFileSystem, list[tuple[str, int]]]:
        """Sorted (path, bytes) of audio files under the input; raises InputError if none."""
        try:
            fs, path = storage.filesystem(input_url)
            if _GLOB_CHARS & set(path):
                details = fs.glob(path, detail=True)
            elif fs.isdir(path):
                details = fs.find(path, detail=True)
            elif fs.exists(path):
                details = {path: fs.info(path)}
            else:
                raise InputError(f"input not found: {input_url}")
        except InputError:
            raise
        except (OSError, PermissionError, ValueError) as err:
            raise InputError(f"cannot list input {input_url}: {err}") from err
        found = [
            (p, int(info.get("size") or 0))
            for p, info in details.items()
            if info.get("type", "file") == "file" and self._is_audio(p)
        ]
        if not found:
            raise InputError(f"no audio files ({', '.join(sorted(self.extensions))}) in {input_url}")
        return fs, sorted(found)

    def _is_audio(self, path: str) -> bool:
        return "." in path.rsplit("/", 1)[-1] and path.rsplit(".", 1)[-1].lower() in self.extensions

    def _row(self, fs: fsspec.AbstractFileSystem, path: str, size: int) -> dict:
        uri = storage.to_url(fs, path)
        facts = probe(fs, path) if size > 0 else HeaderFacts(error="empty file")
        return {"id": source_id(uri), "uri": uri, "bytes": size, **asdict(facts)}


def probe(fs: fsspec.AbstractFileSystem, path: str) -> HeaderFacts:
    """Header facts via libsndfile, falling back to FFmpeg (PyAV) for what it cannot parse."""
    try:
        with fs.open(path, "rb") as fh:
            info = sf.info(fh)
        return HeaderFacts(
            container=info.format.lower(),
            codec=info.subtype.lower(),
            sample_rate=int(info.samplerate),
            channels=int(info.channels),
            duration=float(info.frames) / info.samplerate,
        )
    except Exception:  # noqa: BLE001 - libsndfile rejects many valid containers; try FFmpeg
        return _probe_av(fs, path)


def _probe_av(fs: fsspec.AbstractFileSystem, path: str) -> HeaderFacts:
    try:
        with fs.open(path, "rb") as fh, av.open(fh) as container:
            stream = next(s for s in container.streams if s.type == "audio")
            duration = _av_duration(container, stream)
            return HeaderFacts(
                container=container.format.name.split(",")[0],
                codec=stream.codec_context.name,
                sample_rate=int(stream.codec_context.sample_rate or 0) or None,
                channels=int(stream.codec_context.channels or 0) or None,
                duration=duration,
            )
    except StopIteration:
        return HeaderFacts(error="no audio stream")
    except Exception as err:  # noqa: BLE001 - any parse failure becomes a recorded reason
        return HeaderFacts(error=f"unreadable header: {describe_error(err)}"[:300])


def _av_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def manifest_hours(table: pa.Table) -> float:
    durations: Iterable[Optional[float]] = table.column("duration").to_pylist()
    return sum(d or 0.0 for d in durations) / 3600
