"""`voxmill run` as a user types it: YAML config, flags, summary, exit codes, clear errors."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from flows import cli
from pipelines.progress import ProgressLines
from schemas.config import JobConfig
from schemas.settings import parse_settings
from tests.fakes import FAKE_ASR, FAKE_ASR_ENV, ROOT

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
    assert re.search(r"^wall time .* on \d+ GPU, .* GB", done.stderr, re.M)  # one line, however wide: a log greps it
    assert "progress: " in done.stderr and "ETA done" in done.stderr  # stderr is a pipe here: lines, not a bar
    assert "Token authentication" not in done.stderr  # the local Ray's notice went to the log file
    assert summary["plan"]["input"]["files"] == 2
    state = _run("status", str(tmp_path / "out"), "--json")
    assert state.returncode == 0 and json.loads(state.stdout)["complete"] is True
    refused = _run("run", "--config", str(job), "--sample-rate", "16000", "--no-plan")
    assert refused.returncode == 2 and "audio.sample_rate: 22050 -> 16000" in refused.stderr
    shard = next(Path(tmp_path / "out/shards").glob("*.tar"))
    with tarfile.open(shard) as tar:
        assert sorted(n.rsplit(".", 1)[1] for n in tar.getnames()) == ["json", "wav"]


def test_clear_errors_and_exit_code_2(invoke, tmp_path):  # in process: the point is the line and the code
    missing = invoke("run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert missing.exit_code == 2 and "input not found" in missing.stderr
    bad = tmp_path / "job.yaml"
    bad.write_text("input: x\noutput: y\nasr: {beam_size: 0}\n")
    invalid = invoke("run", "--config", str(bad))
    assert invalid.exit_code == 2 and "asr.beam_size: Input should be greater than or equal to 1 (got 0)" in invalid.stderr


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
    actors = plan["resources"]["asr_actors"]  # an actor per core of each node
    assert bigger["resources"]["asr_actors"] == stage(bigger, "asr")["workers"] == 4 * actors
    assert bigger["resources"]["nodes"] == 4
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


# --- in process (typer's CliRunner): stderr is no terminal there, as in a RayJob or under nohup ------------

@pytest.fixture
def invoke(tmp_path, monkeypatch):
    """`voxmill ARGS...` in this process; the log file in tmp_path, the logging handlers a run adds removed after."""
    monkeypatch.setattr(cli, "_LOG_PATH", tmp_path / "voxmill.log")
    root, voxmill = logging.getLogger(), logging.getLogger("voxmill")
    handlers, level, voxmill_level = root.handlers[:], root.level, voxmill.level
    yield lambda *args: CliRunner().invoke(cli.app, list(args), prog_name="voxmill")
    root.handlers[:] = handlers
    root.setLevel(level)
    voxmill.setLevel(voxmill_level)


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines, (result.exit_code, result.output)
    return lines[-1]


def test_version(invoke):
    done = invoke("--version")
    assert done.exit_code == 0 and done.stdout == f"voxmill {version('voxmill')}\n"


def test_help_shows_defaults_choices_and_plain_metavars(invoke):
    for name in ["", *get_command(cli.app).commands]:
        shown = invoke(*([name] if name else []), "--help")
        assert shown.exit_code == 0, shown.output
        options = shown.stdout.partition("Options:")[2]  # an argument's line names it, then its type: "OUTPUT <str>"
        assert options and not re.search(r"<(bool|str|int|float|list\[str\]|path)>", options), (name, shown.stdout)
    text = " ".join(invoke("run", "--help").stdout.split())  # help wraps lines
    for shown in ("--sample-rate HZ output sample rate [default: 24000]", "[default: bundled tiny.en]",
                  "--audio-format <flac|wav> audio in the shards [default: flac]", "--set KEY=VALUE", "--json print"):
        assert shown in text, (shown, text)
    assert "--to <lhotse|nemo>" in invoke("export", "--help").stdout


def test_bad_options_and_config_give_one_line_naming_the_key(invoke, tmp_path):
    run = ("run", "--input", str(tmp_path), "--output", str(tmp_path / "out"))
    mp3 = invoke(*run, "--audio-format", "mp3")
    assert mp3.exit_code == 2 and re.search(r"Error: .*'--audio-format'.*'mp3' is not one of 'flac', 'wav'", mp3.stderr)
    cases = {
        ("run", "--input", str(tmp_path)): "invalid job config: --output is required (or output: in the job file)",
        (*run, "--set", "audio.sample_rat=16000"): "audio.sample_rat: no such key; audio has sample_rate, peak_normalize, "
                                                   "resampler",
        (*run, "--set", "audio.sample_rate=100"): "audio.sample_rate: Input should be greater than or equal to 8000 "
                                                  "(got 100)",
        (*run, "--set", "shards.audio_format=mp3"): "shards.audio_format: 'mp3' is not one of 'flac' or 'wav'",
        (*run, "--set", "audio=16000"): "audio is a section: set one of its keys (sample_rate, peak_normalize, resampler",
        (*run, "--set", "audio.sample_rate.hz=1"): "audio.sample_rate.hz: no such key; audio.sample_rate is a value",
        (*run, "--set", "sample_rate"): "--set 'sample_rate': expected KEY=VALUE",
        (*run, "--set", "vad.min_seconds=25"): "vad.min_seconds must be below vad.max_seconds",
        ("plan", "-i", str(tmp_path), "--set", "plan.gpu_hour_price=-1"):
            "plan.gpu_hour_price: Input should be greater than or equal to 0 (got -1)",
        ("backfill", "-o", str(tmp_path / "out"), "--prefix", str(tmp_path), "--set", "vad.pad_ms=-1"):
            "vad.pad_ms: Input should be greater than or equal to 0 (got -1)",  # before any flow run
    }
    for args, message in cases.items():
        line = _error_line(invoke(*args))
        assert message in line and "(details: " in line, (args, line)
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {tmp_path}\noutput: {tmp_path / 'out'}\nasr: {{langauge: en}}\n")
    line = _error_line(invoke("run", "--config", str(job)))
    assert "asr.langauge: no such key; asr has backend, model, language," in line and "pydantic" not in line


def test_set_values_are_yaml_but_text_stays_text():
    assert parse_settings(["audio.sample_rate=16000", "asr.language=no", "asr.model=null", "quality.languages=[en, de]",
                               "audio.peak_normalize=0.95", "shards.keep_rejected_audio=false"]) == {
        "audio.sample_rate": 16000, "asr.language": "no", "asr.model": None, "quality.languages": ["en", "de"],
        "audio.peak_normalize": 0.95, "shards.keep_rejected_audio": False}


def test_run_prints_progress_lines_and_takes_set(invoke, clips, local_ray, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name in ("ES2011a.Headset-0-40s-46s.wav", "LJ002-0020.wav"):  # 6 s, 1.5 s: a unit each
        (source / name).write_bytes((clips / name).read_bytes())
    done = invoke("run", "-i", str(source), "-o", str(output), "--no-plan", "--set", f"asr.backend={FAKE_ASR}",
                  "--set", "engine.unit_minutes=0.1", "--set", "engine.progress_seconds=0.2", "--set",
                  "quality.enabled=false", "--set", "shards.audio_format=wav", "--set", "audio.sample_rate=16000",
                  "--sample-rate", "22050")
    assert done.exit_code == 0, done.output
    summary = json.loads((output / "summary.json").read_text())
    config = summary["config"]
    assert config["engine"]["progress_seconds"] == 0.2 and config["quality"]["enabled"] is False
    assert config["shards"]["audio_format"] == "wav" and {p.suffix for p in (output / "shards").iterdir()} == {".tar"}
    assert config["audio"]["sample_rate"] == 22050  # a named flag wins over --set
    lines = [line for line in done.stderr.splitlines() if line.startswith("progress: ")]
    assert summary["counts"]["units"] == 2 and lines, done.stderr
    hours = f"{summary['manifest_hours']:.3f}"
    assert re.fullmatch(rf"progress: 0\.000/{hours} h \(0%\), 0/2 units, 0\.0x realtime, elapsed 0:00:00, "
                        r"ETA unknown \(no unit finished yet\)", lines[0]), lines[0]
    assert re.fullmatch(rf"progress: {hours}/{hours} h \(100%\), 2/2 units, [\d.]+x realtime, elapsed \d:\d\d:\d\d, "
                        r"ETA done", lines[-1]), lines[-1]


def test_the_terminal_bar_reads_the_log_line():
    lines = ProgressLines(lambda text: None, 30.0)
    column = cli._LineColumn(lines)
    assert column.render(None).plain == "starting the workers"
    lines(1800.0, 3600.0, 1, 2)
    assert column.render(None).plain.startswith("0.500/1.000 h (50%), 1/2 units, 0.0x realtime, elapsed 0:00:00, ETA ")


def test_job_example_is_the_cli_defaults():
    """deploy/job.example.yaml (the Prefect deployments' job file) holds every key; a value that is not
    the default says `not the default (X)` on its line, so a Prefect run and a bare `voxmill run` never
    differ silently."""
    path = ROOT / "deploy" / "job.example.yaml"
    example = JobConfig.model_validate(yaml.safe_load(path.read_text())).model_dump(mode="json")
    default = JobConfig(input=example["input"], output=example["output"]).model_dump(mode="json")
    comments, section = {}, None
    for line in path.read_text().splitlines():
        if found := re.match(r"^(\w+):", line):
            section = found.group(1)
        elif found := re.match(r"^  (\w+):[^#]*(#.*)?$", line):
            comments[f"{section}.{found.group(1)}"] = found.group(2) or ""
    keys = {f"{s}.{k}" for s, fields in default.items() if isinstance(fields, dict) for k in fields}
    assert keys - set(comments) == set(), "keys missing from the example"
    for key in sorted(keys):
        section, name = key.split(".")
        ours, theirs = example[section][name], default[section][name]
        if ours != theirs:
            said = yaml.safe_dump(theirs, default_flow_style=True).strip().removesuffix("...").strip()
            assert f"not the default ({said})" in comments[key], (key, ours, theirs, comments[key])


def test_compact_folds_an_output_and_waits_for_no_running_job(invoke, finished_job, tmp_path):
    """`voxmill compact OUTPUT`: the parts and records fold, status and rows stay; a held output and a
    folder with no job are one line, exit 2."""
    import shutil

    from pipelines.io import tables
    from pipelines.state.lease import OutputLease

    out = tmp_path / "out"
    shutil.copytree(finished_job[0].output, out)
    rows = tables.read_parts(str(out), "index").sort_by("key")
    done = invoke("compact", str(out))
    assert done.exit_code == 0 and "compacted" in done.stdout, done.output
    assert not list((out / "index").glob("part-*")) and (out / "index" / tables.MANIFEST).exists()
    assert tables.read_parts(str(out), "index").sort_by("key").equals(rows)
    assert invoke("status", str(out)).exit_code == 0  # complete, from the compacted ledger
    with OutputLease(str(out)):
        assert "another voxmill run holds" in _error_line(invoke("compact", str(out)))
    assert "no voxmill job" in _error_line(invoke("compact", str(tmp_path / "nothing")))
