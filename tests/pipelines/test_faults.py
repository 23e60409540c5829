"""Crashes and faults, no mocks: the real `voxmill` command, killed with SIGKILL (the driver, then
Ray workers), against an S3 endpoint that fails requests, and on a disk that fills up or turns
read-only. The claim under test: whatever happens, the output holds only whole files, and a rerun
of the same command ends with exactly what an uninterrupted run writes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

import fsspec
import pyarrow.dataset as ds
import pytest
import s3fs
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from benchmarks.processes import cmdline, descendants, kill, stat
from flows.cli import app
from pipelines.io.keys import segment_key, source_id
from tests.conftest import free_port
from tests.fakes import DELAY_ENV, FAKE_ASR, FAKE_ASR_ENV
from tests.faultproxy import FAULTS, FaultProxy

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and sends POSIX signals"),
              pytest.mark.slow]  # end to end: child `voxmill` runs, each with its own Ray

VOXMILL = Path(sys.executable).with_name("voxmill")  # the console script, as a user runs it
# tests/conftest.py small_units_config: 5+ units, the fake ASR backend (as `finished_job`, the reference);
# a short output lease that a rerun waits for: a killed run's lease stops a rerun until it expires
SMALL_UNITS = (f"engine: {{unit_minutes: 0.25, lease_seconds: 15, lease_wait_seconds: 120}}\n"
               f"asr: {{backend: '{FAKE_ASR}'}}\n")
AUDIO_SUFFIXES = (".flac", ".wav")
T = TypeVar("T")


# ----------------------------------------------------------------------------- processes


def _env(**extra: str) -> dict[str, str]:
    """The test's environment for a child `voxmill`: its own local Ray, never the test's, wide
    lines, so a message is never wrapped in the middle of what a test looks for, and the fake ASR
    backend importable (`tests.fakes`)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "COLUMNS": "500", **FAKE_ASR_ENV, **extra}


def _command(input_url: str, output_url: str, job: Path, *extra: str) -> list[str]:
    return [str(VOXMILL), "run", "--input", input_url, "--output", output_url, "--config", str(job),
            "--no-plan", "--json", *extra]


def _job_file(folder: Path) -> Path:
    job = folder / "job.yaml"
    job.write_text(SMALL_UNITS)
    return job


