"""The executor plug-in point: the shared loop (failures, a failing output, a lost lease, progress)
on a stub executor, the registry, and a whole job on another executor named in the config: one
class below plus `engine.executor: tests.pipelines.executor.test_executor:SerialExecutor`, and Ray never imported."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Iterable, Iterator

import pytest

from pipelines.asr.base import build_backend
from pipelines.executor.base import EXECUTORS, executor_class, open_executor, resources_for, run_units
from pipelines.io import storage
from pipelines.records import Resources
from pipelines.stages.commit import UnitCommitter
from pipelines.stages.prepare import Preparer
from pipelines.state.journal import AsrJournal, PrepJournal, journal_url
from pipelines.state.lease import LeaseLost
from pipelines.state.units import WorkUnit
from schemas.config import JobConfig, load_job_config
from tests.fakes import FAKE_ASR, ROOT


class SerialExecutor:
    """Every stage in this process, one unit at a time: an executor is this much."""

    def __init__(self, config: JobConfig):
        self.config = config

    def running(self) -> None:
        return None

    def start(self) -> Resources:
        return resources_for(1, 0, self.config.engine)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[tuple[WorkUnit, object]]:
        preparer, asr = Preparer(self.config), build_backend(self.config.asr)
        preparer.setup()
        asr.setup()
        committer = UnitCommitter(self.config)
        for unit in units:
            journal = journal_url(self.config.output, unit.index, unit.digest)
            try:
                audios, prepared = preparer(unit.index, unit.files,
                                            PrepJournal(journal if self.config.engine.journal_prepared else None))
                clock = time.perf_counter()
                results = asr(audios, AsrJournal(journal))
                prepared.stage_seconds["asr"] += time.perf_counter() - clock
                report = committer(prepared, results, unit.digest)
                AsrJournal(journal).clear()
                yield unit, report
            except Exception as err:  # noqa: BLE001 - the shared loop records it
                yield unit, err


class _Stub:
    """Schedules nothing: each unit's outcome is given; records what it was asked to run."""

    def __init__(self, outcomes: dict[int, object], in_flight: int = 1):
        self.outcomes, self.in_flight, self.taken, self.closed = outcomes, in_flight, [], False

    def run(self, units):
        pending, running = iter(units), []
        try:
            while True:
                while len(running) < self.in_flight and (unit := next(pending, None)) is not None:
                    self.taken.append(unit.index)
                    running.append(unit)
                if not running:
                    return
                unit = running.pop(0)
                yield unit, self.outcomes.get(unit.index, {"unit": unit.index})
        finally:
            self.closed = True


def _units(n: int) -> list[WorkUnit]:
    return [WorkUnit(i, []) for i in range(n)]


def test_the_shared_loop_records_failures_and_stops_submitting_when_the_output_fails():
    seen = []
    stub = _Stub({1: ValueError("bad audio\nmore"), 2: storage.OutputError("cannot write x: disk full")}, in_flight=2)
    result = run_units(stub, _units(6), progress=lambda *a: seen.append(a), total_seconds=0.0)
    assert [r["unit"] for r in result.reports] == [0, 3]  # 3 was in flight when 2 failed
    assert result.failures == [{"unit": 1, "error": "ValueError: bad audio"},
                               {"unit": 2, "error": "OutputError: cannot write x: disk full"}]
    assert stub.taken == [0, 1, 2, 3] and result.not_started == 2 and stub.closed
    assert seen[0][2:] == (0, 6) and seen[-1][2:] == (4, 6)


def test_a_lost_lease_ends_the_run_and_releases_the_workers():
    class Lease:
        checks = 0

        def check(self):
            Lease.checks += 1
            if Lease.checks == 3:
                raise LeaseLost("taken over")

    stub = _Stub({})
    with pytest.raises(LeaseLost):
        run_units(stub, _units(5), lease=Lease())
    assert stub.taken == [0, 1] and stub.closed


def test_executors_are_named_in_the_config():
    assert EXECUTORS["ray"] == "pipelines.executor.ray:RayExecutor"
    assert executor_class("tests.pipelines.executor.test_executor:SerialExecutor") is SerialExecutor
    config = load_job_config("/in", "/out", overrides={"engine.executor": "tests.pipelines.executor.test_executor:SerialExecutor"})
    assert isinstance(open_executor(config), SerialExecutor)
    with pytest.raises(ValueError, match="engine.executor 'dask': not one of ray"):
        executor_class("dask")
    with pytest.raises(ValueError, match="cannot import"):
        executor_class("tests.pipelines.executor.test_executor:Nope")


def test_a_job_on_another_executor_never_imports_ray(clips, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from pipelines.job import run_job
        from schemas.config import load_job_config
        config = load_job_config({str(clips)!r}, {str(tmp_path / 'out')!r}, overrides={{
            "engine.unit_minutes": 0.25, "asr.backend": {FAKE_ASR!r},
            "engine.executor": "tests.pipelines.executor.test_executor:SerialExecutor"}})
        summary = run_job(config)
        print(json.dumps({{"ray": "ray" in sys.modules, "summary": summary}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    summary = got["summary"]
    assert not got["ray"]
    assert summary["complete"] and summary["counts"]["units_processed"] >= 3 and summary["counts"]["samples"] >= 5
    assert summary["resources"] == {"cpus": 1, "gpus": 0, "prep_workers": 1, "asr_actors": 1, "nodes": 1}
