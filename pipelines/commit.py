"""Commit: a unit's transcribed segments become shards, an index part, a rejects part, a ledger record.

The order is the crash-safety contract: data first (each file committed whole), the ledger
record last, so a unit without a record is simply redone and overwrites the same names.
"""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.asr import AsrResult
from pipelines.ledger import Ledger
from pipelines.prepare import PreparedSegment, PreparedUnit, SourceFile, reject_row
from pipelines.shards import Sample, ShardWriter
from schemas.config import JobConfig
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA


class UnitCommitter:
    def __init__(self, config: JobConfig):
        self.output = config.output
        self.sample_rate = config.audio.sample_rate
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
            "reject_reasons": dict(Counter(f"{r['stage']}: {r['reason']}" for r in rejects)),
            "stage_seconds": stages,
            "finished_at": datetime.now(timezone.utc).isoformat(),  # throughput over the run
        }
        self.ledger.record(prepared.unit, report)
        return report

    def _rows(self, prepared: PreparedUnit, results: list[AsrResult]) -> tuple[list, list[dict]]:
        rows, rejects = [], list(prepared.rejects)
        for seg, res in zip(prepared.segments, results, strict=True):
            row = self._index_row(prepared.unit, seg, res)
            if res.text:
                rows.append((row, seg))
            else:
                source = SourceFile(seg.source_id, seg.source_uri)
                rejects.append(reject_row(source, prepared.unit, "asr", "empty transcript", key=seg.key,
                                          duration=seg.end - seg.start) | {"start": seg.start, "end": seg.end})
        return rows, rejects

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
        }

    @staticmethod
    def _meta(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in ("key", "unit")}

    def _write_table(self, folder: str, unit: int, rows: list[dict], schema: pa.Schema) -> None:
        url = storage.join(self.output, folder, f"part-{unit:06d}.parquet")
        with storage.atomic_local_file(url, ".parquet") as scratch:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), scratch)
