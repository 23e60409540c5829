"""Exports for the trainers of the anchor toolkits: Lhotse Shar and NeMo manifests (`voxmill export`).

What is exported is what the loader reads: the index rows (after `--filter`, the loader's syntax,
and `drop_duplicates`), their audio read back by the output's sink, byte for byte (no decode, no
re-encode). Rejects are never exported: only index rows are, and they name `shards/` only.

- **lhotse**: Lhotse Shar, one Shar shard per voxmill shard: `recording.NNNNNN.tar` (KEY.flac, the
  stored bytes, then KEY.json, the Recording manifest with a `shar` placeholder source, as lhotse's
  own `AudioTarWriter` writes it) and `cuts.NNNNNN.jsonl.gz` (a MonoCut per sample: one
  SupervisionSegment with text, language, start 0 and the sample's duration, its speaker (null unless
  speakers.enabled); the
  scores and the reference transcript as the supervision's custom fields, the word timestamps, when
  stored, as its `alignment["word"]`; the sample's origin as the cut's custom fields). Read it with
  `CutSet.from_shar(in_dir=DEST)`: every `cut.load_audio()` works while the cuts stream, local or on
  object storage (`fields={"cuts": [...], "recording": [...]}` with URLs). Shar, not loose files:
  it streams shard by shard like the WebDataset output it comes from, keeps the file count small on
  object stores, and is what lhotse reads for large-scale training (`DynamicBucketingSampler`).
- **nemo**: `manifest.json` (JSON lines, NeMo's convention: `audio_filepath`, `duration`, `text`,
  then `lang`, the scores, `reference` and `words` as extra keys) and the audio as files,
  `audio/shard-NNNNNN/KEY.flac`.
  NeMo's plain `ASRAudioText` manifests read audio from a filesystem, and `audio_filepath` is
  relative to the manifest's folder, which NeMo resolves (`get_full_path`), so the folder can move.
  The source offset is named `source_start`, never `offset` (NeMo would seek into the clip by it).

Every file is committed whole (`storage.atomic_local_file`), on any fsspec URL; the Shar cuts of a
shard only after its tar, NeMo's manifest only after all its audio, so a reader never meets a cut
or a line whose audio is missing. A rerun into the same DEST overwrites it and then removes what
the new export no longer holds; DEST must hold nothing but an export of the same kind.
"""
from __future__ import annotations

import gzip
import importlib
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import pyarrow.compute as pc
import soundfile as sf

from pipelines.io import storage, tables
from pipelines.loader import read_index
from pipelines.sinks.base import TRAINING
from pipelines.state import jobstate
from schemas.metrics import METRICS

FORMATS = ("lhotse", "nemo")
EXPORTS_FOLDER = "exports"  # the default DEST is OUTPUT/exports/<format>/
SPARSE = 0.5  # under this share of a shard's rows kept, read the kept samples by key instead of streaming it
# the sample's origin: the cut's custom fields (lhotse) or extra keys (NeMo)
ORIGIN = ("source_id", "source_uri", "start", "end", "unit", "shard")


class ExportError(ValueError):
    """The export cannot be made as asked; the message says why."""


@dataclass
class Audio:
    """One sample's stored audio and what its header says."""

    key: str
    data: bytes
    ext: str
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def default_dest(output: str, to: str) -> str:
    return storage.join(output, EXPORTS_FOLDER, to)


def scores(row: dict) -> dict:
    """The row's metric columns but language, rounded as the metric declares (float32 noise out)."""
    found = {}
    for metric in METRICS:
        if metric.name in ("language", "speaker", "speaker_embedding") or metric.name not in row:
            continue  # language and speaker are the supervision's own fields; the embedding stays in the index
        value = row[metric.name]
        if isinstance(value, float):  # float32 in the index: its 7 significant digits, not float64's noise
            value = round(value, metric.digits) if metric.digits is not None else float(f"{value:.7g}")
        found[metric.name] = value
    return found


def words(row: dict) -> Optional[list[dict]]:
    """The sample's word timestamps (asr.word_timestamps), seconds in the sample at the millisecond
    they were stored at (not the index's float32 noise); None when not stored."""
    if not row.get("words"):
        return None
    return [{"word": w["word"], **{k: round(float(w[k]), 3) for k in ("start", "end", "probability")
                                   if w.get(k) is not None}} for w in row["words"]]


def transcripts(row: dict) -> dict:
    """The reference transcript (null without one) and the word timestamps (null unless stored)."""
    return {"reference": row.get("reference"), "words": words(row)}


