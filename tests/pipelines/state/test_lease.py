"""One writer per output: the lease refuses a second run, survives nothing after a kill -9 but its
expiry, lets exactly one of two racing runs win on local disk and on a real S3 API, and `voxmill
run` refuses (or waits) in one clear line before any work."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipelines.state.lease import LeaseHeld, OutputLease
from tests.conftest import DEMO, moto_s3
from tests.fakes import ROOT


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path):
    out = str(tmp_path / "out")
    with OutputLease(out, seconds=30):
        with pytest.raises(LeaseHeld, match=r"another voxmill run holds .*out \(host .+, pid \d+, since .+\)"):
            OutputLease(out, seconds=30).acquire()
    with OutputLease(out, seconds=30) as second:  # released: the next run starts at once
        assert second.number == 2
    assert [p.name for p in (tmp_path / "out" / "_ledger").iterdir()] == ["lease-000002.json"]


@pytest.mark.slow  # waits out a lease: ~8 s
def test_a_holder_killed_on_another_machine_blocks_until_its_lease_expires_then_a_waiting_run_takes_over(tmp_path):
    """Another machine's process cannot be looked up: only the heartbeat tells it is gone."""
    out = str(tmp_path / "out")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time; socket.gethostname = lambda: 'another-node'; "
                               "from pipelines.state.lease import OutputLease; "
                               "OutputLease(sys.argv[1], seconds=6).acquire(); print('held', flush=True); time.sleep(600)",
         out], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(2.0)  # past a heartbeat: the lease is alive while the holder is
        with pytest.raises(LeaseHeld):
            OutputLease(out, seconds=6).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        killed = time.monotonic()
        with pytest.raises(LeaseHeld):  # no heartbeat any more, but not yet expired
            OutputLease(out, seconds=6).acquire()
        with OutputLease(out, seconds=6, wait_seconds=30):
            waited = time.monotonic() - killed
        assert 0.5 < waited < 9.0  # at most the lease's length after the last beat
    finally:
        holder.kill()


def test_of_runs_racing_for_a_new_or_a_released_output_exactly_one_wins(tmp_path):
    out = str(tmp_path / "out")
    assert _race(out, runs=8) == (1, 7)
    assert _race(out, runs=8) == (1, 7)  # the winner released it: the next race takes number 2


def _race(out: str, runs: int) -> tuple[int, int]:
    barrier, results, leases = threading.Barrier(runs), [], []

    def attempt() -> None:
        lease = OutputLease(out, seconds=30)
        barrier.wait()
        try:
            lease.acquire()
            leases.append(lease)
            results.append(True)
        except LeaseHeld:
            results.append(False)

    threads = [threading.Thread(target=attempt) for _ in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lease in leases:
        lease.release()
    return results.count(True), results.count(False)


@pytest.fixture(scope="module")
def s3_bucket():
    with moto_s3(skip_instance_cache=True) as fs:
        fs.mkdir("lease-test")
        yield "s3://lease-test"


def test_on_s3_a_conditional_create_lets_exactly_one_run_win(s3_bucket):
    assert _race(f"{s3_bucket}/race", runs=6) == (1, 5)
    with OutputLease(f"{s3_bucket}/seq", seconds=30):
        with pytest.raises(LeaseHeld):
            OutputLease(f"{s3_bucket}/seq", seconds=30).acquire()


def test_voxmill_run_refuses_a_held_output_in_one_line_before_any_work(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(DEMO / "LJ002-0020.wav", source / "clip.wav")
    out = tmp_path / "out"
    with OutputLease(str(out), seconds=60):
        result = CliRunner().invoke(app, ["run", "-i", str(source), "-o", str(out), "--no-plan"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("voxmill ━")]
    assert len(lines) == 1 and lines[0].startswith("LeaseHeld: another voxmill run holds"), result.output
    assert "--wait" in lines[0] and "Traceback" not in result.output
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["lease-000001.json"]  # nothing else written


def test_a_holder_killed_on_this_machine_is_seen_dead_at_once(tmp_path):
    """A rerun right after kill -9 (or after a crash that could not release) on the same machine need
    not wait for the expiry: the holder's process is gone."""
    out = str(tmp_path / "out")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipelines.state.lease import OutputLease; "
                               "OutputLease(sys.argv[1], seconds=600).acquire(); print('held', flush=True); time.sleep(600)",
         out], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld):
            OutputLease(out, seconds=600).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with OutputLease(out, seconds=600) as lease:  # no wait: the expiry is ten minutes away
            assert lease.number == 2
    finally:
        holder.kill()
