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
VAD_STEP = 0.032  # Silero reads 512-sample windows at 16 kHz: excerpt edges sit on that grid
EXCERPT_CONTEXT = 32.0  # seconds decoded past each excerpt edge (> the longest segment, on the grid)


@dataclass
class WorkUnit:
    index: int
    files: list[SourceFile]

    @property
    def digest(self) -> str:
        names = (f"{f.id}@{f.offset:.3f}" if f.context else f.id for f in self.files)
        return hashlib.sha1("\n".join(names).encode()).hexdigest()

    @property
    def seconds(self) -> float:
        return sum(f.duration or 0.0 for f in self.files)


def plan_units(manifest: pa.Table, config: EngineConfig) -> list[WorkUnit]:
    rows = sorted(manifest.to_pylist(), key=lambda r: r["uri"])
    budget = config.unit_minutes * 60
    excerpt = round(config.excerpt_minutes * 60 / VAD_STEP) * VAD_STEP
    units: list[WorkUnit] = []
    current: list[SourceFile] = []
    seconds = 0.0
    for source in (piece for row in rows for piece in _pieces(row, excerpt)):
        if current and (seconds + source.length > budget or len(current) >= config.unit_max_files):
            units.append(WorkUnit(len(units), current))
            current, seconds = [], 0.0
        current.append(source)
        seconds += source.length
    if current:
        units.append(WorkUnit(len(units), current))
    return units


def _pieces(row: dict, excerpt: float) -> list[SourceFile]:
    """A file, or for one longer than `excerpt` seconds, its excerpts: memory per task stays
    bounded by the excerpt, whatever the file's length (decode seeks, it does not read all)."""
    duration = row["duration"]
    if row["error"] or not duration or duration <= excerpt * 1.5:
        guess = duration or (row["bytes"] or 0) / FALLBACK_BYTES_PER_SECOND
        return [SourceFile(row["id"], row["uri"], duration, row["error"], length=guess)]
    count = int(duration // excerpt)
    pieces = []
    for k in range(count):
        last = k == count - 1
        limit = None if last else excerpt  # the last piece reads to the real end, whatever the header said
        pieces.append(SourceFile(row["id"], row["uri"], duration - k * excerpt if last else excerpt, None,
                                 offset=k * excerpt, limit=limit, context=EXCERPT_CONTEXT,
                                 length=duration - k * excerpt if last else excerpt))
    return pieces
