"""The layout: every work unit an output was planned with, over all its runs, appended per run.

Each run that adds units writes `_ledger/layout-NNNNNN.files.parquet` (one row per file or excerpt,
in unit order) and then `_ledger/layout-NNNNNN.parquet` (one row per unit: digest, seconds, files),
NNNNNN being its first unit. The unit rows are the commit: a files part without them is a run
killed while cutting, and is written again. A rerun reads the unit rows only (100k units: one
small table) and a unit's files when the executor submits it, a row group at a time, so the driver
never holds 18 M file records. Layouts written as JSON (`layout-NNNNNN.json`) by earlier versions
are read as they are.
"""
from __future__ import annotations

import bisect
import threading
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.io import storage
from pipelines.records import SourceFile
from pipelines.state.units import WorkUnit, unit_from_json
from schemas.tables import UNIT_FILE_SCHEMA, UNIT_SCHEMA

PREFIX = "layout-"
FILES = ".files.parquet"
ROW_GROUP = 1 << 16  # file rows per row group: what a submit reads at most, twice over a unit's edge


def _ledger(output: str) -> str:
    return storage.join(output, "_ledger")


def _parts(output: str) -> list[str]:
    """Committed layout parts (their unit-row files), in unit order."""
    found = storage.list_files(_ledger(output), ".parquet", prefix=PREFIX)
    return [url for url in found if not url.endswith(FILES)]


def read(output: str) -> list[WorkUnit]:
    """Every unit of `output`, in index order; Parquet parts load their files on demand."""
    units = read_json_units(output)
    parts = _parts(output)
    if parts:
        files = Files({_start(url): url[: -len(".parquet")] + FILES for url in parts})
        for url in parts:
            units += _lazy(_read_table(url, UNIT_SCHEMA), files)
    return sorted(units, key=lambda u: u.index)


def _start(url: str) -> int:
    return int(url.rsplit("/", 1)[-1][len(PREFIX):].split(".", 1)[0])


def _lazy(table: pa.Table, files: "Files") -> list[WorkUnit]:
    return [WorkUnit(r["unit"], digest=r["digest"], seconds=r["seconds"], load=files)
            for r in table.to_pylist()]


def _read_table(url: str, schema: pa.Schema, columns: Optional[list[str]] = None) -> pa.Table:
    fs, path = storage.filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            return pq.read_table(fh, schema=schema, columns=columns)
    except OSError as err:
        raise storage.StorageError(f"cannot read {url}: {type(err).__name__}: {err}") from err


def known_ids(output: str) -> pa.Array:
    """The ids of every file some unit holds (its `id` column only: no uri, no Python objects)."""
    chunks = [pa.array([f.id for u in read_json_units(output) for f in u.files], pa.string())]
    for url in _parts(output):
        chunks += _read_table(url[: -len(".parquet")] + FILES, UNIT_FILE_SCHEMA, ["id"]).column("id").chunks
    return pc.unique(pa.chunked_array(chunks, pa.string()))


class InOrder:
    """Rows of tables that come in `uri` order, served for ranges of uris asked in increasing order:
    a row group is read once, and only the rows not yet passed are held."""

    def __init__(self, batches: Iterator[pa.RecordBatch | pa.Table]):
        self.batches = batches
        self.buffer: Optional[pa.Table] = None

    def between(self, low: pa.Scalar, high: pa.Scalar) -> Optional[pa.Table]:
        """The rows with `low <= uri <= high`; later calls ask for higher ranges."""
        buffer = self.buffer
        while buffer is None or not buffer.num_rows or pc.less_equal(buffer["uri"][-1], high).as_py():
            more = next(self.batches, None)
            if more is None:
                break
            more = pa.Table.from_batches([more]) if isinstance(more, pa.RecordBatch) else more
            buffer = more if buffer is None else pa.concat_tables([buffer, more])
        if buffer is None:
            return None
        buffer = buffer.filter(pc.greater_equal(buffer["uri"], low))
        inside = pc.less_equal(buffer["uri"], high)
        self.buffer = buffer.filter(pc.invert(inside))
        return buffer.filter(inside)


def parquet_batches(urls: list[str], columns: Optional[list[str]] = None) -> Iterator[pa.RecordBatch]:
    """The batches of Parquet files, one file after the other, a row group at a time."""
    for url in urls:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as fh:
            yield from pq.ParquetFile(fh).iter_batches(batch_size=ROW_GROUP, columns=columns)


