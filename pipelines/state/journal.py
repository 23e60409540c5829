"""Unit journal: a unit's prepared audio and finished ASR batches, kept next to the output until
the unit commits.

Without it a kill throws away all the work on every unit in flight. With it a rerun reads back
what a killed run had prepared (`PrepJournal`: segment audio and ASR input, then quality scores
chunk by chunk) and each journaled ASR batch (`AsrJournal`) instead of doing it again: a kill costs
at most, per prep worker, the decode of the unit it is cutting or the chunk it is scoring, and per
ASR actor the batch in progress.
Packing and batching cut a unit's segments the same way on every run, so a batch read back
holds exactly what decoding it again would give, and the output stays that of an
uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from typing import Optional

import numpy as np
import pyarrow as pa

from pipelines.io import storage
from pipelines.records import AsrResult, PreparedSegment, PreparedUnit
from schemas.tables import SEGMENTED_SCHEMA

log = logging.getLogger("voxmill")

FOLDER = "asr"  # under OUTPUT/_ledger/
TRACE_ENV = "VOXMILL_ASR_TRACE"  # a local file: one line per journaled step started (benchmarks/resume.py)
SEGMENTED = "segmented.arrow"  # a unit's segments before scoring: OUTPUT/_ledger/asr/unit-.../segmented.arrow
SCORES = "scores.json"  # ...and its scores so far, by chunk ({"first segment": [scores, ...]}), one file
SCORES_SAVE_SECONDS = 60.0  # saved again once this long after the last save: at most this much scoring lost
SCORES_PREFIX = "scores-"  # one file per chunk (scores-NNNNNN.json), as journals written before SCORES were


def journal_name(unit: int, digest: str) -> str:
    """One folder per unit and content: a unit whose files changed never reads stale batches."""
    return f"unit-{unit:06d}-{digest[:12]}"


def journal_url(output: str, unit: int, digest: str) -> str:
    return storage.join(output, "_ledger", FOLDER, journal_name(unit, digest))


class AsrJournal:
    """Batches by tag (`packed0-00016`, `alone-00000`); no url = a journal that keeps nothing."""

    def __init__(self, url: Optional[str] = None):
        self.url = url
        self._saved: Optional[set[str]] = None if url else set()

    @property
    def saved(self) -> set[str]:
        """The tags journaled, from one listing on first use (`clear` needs none)."""
        if self._saved is None:
            self._saved = {name.rsplit("/", 1)[-1][: -len(".json")] for name in storage.list_files(self.url, ".json")}
        return self._saved

    def get(self, tag: str) -> Optional[tuple[dict[int, AsrResult], list[int]]]:
        """The batch's results by segment index, and the segments it could not resolve."""
        if tag not in self.saved:
            return None

        data = storage.read_json(storage.join(self.url, f"{tag}.json"))
        results = {int(i): AsrResult.from_json(fields) for i, fields in data["results"].items()}
        return results, list(data["unresolved"])

    def started(self, tag: str, speech_seconds: float) -> None:
        """Note a batch about to be decoded (see `trace`)."""
        if self.url:
            trace(self.url, "asr", storage.join(self.url, f"{tag}.json"), speech_seconds)

    def put(self, tag: str, results: dict[int, AsrResult], unresolved: list[int]) -> None:
        if self.url is None:
            return
        payload = {"results": {str(i): asdict(r) for i, r in results.items()}, "unresolved": unresolved}
        storage.write_json(storage.join(self.url, f"{tag}.json"), payload)
        self.saved.add(tag)

    def clear(self) -> None:
        """Drop the unit's batches once its ledger record is written (best effort: a leftover
        folder is only read by a unit with the same digest, and swept by `sweep`)."""
        if self.url:
            _remove(self.url)


