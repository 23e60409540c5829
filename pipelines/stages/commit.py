"""Commit: a unit's transcribed segments become shards, an index part, a rejects part (with the dropped
segments' text and scores, and their audio in `rejected/` shards), a ledger record.

The order is the crash-safety contract: data first (each file committed whole), the ledger
record last, so a unit without a record is simply redone and overwrites the same names.
"""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io import storage
from pipelines.metrics.filters import verdict
from pipelines.metrics.scorer import round_score
from pipelines.metrics.text import TEXT, normalise_text
from pipelines.records import AsrResult, PreparedSegment, PreparedUnit, SourceFile
from pipelines.sinks.base import REJECTED, TRAINING, Sample, open_sink
from pipelines.sinks.card import sample_meta
from pipelines.stages.prepare import reject_row
from pipelines.stages.references import segment_references
from pipelines.state.ledger import Ledger
from schemas.config import JobConfig, QualityConfig
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA

NEAR_DUPLICATE_SECONDS = 0.05  # same normalised text and a duration this close: the same take, likely


class UnitCommitter:
    def __init__(self, config: JobConfig):
        self.output = config.output
        self.sample_rate = config.audio.sample_rate
        self.quality = config.quality
        self.sink = open_sink(config.shards, config.output)  # the format: `shards.format`
        self.keep_rejected_audio = config.shards.keep_rejected_audio
        self.ledger = Ledger(config.output)

    def __call__(self, prepared: PreparedUnit, results: list[AsrResult], digest: str) -> dict:
        started = time.perf_counter()
        rows = self._index_rows(prepared, results)
        audio = {seg.key: (seg.audio, "") for seg in prepared.segments}
        return self.commit(prepared.unit, digest, decide(self.quality, rows), audio, list(prepared.rejects),
                           prepared.input_seconds, prepared.stage_seconds, started)

    def commit(self, unit: int, digest: str, decided: list[tuple[dict, Optional[dict]]],
               audio: Mapping[str, tuple[bytes, str]], prep_rejects: list[dict], input_seconds: float,
               stage_seconds: Mapping[str, float], started: float, extra: Optional[dict] = None) -> dict:
        """Write one unit whose segments are decided (`decide`): the kept ones to its training shards
        and index part, the dropped ones (with their audio, when kept) to its rejected shards and,
        after `prep_rejects` (the file-level rejects), to its rejects part; then its ledger record,
        last. `audio` maps a key to its stored bytes and extension ("" = shards.audio_format)."""
        kept = [row for row, dropped in decided if dropped is None]
        placed = dict((key, shard) for shard, key in self.sink.write(
            unit, (Sample(r["key"], audio[r["key"]][0], self._meta(r), audio[r["key"]][1]) for r in kept), TRAINING))
        dropped_rows = [reject_fields(row, dropped) for row, dropped in decided if dropped is not None]
        stored: dict[str, str] = {}
        if self.keep_rejected_audio:
            stored = dict((key, shard) for shard, key in self.sink.write(unit, (
                Sample(r["key"], audio[r["key"]][0], self._meta(r) | _verdict_fields(r), audio[r["key"]][1])
                for r in dropped_rows if r["key"] in audio), REJECTED))
        index = [dict(row, shard=placed[row["key"]]) for row in kept]
        rejects = list(prep_rejects) + [dict(r, shard=stored.get(r["key"])) for r in dropped_rows]
        self._write_table("index", unit, index, INDEX_SCHEMA)
        self._write_table("rejects", unit, rejects, REJECTS_SCHEMA)
        stages = dict(stage_seconds, write=time.perf_counter() - started)
        report = {
            "unit": unit,
            "digest": digest,
            "input_seconds": input_seconds,
            "output_seconds": sum(r["duration"] for r in kept),
            "samples": len(kept),
            "segments": len(decided),
            "speech_seconds": sum(row["end"] - row["start"] for row, _ in decided),
            "shards": sorted(set(placed.values())),
            "rejected_shards": sorted(set(stored.values())),  # the dropped segments' audio (rejected/)
            "rejects": len(rejects),
            "reject_reasons": dict(Counter(_reason_label(r) for r in rejects)),
            "stage_seconds": stages,
            **(extra or {}),
            "finished_at": datetime.now(timezone.utc).isoformat(),  # throughput over the run
        }
        self.ledger.record(unit, report)
        return report

    def _rows(self, prepared: PreparedUnit, results: list[AsrResult]) -> tuple[list, list[dict]]:
        """(index row, segment) of the samples kept, and the rejects rows (the unit's prep rejects,
        then the dropped segments), as `__call__` would write them (without their shards)."""
        decided = decide(self.quality, self._index_rows(prepared, results))
        kept = [(row, seg) for (row, dropped), seg in zip(decided, prepared.segments) if dropped is None]
        return kept, list(prepared.rejects) + [reject_fields(row, dropped) for row, dropped in decided if dropped]

    def _drop(self, row: dict, kept_hashes: dict[str, str]) -> Optional[dict]:
        return _drop(self.quality, row, kept_hashes)

    def _index_rows(self, prepared: PreparedUnit, results: list[AsrResult]) -> list[dict]:
        """The unit's index rows, each with its share of its file's reference transcript
        (`stages.references.segment_references`)."""
        references = segment_references(prepared.references, [(seg.source_id, res.text)
                                                              for seg, res in zip(prepared.segments, results)])
        return [self._index_row(prepared.unit, seg, res, ref)
                for seg, res, ref in zip(prepared.segments, results, references, strict=True)]

    def _index_row(self, unit: int, seg: PreparedSegment, res: AsrResult, reference: Optional[str] = None) -> dict:
        return {
            "key": seg.key,
            "unit": unit,
            "source_id": seg.source_id,
            "source_uri": seg.source_uri,
            "start": seg.start,
            "end": seg.end,
            "duration": seg.end - seg.start,
            "sample_rate": self.sample_rate,
            "text": res.text,
            "language": res.language,
            "language_prob": res.language_prob,
            "avg_logprob": res.extras.get("avg_logprob"),  # the backend's own scores; null without
            "no_speech_prob": res.extras.get("no_speech_prob"),
            **self._scores(seg, res, reference),
            "reference": reference,
            "words": res.words,
        }

    def _scores(self, seg: PreparedSegment, res: AsrResult, reference: Optional[str] = None) -> dict:
        """The quality columns (each prep and commit metric the config was made from, in declaration
        order): the prep task's scores, and the commit metrics computed from the transcript
        (`metrics.text.TEXT`), as the float32 the index stores (so KEY.json and the index hold the
        same numbers); all null when off. near_duplicate_of is set by `decide`."""
        seconds = seg.end - seg.start
        scores: dict = {}
        for metric in self.quality.metrics.at("prep", "commit"):
            if metric.stage == "prep":
                value = seg.scores.get(metric.name)
            else:
                compute = TEXT.get(metric.name)
                value = (round_score(compute(res.text, seconds, reference), metric.digits)
                         if compute and seg.scores else None)
            if value is not None and metric.type == pa.float32():
                value = float(np.float32(value))
            scores[metric.name] = value
        return scores

    @staticmethod
    def _meta(row: dict) -> dict:
        """A sample's KEY.json: its index row but the key, unit and shard (and, for a reject, the
        verdict fields, which `_verdict_fields` adds back), every index field present and typed as
        the index types it (`sinks.card.sample_meta`), so each shard's JSON has one schema."""
        return sample_meta({k: v for k, v in row.items() if k not in VERDICT_FIELDS}, INDEX_SCHEMA)

    def _write_table(self, folder: str, unit: int, rows: list[dict], schema: pa.Schema) -> None:
        url = storage.join(self.output, folder, f"part-{unit:06d}.parquet")
        with storage.atomic_local_file(url, ".parquet") as scratch:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), scratch)