def origin(row: dict) -> dict:
    """Where the sample comes from: `source_start`/`source_end` in the source file, its voxmill shard."""
    names = {"start": "source_start", "end": "source_end", "shard": "voxmill_shard", "unit": "voxmill_unit"}
    return {names.get(name, name): row.get(name) for name in ORIGIN}


# ---- writers: one per format ----

@dataclass
class _Writer:
    dest: str
    written: set[str] = field(default_factory=set)  # paths relative to dest

    PATTERN = re.compile(r"$^")  # the names this export may hold in dest (relative paths)

    def add_shard(self, shard: str, samples: list[tuple[dict, Audio]]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Commit what holds the export together (after all its audio)."""

    def close(self) -> None:
        """Give back what `finish` would have committed (an export that failed)."""


class LhotseShar(_Writer):
    PATTERN = re.compile(r"^(cuts\.\d{6}\.jsonl\.gz|recording\.\d{6}\.tar)$")

    def __init__(self, dest: str):
        super().__init__(dest)
        try:
            importlib.import_module("lhotse")  # fail before reading anything when lhotse is missing
        except ImportError as err:
            raise ExportError(f"--to lhotse needs lhotse: pip install lhotse ({err})") from err

        self.shards = 0

    def add_shard(self, shard: str, samples: list[tuple[dict, Audio]]) -> None:
        from lhotse import AudioSource, MonoCut, Recording, SupervisionSegment
        from lhotse.shar.writers import TarWriter
        from lhotse.supervision import AlignmentItem

        number = self.shards
        self.shards += 1
        tar_name, cuts_name = f"recording.{number:06d}.tar", f"cuts.{number:06d}.jsonl.gz"
        cuts = []
        with storage.atomic_local_file(storage.join(self.dest, tar_name), ".tar") as scratch:
            with TarWriter(str(scratch), shard_size=None) as tar:
                for row, audio in samples:
                    channels = list(range(audio.channels))
                    # the placeholder source is what lhotse's AudioTarWriter stores (to_shar_placeholder):
                    # from_shar fills it with the tar member's bytes, a "memory" source
                    source = AudioSource(type="shar", channels=channels, source="")
                    recording = Recording(id=audio.key, sources=[source], sampling_rate=audio.sample_rate,
                                          num_samples=audio.frames, duration=audio.duration, channel_ids=channels)
                    tar.write(f"{audio.key}.{audio.ext}", io.BytesIO(audio.data))
                    tar.write(f"{audio.key}.json", io.BytesIO(json.dumps(recording.to_dict()).encode() + b"\n"),
                              count=False)
                    channel = channels[0] if len(channels) == 1 else channels
                    timed = words(row)
                    alignment = None if timed is None else {"word": [
                        AlignmentItem(w["word"], w["start"], round(w["end"] - w["start"], 3), w.get("probability"))
                        for w in timed]}
                    custom = {**scores(row), "reference": row.get("reference")}
                    supervision = SupervisionSegment(
                        id=audio.key, recording_id=audio.key, start=0.0, duration=audio.duration, channel=channel,
                        text=row.get("text"), language=row.get("language"), speaker=row.get("speaker"), custom=custom,
                        alignment=alignment)
                    cuts.append(MonoCut(id=audio.key, start=0.0, duration=audio.duration, channel=channel,
                                        recording=recording, supervisions=[supervision], custom=origin(row)))
        with storage.atomic_local_file(storage.join(self.dest, cuts_name), ".jsonl.gz") as scratch:
            with open(scratch, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
                for cut in cuts:
                    fh.write(json.dumps(cut.to_dict(), ensure_ascii=False).encode() + b"\n")
        self.written.update((tar_name, cuts_name))


class NemoManifest(_Writer):
    PATTERN = re.compile(r"^(manifest\.json|audio/shard-[^/]+/[^/]+)$")
    MANIFEST = "manifest.json"

    def __init__(self, dest: str):
        super().__init__(dest)
        self._commit = storage.atomic_local_file(storage.join(dest, self.MANIFEST), ".json")
        self._lines = open(self._commit.__enter__(), "wb")

    def add_shard(self, shard: str, samples: list[tuple[dict, Audio]]) -> None:
        folder = "audio/" + shard.rsplit("/", 1)[-1].rsplit(".", 1)[0]  # shards/shard-000012.tar -> audio/shard-000012
        for row, audio in samples:
            name = f"{folder}/{audio.key}.{audio.ext}"
            storage.write_bytes(storage.join(self.dest, name), audio.data)
            self.written.add(name)
            line = {"audio_filepath": name, "duration": audio.duration, "text": row.get("text") or "",
                    "lang": row.get("language"), "key": audio.key, **origin(row), **scores(row),
                    **transcripts(row)}
            self._lines.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")

    def finish(self) -> None:
        self._lines.close()
        self._commit.__exit__(None, None, None)
        self.written.add(self.MANIFEST)

    def close(self) -> None:
        if not self._lines.closed:
            self._lines.close()
            self._commit.__exit__(ExportError, ExportError("export failed"), None)  # drops the scratch manifest


WRITERS = {"lhotse": LhotseShar, "nemo": NemoManifest}


# ---- the export ----

def _existing(dest: str) -> list[str]:
    """Files under dest, relative to it; scratch files of a crashed export left out (and removed)."""
    fs, root = storage.filesystem(dest)
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    found = []
    for path in sorted(fs.find(root)):
        relative = path[len(root):].lstrip("/")
        if storage.SCRATCH_MARK in relative.rsplit("/", 1)[-1]:
            fs.rm(path)  # only a killed export's own scratch (hidden, named by storage.scratch_path)
            continue
        found.append(relative)
    return found


def _read_shard(sink, shard: str, keys: list[str], stored: int) -> Iterator[dict]:
    """The samples of `keys` from `shard`: streamed when most of the shard is kept, else by key."""
    wanted = set(keys)
    if len(keys) < SPARSE * stored:
        yield from sink.read(shard, keys)
        return
    for sample in sink.read(shard):
        if sample["__key__"] in wanted:
            yield sample


def _audio(sample: dict) -> Audio:
    ext = next((e for e in ("flac", "wav") if e in sample), None)
    if ext is None:
        raise ExportError(f"sample {sample['__key__']} holds no flac or wav audio ({sorted(sample)})")
    info = sf.info(io.BytesIO(sample[ext]))
    return Audio(sample["__key__"], sample[ext], ext, int(info.samplerate), int(info.frames), int(info.channels))


def export(output: str, to: str, dest: Optional[str] = None, filters: str | Sequence[str] = (),
           drop_duplicates: bool = False, storage_options: Optional[dict] = None) -> dict:
    """Export the samples of `output` (matching `filters`) for Lhotse or NeMo into `dest`
    [OUTPUT/exports/<to>]; returns what was written (samples, seconds, files, dest)."""
    if to not in WRITERS:
        raise ExportError(f"--to {to!r}: one of {', '.join(FORMATS)}")
    dest = (dest or default_dest(output, to)).rstrip("/")
    index = read_index(output, filters, storage_options=storage_options)
    if drop_duplicates:
        index = index.filter(pc.invert(tables.later_copies(index)))
    rows = index.to_pylist()
    by_shard: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if not row["shard"].startswith(TRAINING + "/"):
            raise ExportError(f"index row {row['key']} names {row['shard']}, not a training shard")
        by_shard[row["shard"]].append(row)
    stored = dict(zip(*[t.to_pylist() for t in pc.value_counts(
        read_index(output, columns=["shard"], storage_options=storage_options)["shard"]).flatten()]))

    before = _existing(dest)
    foreign = [name for name in before if not WRITERS[to].PATTERN.match(name)]
    if foreign:
        raise ExportError(f"{storage.redact(dest)} holds files that are not part of a voxmill {to} export "
                          f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}): choose another --dest")
    sink = jobstate.sink(output, storage_options)
    writer = WRITERS[to](dest)
    seconds = 0.0
    try:
        for shard in sorted(by_shard):
            wanted = {row["key"]: row for row in by_shard[shard]}
            samples = [(wanted[s["__key__"]], _audio(s))
                       for s in _read_shard(sink, shard, list(wanted), stored.get(shard, 0))]
            missing = set(wanted) - {audio.key for _, audio in samples}
            if missing:
                raise ExportError(f"{shard} lacks {len(missing)} indexed samples, e.g. {sorted(missing)[0]}")
            writer.add_shard(shard, samples)
            seconds += sum(audio.duration for _, audio in samples)
        writer.finish()
    finally:
        writer.close()
    stale = [name for name in before if name not in writer.written]
    if stale:
        fs, root = storage.filesystem(dest)
        fs.rm([f"{root.rstrip('/')}/{name}" for name in stale])
    return {"format": to, "dest": dest, "samples": len(rows), "seconds": seconds, "shards": len(by_shard),
            "files": len(writer.written), "removed_stale": len(stale),
            "filters": [filters] if isinstance(filters, str) else list(filters)}
