"""One reader for index/ and rejects/ parts: parts written by different voxmill versions (an older part
without the quality columns next to a newer one with them) read as one table, by the loader and the report."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import report
from pipelines.io import storage, tables
from pipelines.loader import read_index
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA

NEWER_INDEX = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "snr_db", "clipping", "loudness_lufs",
               "chars_per_second", "audio_hash", "near_duplicate_of")
NEWER_REJECTS = ("metric", "value", "threshold")
DNSMOS = [2.5, 3.5, 4.0]


def _without(schema: pa.Schema, names: tuple[str, ...]) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in names])


def _index_rows(unit: int, scored: bool) -> list[dict]:
    rows = []
    for i in range(3):
        row = {"key": f"src{unit}_{i:03d}", "shard": f"shards/{unit:06d}-000000.tar", "unit": unit,
               "source_id": f"src{unit}", "duration": 1.0 + i, "text": f"utterance {unit} {i}", "language": "en"}
        if scored:
            row["dnsmos_ovrl"] = DNSMOS[i]
        rows.append(row)
    return rows


def _write(folder: Path, name: str, rows: list[dict], schema: pa.Schema) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / name)


@pytest.fixture
def mixed(tmp_path) -> Path:
    """part-000000 from an older voxmill (first, so a reader that trusts one footer sees it), part-000001
    from a newer one, plus a scratch file a killed writer left behind."""
    out = tmp_path / "out"
    _write(out / "index", "part-000000.parquet", _index_rows(0, False), _without(INDEX_SCHEMA, NEWER_INDEX))
    _write(out / "index", "part-000001.parquet", _index_rows(1, True), INDEX_SCHEMA)
    _write(out / "index", f".part-000002.parquet{storage.SCRATCH_MARK}dead", _index_rows(2, True), INDEX_SCHEMA)
    rejects = {"stage": "vad", "reason": "no speech", "duration": 5.0}
    _write(out / "rejects", "part-000000.parquet", [rejects], _without(REJECTS_SCHEMA, NEWER_REJECTS))
    _write(out / "rejects", "part-000001.parquet",
           [{**rejects, "stage": "quality", "reason": "dnsmos_ovrl 2.00 < 3.00", "metric": "dnsmos_ovrl",
             "value": 2.0, "threshold": 3.0}], REJECTS_SCHEMA)
    return out


def test_read_index_sees_every_parts_columns(mixed):
    index = read_index(str(mixed)).sort_by("key")
    assert index.num_rows == 6 and set(index.schema.names) == set(INDEX_SCHEMA.names)
    assert index["dnsmos_ovrl"].to_pylist() == [None, None, None, *DNSMOS]
    kept = read_index(str(mixed), "dnsmos_ovrl >= 3", columns=["key", "dnsmos_ovrl"]).sort_by("key")
    assert kept.to_pylist() == [{"key": "src1_001", "dnsmos_ovrl": 3.5}, {"key": "src1_002", "dnsmos_ovrl": 4.0}]
    assert read_index(f"file://{mixed}", ["dnsmos_ovrl < 3", "duration < 2"])["key"].to_pylist() == ["src1_000"]
    with pytest.raises(ValueError, match=r"unknown column \['dnsmos'\].*dnsmos_ovrl"):
        read_index(str(mixed), "dnsmos >= 3")
    with pytest.raises(ValueError, match="unknown column"):
        read_index(str(mixed), columns=["key", "dnsmos"])
    with pytest.raises(FileNotFoundError, match="no index parts"):
        read_index(str(mixed.parent / "missing"))


def test_report_reads_the_same_rows(mixed):
    index = tables.read_parts(str(mixed), "index", ("key", "dnsmos_ovrl", "not_a_column")).sort_by("key")
    assert index.column_names == ["key", "dnsmos_ovrl"]  # a column no part has is left out
    assert index["dnsmos_ovrl"].to_pylist() == [None, None, None, *DNSMOS]
    assert index.equals(read_index(str(mixed), columns=["key", "dnsmos_ovrl"]).sort_by("key"))
    filtered = tables.read_parts(str(mixed), "index", ("key",), pc.field("dnsmos_ovrl") >= 3)
    assert sorted(filtered["key"].to_pylist()) == ["src1_001", "src1_002"]
    rejects = tables.read_parts(str(mixed), "rejects").sort_by("stage")
    assert rejects["metric"].to_pylist() == ["dnsmos_ovrl", None]
    with pytest.raises(ValueError, match="no part of index/ has"):
        tables.read_parts(str(mixed), "index", filter=pc.field("dnsmos") >= 3)
    assert tables.read_parts(str(mixed), "nothing_here").num_rows == 0

    summary = report.gather(str(mixed), samples=2)
    assert summary.samples == 6 and summary.rejects == 2
    assert summary.scores["dnsmos_ovrl"].count == 3 and summary.scores["snr_db"] is None


def test_storage_options_keep_the_s3_retries():
    fs, path = storage.filesystem("s3://bucket/out/index", {"endpoint_url": "http://127.0.0.1:1", "anon": True,
                                                           "config_kwargs": {"connect_timeout": 3}})
    assert path == "bucket/out/index" and fs.endpoint_url == "http://127.0.0.1:1"
    assert fs.config_kwargs["connect_timeout"] == 3
    retries = storage.s3_options()["config_kwargs"]["retries"]
    assert fs.config_kwargs["retries"] == retries
    fs, _ = storage.filesystem("s3://bucket/out", {"config_kwargs": {"retries": {"max_attempts": 2}}})
    assert fs.config_kwargs["retries"] == {**retries, "max_attempts": 2}


def test_later_copies_keep_the_smallest_key_per_audio_hash():
    import pyarrow as pa

    from pipelines.io.tables import later_copies

    index = pa.table({"key": ["c", "a", "b", "d", "e"], "audio_hash": ["h1", "h1", None, "h2", "h1"]})
    assert later_copies(index).to_pylist() == [True, False, False, False, True]
    assert later_copies(index.drop_columns(["audio_hash"])).to_pylist() == [False] * 5
