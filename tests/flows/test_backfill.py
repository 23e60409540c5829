"""Backfill: one prepare-corpus flow run per day/prefix into OUTPUT/<day>; a rerun skips complete ones."""
from __future__ import annotations

import shutil

import pyarrow.dataset as ds
import pytest

from flows.backfill import backfill_corpus, dated_prefixes, folder_name, targets
from pipelines.state import jobstate
from tests.fakes import OVERRIDES as FAKE_ASR

DAYS = {"2026-11-01": ["LJ002-0020.wav"], "2026-11-02": ["LJ002-0035.wav", "2412-153948-0000.flac"]}


def test_prefixes_and_folders():
    assert dated_prefixes("s3://b/raw/{date}/", "2026-11-01", "2026-11-03") == {
        "2026-11-01": "s3://b/raw/2026-11-01/", "2026-11-02": "s3://b/raw/2026-11-02/",
        "2026-11-03": "s3://b/raw/2026-11-03/"}
    assert folder_name("s3://b/raw/2026-11-01/") == "2026-11-01" and folder_name("/x/a b/*.flac") == "a_b"
    with pytest.raises(ValueError, match="same output folder"):
        targets(["/a/day/", "/b/day/"], "/out")


@pytest.mark.slow
def test_backfill_runs_each_day_once_and_resumes(prefect_server, local_ray, clips, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for day, names in DAYS.items():
        (raw / day).mkdir(parents=True)
        for name in names:
            shutil.copy(clips / name, raw / day / name)
    args = dict(output=str(out), pattern=str(raw) + "/{date}/", date_from="2026-11-01", date_to="2026-11-02",
                overrides={"engine.unit_minutes": 0.25, **FAKE_ASR}, concurrency=1)  # 2 CPUs: one job at a time
    first = backfill_corpus(**args)
    assert [r["skipped"] for r in first] == [False, False]
    for day, names in DAYS.items():
        assert jobstate.status(str(out / day))["complete"]
        index = ds.dataset(str(out / day / "index"), format="parquet").to_table()
        assert {u.rsplit("/", 1)[-1] for u in index.column("source_uri").to_pylist()} == set(names)
    again = backfill_corpus(**args)
    assert [r["skipped"] for r in again] == [True, True]
