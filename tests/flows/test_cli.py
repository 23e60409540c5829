"""`voxmill run` as a user types it: YAML config, flags, summary, exit codes, clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.fakes import FAKE_ASR, FAKE_ASR_ENV

VOXMILL = [sys.executable, "-m", "flows.cli"]
FAKE = f"asr: {{backend: '{FAKE_ASR}'}}\n"  # the plan and the job run the fake ASR backend: the CLI is under test


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **FAKE_ASR_ENV}
    return subprocess.run([*VOXMILL, *args], capture_output=True, text=True, timeout=600, env=env, **kwargs)


@pytest.mark.slow  # end to end: `voxmill plan` and `run` as child processes, each with its own Ray
def test_run_from_yaml_with_flag_override(clips, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for name in ("LJ002-0035.wav", "stereo.opus"):
        (source / name).write_bytes((clips / name).read_bytes())
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {source}\noutput: {tmp_path / 'out'}\nshards: {{audio_format: wav}}\n"
                   f"plan: {{profiles_dir: {tmp_path / 'profiles'}, history_path: {tmp_path / 'history.jsonl'}}}\n{FAKE}")
    done = _run("run", "--config", str(job), "--sample-rate", "22050", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["counts"]["samples"] == 1 and summary["counts"]["rejects"] == 1
    assert summary["config"]["audio"]["sample_rate"] == 22050
    assert "voxmill plan" in done.stderr and "wall time" in done.stderr  # printed before the job
    assert summary["plan"]["input"]["files"] == 2
    state = _run("status", str(tmp_path / "out"), "--json")
    assert state.returncode == 0 and json.loads(state.stdout)["complete"] is True
    refused = _run("run", "--config", str(job), "--sample-rate", "16000", "--no-plan")
    assert refused.returncode == 2 and "audio.sample_rate: 22050 -> 16000" in refused.stderr
    shard = next(Path(tmp_path / "out/shards").glob("*.tar"))
    with tarfile.open(shard) as tar:
        assert sorted(n.rsplit(".", 1)[1] for n in tar.getnames()) == ["json", "wav"]


def test_clear_errors_and_exit_code_2(tmp_path):
    missing = _run("run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert missing.returncode == 2 and "input not found" in missing.stderr
    bad = tmp_path / "job.yaml"
    bad.write_text("input: x\noutput: y\nasr: {beam_size: 0}\n")
    invalid = _run("run", "--config", str(bad))
    assert invalid.returncode == 2 and "beam_size" in invalid.stderr


@pytest.mark.slow  # end to end: two calibrations, each in a child process with its own Ray
def test_plan_json_what_if_and_history(clips, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {clips}\noutput: {tmp_path / 'out'}\n"
                   f"plan: {{profiles_dir: {tmp_path / 'profiles'}, history_path: {tmp_path / 'history.jsonl'}}}\n{FAKE}")
    done = _run("plan", "--config", str(job), "--recalibrate", "--json")  # 70 s of clips: too small to calibrate unasked
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    assert plan["input"]["files"] == 11 and plan["input"]["method"] == "headers"
    assert plan["hardware"]["cpus"] >= 1 and plan["data"]["speech_fraction"] > 0.3
    profile = next((tmp_path / "profiles").glob("*.json"))
    what_if = _run("plan", "--config", str(job), "--profile", str(profile), "--gpus", "0", "--cpus",
                   str(4 * plan["hardware"]["cpus"]), "--json")
    assert what_if.returncode == 0, what_if.stderr[-3000:]
    bigger = json.loads(what_if.stdout)
    stage = lambda p, name: next(s for s in p["stages"] if s["name"] == name)  # noqa: E731
    assert bigger["resources"]["asr_actors"] == stage(bigger, "asr")["workers"] == 4
    per_actor = stage(bigger, "asr")["seconds"] * 4 / bigger["data"]["speech_fraction"]
    assert per_actor == pytest.approx(stage(plan, "asr")["seconds"] / plan["data"]["speech_fraction"], rel=0.3)
    shown = _run("plan", "--config", str(job), "--history")
    assert shown.returncode == 0 and "estimate vs actual" in shown.stdout


def test_plan_history_as_the_readme_shows_it(tmp_path, monkeypatch):
    """`voxmill plan --history` needs no input: it reads plan.history_path (default under ~)."""
    from typer.testing import CliRunner

    from flows import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / ".cache/voxmill/history.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"at": "2026-11-29T12:00:00", "output": "/data/out", "input_hours": 0.5,
                                "predicted_wall_seconds": 110.0, "actual_wall_seconds": 100.0}) + "\n")
    shown = CliRunner().invoke(cli.app, ["plan", "--history"])
    assert shown.exit_code == 0, shown.output
    assert "estimate vs actual" in shown.output and "/data/out" in shown.output and "+10%" in shown.output
