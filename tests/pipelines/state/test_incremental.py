"""Incremental runs: a rerun on an output that holds finished units processes only the new files,
appending their units after the last one; earlier shards stay byte for byte; `--new-version`."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from pipelines.job import run_job
from pipelines.state import jobstate
from schemas.config import load_job_config
from tests.conftest import small_units_config

FIRST = ["2412-153948-0000.flac", "LJ002-0020.wav", "common_voice_en_651325.mp3"]
LATER = ["2412-153948-0001.flac", "LJ002-0035.wav"]  # they sort between the first ones


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*"))}


@pytest.fixture(scope="module")
def grown(clips, local_ray, tmp_path_factory):
    """Three files, a run, two more files, a rerun: (first summary, second summary, output, shards before)."""
    root = tmp_path_factory.mktemp("incremental")
    raw, out = root / "raw", root / "out"
    raw.mkdir()
    for name in FIRST:
        shutil.copy(clips / name, raw / name)
    first = run_job(small_units_config(str(raw), str(out)))
    before = _digests(out / "shards")
    for name in LATER:
        shutil.copy(clips / name, raw / name)
    second = run_job(small_units_config(str(raw), str(out)))
    return first, second, out, before


def test_only_new_files_are_processed(grown):
    first, second, out, _ = grown
    assert first["complete"] and second["complete"]
    assert second["counts"]["input_files"] == 5
    assert second["counts"]["headers_read"] == len(LATER)  # known files were dropped before any header read
    assert not list((out / "_ledger").glob("discovery-*"))  # the run's listing goes once its units are laid
    assert second["counts"]["units_resumed"] == first["counts"]["units"]
    assert second["counts"]["units_processed"] == second["counts"]["units"] - first["counts"]["units"] > 0
    layout = jobstate.layout(str(out))
    new_units = [u for u in layout if u.index >= first["counts"]["units"]]
    assert sorted(Path(f.uri).name for u in new_units for f in u.files) == sorted(LATER)
    assert jobstate.status(str(out))["complete"] and jobstate.status(str(out))["units"] == len(layout)


def test_index_holds_every_source_once_and_old_shards_are_untouched(grown):
    first, second, out, before = grown
    index = ds.dataset(str(out / "index"), format="parquet").to_table()
    keys = index.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == second["counts"]["samples"]
    units_of: dict[str, set] = {}
    for uri, unit in zip(index.column("source_uri").to_pylist(), index.column("unit").to_pylist()):
        units_of.setdefault(Path(uri).name, set()).add(unit)
    assert set(units_of) == set(FIRST + LATER)
    assert all(len(units) == 1 for units in units_of.values()), "each source in one unit, written once"
    after = _digests(out / "shards")
    assert {k: after[k] for k in before} == before and len(after) > len(before)


def test_rerun_without_new_files_does_nothing(grown, local_ray):
    _, second, out, _ = grown
    raw = str(Path(second["config"]["input"]))
    third = run_job(small_units_config(raw, str(out)))
    assert third["counts"]["units_processed"] == 0 and third["counts"]["samples"] == second["counts"]["samples"]


def test_new_version_writes_beside_a_changed_output(grown):
    _, second, out, _ = grown
    raw = second["config"]["input"]
    changed = small_units_config(raw, str(out), **{"audio.sample_rate": 8000})
    with pytest.raises(jobstate.ConfigChanged, match="--new-version"):
        run_job(changed)
    assert jobstate.versioned(changed).output == str(out / "v2")
    assert jobstate.versioned(small_units_config(raw, str(out))).output == str(out)
    summary = run_job(jobstate.versioned(changed))
    assert summary["complete"] and json.loads((out / "v2" / "summary.json").read_text())["config"]["audio"]["sample_rate"] == 8000
    assert jobstate.versioned(changed).output == str(out / "v2")  # rerun resumes that version
    assert jobstate.status(str(out))["complete"]  # the first version is untouched


def test_a_setting_added_later_at_its_default_does_not_lock_an_older_output(tmp_path):
    """An output made before a setting existed resumes with it at its default, and is refused once
    the setting differs from that default."""
    config = load_job_config(str(tmp_path / "in"), str(tmp_path / "out"))
    settings = jobstate.output_settings(config)
    older = json.loads(json.dumps(settings))
    older["shards"].pop("keep_rejected_audio", None)  # what an output made before the setting records
    job = {"fingerprint": jobstate.fingerprint(older), "settings": older}
    assert jobstate.changed_settings(job, settings) == []
    other = config.model_copy(update={"shards": config.shards.model_copy(update={"keep_rejected_audio": False})})
    assert jobstate.changed_settings(job, jobstate.output_settings(other)) == [
        "shards.keep_rejected_audio: None -> False"]
