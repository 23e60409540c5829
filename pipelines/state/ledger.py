"""Ledger: a completion record per work unit, committed after the unit's data, and compacted.

Like datatrove's per-task completion markers, but on any fsspec storage: a record exists only
if the unit's shards, index part and rejects part were all committed before it.

A unit commits its record as one small file (`_ledger/unit-NNNNNN.json`: one PUT). Reading
100k of those costs 100k requests (about an hour on S3), so `compact` folds them into one table,
`_ledger/units.parquet` (LEDGER_SCHEMA: the totals `status` sums as typed columns, the whole
record as JSON), and only then deletes the files it folded. A reader lists the loose records
first and reads the table second: whatever a compaction did in between, each record is in the
table it reads or in a file it listed (a listed file that is gone was folded into that table).
Outputs written before the table existed are read the same way (all their records are loose)
and migrate at their next compaction.
"""
from __future__ import annotations

import io
import json
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.io import storage
from schemas.tables import LEDGER_SCHEMA

TABLE = "units.parquet"  # under OUTPUT/_ledger/
RECORD_PREFIX = "unit-"


class Ledger:
    def __init__(self, output_url: str):
        self.root = storage.join(output_url, "_ledger")

    def _url(self, unit: int) -> str:
        return storage.join(self.root, f"{RECORD_PREFIX}{unit:06d}.json")

    def record(self, unit: int, report: dict) -> None:
        storage.write_json(self._url(unit), report)

    def table(self, columns: Optional[list[str]] = None) -> pa.Table:
        """Every completed unit as one row of LEDGER_SCHEMA (or its `columns`, `unit` first), by unit:
        one listing, the table, and one read per record not yet compacted. Naming only the typed
        columns skips decoding the records (100k units: milliseconds, not a second)."""
        columns = ["unit", *[c for c in columns if c != "unit"]] if columns else LEDGER_SCHEMA.names
        loose = storage.list_files(self.root, ".json", prefix=RECORD_PREFIX)  # before the table: see above
        compacted = _read_table(storage.join(self.root, TABLE), columns)
        folded = set(compacted["unit"].to_pylist())
        records = [r for r in map(_read_record, loose) if r is not None and r["unit"] not in folded]
        if not records:
            return compacted
        return pa.concat_tables([compacted, to_table(records).select(columns)]).sort_by("unit")

    def done(self) -> dict[int, dict]:
        """Completed units' records by index."""
        return {unit: json.loads(record) for unit, record in
                zip(*self.table(["unit", "record"]).to_pydict().values())}

    def loose(self) -> int:
        """How many records are not compacted yet."""
        return len(storage.list_files(self.root, ".json", prefix=RECORD_PREFIX))

    def compact(self) -> int:
        """Fold the loose records into the table (committed whole), then delete them; returns how
        many were folded. A kill before the delete leaves records in both, read once."""
        loose = storage.list_files(self.root, ".json", prefix=RECORD_PREFIX)
        if not loose:
            return 0
        merged = self.table()
        with storage.atomic_local_file(storage.join(self.root, TABLE), ".parquet") as scratch:
            pq.write_table(merged, scratch)
        fs, _ = storage.filesystem(self.root)
        for url in loose:
            _, path = storage.filesystem(url)
            try:
                fs.rm(path)
            except FileNotFoundError:
                pass
        return len(loose)

    def lookup(self, records: dict[int, dict], unit: int, digest: str) -> Optional[dict]:
        record = records.get(unit)
        return record if record and record.get("digest") == digest else None


def to_table(records: list[dict]) -> pa.Table:
    """Records as LEDGER_SCHEMA rows: the totals typed, the record itself as JSON."""
    rows = [{**{f: r.get(f) for f in LEDGER_SCHEMA.names}, "record": json.dumps(r, sort_keys=True)} for r in records]
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


def totals(table: pa.Table) -> dict[str, float]:
    """Sums of the typed totals (`status` reads these, never the JSON)."""
    return {name: pc.sum(table[name]).as_py() or 0 for name in ("input_seconds", "output_seconds", "samples", "rejects")}


def _read_table(url: str, columns: list[str]) -> pa.Table:
    fs, path = storage.filesystem(url)
    try:
        data = fs.cat_file(path)  # one GET: the file whole, footer included
    except FileNotFoundError:
        return LEDGER_SCHEMA.empty_table().select(columns)
    return pq.read_table(io.BytesIO(data), columns=columns, schema=LEDGER_SCHEMA)


def _read_record(url: str) -> Optional[dict]:
    try:
        return storage.read_json(url)
    except FileNotFoundError:  # folded into the table after it was listed
        return None
