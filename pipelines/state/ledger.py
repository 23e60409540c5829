"""Ledger: one small completion record per work unit, committed after the unit's data.

Like datatrove's per-task completion markers, but on any fsspec storage: a record exists only
if the unit's shards, index part and rejects part were all committed before it.
"""
from __future__ import annotations

from typing import Optional

from pipelines.io import storage


class Ledger:
    def __init__(self, output_url: str):
        self.root = storage.join(output_url, "_ledger")

    def _url(self, unit: int) -> str:
        return storage.join(self.root, f"unit-{unit:06d}.json")

    def record(self, unit: int, report: dict) -> None:
        storage.write_json(self._url(unit), report)

    def done(self) -> dict[int, dict]:
        """Completed units by index (one listing, then one small read per record)."""
        records = (storage.read_json(url) for url in storage.list_files(self.root, ".json", prefix="unit-"))
        return {r["unit"]: r for r in records}

    def lookup(self, records: dict[int, dict], unit: int, digest: str) -> Optional[dict]:
        record = records.get(unit)
        return record if record and record.get("digest") == digest else None
