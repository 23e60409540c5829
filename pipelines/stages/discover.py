"""Discover: list the input through fsspec and read each file's header, never its audio."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Optional

import av
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import soundfile as sf

from pipelines.io import storage
from pipelines.io.keys import source_id
from pipelines.stages.audio import describe_error
from pipelines.stages.listing import InputError, Listed, list_input, read_listing, write_listing
from pipelines.state import layout
from schemas.config import DiscoverConfig
from schemas.tables import MANIFEST_SCHEMA

__all__ = ["Discover", "Discovery", "HeaderFacts", "InputError", "probe", "manifest_hours"]

FOLDER_PREFIX = "discovery-"  # OUTPUT/_ledger/discovery-<token>/: one run's listing and new files' headers
HEADER_BLOCK = 1 << 16  # bytes per ranged read of a header on object storage (s3fs reads ahead 50 MiB)

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

    def list(self, input_url: str, output: str, scratch: Optional[str] = None) -> "Discovery":
        """List the input once, streaming, into `OUTPUT/_ledger/discovery-<token>/listing.parquet`
        (under `scratch` instead for a plan that must not write into the output)."""
        folder = storage.join(scratch or output, "_ledger", f"{FOLDER_PREFIX}{uuid.uuid4().hex[:12]}")
        fs, rows = write_listing(input_url, self.extensions, self.exclude, storage.join(folder, "listing.parquet"))
        discovery = Discovery(fs, output, folder, rows)
        if not rows:
            discovery.remove()
            raise InputError(f"no audio files ({', '.join(sorted(self.extensions))}) in {storage.redact(input_url)}")
        return discovery

    def probe(self, discovery: "Discovery") -> "Discovery":
        """Read the headers of the listed files no unit holds yet, a batch at a time, each batch
        committed as a manifest part: known files are dropped by id in Arrow before any read, and
        a file whose header a killed run already read (same id, same size) is not read again."""
        known = layout.Known(discovery.output)
        cache = [layout.InOrder(layout.parquet_batches(parts)) for parts in discovery.cached_parts()]
        discovery.parts, discovery.new_files, discovery.seconds, discovery.headers_read = [], 0, 0.0, 0
        for n, batch in enumerate(read_listing(discovery.listing)):
            rows, read = self._batch(discovery.fs, batch, known, cache)
            discovery.headers_read += read
            if rows.num_rows:
                url = storage.join(discovery.folder, f"manifest-{n:06d}.parquet")
                with storage.atomic_local_file(url, ".parquet") as scratch:
                    pq.write_table(rows, str(scratch))
                discovery.parts.append(url)
                discovery.new_files += rows.num_rows
                discovery.seconds += float(pc.sum(rows.column("duration")).as_py() or 0.0)
        discovery.known = discovery.rows - discovery.new_files
        discovery.probed = True
        return discovery

    def _batch(self, fs: fsspec.AbstractFileSystem, batch: pa.RecordBatch, known: layout.Known,
               cached: list[layout.InOrder]) -> tuple[pa.Table, int]:
        """Manifest rows of one listing batch's new files, in listing order, and how many headers it read.
        A file's id is a function of its uri, so the files some unit holds are dropped by uri."""
        paths = batch.column("path").to_pylist()
        uris = [storage.to_url(fs, p) for p in paths]
        listed = pa.array(uris, pa.string())
        keep = np.flatnonzero(~known.held(listed))
        ids = pa.array([source_id(uris[i]) for i in keep], pa.string())
        found = [t for t in (c.between(listed[0], listed[len(listed) - 1]) for c in cached) if t is not None]
        cache = pa.concat_tables(found) if found else MANIFEST_SCHEMA.empty_table()
        sizes = batch.column("size").to_pylist()
        errors = batch.column("error").to_pylist()
        where = pc.index_in(ids, value_set=cache.column("id")).to_numpy(zero_copy_only=False) \
            if cache.num_rows else np.full(len(keep), np.nan)
        rows: list[Optional[dict]] = [None] * len(keep)
        todo = []
        for slot, (i, hit) in enumerate(zip(keep, where)):
            cached = cache.slice(int(hit), 1).to_pylist()[0] if not np.isnan(hit) else None
            if cached and cached["bytes"] == sizes[i] and cached["uri"] == uris[i]:
                rows[slot] = cached
            else:
                todo.append((slot, Listed(paths[i], sizes[i], errors[i])))
        with ThreadPoolExecutor(self.probe_threads) as pool:
            for (slot, _), row in zip(todo, pool.map(lambda t: self._row(fs, t[1]), todo)):
                rows[slot] = row
        return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), len(todo)

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


