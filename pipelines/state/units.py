"""Work units: runs of input files holding about `unit_minutes` of audio, in uri order.

A unit is the grain of scheduling, of shards (a unit writes its own shards) and of resume.
Its digest comes from its files' ids, so a rerun over the same input finds the same units.

Units are cut from manifest batches in Arrow and numpy (18 M files must not become 18 M Python
objects): `cut_units` streams batches of file rows (`UNIT_FILE_SCHEMA`) and unit rows
(`UNIT_SCHEMA`); a `WorkUnit` read back holds its digest and seconds and loads its files only
when asked (the executor asks once, at submit).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.records import SourceFile
from schemas.config import EngineConfig
from schemas.tables import UNIT_FILE_SCHEMA, UNIT_SCHEMA

PART_SECONDS = 300.0  # audio per prep task within a unit (executor/ray.py): ASR starts once the first part is cut


SHARE_MIN_SECONDS = 120.0  # the least audio a share of a part is given: each share packs its own windows


def part_shares(unit_seconds: float, actors: int) -> int:
    """How many actors transcribe each part of a unit: one, unless the unit holds fewer parts' worth
    of audio than there are actors (a small job, or one long file), when each part's segments are
    split between them; else one part would run on one actor's thread while the other cores idle.
    By audio, not by part count: a unit of 302 s is cut 300 + 2, one part's worth. Each share gets at
    least SHARE_MIN_SECONDS: a share packs its segments on its own, and one of a few seconds loses
    its neighbours' context (tiny.en misheard JFK's "so my fellow" in a 15 s unit split in two). It
    depends on the unit and the actor count alone, so a rerun on the same cluster journals the same shares."""
    by_parts = actors // max(1, round(unit_seconds / PART_SECONDS))
    return max(1, min(by_parts, int(unit_seconds // SHARE_MIN_SECONDS)))


FALLBACK_BYTES_PER_SECOND = 32000  # 16 kHz 16-bit mono: a guess when a header gave no duration
VAD_STEP = 0.032  # Silero reads 512-sample windows at 16 kHz: excerpt edges sit on that grid
EXCERPT_CONTEXT = 32.0  # seconds decoded past each excerpt edge (> the longest segment, on the grid)
WINDOW = 256  # pieces summed at a time while filling a unit (a unit takes ~180 files of 10 s)


class WorkUnit:
    """A unit: its files given, or (read back from a layout) loaded by `load(index)` when asked."""

    def __init__(self, index: int, files: Optional[list[SourceFile]] = None, digest: Optional[str] = None,
                 seconds: Optional[float] = None, load: Optional[Callable[[int], list[SourceFile]]] = None):
        self.index = index
        self._files = files
        self._digest = digest
        self._seconds = seconds
        self._load = load

    @property
    def files(self) -> list[SourceFile]:
        return self._files if self._files is not None else self._load(self.index)

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = digest_of(_name(f.id, f.offset, f.context) for f in self.files)
        return self._digest

    @property
    def seconds(self) -> float:
        if self._seconds is None:
            self._seconds = sum(f.duration or 0.0 for f in self.files)
        return self._seconds

    def __repr__(self) -> str:
        return f"WorkUnit({self.index}, {self.digest[:8]}, {self.seconds:.1f} s)"


def digest_of(names: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(names).encode()).hexdigest()


def _name(file_id: str, offset: float, context: float) -> str:
    return f"{file_id}@{offset:.3f}" if context else file_id


def plan_units(manifest: pa.Table, config: EngineConfig) -> list[WorkUnit]:
    """Every unit of a manifest held in memory (tests, calibration, benchmarks), numbered from 0."""
    files = [b for b, _ in cut_units(ordered(manifest).to_batches(), 0, config)]
    return units_from_rows(pa.Table.from_batches(files, UNIT_FILE_SCHEMA))


def ordered(manifest: pa.Table) -> pa.Table:
    """The manifest in uri order, the order units are cut in (a sorted one is returned as is)."""
    return manifest if is_sorted(manifest.column("uri")) else manifest.sort_by("uri")


def is_sorted(uris: pa.ChunkedArray | pa.Array) -> bool:
    if len(uris) < 2:
        return True
    return bool(pc.all(pc.less_equal(uris[:-1], uris[1:])).as_py())


def units_from_rows(files: pa.Table) -> list[WorkUnit]:
    """WorkUnits holding their files, from file rows (`UNIT_FILE_SCHEMA`) in unit order."""
    rows = files.drop_columns(["unit"]).to_pylist()
    numbers = files.column("unit").to_numpy()
    starts = np.flatnonzero(np.r_[True, numbers[1:] != numbers[:-1]]) if len(numbers) else np.array([], int)
    ends = np.r_[starts[1:], len(numbers)]
    return [WorkUnit(int(numbers[s]), [SourceFile(**r) for r in rows[s:e]]) for s, e in zip(starts, ends)]


@dataclass
class _Open:
    """The unit being filled, carried from one manifest batch to the next."""
    index: int
    seconds: float = 0.0  # planned length so far (the cut's budget)
    duration: float = 0.0  # header seconds so far (the unit's `seconds`)
    names: list[str] = field(default_factory=list)


def cut_units(batches: Iterable[pa.RecordBatch], start: int, config: EngineConfig,
              ) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
    """File rows and the unit rows they close, batch by batch, from manifest batches in uri order.

    Greedy, as a loop over files would be: a unit closes before the file that would take it past
    `unit_minutes` of audio or `unit_max_files` files; a file longer than 1.5 excerpts becomes its
    excerpts. Sums run in file order (np.cumsum), so the cut does not depend on batch sizes."""
    budget = config.unit_minutes * 60
    excerpt = round(config.excerpt_minutes * 60 / VAD_STEP) * VAD_STEP
    unit = _Open(start)
    for batch in batches:
        pieces = _pieces(batch, excerpt)
        numbers, closed, unit = _assign(pieces, unit, budget, config.unit_max_files)
        if len(pieces):
            yield pa.record_batch([pa.array(numbers, pa.int32()), *pieces.columns], schema=UNIT_FILE_SCHEMA), closed
    if unit.names:
        yield _empty_files(), _unit_rows([unit])


def _empty_files() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=UNIT_FILE_SCHEMA)


def _unit_rows(units: list[_Open]) -> pa.RecordBatch:
    return pa.record_batch([pa.array([u.index for u in units], pa.int32()),
                            pa.array([digest_of(u.names) for u in units], pa.string()),
                            pa.array([u.duration for u in units], pa.float64()),
                            pa.array([len(u.names) for u in units], pa.int32())], schema=UNIT_SCHEMA)


def _assign(pieces: pa.RecordBatch, unit: _Open, budget: float, max_files: int,
            ) -> tuple[np.ndarray, pa.RecordBatch, _Open]:
    """Unit numbers for a batch of pieces, the units it closed, and the unit left open."""
    lengths = pieces.column("length").to_numpy(zero_copy_only=False)
    durations = np.nan_to_num(pieces.column("duration").to_numpy(zero_copy_only=False), nan=0.0)
    names = _names(pieces)
    numbers = np.empty(len(lengths), np.int32)
    closed: list[_Open] = []
    pos = 0
    while pos < len(lengths):
        room = max_files - len(unit.names)
        if room <= 0:
            closed.append(unit)
            unit = _Open(unit.index + 1)
            continue
        window = lengths[pos:pos + min(room, WINDOW)]
        sums = _running(unit.seconds, window)
        take = int(np.searchsorted(sums, budget, side="right"))
        take = max(take, 0 if unit.names else 1)
        if take:
            numbers[pos:pos + take] = unit.index
            unit.seconds = float(sums[take - 1])
            unit.duration = float(_running(unit.duration, durations[pos:pos + take])[-1])
            unit.names.extend(names[pos:pos + take])
            pos += take
        if take < len(window):  # the next piece would overflow the budget
            closed.append(unit)
            unit = _Open(unit.index + 1)
    return numbers, _unit_rows(closed), unit


def _running(start: float, values: np.ndarray) -> np.ndarray:
    """Totals after each value, added one at a time from `start` (as a loop adds; np.sum pairs)."""
    buffer = np.empty(len(values) + 1)
    buffer[0] = start
    buffer[1:] = values
    return np.cumsum(buffer)[1:]


def _names(pieces: pa.RecordBatch) -> list[str]:
    """What a unit's digest is made of: a file's id, an excerpt's `id@offset`."""
    ids = pieces.column("id").to_pylist()
    context = pieces.column("context").to_numpy(zero_copy_only=False)
    excerpts = np.flatnonzero(context != 0)
    if len(excerpts):
        offsets = pieces.column("offset").to_numpy(zero_copy_only=False)
        for i in excerpts:
            ids[i] = _name(ids[i], float(offsets[i]), 1.0)
    return ids