class PrepJournal:
    """A unit's prep in two saved steps: its segments (`segmented.arrow`: segment audio, ASR input,
    rejects) once decoded and cut, then its quality scores, chunk by chunk, in one file (`scores.json`)
    saved again whenever SCORES_SAVE_SECONDS have passed since it last was.

    Decoding and cutting are a few % of prep and scoring the rest, so a kill during scoring loses at
    most SCORES_SAVE_SECONDS of scoring (and the chunk in progress), and a unit read back is neither
    decoded nor scored again. One file saved now and then, not one per 30 s chunk: a 30-minute unit
    wrote ~40 objects (PUTs, then listings and deletes), now a handful. Each file is committed
    atomically, so it is there complete or not at all; floats and audio bytes are kept exactly, so a
    unit read back gives the shards, scores and transcripts preparing it again would.
    No url = a journal that keeps nothing."""

    def __init__(self, url: Optional[str] = None):
        self.url = url
        names = storage.list_files(url) if url else []
        self.saved = {name.rsplit("/", 1)[-1] for name in names}  # one listing
        self._chunks: Optional[dict[int, list]] = None  # the scores by chunk, read on first use
        self._saved_at = time.monotonic()

    def segmented(self) -> Optional[tuple[list[np.ndarray], PreparedUnit]]:
        """The saved (ASR audio, segmented unit), or None when there is none or it cannot be read."""
        if SEGMENTED not in self.saved:
            return None
        url = storage.join(self.url, SEGMENTED)
        try:
            fs, path = storage.filesystem(url)
            with fs.open(path, "rb") as fh:
                table = pa.ipc.open_file(pa.BufferReader(fh.read())).read_all()
            return _unit_from_table(table)
        except (OSError, pa.ArrowException, ValueError, KeyError) as err:  # redo the unit instead
            log.warning("ignoring unreadable prep journal %s: %s", url, err)
            return None

    def put_segmented(self, audios: list[np.ndarray], prepared: PreparedUnit) -> None:
        if self.url:
            table = _unit_to_table(audios, prepared)
            self._best_effort(SEGMENTED, lambda url: _write_arrow(url, table))

    def scores(self, first: int, count: int) -> Optional[list[dict | str]]:
        """The saved scores of segments first..first+count-1 (a dict, or why scoring failed)."""
        saved = self._scores().get(first)
        if saved is None and scores_name(first) in self.saved:  # a journal written one file per chunk
            saved = self._read(scores_name(first))
        return saved if isinstance(saved, list) and len(saved) == count else None

    def put_scores(self, first: int, scores: list[dict | str]) -> None:
        """Keep a chunk's scores; save them all once SCORES_SAVE_SECONDS have passed since the last save."""
        if not self.url:
            return
        chunks = self._scores()
        chunks[first] = scores
        if time.monotonic() - self._saved_at >= SCORES_SAVE_SECONDS:
            payload = {str(k): v for k, v in sorted(chunks.items())}
            self._best_effort(SCORES, lambda url: storage.write_json(url, payload))
            self._saved_at = time.monotonic()

    def _scores(self) -> dict[int, list]:
        if self._chunks is None:
            saved = self._read(SCORES) if SCORES in self.saved else None
            self._chunks = {int(k): v for k, v in saved.items()} if isinstance(saved, dict) else {}
        return self._chunks

    def _read(self, name: str) -> object:
        try:
            return storage.read_json(storage.join(self.url, name))
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable score journal %s/%s: %s", self.url, name, err)
            return None

    def started(self, stage: str, name: str, seconds: float) -> None:
        """Note a step about to start (see `trace`): "segment" (`name` SEGMENTED) or "quality"
        (`name` its chunk's `scores_name`: the result is that chunk's entry in SCORES, `SCORES#first`)."""
        if self.url:
            if name.startswith(SCORES_PREFIX):
                name = f"{SCORES}#{int(name[len(SCORES_PREFIX):-len('.json')])}"
            trace(self.url, stage, storage.join(self.url, name), seconds)

    def _best_effort(self, name: str, write) -> None:
        """A journal that cannot be written only costs a rerun after a crash that step again."""
        try:
            write(storage.join(self.url, name))
            self.saved.add(name)
        except OSError as err:
            log.warning("prep journal %s/%s not written: %s", self.url, name, err)


def scores_name(first: int) -> str:
    return f"{SCORES_PREFIX}{first:06d}.json"


def _write_arrow(url: str, table: pa.Table) -> None:
    with storage.atomic_local_file(url) as scratch, pa.OSFile(str(scratch), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _unit_to_table(audios: list[np.ndarray], prepared: PreparedUnit) -> pa.Table:
    segments = prepared.segments
    if len(audios) != len(segments):
        raise ValueError(f"unit {prepared.unit}: {len(audios)} ASR inputs for {len(segments)} segments")
    columns = {
        "key": [s.key for s in segments],
        "source_id": [s.source_id for s in segments],
        "source_uri": [s.source_uri for s in segments],
        "start": [s.start for s in segments],
        "end": [s.end for s in segments],
        "audio": [s.audio for s in segments],
        "scores": [json.dumps(s.scores) for s in segments],
        "asr_audio": [np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in audios],
    }
    unit = {"unit": prepared.unit, "rejects": prepared.rejects, "input_seconds": prepared.input_seconds,
            "stage_seconds": dict(prepared.stage_seconds)}
    return pa.table(columns, schema=SEGMENTED_SCHEMA.with_metadata({"voxmill.unit": json.dumps(unit)}))


def _unit_from_table(table: pa.Table) -> tuple[list[np.ndarray], PreparedUnit]:

    unit = json.loads(table.schema.metadata[b"voxmill.unit"])
    rows = table.to_pylist()
    segments = [PreparedSegment(r["key"], r["source_id"], r["source_uri"], r["start"], r["end"], r["audio"],
                                json.loads(r["scores"])) for r in rows]
    audios = [np.frombuffer(r["asr_audio"], dtype=np.float32).copy() for r in rows]
    prepared = PreparedUnit(unit["unit"], segments, unit["rejects"], unit["input_seconds"])
    prepared.stage_seconds.update(unit["stage_seconds"])
    return audios, prepared


def trace(journal: str, stage: str, result: str, seconds: float) -> None:
    """Note work about to start, when VOXMILL_ASR_TRACE names a file. Work that was started but
    whose `result` file was never written (`FILE#KEY`: whose KEY is not in the JSON object FILE)
    is what a kill threw away: that is how the resume benchmark measures it, exactly, from outside
    the job (seconds: speech for an ASR batch, planned input audio for cutting a unit, segment
    audio for a chunk of scoring)."""
    path = os.environ.get(TRACE_ENV)
    if path:
        line = json.dumps({"journal": journal, "stage": stage, "result": result, "seconds": seconds})
        with open(path, "a") as fh:  # one short O_APPEND write per line: lines never interleave
            fh.write(line + "\n")


def sweep(output: str, keep: set[str]) -> None:
    """Remove the journals of units that are done or no longer planned (`keep`: the folder
    names, see `journal_name`, of the units still to do)."""
    for url in _folders(storage.join(output, "_ledger", FOLDER)):
        if url.rstrip("/").rsplit("/", 1)[-1] not in keep:
            _remove(url)


def _folders(url: str) -> list[str]:
    fs, path = storage.filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return [storage.to_url(fs, e["name"]) for e in entries if e.get("type") == "directory"]


def _remove(url: str) -> None:
    fs, path = storage.filesystem(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