VERDICT_FIELDS = ("stage", "reason", "metric", "value", "threshold")  # why a segment was dropped


def decide(quality: QualityConfig, rows: list[dict]) -> list[tuple[dict, Optional[dict]]]:
    """Each transcribed segment's index row and, when a filter drops it, the reject_row arguments
    (stage, reason, metric, value, threshold; None = kept), in the unit's segment order: which copy
    of a duplicate is kept, and which sample a near duplicate names, depend on that order only, so
    a rerun, or `voxmill refilter` on the same rows, decides the same. A kept row gets its
    `near_duplicate_of`; a dropped one has it null."""
    decided: list[tuple[dict, Optional[dict]]] = []
    kept_hashes: dict[str, str] = {}  # audio hash -> key of the sample kept with it
    texts: dict[str, list[tuple[float, str]]] = {}  # normalised text -> (duration, key) kept
    for row in rows:
        row = dict(row, near_duplicate_of=None)
        dropped = _drop(quality, row, kept_hashes) if row["text"] else {"stage": "asr", "reason": "empty transcript"}
        if dropped is None:
            if row["audio_hash"]:
                kept_hashes[row["audio_hash"]] = row["key"]
            if quality.enabled:
                row["near_duplicate_of"] = _near_duplicate(texts, normalise_text(row["text"]), row)
        decided.append((row, dropped))
    return decided


