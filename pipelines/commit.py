"""Commit: a unit's transcribed segments become shards, an index part, a rejects part, a ledger record.

The order is the crash-safety contract: data first (each file committed whole), the ledger
record last, so a unit without a record is simply redone and overwrites the same names.
"""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.asr import AsrResult
from pipelines.ledger import Ledger
from pipelines.prepare import PreparedSegment, PreparedUnit, SourceFile, reject_row
from pipelines.quality import SCORE_NAMES, chars_per_second, normalise_text, verdict
from pipelines.shards import Sample, ShardWriter
from schemas.config import JobConfig
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA

NEAR_DUPLICATE_SECONDS = 0.05  # same normalised text and a duration this close: the same take, likely


class UnitCommitter:
    def __init__(self, config: JobConfig):
        self.output = config.output
        self.sample_rate = config.audio.sample_rate
        self.quality = config.quality
        self.writer = ShardWriter(config.shards, config.output)
        self.ledger = Ledger(config.output)

    def __call__(self, prepared: PreparedUnit, results: list[AsrResult], digest: str) -> dict:
        started = time.perf_counter()
        rows, rejects = self._rows(prepared, results)
        placed = dict((key, shard) for shard, key in self.writer.write(
            prepared.unit, (Sample(r["key"], seg.audio, self._meta(r)) for r, seg in rows)
        ))
        index = [dict(row, shard=placed[row["key"]]) for row, _ in rows]
        self._write_table("index", prepared.unit, index, INDEX_SCHEMA)
        self._write_table("rejects", prepared.unit, rejects, REJECTS_SCHEMA)
        stages = dict(prepared.stage_seconds, write=time.perf_counter() - started)
        report = {
            "unit": prepared.unit,
            "digest": digest,
            "input_seconds": prepared.input_seconds,
            "output_seconds": sum(r["duration"] for r, _ in rows),
            "samples": len(rows),
            "segments": len(prepared.segments),
            "speech_seconds": sum(s.end - s.start for s in prepared.segments),
            "shards": sorted(set(placed.values())),
            "rejects": len(rejects),
            "reject_reasons": dict(Counter(_reason_label(r) for r in rejects)),
            "stage_seconds": stages,
            "finished_at": datetime.now(timezone.utc).isoformat(),  # throughput over the run
        }
        self.ledger.record(prepared.unit, report)
        return report

    def _rows(self, prepared: PreparedUnit, results: list[AsrResult]) -> tuple[list, list[dict]]:
        """Index rows of the samples kept, and reject rows of the rest, in segment order (so a rerun
        decides the same: which copy of a duplicate is kept depends on that order only)."""
        rows, rejects = [], list(prepared.rejects)
        kept_hashes: dict[str, str] = {}  # audio hash -> key of the sample kept with it
        texts: dict[str, list[tuple[float, str]]] = {}  # normalised text -> (duration, key) kept
        for seg, res in zip(prepared.segments, results, strict=True):
            row = self._index_row(prepared.unit, seg, res)
            dropped = self._drop(row, kept_hashes) if res.text else {"stage": "asr", "reason": "empty transcript"}
            if dropped:
                source = SourceFile(seg.source_id, seg.source_uri)
                rejects.append(reject_row(source, prepared.unit, key=seg.key, duration=seg.end - seg.start, **dropped)
                               | {"start": seg.start, "end": seg.end})
                continue
            if row["audio_hash"]:
                kept_hashes[row["audio_hash"]] = row["key"]
            if self.quality.enabled:
                row["near_duplicate_of"] = _near_duplicate(texts, normalise_text(row["text"]), row)
            rows.append((row, seg))
        return rows, rejects

    def _drop(self, row: dict, kept_hashes: dict[str, str]) -> Optional[dict]:
        """reject_row arguments when the quality filters drop `row`, else None."""
        if not self.quality.enabled:
            return None
        if self.quality.drop_exact_duplicates and row["audio_hash"] in kept_hashes:
            return {"stage": "quality", "reason": f"exact duplicate of {kept_hashes[row['audio_hash']]}",
                    "metric": "audio_hash"}
        failed = verdict(self.quality, row)
        if failed is None:
            return None
        return {"stage": "quality", "reason": failed.reason, "metric": failed.metric,
                "value": failed.value, "threshold": failed.threshold}

    def _index_row(self, unit: int, seg: PreparedSegment, res: AsrResult) -> dict:
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
            "avg_logprob": res.avg_logprob,
            "no_speech_prob": res.no_speech_prob,
            **self._scores(seg, res),
        }

    def _scores(self, seg: PreparedSegment, res: AsrResult) -> dict:
        """The quality columns: the prep task's acoustic scores plus the speech rate, as the float32
        the index stores (so KEY.json and the index hold the same numbers); all null when off."""
        scores: dict = {name: seg.scores.get(name) for name in SCORE_NAMES}
        scores["chars_per_second"] = chars_per_second(res.text, seg.end - seg.start) if seg.scores else None
        scores = {k: None if v is None else float(np.float32(round(v, 3) if k == "chars_per_second" else v))
                  for k, v in scores.items()}
        return {**scores, "audio_hash": seg.scores.get("audio_hash"), "near_duplicate_of": None}

    @staticmethod
    def _meta(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in ("key", "unit")}

    def _write_table(self, folder: str, unit: int, rows: list[dict], schema: pa.Schema) -> None:
        url = storage.join(self.output, folder, f"part-{unit:06d}.parquet")
        with storage.atomic_local_file(url, ".parquet") as scratch:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), scratch)


def _reason_label(row: dict) -> str:
    """How the summary counts a reject: by `stage: reason`, except that a quality drop's reason
    holds its own value (or the kept key), so those count by metric and threshold instead."""
    if row.get("metric") == "audio_hash":
        return "quality: exact duplicate"
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