@dataclass
class Discovery:
    """One run's look at its input: the listing, written once (planning and the run share it), and
    after `Discover.probe` the manifest of the files no unit holds yet, as parts in uri order."""
    fs: fsspec.AbstractFileSystem
    output: str
    folder: str
    rows: int  # entries listed: every one becomes a sample or a reject
    parts: list[str] = field(default_factory=list)
    probed: bool = False
    new_files: int = 0
    known: int = 0  # listed files some unit already holds (not probed)
    seconds: float = 0.0  # header seconds of the new files
    headers_read: int = 0  # files whose header this run read (new, and not read by a killed run)

    @property
    def listing(self) -> str:
        return storage.join(self.folder, "listing.parquet")

    @property
    def num_rows(self) -> int:
        return self.rows

    def whole(self) -> bool:
        """Whether its files are all still there: a run that held the output while this one waited
        for it removes the listings of other runs once its units are laid out."""
        return all(storage.exists(url) for url in [self.listing, *self.parts])

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The new files' manifest, batch by batch, in uri order (what `jobstate.claim` cuts)."""
        for url in self.parts:
            fs, path = storage.filesystem(url)
            with fs.open(path, "rb") as fh:
                yield from pq.ParquetFile(fh).iter_batches(batch_size=layout.ROW_GROUP)

    def table(self) -> pa.Table:
        return pa.Table.from_batches(list(self.batches()), MANIFEST_SCHEMA)

    def listed(self, positions: np.ndarray) -> list[Listed]:
        """The listing's entries at sorted `positions` (a sample of headers for the plan)."""
        found, offset = [], 0
        for batch in read_listing(self.listing):
            inside = positions[(positions >= offset) & (positions < offset + batch.num_rows)] - offset
            rows = batch.take(pa.array(inside)).to_pylist()
            found += [Listed(r["path"], r["size"], r["error"], bool(r["folder"])) for r in rows]
            offset += batch.num_rows
        return found

    def others(self) -> list[str]:
        """Discovery folders of other runs (killed ones: their headers are this run's cache)."""
        fs, root = storage.filesystem(storage.join(self.output, "_ledger"))
        own = storage.filesystem(self.folder)[1].rstrip("/")
        try:
            names = fs.ls(root, detail=False)
        except FileNotFoundError:
            return []
        return [storage.to_url(fs, p) for p in sorted(names)
                if p.rsplit("/", 1)[-1].startswith(FOLDER_PREFIX) and p.rstrip("/") != own]

    def cached_parts(self) -> list[list[str]]:
        """The manifest parts other (killed) runs committed, per run, each run's in uri order."""
        return [storage.list_files(folder, ".parquet", prefix="manifest-") for folder in self.others()]

    def remove(self, others: bool = False) -> None:
        """Delete this run's folder (its units are committed), and with `others` the killed runs' too."""
        for url in [self.folder, *(self.others() if others else [])]:
            fs, path = storage.filesystem(url)
            try:
                fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass


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
        with _open(fs, path) as fh:
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
        with _open(fs, path) as fh, av.open(fh) as container:
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


def _open(fs: fsspec.AbstractFileSystem, path: str):
    """A file for header reads: on object storage each miss fetches one small range (s3fs would
    otherwise read ahead 50 MiB, the whole clip, to parse a few KB of header)."""
    if storage.is_local(fs):
        return fs.open(path, "rb")
    return fs.open(path, "rb", block_size=HEADER_BLOCK, cache_type="readahead")


def _av_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> Optional[float]:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def manifest_hours(table: pa.Table | Discovery) -> float:
    if isinstance(table, Discovery):
        return table.seconds / 3600
    durations: Iterable[Optional[float]] = table.column("duration").to_pylist()
    return sum(d or 0.0 for d in durations) / 3600