def _drop(quality: QualityConfig, row: dict, kept_hashes: dict[str, str]) -> Optional[dict]:
    """reject_row arguments when the quality filters drop `row`, else None."""
    if not quality.enabled:
        return None
    if quality.drop_exact_duplicates and row["audio_hash"] in kept_hashes:
        return {"stage": "quality", "reason": f"exact duplicate of {kept_hashes[row['audio_hash']]}",
                "metric": "audio_hash"}
    failed = verdict(quality, row)
    if failed is None:
        return None
    return {"stage": "quality", "reason": failed.reason, "metric": failed.metric,
            "value": failed.value, "threshold": failed.threshold}


def reject_fields(row: dict, dropped: dict) -> dict:
    """The rejects row of a dropped segment: the reject_row columns plus every column of its index
    row (text, scores, audio_hash, ...), so nothing ASR or scoring found is lost with it."""
    source = SourceFile(row["source_id"], row["source_uri"])
    base = reject_row(source, row["unit"], key=row["key"], duration=row["duration"], **dropped)
    return {**row, **base, "start": row["start"], "end": row["end"]}


def _verdict_fields(row: dict) -> dict:
    return {k: row[k] for k in VERDICT_FIELDS}


def _reason_label(row: dict) -> str:
    """How the summary counts a reject: by `stage: reason`, except that a quality drop's reason
    holds its own value (or the kept key), so those count by metric and threshold instead."""
    if row.get("metric") == "audio_hash":
        return "quality: exact duplicate"
    if row.get("reason", "").startswith("no speech:"):  # Whisper's pair of thresholds, not one bound
        return f"quality: {row['reason'].split(':')[0]}"
    if row.get("metric") and row.get("threshold") is not None:
        op = "<" if row["value"] < row["threshold"] else ">"
        return f"{row['stage']}: {row['metric']} {op} {row['threshold']:g}"
    return f"{row['stage']}: {row['reason']}"


def _near_duplicate(texts: dict[str, list[tuple[float, str]]], text: str, row: dict) -> Optional[str]:
    """Key of an earlier kept sample with the same normalised text and a duration within
    NEAR_DUPLICATE_SECONDS (a flag for the user, not a drop: two takes of one line are common in
    TTS data); records this one for later samples."""
    earlier = texts.setdefault(text, [])
    match = next((key for duration, key in earlier if abs(duration - row["duration"]) <= NEAR_DUPLICATE_SECONDS), None)
    earlier.append((row["duration"], row["key"]))
    return match