class Known:
    """Which uris of a sorted listing some unit already holds, without holding every known id: each
    files part is in uri order (units are cut in uri order), so one pass over each part's `uri`
    column, a row group at a time, serves a whole listing read in uri order."""

    def __init__(self, output: str):
        legacy = sorted(f.uri for u in read_json_units(output) for f in u.files)
        self.sources = [InOrder(iter([pa.table({"uri": pa.array(legacy, pa.string())})]))]
        self.sources += [InOrder(parquet_batches([url[: -len(".parquet")] + FILES], ["uri"])) for url in _parts(output)]

    def held(self, uris: pa.Array) -> np.ndarray:
        """A mask of `uris` (sorted, after every batch asked before) that some unit holds."""
        if not len(uris):
            return np.zeros(0, bool)
        found = [t["uri"] for t in (s.between(uris[0], uris[len(uris) - 1]) for s in self.sources) if t is not None]
        values = pa.chunked_array(found, pa.string()).combine_chunks() if found else pa.array([], pa.string())
        return pc.is_in(uris, value_set=values).to_numpy(zero_copy_only=False)


def read_json_units(output: str) -> list[WorkUnit]:
    return [unit_from_json(u) for url in storage.list_files(_ledger(output), ".json", prefix=PREFIX)
            for u in storage.read_json(url)]


def append(output: str, start: int, cut: Iterable[tuple[pa.RecordBatch, pa.RecordBatch]]) -> list[WorkUnit]:
    """Commit the units `cut` yields (files first, unit rows last) as the part numbered `start`."""
    cut = iter(cut)
    first = next(cut, None)
    if first is None:
        return []
    base = storage.join(_ledger(output), f"{PREFIX}{start:06d}")
    unit_rows: list[pa.RecordBatch] = []
    with storage.atomic_local_file(base + FILES, ".parquet") as scratch:
        # ids and uris are all distinct: dictionary-encoding them is wasted work (4x the write time)
        with pq.ParquetWriter(str(scratch), UNIT_FILE_SCHEMA, use_dictionary=["unit", "error"]) as writer:
            for files, units in _chain(first, cut):
                if files.num_rows:
                    writer.write_batch(files, row_group_size=ROW_GROUP)
                unit_rows.append(units)
    table = pa.Table.from_batches(unit_rows, UNIT_SCHEMA)
    with storage.atomic_local_file(base + ".parquet", ".parquet") as scratch:
        pq.write_table(table, str(scratch))
    return _lazy(table, Files({start: base + FILES}))


def _chain(first: tuple, rest: Iterator[tuple]) -> Iterator[tuple]:
    yield first
    yield from rest


def copy(source: str, dest: str) -> None:
    """Copy `source`'s layout parts that `dest` lacks (refilter keeps the source's very units)."""
    for url in storage.list_files(_ledger(source), prefix=PREFIX):
        copied = storage.join(_ledger(dest), url.rsplit("/", 1)[-1])
        if not storage.exists(copied):
            fs, path = storage.filesystem(url)
            with fs.open(path, "rb") as fh:
                storage.write_bytes(copied, fh.read())


class Files:
    """Loads a unit's file rows from the files parts, one row group at a time (the last one kept:
    units are submitted in order, so a row group is read once)."""

    def __init__(self, parts: dict[int, str]):
        self.starts = sorted(parts)
        self.parts = parts
        self.lock = threading.Lock()
        self.opened: dict[int, tuple[pq.ParquetFile, list[tuple[int, int]]]] = {}
        self.cached: tuple[tuple, Optional[pa.Table]] = ((), None)
        self.last: tuple[int, list[SourceFile]] = (-1, [])

    def __call__(self, index: int) -> list[SourceFile]:
        with self.lock:
            if self.last[0] == index:  # asked again for the same unit (refilter asks per segment)
                return list(self.last[1])
        files = self._read(index)
        with self.lock:
            self.last = (index, files)
        return list(files)

    def _read(self, index: int) -> list[SourceFile]:
        start = self.starts[bisect.bisect_right(self.starts, index) - 1]
        with self.lock:
            reader, ranges = self._open(start)
            groups = tuple(g for g, (low, high) in enumerate(ranges) if low <= index <= high)
            if self.cached[0] != (start, groups):
                self.cached = ((start, groups), reader.read_row_groups(list(groups)))
            table = self.cached[1]
        rows = table.filter(pc.equal(table.column("unit"), index)).drop_columns(["unit"]).to_pylist()
        return [SourceFile(**row) for row in rows]

    def _open(self, start: int) -> tuple[pq.ParquetFile, list[tuple[int, int]]]:
        if start not in self.opened:
            fs, path = storage.filesystem(self.parts[start])
            reader = pq.ParquetFile(fs.open(path, "rb"))
            meta = reader.metadata
            column = meta.schema.to_arrow_schema().get_field_index("unit")
            ranges = [(meta.row_group(g).column(column).statistics.min, meta.row_group(g).column(column).statistics.max)
                      for g in range(meta.num_row_groups)]
            self.opened[start] = (reader, ranges)
        return self.opened[start]
