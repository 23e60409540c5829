"""Compaction (issue 21): ledger records into one table, index and rejects parts into one file per block
of units; exact, safe against kill -9 and against a reader reading while it runs; a rerun with
nothing left to do starts no executor, and every reader (status, read_index, the loader) reads the
compacted output as it read the parts."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.io import storage, tables
from pipelines.job import run_job
from pipelines.loader import read_index
from pipelines.state import jobstate
from pipelines.state.compaction import compact_output
from pipelines.state.ledger import Ledger
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA
from tests.fakes import ROOT

UNITS = 10
BLOCK = 4  # units per compacted file here, so 10 units make three blocks (the last one partial)


def _record(unit: int) -> dict:
    return {"unit": unit, "digest": f"d{unit}", "input_seconds": 10.0, "output_seconds": 6.0, "samples": 3,
            "rejects": 1, "stage_seconds": {"asr": 1.5}, "finished_at": "2026-11-29T00:00:00+00:00"}


def _write_unit(out: Path, unit: int, ledgered: bool = True, older: bool = False) -> None:
    """A unit as commit writes it: index part (3 rows), rejects part (1 row), then its record."""
    schema = pa.schema([f for f in INDEX_SCHEMA if f.name != "dnsmos_ovrl"]) if older else INDEX_SCHEMA
    rows = [{"key": f"u{unit:03d}_{i}", "shard": f"shards/{unit:06d}-000000.tar", "unit": unit, "duration": 1.0 + i,
             "text": f"words {unit} {i}", **({} if older else {"dnsmos_ovrl": 3.0 + i / 10})} for i in range(3)]
    for folder, table in (("index", pa.Table.from_pylist(rows, schema=schema)),
                          ("rejects", pa.Table.from_pylist([{"unit": unit, "stage": "vad", "reason": "no speech",
                                                             "duration": 2.0}], schema=REJECTS_SCHEMA))):
        (out / folder).mkdir(parents=True, exist_ok=True)
        scratch = out / folder / f".part-{unit:06d}.parquet{storage.SCRATCH_MARK}"  # committed whole, as commit does
        pq.write_table(table, scratch)
        scratch.rename(out / folder / f"part-{unit:06d}.parquet")
    if ledgered:
        Ledger(str(out)).record(unit, _record(unit))


def _output(root: Path, units: int = UNITS) -> Path:
    out = root / "out"
    for unit in range(units):
        _write_unit(out, unit, ledgered=unit != 6, older=unit < 2)  # unit 6: killed before its record
    return out


def _rows(out: Path, folder: str = "index") -> list[dict]:
    return sorted(tables.read_parts(str(out), folder).to_pylist(), key=lambda r: (r["unit"], str(r["key"])))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(tables, "BLOCK_UNITS", BLOCK)


def test_compaction_is_exact_and_leaves_few_files(tmp_path):
    out = _output(tmp_path)
    before = {folder: _rows(out, folder) for folder in ("index", "rejects")}
    parts = {u: pq.read_table(out / "index" / f"part-{u:06d}.parquet") for u in (0, 5, 6)}
    records = Ledger(str(out)).done()
    assert compact_output(str(out)) == {"index": 9, "rejects": 9, "ledger": 9}
    for unit, part in parts.items():  # one unit's rows (refilter reads them), from its block or its part
        rows = tables.unit_rows(str(out), "index", unit).select(part.column_names)
        assert rows.to_pylist() == part.to_pylist()
    assert {folder: _rows(out, folder) for folder in ("index", "rejects")} == before
    assert Ledger(str(out)).done() == records and sorted(records) == [u for u in range(UNITS) if u != 6]
    names = sorted(p.name for p in (out / "index").iterdir())
    assert names == ["_parts.json", "compact-000000-n000004.parquet", "compact-000004-n000003.parquet",
                     "compact-000008-n000002.parquet", "part-000006.parquet"]  # unit 6 may still be rewritten
    assert sorted(p.name for p in (out / "_ledger").iterdir()) == ["units.parquet"]
    # an older part's missing column reads as null, from the manifest's schema: no footer per part
    index = read_index(str(out), "unit < 2 or dnsmos_ovrl >= 3.2", columns=["key", "dnsmos_ovrl"])
    assert index.num_rows == 6 + 8 and index.filter(pa.compute.is_null(index["dnsmos_ovrl"])).num_rows == 6

    # unit 6 finishes later: its part joins its block, and the bytes are those of compacting once
    Ledger(str(out)).record(6, _record(6))
    assert compact_output(str(out)) == {"index": 1, "rejects": 1, "ledger": 1}
    once = _output(tmp_path / "again")
    Ledger(str(once)).record(6, _record(6))
    compact_output(str(once))
    assert _files(out)["index/compact-000004-n000004.parquet"] == _files(once)["index/compact-000004-n000004.parquet"]
    assert {k: v for k, v in _files(out).items() if not k.startswith("_ledger")} == \
        {k: v for k, v in _files(once).items() if not k.startswith("_ledger")}


KILL_POINTS = {  # where the child kills itself with SIGKILL, mid-compaction
    "after a block file": "pyarrow.parquet.write_table",
    "after the manifest": "pipelines.io.tables._write_manifest",
    "after one delete": "pipelines.io.tables._remove",
}

CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
import importlib
from pipelines.io import storage, tables
from pipelines.state.compaction import compact_output
tables.BLOCK_UNITS = {block}
module_name, name = {target!r}.rsplit(".", 1)
owner = importlib.import_module(module_name)
real = getattr(owner, name)
def dying(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, name, dying)
compact_output({out!r})
"""


