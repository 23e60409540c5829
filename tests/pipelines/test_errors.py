"""Errors a person can act on: what `voxmill` prints when something is wrong is one line on stderr
(exit 2 for a user or input error) naming a log file that holds the traceback, never a traceback,
never a password; and a killed driver leaves no Ray process behind."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.processes import cmdline, descendants, kill, stat
from tests.conftest import free_port
from tests.fakes import DELAY_ENV, FAKE_ASR, FAKE_ASR_ENV, ROOT

VOXMILL = Path(sys.executable).with_name("voxmill")
DETAILS = re.compile(r"\(details: (\S+\.log)\)")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A child `voxmill`: its own local Ray, its log files under tmp_path, wide lines, the fake ASR
    backend importable (`tests.fakes`)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "COLUMNS": "500", "VOXMILL_LOG_DIR": str(tmp_path / "logs"), **FAKE_ASR_ENV, **extra}


def _voxmill(tmp_path: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VOXMILL), *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(tmp_path, **env))


def _one_line(result: subprocess.CompletedProcess, code: int = 2) -> tuple[str, str]:
    """The run failed with `code` and said so on exactly one stderr line, which names a log file
    holding the traceback. Returns (line, log text)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    found = DETAILS.search(lines[0])
    assert found, lines[0]
    log = Path(found.group(1)).read_text()
    assert "Traceback (most recent call last)" in log
    return lines[0], log


