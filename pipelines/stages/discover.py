"""Discover: list the input through fsspec and read each file's header, never its audio."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import av
import fsspec
import pyarrow as pa
import soundfile as sf

from pipelines.io import storage
from pipelines.io.keys import source_id
from pipelines.stages.audio import describe_error
from pipelines.stages.listing import InputError, Listed, list_input
from schemas.config import DiscoverConfig
from schemas.tables import MANIFEST_SCHEMA

__all__ = ["Discover", "HeaderFacts", "InputError", "probe", "manifest_hours"]

MIN_SAMPLE_RATE = 1000  # Hz: below this no codec holds speech; a header saying so is lying
MAX_SAMPLE_RATE = 768000
MIN_BYTES_PER_SECOND = 32  # a FLAC of 16 kHz digital silence needs ~60; a header claiming less is lying


@dataclass
class HeaderFacts:
    container: Optional[str] = None
    codec: Optional[str] = None
    sample_rate: Optional[int] = None
    channels: Optional[int] = None
    duration: Optional[float] = None
    error: Optional[str] = None


class Discover:
    """Turns an input URL (folder, glob or single file) into a manifest table.

    `exclude` is the job's output: when it sits inside the input, nothing under it is read."""

    def __init__(self, config: DiscoverConfig, probe_threads: int = 16, exclude: Optional[str] = None):
        self.extensions = {e.lower().lstrip(".") for e in config.extensions}
        self.probe_threads = probe_threads
        self.exclude = exclude

    def __call__(self, input_url: str) -> pa.Table:
        return self.manifest(*self.list_audio(input_url))

    def manifest(self, fs: fsspec.AbstractFileSystem, found: list[Listed]) -> pa.Table:
        """Probe the headers of listed files in parallel threads; a listing problem is a row too."""
        with ThreadPoolExecutor(self.probe_threads) as pool:
            rows = list(pool.map(lambda item: self._row(fs, item), found))
        return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)

    def list_audio(self, input_url: str) -> tuple[fsspec.AbstractFileSystem, list[Listed]]:
        """Sorted entries under the input, problems included; raises InputError if there are none."""
        fs, found = list_input(input_url, self.extensions, self.exclude)
        if not found:
            raise InputError(f"no audio files ({', '.join(sorted(self.extensions))}) in {storage.redact(input_url)}")
        return fs, found

    def _row(self, fs: fsspec.AbstractFileSystem, item: Listed) -> dict:
        uri = storage.to_url(fs, item.path)
        if item.error:
            facts = HeaderFacts(error=item.error)
        else:
            facts = probe(fs, item.path) if item.size > 0 else HeaderFacts(error="empty file")
            facts = plausible(facts, item.size)
        return {"id": source_id(uri), "uri": uri, "bytes": item.size, **asdict(facts)}


def plausible(facts: HeaderFacts, size: int) -> HeaderFacts:
    """The facts, or an error when the header cannot be true of a file this size (a lying header
    would otherwise plan a 287 KB file as 40 hours of work)."""
    if facts.error:
        return facts
    rate, duration = facts.sample_rate, facts.duration
    if rate is not None and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return _lying(facts, f"sample rate {rate} Hz")
    if duration and size / duration < MIN_BYTES_PER_SECOND:
        return _lying(facts, f"{_hours(duration)} of audio in {size:,} bytes")
    return facts


def _lying(facts: HeaderFacts, claim: str) -> HeaderFacts:
    """No duration: a header that lies must not size units or plans either."""
    return HeaderFacts(container=facts.container, codec=facts.codec, error=f"impossible header: {claim}")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


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
            if not stream.codec_context.sample_rate or not stream.codec_context.channels:
                kind = path.rsplit(".", 1)[-1].upper() if "." in path.rsplit("/", 1)[-1] else "audio"
                return HeaderFacts(error=f"not a valid {kind} file: no sample rate or channels in its header")
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