def _pieces(batch: pa.RecordBatch, excerpt: float) -> pa.RecordBatch:
    """A file, or for one longer than 1.5 `excerpt` seconds, its excerpts: memory per task stays
    bounded by the excerpt, whatever the file's length (decode seeks, it does not read all).
    The last excerpt reads to the real end, whatever the header said (no `limit`)."""
    duration = batch.column("duration").to_numpy(zero_copy_only=False).astype(np.float64)
    has_duration = ~np.isnan(duration)
    error = batch.column("error")
    ok = pc.is_null(error).to_numpy(zero_copy_only=False)
    long = ok & has_duration & (np.nan_to_num(duration) > excerpt * 1.5)
    count = np.where(long, np.floor_divide(np.nan_to_num(duration), excerpt), 1).astype(np.int64)
    rows = np.repeat(np.arange(len(duration)), count)
    k = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    cut = long[rows]
    last = k == count[rows] - 1
    whole = duration[rows]
    piece = np.where(cut, np.where(last, whole - k * excerpt, excerpt), whole)
    size = np.nan_to_num(batch.column("bytes").to_numpy(zero_copy_only=False).astype(np.float64))[rows]
    guess = np.where(has_duration[rows] & (np.nan_to_num(whole) != 0), whole, size / FALLBACK_BYTES_PER_SECOND)
    take = pa.array(rows)
    pick = (lambda column: column.take(take)) if len(rows) != len(duration) else (lambda column: column)
    return pa.record_batch([
        pick(batch.column("id")), pick(batch.column("uri")),
        pa.array(piece, pa.float64(), mask=~has_duration[rows]),
        pick(error),
        pa.array(np.where(cut, k * excerpt, 0.0), pa.float64()),
        pa.array(np.where(cut & ~last, excerpt, 0.0), pa.float64(), mask=~(cut & ~last)),
        pa.array(np.where(cut, EXCERPT_CONTEXT, 0.0), pa.float64()),
        pa.array(np.where(cut, piece, guess), pa.float64()),
    ], schema=UNIT_FILE_SCHEMA.remove(0))


def unit_to_json(unit: WorkUnit) -> dict:
    return {"index": unit.index, "files": [vars(f).copy() for f in unit.files]}


def unit_from_json(data: dict) -> WorkUnit:
    return WorkUnit(data["index"], [SourceFile(**f) for f in data["files"]])