@pytest.mark.slow  # child processes
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_compaction_killed_anywhere_loses_and_doubles_nothing(tmp_path, point):
    out = _output(tmp_path)
    before = {folder: _rows(out, folder) for folder in ("index", "rejects")}
    code = CHILD.format(root=str(ROOT), block=BLOCK, target=KILL_POINTS[point], out=str(out))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert {folder: _rows(out, folder) for folder in ("index", "rejects")} == before  # readers: exact meanwhile
    compact_output(str(out))  # the next compaction finishes the job
    assert {folder: _rows(out, folder) for folder in ("index", "rejects")} == before
    clean = _output(tmp_path / "clean")
    compact_output(str(clean))
    assert sorted(p.name for p in (out / "index").iterdir()) == sorted(p.name for p in (clean / "index").iterdir())


def test_a_reader_during_compaction_sees_the_old_files_or_the_new(tmp_path):
    out = _output(tmp_path, units=12)
    expected = sorted(read_index(str(out), columns=["key"])["key"].to_pylist())
    seen: list[list[str]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.append(sorted(read_index(str(out), columns=["key"])["key"].to_pylist()))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for unit in range(12, 20):  # units keep finishing and being folded while the reader reads
            _write_unit(out, unit)
            expected_now = sorted(expected + [f"u{u:03d}_{i}" for u in range(12, unit + 1) for i in range(3)])
            compact_output(str(out))
            assert sorted(read_index(str(out), columns=["key"])["key"].to_pylist()) == expected_now
    finally:
        done.set()
        thread.join()
    assert len(seen) > 3
    for keys in seen:  # never both (duplicates), never none (a unit missing from a snapshot)
        assert len(keys) == len(set(keys)) and set(expected) <= set(keys)


def test_records_written_before_the_table_are_read_and_migrated(tmp_path):
    out = tmp_path / "out"
    for unit in range(3):
        (out / "_ledger").mkdir(parents=True, exist_ok=True)
        (out / "_ledger" / f"unit-{unit:06d}.json").write_text(json.dumps(_record(unit)))  # today's records
    assert sorted(Ledger(str(out)).done()) == [0, 1, 2] and Ledger(str(out)).loose() == 3
    Ledger(str(out)).compact()
    shutil.copy(out / "_ledger" / "units.parquet", tmp_path / "table")
    (out / "_ledger" / "unit-000001.json").write_text(json.dumps(_record(1)))  # a kill before the delete
    assert Ledger(str(out)).done() == {u: _record(u) for u in range(3)}


def test_noop_rerun_starts_nothing_and_reads_the_compacted_output(finished_job, tmp_path):
    config, first = finished_job
    out = tmp_path / "out"
    shutil.copytree(config.output, out)
    index_before = read_index(str(out)).sort_by("key")
    status_before = jobstate.status(str(out))
    rerun = config.model_copy(update={"output": str(out), "engine": config.engine.model_copy(
        update={"compact_min_units": 1})})
    summary = run_job(rerun)
    assert summary["complete"] and summary["counts"]["units_processed"] == 0
    assert summary["counts"]["samples"] == first["counts"]["samples"]
    # the executor never started: no CPUs, no ASR actor, no startup time
    assert summary["resources"] == {"cpus": 0, "gpus": 0, "prep_workers": 0, "asr_actors": 0, "nodes": 1}
    assert summary["startup_seconds"] == 0
    assert not list((out / "index").glob("part-*")) and (out / "_ledger" / "units.parquet").exists()
    assert read_index(str(out)).sort_by("key").equals(index_before)
    assert jobstate.status(str(out)) == status_before
    assert run_job(rerun)["counts"]["units_resumed"] == first["counts"]["units"]  # again, from the table
