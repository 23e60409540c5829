"""`--restart` deletes only what voxmill wrote, and only after every check passed: a folder that holds
no voxmill job is never touched, and a bad input leaves the output as it was."""
from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from pipelines.state import jobstate


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(*args: str):
    return CliRunner().invoke(app, ["run", *args])


def test_restart_refuses_a_folder_without_a_voxmill_job_and_deletes_nothing(tmp_path, clips):
    mine = tmp_path / "mydata"
    (mine / "index").mkdir(parents=True)
    (mine / "index" / "part-000000.parquet").write_bytes(b"the user's own table")
    (mine / "summary.json").write_text("{}")
    (mine / "shards").mkdir()
    (mine / "shards" / "shard-000000.tar").write_bytes(b"the user's own tar")
    before = _files(mine)
    for input_url in ("/nonexistent", str(clips)):
        result = _run("-i", input_url, "-o", str(mine), "--restart", "--no-plan")
        assert result.exit_code == 2, result.output
        assert "NotAnOutput: " in result.output and "deleted nothing" in result.output, result.output
        assert _files(mine) == before


def test_restart_with_a_bad_input_leaves_a_voxmill_output_whole(finished_job, tmp_path):
    config, _ = finished_job
    copy = tmp_path / "out"
    shutil.copytree(config.output, copy)
    before = _files(copy)
    result = _run("-i", str(tmp_path / "typo"), "-o", str(copy), "--restart", "--no-plan")
    assert result.exit_code == 2 and "InputError: input not found" in result.output, result.output
    assert _files(copy) == before


def test_clear_removes_voxmill_files_and_keeps_the_users(finished_job, tmp_path):
    config, _ = finished_job
    copy = tmp_path / "out"
    shutil.copytree(config.output, copy)
    (copy / "README.md").write_text("notes of the user")
    (copy / "shards" / "notes.txt").write_text("kept beside the shards")
    (copy / "index" / "my-extra.parquet").write_bytes(b"the user's table")
    assert list((copy / "shards").glob("shard-*.tar")) and (copy / "_ledger" / "job.json").exists()
    jobstate.clear(str(copy))
    left = sorted(_files(copy))
    leases = [name for name in left if name.startswith("_ledger/lease-")]  # the run's lease outlives the run
    assert [name for name in left if name not in leases] == ["README.md", "index/my-extra.parquet", "shards/notes.txt"]
    assert not (copy / "rejects").exists()
    assert [p.name for p in (copy / "_ledger").iterdir()] == [name.split("/")[1] for name in leases] != []
