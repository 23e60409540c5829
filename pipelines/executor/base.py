"""The executor plug-in point: an `Executor` Protocol, a dict of executors keyed by `engine.executor`,
and the one loop every executor shares.

An executor only schedules: it starts its compute, then runs each work unit as the chain
prep -> ASR -> commit (`stages/prepare.py`, the `asr.backend`, `stages/commit.py`) on its workers,
sized by the stages' declared needs (`stages/resources.py`), and hands back each unit's commit
report or the exception that failed it. Everything else — the lease check before each unit, the
failure lines, stopping when the output storage fails, progress, the `RunResult` — is `run_units`,
here, the same for every executor (datatrove's `executor/base.py`: one executor-agnostic loop,
subclasses only schedule). No Ray here: `pipelines/executor/ray.py` is the only module that imports
it, and executors are "module:Class" strings imported on first use.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol, Union

from pipelines.io import storage
from pipelines.records import Resources
from pipelines.registry import load_class
from pipelines.stages.resources import ASR, PREP
from pipelines.state.lease import OutputLease
from pipelines.state.units import WorkUnit
from schemas.config import EngineConfig, JobConfig

log = logging.getLogger("voxmill")

EXECUTORS: dict[str, str] = {
    "ray": "pipelines.executor.ray:RayExecutor",
}

ProgressFn = Callable[[float, float, int, int], None]  # done s, total s, units done, units total
Outcome = Union[dict, BaseException]  # a unit's commit report, or what failed it


class Executor(Protocol):
    """Built as `Executor(config: JobConfig)`; cheap: nothing starts before `start`."""

    def running(self) -> Optional[Resources]:
        """What this executor's compute holds when it is already up in this process, else None;
        starts nothing (the plan prices start-up at zero when it is up, and names the machine)."""

    def start(self) -> Resources:
        """Start (or connect to) the compute and say what it holds; its workers start in `run`."""

    def run(self, units: Iterable[WorkUnit]) -> Iterator[tuple[WorkUnit, Outcome]]:
        """Start the workers (ASR models loaded), then take units from `units` one at a time,
        only while fewer than `Resources.max_in_flight` are in flight, and yield each unit with its
        commit report or the exception that failed it, as they finish. A unit's failure never
        stops the others; an exception raised by `units` itself (a lost lease) ends the run. The
        workers are released when the generator ends or is closed."""


def executor_class(name: str) -> type:
    """The class `engine.executor` names: a key of `EXECUTORS` or a "package.module:Class" path."""
    return load_class("engine.executor", name, EXECUTORS)


def open_executor(config: JobConfig) -> Executor:
    """The job's executor (`engine.executor`), not yet started."""
    return executor_class(config.engine.executor)(config)


# Without a GPU, CTranslate2 gains 1.43x from a second thread on one model (benchmarks/RESULTS.md,
# "Peers on CPU"): two one-thread actors transcribe 1.34x the speech of one two-thread actor. So a CPU
# node runs an actor per core, up to this many (each holds its own copy of the model).
CPU_ASR_ACTORS_PER_NODE = 8


def resources_for(cpus: int, gpus: int, config: EngineConfig, nodes: int = 1) -> Resources:
    """How a job spreads over a cluster, by the stages' declared cores; the estimator models the
    same split. One ASR actor per GPU; without GPUs, an actor per core of each node (at most
    CPU_ASR_ACTORS_PER_NODE), sharing the node's cores between their threads; prep tasks on the
    cores left: without GPUs, a node's actors declare ASR.cpus between them (`executor.ray.asr_cpus`)."""
    nodes = max(1, nodes)
    per_node = min(CPU_ASR_ACTORS_PER_NODE, max(1, cpus // nodes))
    asr = config.asr_actors or (gpus if gpus else nodes * per_node)
    asr_cores = asr * ASR.cpus if gpus else nodes * ASR.cpus
    prep = config.prep_workers or max(1, int((cpus - asr_cores) // PREP.cpus))
    return Resources(cpus, gpus, prep, asr, nodes)


@dataclass
class RunResult:
    reports: list[dict]
    failures: list[dict]
    startup_seconds: float  # until every ASR worker had its model loaded
    not_started: int = 0  # units left untouched after the output storage failed


def run_units(executor: Executor, units: list[WorkUnit], progress: Optional[ProgressFn] = None,
              done_seconds: float = 0.0, total_seconds: float = 0.0,
              lease: Optional[OutputLease] = None) -> RunResult:
    """Run `units` on a started executor. A failed unit is recorded and never stops the others; a
    lost lease (another run took the output over) stops the run before it submits more; a failing
    output storage (disk full, key revoked) stops it submitting: every later unit would fail too."""
    clock = time.perf_counter()
    startup: Optional[float] = None
    reports: list[dict] = []
    failures: list[dict] = []
    given = 0
    stop = False

    def feed() -> Iterator[WorkUnit]:
        nonlocal startup, given
        startup = time.perf_counter() - clock  # the executor asks for a unit once its workers are up
        if progress:
            progress(done_seconds, total_seconds, 0, len(units))
        for unit in units:
            if stop:
                return
            if lease:
                lease.check()
            given += 1
            yield unit

    with contextlib.closing(executor.run(feed())) as finished:  # closed: the workers go, whatever happens
        for unit, outcome in finished:
            if isinstance(outcome, BaseException):  # recorded; the unit stays pending for a rerun
                cause = failure_line(outcome)
                log.error("unit %d failed: %s", unit.index, cause)  # one line; the executor's traceback:
                log.debug("unit %d failure details:\n%s", unit.index, storage.redact(outcome))  # the log file
                failures.append({"unit": unit.index, "error": cause[:2000]})
                if isinstance(outcome, storage.OutputError) and given < len(units) and not stop:
                    # a full disk or a revoked key fails every later unit too: spend nothing on them
                    log.error("output storage is failing: %d units not started; rerun resumes", len(units) - given)
                    stop = True
            else:
                reports.append(outcome)
            done_seconds += unit.seconds
            if progress:
                progress(done_seconds, total_seconds, len(reports) + len(failures), len(units))
    return RunResult(reports, failures, startup if startup is not None else time.perf_counter() - clock,
                     len(units) - given)


def failure_line(err: BaseException) -> str:
    """`Type: message` of what failed in a unit, on one line, credentials masked: for an executor's
    wrapper (Ray's task error) its `cause` (e.g. `OutputError: cannot write ...: No space left on
    device`), not the remote traceback wrapped around it."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return storage.redact(f"{type(err).__name__}: {lines[0] if lines else ''}")