def _start(command: list[str], log: Path, env: Optional[dict] = None) -> subprocess.Popen:
    """Start `voxmill` in the background: stderr to `log`, stdout (the --json summary) beside it."""
    with open(log, "wb") as err, open(_stdout(log), "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=err, env=env or _env(), start_new_session=True)


def _stdout(log: Path) -> Path:
    return log.with_suffix(".json")


def _run(command: list[str], env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _wait_for(what: str, found: Callable[[], Optional[T]], proc: subprocess.Popen, log: Path,
              timeout: float = 240) -> T:
    """Poll until `found()` gives something; fail if the process ends (or time runs out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"voxmill exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"no {what} within {timeout} s:\n{log.read_text()[-3000:]}")


def _worker(root: int, title: str) -> Optional[int]:
    """The pid of a Ray worker under `root` whose process title starts with `title`."""
    return next((pid for pid in descendants(root) if cmdline(pid).startswith(title)), None)


def _stop(proc: subprocess.Popen, orphans: dict[int, int]) -> None:
    """Leave nothing running: the driver, its Ray, and the processes a killed driver orphaned."""
    if proc.poll() is None:
        orphans = {**orphans, **descendants(proc.pid)}
        proc.kill()
        proc.wait(30)
    kill(orphans)


# ----------------------------------------------------------------------------- outputs


def _samples(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, bytes]:
    """Audio bytes by key over every shard; a key in two shards (or twice in one) fails."""
    samples: dict[str, bytes] = {}
    for shard in sorted(fs.glob(f"{root}/shards/*.tar")):
        with fs.open(shard, "rb") as fh, tarfile.open(fileobj=fh) as tar:
            for member in tar.getmembers():
                key, dot, suffix = member.name.rpartition(".")
                if f".{suffix}" in AUDIO_SUFFIXES:
                    assert key not in samples, f"{key} written twice"
                    samples[key] = tar.extractfile(member).read()
    return samples


def _table(fs: fsspec.AbstractFileSystem, root: str, folder: str) -> list[dict]:
    if not fs.exists(f"{root}/{folder}"):
        return []
    return ds.dataset(f"{root}/{folder}", filesystem=fs, format="parquet").to_table().to_pylist()


def _leftovers(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Scratch files and write probes: hidden or not, none may outlive a finished run."""
    return [p for p in fs.find(root) if ".tmp-" in p or "_probe-" in p]


def _local(path: Path) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.filesystem("file"), str(path)


def _assert_consistent(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Whatever state a failure left: every ledgered unit's files are there and whole, every
    visible shard and table reads, and no key or reject is there twice."""
    samples = _samples(fs, root)
    index = _table(fs, root, "index")
    keys = [row["key"] for row in index]
    assert len(keys) == len(set(keys)) and set(keys) <= set(samples)
    rejects = [tuple(sorted(r.items())) for r in _table(fs, root, "rejects")]
    assert len(rejects) == len(set(rejects))
    for record in fs.glob(f"{root}/_ledger/unit-*.json"):
        report = json.loads(fs.cat_file(record))
        for shard in report["shards"]:
            assert fs.exists(f"{root}/{shard}"), (record, shard)
        assert fs.exists(f"{root}/index/part-{report['unit']:06d}.parquet")
        assert fs.exists(f"{root}/rejects/part-{report['unit']:06d}.parquet")


def _assert_complete(fs: fsspec.AbstractFileSystem, root: str, inputs: set[str]) -> None:
    """A finished output: consistent, nothing left over, every input in exactly one unit."""
    _assert_consistent(fs, root)
    assert not _leftovers(fs, root)
    units_by_source: dict[str, set[int]] = {}
    for row in _table(fs, root, "index") + _table(fs, root, "rejects"):
        units_by_source.setdefault(row["source_uri"], set()).add(row["unit"])
    assert set(units_by_source) == inputs
    assert all(len(units) == 1 for units in units_by_source.values()), units_by_source


def _by_segment(fs: fsspec.AbstractFileSystem, root: str, prefix: str = "") -> dict[str, bytes]:
    """Audio bytes by the key a run reading the inputs at `prefix` (same file names) would write:
    keys hash the input's URI, so this is how a local and an S3 run of the same files compare."""
    samples = _samples(fs, root)
    if not prefix:
        return samples
    rows = _table(fs, root, "index")
    return {segment_key(source_id(f"{prefix}/{Path(r['source_uri']).name}"), r["start"], r["end"]): samples[r["key"]]
            for r in rows}


def _assert_same_output(fs: fsspec.AbstractFileSystem, root: str, ref_fs: fsspec.AbstractFileSystem,
                        ref_root: str, prefix: str = "") -> None:
    """Same keys and the same audio bytes per key, same rejects, as the uninterrupted run
    (`prefix`: where this run's inputs were, when the reference read them elsewhere)."""
    got, want = _samples(fs, root), _by_segment(ref_fs, ref_root, prefix)
    assert set(got) == set(want) and got, sorted(set(got) ^ set(want))
    assert all(got[key] == want[key] for key in want)

    def rejects(f: fsspec.AbstractFileSystem, r: str) -> list[tuple]:
        rows = _table(f, r, "rejects")
        return sorted((Path(x["source_uri"]).name, x["stage"], x["reason"], x["start"], x["end"]) for x in rows)

    assert rejects(fs, root) == rejects(ref_fs, ref_root)


def _inputs(clips: Path, prefix: Optional[str] = None) -> set[str]:
    names = [p.name for p in clips.iterdir() if p.suffix not in {".md", ".jsonl"}]
    return {f"{prefix}/{n}" if prefix else str(clips / n) for n in names}


def _status(output: str) -> tuple[int, dict]:
    """`voxmill status OUTPUT --json`, in process (it only reads the ledger)."""
    result = CliRunner().invoke(app, ["status", output, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def _ledgered(output: Path) -> int:
    return len(list((output / "_ledger").glob("unit-*.json")))


def _summary(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# ----------------------------------------------------------------------------- kill -9


def _kill_workers(driver: subprocess.Popen, log: Path, titles: tuple[str, ...]) -> list[str]:
    """SIGKILL, one after the other, a Ray worker of `driver` running each of `titles`."""
    killed = []
    for title in titles:
        pid = _wait_for(f"a running {title}", lambda: _worker(driver.pid, title), driver, log)
        started = stat(pid)
        if started and kill({pid: started[1]}):
            killed.append(title)
    return killed


def _assert_plan_prices_what_is_left(clips: Path, out: Path, tmp_path: Path, units: int) -> None:
    """`voxmill plan --output` on the killed run's output prices its unfinished units only (no new
    files: the input is unchanged) and writes no listing into it."""
    listings = lambda: set(out.glob("_ledger/discovery-*"))  # noqa: E731
    before = listings()
    done = _run([str(VOXMILL), "plan", "--input", str(clips), "--output", str(out), "--config", str(tmp_path / "job.yaml"),
                 "--set", f"plan.profiles_dir={tmp_path / 'profiles'}", "--set", f"plan.history_path={tmp_path / 'h'}",
                 "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    note = next(n for n in plan["notes"] if "only pending work is priced" in n)
    finished, listed, new, unfinished = map(int, re.search(
        r"(\d+) of (\d+) units done .*\((\d+) new files, (\d+) unfinished units\)", note).groups())
    assert listed == units and new == 0 and unfinished >= 1 and finished + unfinished == units, note
    assert 0 < plan["pending_files"] < len(_inputs(clips)) and plan["input"]["files"] == plan["pending_files"]
    assert listings() == before


def test_kill_9_of_the_driver_then_of_workers_and_the_output_equals_an_uninterrupted_run(
        clips, finished_job, tmp_path):
    """SIGKILL the driver once a unit is ledgered (its Ray may still be dying around the rerun).
    The same command again resumes; during that rerun SIGKILL a CPU worker while it prepares a
    unit and then the ASR actor while it transcribes (Ray retries the task, restarts the actor).
    It ends with the uninterrupted run's keys, bytes and rejects, every input in one unit."""
    reference, _ = finished_job
    out = tmp_path / "out"
    command = _command(str(clips), str(out), _job_file(tmp_path))
    killed_log, rerun_log = tmp_path / "killed.log", tmp_path / "rerun.log"
    driver, rerun = _start(command, killed_log), None
    orphans: dict[int, int] = {}
    try:
        _wait_for("a first ledger record", lambda: _ledgered(out), driver, killed_log)
        orphans = descendants(driver.pid)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
        units = json.loads((out / "_ledger/job.json").read_text())["units"]
        done_before = _ledgered(out)
        assert done_before < units, "the job finished before the kill: nothing was tested"
        assert _status(str(out))[0] == 1  # incomplete
        planted = _plant_leftovers(out)
        _assert_consistent(*_local(out))  # readers skip the hidden scratch files
        _assert_plan_prices_what_is_left(clips, out, tmp_path, units)
        rerun = _start(command, rerun_log, _env(**{DELAY_ENV: "0.5"}))  # an ASR batch lasts long enough to kill
        killed = _kill_workers(rerun, rerun_log, ("ray::_prepare", "ray::_AsrWorker.transcribe"))
        assert rerun.wait(300) == 0, rerun_log.read_text()[-3000:]
    finally:
        _stop(driver, orphans)
        if rerun is not None:
            _stop(rerun, {})
    assert killed == ["ray::_prepare", "ray::_AsrWorker.transcribe"]
    summary = json.loads(_stdout(rerun_log).read_text())
    assert summary["complete"] and summary["counts"]["units_resumed"] >= done_before
    assert summary["counts"]["units_resumed"] + summary["counts"]["units_processed"] == units
    code, state = _status(str(out))
    assert code == 0 and state["complete"] and state["units_done"] == units
    assert not any(path.exists() for path in planted)
    _assert_complete(*_local(out), _inputs(clips))
    _assert_same_output(*_local(out), *_local(Path(reference.output)))


def _plant_leftovers(out: Path) -> list[Path]:
    """What a kill in the middle of a write leaves (the kill above rarely lands in one): half a
    shard and half a Parquet part under their scratch names, and a write probe."""
    planted = [out / "shards" / ".shard-000099.tar.tmp-0dead", out / "_probe-0dead",
               out / "index" / ".part-000099.parquet.tmp-0dead.parquet"]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"PAR1 half written")
    return planted


# ----------------------------------------------------------------------------- object storage


@pytest.fixture(scope="module")
def flaky_s3(clips):
    """moto's S3 on loopback, the clips in `faults-raw/in/`, and a FaultProxy in front of it.

    Tests talk to moto directly (`direct`); voxmill only ever sees the proxy.
    """
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    direct = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True)
    for bucket in ("faults-raw", "faults-out"):
        direct.mkdir(bucket)
    for path in clips.iterdir():
        direct.put_file(str(path), f"faults-raw/in/{path.name}")
    proxy = FaultProxy(port, seed=5).start()
    yield direct, proxy
    proxy.stop()
    server.stop()


def _s3_run(proxy: FaultProxy, tmp_path: Path, name: str, rate: float, kinds: tuple[str, ...] = FAULTS,
            **env: str) -> subprocess.CompletedProcess:
    proxy.rate, proxy.kinds = rate, kinds
    command = _command("s3://faults-raw/in/", f"s3://faults-out/{name}", _job_file(tmp_path))
    try:
        return _run(command, _env(FSSPEC_S3_ENDPOINT_URL=proxy.url, **env))
    finally:
        proxy.rate, proxy.kinds = 0.0, FAULTS


def test_s3_faults_are_retried_and_the_output_matches_a_clean_run(flaky_s3, clips, finished_job, tmp_path):
    """One request in five fails (500, 503, dropped before or after the server acted; a few more
    are only late):
    the job still completes with a clean run's keys and bytes (the clean run is the local one of
    the same clips, its keys rebased on the S3 URIs) and with no partial or stray object."""
    direct, proxy = flaky_s3
    reference, clean = finished_job
    before = proxy.counts.copy()
    faulty = _summary(_s3_run(proxy, tmp_path, "faulty", 0.25))
    injected = {k: n - before[k] for k, n in proxy.counts.items() if n > before[k]}
    assert sum(n for k, n in injected.items() if k not in ("requests", "delay")) >= 10, injected
    assert faulty["complete"] and faulty["counts"] == clean["counts"]
    direct.invalidate_cache()
    _assert_complete(direct, "faults-out/faulty", _inputs(clips, "s3://faults-raw/in"))
    _assert_same_output(direct, "faults-out/faulty", *_local(Path(reference.output)), prefix="s3://faults-raw/in")


def test_s3_down_stops_with_a_clear_error_after_the_retry_budget(flaky_s3, tmp_path):
    """Every request fails: voxmill gives up after its retries with one clear line, no traceback."""
    _, proxy = flaky_s3
    started = time.monotonic()
    failures = tuple(kind for kind in FAULTS if kind != "delay")
    result = _s3_run(proxy, tmp_path, "down", 1.0, failures, AWS_MAX_ATTEMPTS="3")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "injected fault" in result.stderr  # the cause...
    assert "Error: cannot " in result.stderr and "s3://faults-" in result.stderr  # ...and what failed
    assert time.monotonic() - started < 120


# ----------------------------------------------------------------------------- full / read-only disk


def _mount(*args: str) -> subprocess.CompletedProcess:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    return subprocess.run([*sudo, "mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own (root, or passwordless sudo, as on CI runners): the only way to make a
    real disk full or read-only for root, whom chmod does not stop."""
    point = tmp_path / "disk"
    point.mkdir()
    options = f"size=64m,uid={os.getuid()},gid={os.getgid()},mode=0755"
    if shutil.which("mount") is None or (mounted := _mount("-t", "tmpfs", "-o", options, "tmpfs", str(point))).returncode:
        reason = "no mount command" if shutil.which("mount") is None else mounted.stderr.strip()
        pytest.skip(f"cannot mount a tmpfs to fill up or make read-only (needs root or sudo): {reason}")
    yield point
    subprocess.run([*([] if os.geteuid() == 0 else ["sudo", "-n"]), "umount", "-l", str(point)],
                   capture_output=True)


def _remount(point: Path, options: str) -> None:
    result = _mount("-o", f"remount,{options}", str(point))
    assert result.returncode == 0, result.stderr


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_full_then_read_only_disk_fails_clearly_and_a_rerun_completes(clips, finished_job, small_disk, tmp_path):
    """Read-only output: refused before any work. Output disk full mid-run: the run fails with the
    cause on one line and leaves only whole files. After the disk is fixed, a rerun completes."""
    reference, _ = finished_job
    out = small_disk / "out"
    command = _command(str(clips), str(out), _job_file(tmp_path))

    _remount(small_disk, "ro")
    refused = _run(command)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "cannot write to output" in refused.stderr and "Read-only file system" in refused.stderr

    room = _tree_bytes(Path(reference.output)) * 2 // 5  # about two fifths of what the job writes
    _remount(small_disk, f"rw,size={room}")
    full = _run(command)
    assert full.returncode in (1, 2) and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "No space left on device" in full.stderr
    _assert_consistent(*_local(out))
    assert not _leftovers(*_local(out))
    assert _status(str(out))[0] == 1

    _remount(small_disk, "size=64m")
    summary = _summary(_run(command))
    assert summary["complete"] and summary["counts"]["units_resumed"] >= 1
    _assert_complete(*_local(out), _inputs(clips))
    _assert_same_output(*_local(out), *_local(Path(reference.output)))
