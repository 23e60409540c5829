"""Work units: runs of input files holding about `unit_minutes` of audio, in uri order.

A unit is the grain of scheduling, of shards (a unit writes its own shards) and of resume.
Its digest comes from its files' ids, so a rerun over the same input finds the same units.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from pipelines.prepare import SourceFile
from schemas.config import EngineConfig

FALLBACK_BYTES_PER_SECOND = 32000  # 16 kHz 16-bit mono: a guess when a header gave no duration


@dataclass
class WorkUnit:
    index: int
    files: list[SourceFile]

    @property
    def digest(self) -> str:
        return hashlib.sha1("\n".join(f.id for f in self.files).encode()).hexdigest()

    @property
    def seconds(self) -> float:
        return sum(f.duration or 0.0 for f in self.files)


def plan_units(manifest: pa.Table, config: EngineConfig) -> list[WorkUnit]:
    rows = sorted(manifest.to_pylist(), key=lambda r: r["uri"])
    budget = config.unit_minutes * 60
    units: list[WorkUnit] = []
    current: list[SourceFile] = []
    seconds = 0.0
    for row in rows:
        length = row["duration"] or (row["bytes"] or 0) / FALLBACK_BYTES_PER_SECOND
        if current and (seconds + length > budget or len(current) >= config.unit_max_files):
            units.append(WorkUnit(len(units), current))
            current, seconds = [], 0.0
        current.append(SourceFile(row["id"], row["uri"], row["duration"], row["error"]))
        seconds += length
    if current:
        units.append(WorkUnit(len(units), current))
    return units
