"""Work units: runs of input files holding about `unit_minutes` of audio, in uri order.

A unit is the grain of scheduling, of shards (a unit writes its own shards) and of resume.
Its digest comes from its files' ids, so a rerun over the same input finds the same units.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from pipelines.records import SourceFile
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


def unit_to_json(unit: WorkUnit) -> dict:
    return {"index": unit.index, "files": [vars(f).copy() for f in unit.files]}


def unit_from_json(data: dict) -> WorkUnit:
    return WorkUnit(data["index"], [SourceFile(**f) for f in data["files"]])


def extend_units(known: list[WorkUnit], manifest: pa.Table, config: EngineConfig) -> list[WorkUnit]:
    """New units for the files of `manifest` that no known unit holds, numbered after the last one.

    Known units keep their files and numbers, so files that arrive later never shift a unit
    boundary: finished units stay finished, and a unit cut off by a crash is redone under the
    same name (overwriting its partial shards) instead of its files landing in another unit.
    """
    seen = {f.id for unit in known for f in unit.files}
    fresh = manifest.filter(pa.array([i not in seen for i in manifest.column("id").to_pylist()], pa.bool_()))
    start = max((u.index for u in known), default=-1) + 1
    return [WorkUnit(start + u.index, u.files) for u in plan_units(fresh, config)]
