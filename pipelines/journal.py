"""Unit journal: a unit's finished ASR batches and quality scores, kept next to the output until
the unit commits.

Without it a kill throws away the whole transcription and scoring of every unit in flight. With
it a rerun redoes only the cheap, deterministic decode, resample and VAD of those units, reads
their DNSMOS scores back (`ScoreJournal`: scoring is most of prep's cost) and each journaled ASR
batch instead of decoding it again: a kill costs at most the batch in progress per actor and the
units being scored.
Packing and batching cut a unit's segments the same way on every run, so a batch read back
holds exactly what decoding it again would give, and the output stays that of an
uninterrupted run.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Optional

from pipelines import storage

if TYPE_CHECKING:
    from pipelines.asr import AsrResult

FOLDER = "asr"  # under OUTPUT/_ledger/
TRACE_ENV = "VOXMILL_ASR_TRACE"  # a local file: one line per ASR batch or unit scoring started (benchmarks/resume.py)
SCORES = "quality"  # the unit's scores: OUTPUT/_ledger/asr/unit-.../quality.json


def journal_name(unit: int, digest: str) -> str:
    """One folder per unit and content: a unit whose files changed never reads stale batches."""
    return f"unit-{unit:06d}-{digest[:12]}"


def journal_url(output: str, unit: int, digest: str) -> str:
    return storage.join(output, "_ledger", FOLDER, journal_name(unit, digest))


class AsrJournal:
    """Batches by tag (`packed0-00016`, `alone-00000`); no url = a journal that keeps nothing."""

    def __init__(self, url: Optional[str] = None):
        self.url = url
        names = storage.list_files(url, ".json") if url else []
        self.saved = {name.rsplit("/", 1)[-1][: -len(".json")] for name in names}  # one listing

    def get(self, tag: str) -> Optional[tuple[dict[int, "AsrResult"], list[int]]]:
        """The batch's results by segment index, and the segments it could not resolve."""
        if tag not in self.saved:
            return None
        from pipelines.asr import AsrResult

        data = storage.read_json(storage.join(self.url, f"{tag}.json"))
        results = {int(i): AsrResult(**fields) for i, fields in data["results"].items()}
        return results, list(data["unresolved"])

    def started(self, tag: str, speech_seconds: float) -> None:
        """Note a batch about to be decoded (see `trace`)."""
        if self.url:
            trace(self.url, "asr", tag, speech_seconds)

    def put(self, tag: str, results: dict[int, "AsrResult"], unresolved: list[int]) -> None:
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


class ScoreJournal:
    """A unit's quality scores by segment key (a dict of scores, or the reason scoring failed).

    Segment keys come from source id and VAD times, which a rerun finds again exactly, so the
    scores read back are those scoring again would give. All or nothing: a unit is scored in
    one pass and journaled once; no url = a journal that keeps nothing."""

    def __init__(self, url: Optional[str] = None):
        self.url = url
        self.path = storage.join(url, f"{SCORES}.json") if url else None

    def get(self) -> dict[str, dict | str]:
        return storage.read_json(self.path, missing={}) if self.path else {}

    def started(self, input_seconds: float) -> None:
        if self.url:
            trace(self.url, SCORES, SCORES, input_seconds)

    def put(self, scores: dict[str, dict | str]) -> None:
        if self.path:
            storage.write_json(self.path, scores)


def trace(journal: str, stage: str, tag: str, seconds: float) -> None:
    """Note work about to start, when VOXMILL_ASR_TRACE names a file. Work that was started but
    never journaled is what a kill threw away: that is how the resume benchmark measures it,
    exactly, from outside the job (seconds: speech for an ASR batch, input audio for scoring)."""
    path = os.environ.get(TRACE_ENV)
    if path:
        line = json.dumps({"journal": journal, "stage": stage, "tag": tag, "seconds": seconds})
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