def _one_clip(clips: Path, tmp_path: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(clips / "LJ002-0035.wav", source)
    return source


# ----------------------------------------------------------------------------- config


def test_invalid_yaml_and_a_folder_as_config(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("input: [x\noutput: y\n")
    line, _ = _one_line(_voxmill(tmp_path, "run", "--config", str(bad)))
    assert f"{bad}: invalid YAML at line 2" in line
    line, _ = _one_line(_voxmill(tmp_path, "run", "--config", str(tmp_path)))
    assert f"{tmp_path} is a folder" in line
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("input: x\noutput: y\nasr: {beam_size: 0}\n")
    line, _ = _one_line(_voxmill(tmp_path, "run", "--config", str(invalid)))
    assert "invalid job config: asr.beam_size: Input should be greater than or equal to 1" in line


# ----------------------------------------------------------------------------- model


def test_a_bad_model_fails_before_ray_starts(clips, tmp_path):
    source = _one_clip(clips, tmp_path)
    started = time.monotonic()
    line, _ = _one_line(_voxmill(tmp_path, "run", "-i", str(source), "-o", str(tmp_path / "out"), "--no-plan",
                                 "--model", str(tmp_path / "no-such-model")))
    assert f"ModelError: model {tmp_path / 'no-such-model'}: not found" in line
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    job = tmp_path / "job.yaml"
    job.write_text(f"asr: {{model: {not_a_model}}}\nplan: {{profiles_dir: {tmp_path / 'profiles'}}}\n")
    line, _ = _one_line(_voxmill(tmp_path, "plan", "-i", str(source), "--config", str(job)))
    assert "not a CTranslate2 Whisper model folder (no model.bin)" in line
    line, _ = _one_line(_voxmill(tmp_path, "run", "-i", str(source), "-o", str(tmp_path / "out"), "--no-plan",
                                 "--model", "tiny-en", HF_HUB_OFFLINE="1"))
    assert "model tiny-en: no such folder, and not a faster-whisper size" in line
    assert time.monotonic() - started < 60  # three CLI starts; no Ray, no actor, no retry
    assert not (tmp_path / "out" / "_ledger").exists()


def test_a_model_name_the_machine_cannot_fetch(monkeypatch):
    """A faster-whisper size that is not in the local cache, with the hub switched off."""
    from huggingface_hub import constants

    from pipelines.preflight import ModelError, check_model
    from schemas.config import AsrConfig

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-voxmill-cache")
    monkeypatch.setenv("HF_HOME", "/nonexistent-voxmill-cache")
    with pytest.raises(ModelError, match="model large-v3: not in the local Hugging Face cache and HF_HUB_OFFLINE"):
        check_model(AsrConfig(model="large-v3"))
    check_model(AsrConfig())  # the bundled tiny.en


# ----------------------------------------------------------------------------- object storage


def test_unreachable_s3_input_and_missing_credentials_fail_in_seconds(clips, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    line, log = _one_line(_voxmill(tmp_path, "run", "-i", "s3://raw/in/", "-o", str(tmp_path / "out"), "--no-plan",
                                   FSSPEC_S3_ENDPOINT_URL=closed))
    assert "InputError: cannot reach input s3://raw/in/: EndpointConnectionError" in line
    assert time.monotonic() - started < 30  # was 105 s of retries, then a traceback
    no_credentials = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    started = time.monotonic()
    line, _ = _one_line(_voxmill(tmp_path, "run", "-i", "s3://raw/in/", "-o", str(tmp_path / "out"), "--no-plan",
                                 FSSPEC_S3_ENDPOINT_URL=closed, AWS_EC2_METADATA_DISABLED="true",
                                 AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                                 AWS_CONFIG_FILE=str(tmp_path / "none"), **no_credentials))
    assert "NoCredentialsError: Unable to locate credentials" in line
    assert time.monotonic() - started < 30


def test_status_of_an_unreachable_store(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    line, _ = _one_line(_voxmill(tmp_path, "status", "s3://corpus/out", FSSPEC_S3_ENDPOINT_URL=closed))
    assert "StorageError: cannot reach output s3://corpus/out" in line
    assert time.monotonic() - started < 30


@pytest.mark.slow  # several voxmill processes: ~14 s
def test_passwords_in_urls_are_never_printed(tmp_path):
    closed = free_port()
    secret = "hunter2-voxmill"
    missing = _voxmill(tmp_path, "run", "-i", f"http://bob:{secret}@127.0.0.1:{closed}/raw/a.flac",
                       "-o", str(tmp_path / "out"), "--no-plan")
    line, log = _one_line(missing)
    assert f"http://bob:***@127.0.0.1:{closed}/raw/a.flac" in line
    state = _voxmill(tmp_path, "status", f"ftp://bob:{secret}@127.0.0.1:{closed}/out")
    line, log2 = _one_line(state)
    assert "ftp://bob:***@" in line and "Connection refused" in line
    endpoint = _voxmill(tmp_path, "run", "-i", "s3://raw/in/", "-o", str(tmp_path / "out"), "--no-plan",
                        FSSPEC_S3_ENDPOINT_URL=f"http://bob:{secret}@127.0.0.1:{closed}")
    line, log3 = _one_line(endpoint)
    for text in (missing.stderr, state.stderr, endpoint.stderr, log, log2, log3):
        assert secret not in text


def test_redact():
    from pipelines.io.storage import redact

    assert redact("cannot write s3://k:s@cr@t@b/x and sftp://u:pw@h:22/y?token=abc&n=1") == \
        "cannot write s3://k:***@b/x and sftp://u:***@h:22/y?token=***&n=1"
    assert redact("s3://bucket/a@b/c.flac http://host/x") == "s3://bucket/a@b/c.flac http://host/x"


# ----------------------------------------------------------------------------- disk full


def _mount(*args: str) -> subprocess.CompletedProcess:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    return subprocess.run([*sudo, "mount", *args], capture_output=True, text=True)


@pytest.fixture
def tiny_disk(tmp_path):
    point = tmp_path / "disk"
    point.mkdir()
    options = f"size=400k,uid={os.getuid()},gid={os.getgid()},mode=0755"
    if shutil.which("mount") is None or _mount("-t", "tmpfs", "-o", options, "tmpfs", str(point)).returncode:
        pytest.skip("cannot mount a tmpfs to fill up (needs root or passwordless sudo)")
    yield point
    subprocess.run([*([] if os.geteuid() == 0 else ["sudo", "-n"]), "umount", "-l", str(point)], capture_output=True)


@pytest.mark.slow  # end to end: a child `voxmill` with its own Ray
def test_disk_full_says_so_in_one_clear_last_line(clips, tiny_disk, tmp_path):
    """Was 190 lines of Ray worker tracebacks before the clear line; now each failing unit is one
    line, the last line says what to do, and the tracebacks are in the log file."""
    job = tmp_path / "job.yaml"
    job.write_text(f"engine: {{unit_minutes: 0.25}}\nasr: {{backend: '{FAKE_ASR}'}}\n")
    result = _voxmill(tmp_path, "run", "-i", str(clips), "-o", str(tiny_disk / "out"), "-c", str(job),
                      "--no-plan", "--json", timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and not any(line.lstrip().startswith("File ") for line in lines)
    assert len(lines) <= 12, result.stderr
    last = lines[-1]
    assert "units failed, first: OutputError: cannot write" in last and "No space left on device" in last
    log = Path(DETAILS.search(last).group(1)).read_text()
    assert "No space left on device" in log and 'File "' in log  # Ray's remote traceback
    summary = json.loads(result.stdout)
    assert summary["failures"] and "No space left on device" in summary["failures"][0]["error"]


# ----------------------------------------------------------------------------- Prefect


def test_the_flow_does_not_retry_input_errors():
    """Prefect's retry condition: a missing input, a bad config or model, a full disk fail at once;
    a storage hiccup is retried."""
    from prefect.states import Failed
    from pydantic import ValidationError

    from flows.prepare import discover_inputs, run_units
    from pipelines.io.storage import OutputError, StorageError
    from pipelines.preflight import ModelError
    from pipelines.stages.discover import InputError
    from schemas.config import load_job_config

    try:
        load_job_config("x", "y", overrides={"asr.beam_size": 0})
    except ValidationError as err:
        invalid = err
    for task in (discover_inputs, run_units):
        assert task.retries >= 1
        condition = task.retry_condition_fn
        for permanent in (InputError("input not found: s3://b/typo/"), invalid, ModelError("model x"),
                          OutputError("cannot write: No space left on device")):
            assert condition(task, None, Failed(data=permanent)) is False, permanent
        assert condition(task, None, Failed(data=StorageError("cannot read s3://b/k: 503"))) is True


@pytest.mark.slow  # end to end: the flow in a child process, with its own Prefect server
@pytest.mark.timeout(180) if hasattr(pytest.mark, "timeout") else (lambda f: f)
def test_the_flow_fails_a_missing_input_at_once(tmp_path):
    """A real flow run (Prefect's ephemeral API) on a typo'd prefix: one InputError, no retries
    (they waited 10 s and 60 s before)."""
    script = ("from flows.prepare import prepare_corpus\n"
              f"prepare_corpus(input={str(tmp_path / 'typo')!r}, output={str(tmp_path / 'out')!r}, plan=False)\n")
    env = {**_env(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "",
           "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=170, env=env,
                            cwd=ROOT)
    took = time.monotonic() - started
    assert result.returncode == 1 and "InputError: input not found" in result.stderr, result.stderr[-3000:]
    assert "Retry 1/" not in result.stderr + result.stdout  # Prefect: "Retry 1/2 will start 10 second(s) from now"
    assert took < 60, took


# ----------------------------------------------------------------------------- profiles and history


def test_a_torn_profile_is_named_and_this_machines_own_is_recalibrated(tmp_path, monkeypatch, caplog):
    from pipelines.plan import planning
    from pipelines.plan.planning import ProfileError, load_profile
    from schemas.config import load_job_config

    config = load_job_config("x", "y", overrides={"plan.profiles_dir": str(tmp_path / "profiles")})
    torn = tmp_path / "profiles" / "torn.json"
    torn.parent.mkdir()
    torn.write_text('{\n  "hardware": {\n')
    with pytest.raises(ProfileError, match=re.escape(f"hardware profile {torn} is unreadable (Invalid JSON: EOF")):
        load_profile(config, str(torn))
    # this machine's own profile torn: a planned run warns, naming it, and calibrates again
    own = planning.profile_path(config, "this-machine")
    own.write_text('{"hardware": {"name": "this-')
    monkeypatch.setattr(planning, "machine_key", lambda *_: "this-machine")
    monkeypatch.setattr(planning, "stratified_sample", lambda *_: ["a sample"])

    class Recalibrated(Exception):
        pass

    def calibrate(*_):
        raise Recalibrated

    monkeypatch.setattr(planning, "calibrate", calibrate)
    with caplog.at_level(logging.WARNING, logger="voxmill"), pytest.raises(Recalibrated):
        planning.costs(config, None, 3600.0)  # an input worth calibrating for
    assert f"hardware profile {own} is unreadable" in caplog.text and "calibrating this machine again" in caplog.text


def test_a_torn_profile_on_the_command_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"bytes": [1], "container": ["wav"], "sample_rate": [16000], "channels": [1],
                             "duration": [1.0]}), manifest)
    torn = tmp_path / "torn.json"
    torn.write_text('{"hardware": ')
    line, _ = _one_line(_voxmill(tmp_path, "plan", "--manifest", str(manifest), "--profile", str(torn)))
    assert f"ProfileError: hardware profile {torn} is unreadable" in line


def test_profiles_are_written_atomically(tmp_path, monkeypatch):
    from pipelines.io import storage
    from pipelines.plan import planning

    written = []
    monkeypatch.setattr(storage, "write_bytes", lambda url, data: written.append((url, data)))

    class Fake:
        hardware = type("H", (), {"name": "box"})()

        def model_dump_json(self, indent=None):
            return '{"ok": 1}'

    from schemas.config import load_job_config

    config = load_job_config("x", "y", overrides={"plan.profiles_dir": str(tmp_path)})
    assert planning.save_profile(config, Fake()) == tmp_path / "box.json"
    assert written == [(str(tmp_path / "box.json"), b'{"ok": 1}')]  # storage.write_bytes: scratch, fsync, rename


def test_a_torn_history_line_is_skipped_with_a_warning(tmp_path, caplog):
    from pipelines.plan import history

    path = tmp_path / "history.jsonl"
    good = {"profile": "p", "actual_wall_seconds": 10.0, "raw_predicted_wall_seconds": 8.0,
            "predicted_wall_seconds": 8.0, "at": "2026-11-29T00:00:00", "output": "o", "input_hours": 1.0}
    path.write_text(json.dumps(good) + "\n" + '{"profile": "p", "actual_wa\n')
    with caplog.at_level(logging.WARNING, logger="voxmill"):
        assert history.read(str(path)) == [good]
    assert f"skipping line 2 of run history {path}" in caplog.text
    history.append(str(path), {**good, "output": "o2"})
    assert [json.loads(line)["output"] for line in path.read_text().splitlines()] == ["o", "o2"]
    job = tmp_path / "job.yaml"
    job.write_text(f"plan: {{history_path: {path}}}\n")
    path.write_text(path.read_text() + "not json\n")
    shown = _voxmill(tmp_path, "plan", "-i", str(tmp_path), "--config", str(job), "--history")
    assert shown.returncode == 0, shown.stderr
    warnings = shown.stderr.strip().splitlines()
    assert len(warnings) == 1 and f"skipping line 3 of run history {path}" in warnings[0]


# ----------------------------------------------------------------------------- kill -9


def _ray_processes(root: int) -> dict[int, int]:
    return {pid: start for pid, start in descendants(root).items()
            if cmdline(pid).startswith("ray::") or "/ray/" in cmdline(pid)}


def _alive(processes: dict[int, int]) -> dict[int, str]:
    found = {}
    for pid, started in processes.items():
        now = stat(pid)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if now and now[1] == started and state != "Z":
            found[pid] = cmdline(pid)
    return found


@pytest.mark.slow  # end to end: a child `voxmill` with its own Ray
def test_kill_9_of_the_driver_leaves_no_ray_process(clips, tmp_path):
    """Ray's dashboard and runtime-env agents outlived a killed driver by over a minute (each
    waits 60 s to report the raylet's death to a GCS that is gone); the watchdog ends them."""
    source = _one_clip(clips, tmp_path)
    log = tmp_path / "driver.log"
    job = tmp_path / "job.yaml"  # the fake ASR backend, its batch held 30 s: the job is still running at the kill
    job.write_text(f"asr: {{backend: '{FAKE_ASR}'}}\n")
    with open(log, "wb") as out:
        driver = subprocess.Popen([str(VOXMILL), "run", "-i", str(source), "-o", str(tmp_path / "out"), "--no-plan",
                                   "-c", str(job)], stdout=out, stderr=subprocess.STDOUT,
                                  env=_env(tmp_path, **{DELAY_ENV: "30"}), start_new_session=True)
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None:
            seen.update(_ray_processes(driver.pid))
            titles = {cmdline(pid) for pid in seen}
            if {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= titles and any(
                    t.startswith(("ray::_AsrWorker", "ray::_prepare", "ray::IDLE")) for t in titles):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no Ray agents seen before the driver ended:\n{log.read_text()[-3000:]}")
        seen.update(_ray_processes(driver.pid))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
        killed_at = time.monotonic()
        left: dict[int, str] = _alive(seen)
        while left and time.monotonic() - killed_at < 60:
            time.sleep(0.5)
            left = _alive(seen)
        assert not left, f"still running {time.monotonic() - killed_at:.0f} s after kill -9: {left}"
        assert time.monotonic() - killed_at < 20
    finally:
        if driver.poll() is None:
            driver.kill()
        kill(seen)
