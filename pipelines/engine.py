"""The engine: discover, plan units, and stream them through Ray — CPU prep tasks, ASR actors, commits.

Stages overlap across units: while an ASR actor transcribes unit N, CPU workers decode unit N+1
and a commit task writes unit N-1. A bounded number of units is in flight, so memory stays flat
however large the input is.
"""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import pyarrow as pa
import ray

from pipelines import history, jobstate, journal, storage
from pipelines.asr import AsrResult, Transcriber
from pipelines.commit import UnitCommitter
from pipelines.discover import Discover, manifest_hours
from pipelines.journal import AsrJournal, PrepJournal, journal_name, journal_url
from pipelines.lease import OutputLease
from pipelines.ledger import Ledger
from pipelines.preflight import check_model
from pipelines.prepare import Preparer, SourceFile
from pipelines.units import WorkUnit
from pipelines.versions import versions
from schemas.config import AsrConfig, EngineConfig, JobConfig

log = logging.getLogger("voxmill")

ProgressFn = Callable[[float, float, int, int], None]  # done s, total s, units done, units total


@dataclass
class Resources:
    cpus: int
    gpus: int
    prep_workers: int
    asr_actors: int

    @property
    def max_in_flight(self) -> int:
        return self.prep_workers + 2 * self.asr_actors


def connect_ray(config: EngineConfig) -> None:
    """A cluster when `ray_address` or RAY_ADDRESS is set, else a local Ray on this machine.

    Worker processes' own output stays in Ray's session logs (`/tmp/ray/session_latest/logs/`)
    instead of being forwarded to this terminal, where a failing unit's remote tracebacks buried
    the one line that says what went wrong (set VOXMILL_RAY_WORKER_LOGS=1 to forward them). A
    local Ray is watched by `_RAY_WATCHDOG`, which ends it if this process dies without a
    shutdown (kill -9, OOM killer): Ray's dashboard and runtime-env agents would otherwise
    linger for a minute or more, trying to tell the dead head node why.
    """
    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    forward = os.environ.get("VOXMILL_RAY_WORKER_LOGS", "").lower() in ("1", "true", "yes")
    if not address:
        _watch_local_ray()  # before ray.init: a kill during start-up is covered too
    ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING,
             configure_logging=False, ignore_reinit_error=True, log_to_driver=forward)


_RAY_WATCHDOG = r"""
import os, select, signal, sys, time
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
driver, grace = int(sys.argv[1]), float(sys.argv[2])

def stat(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None

def is_ray(pid):
    try:
        line = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return line.startswith("ray::") or "/ray/" in line

def ray_descendants():
    parents = {int(n): st for n in os.listdir("/proc") if n.isdigit() and (st := stat(int(n)))}
    found, frontier = {}, [driver]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in parents.items() if ppid == parent]
        found.update({pid: parents[pid][1] for pid in children})
        frontier += children
    return {pid: start for pid, start in found.items() if pid != os.getpid() and is_ray(pid)}

seen, started = ray_descendants(), time.monotonic()
while True:  # Ray starts its processes in the first seconds: look often then, rarely later
    ready, _, _ = select.select([sys.stdin], [], [], 0.25 if time.monotonic() - started < 60 else 2.0)
    if ready and not os.read(sys.stdin.fileno(), 1):
        break  # the driver is gone: exit, crash or kill -9 (the pipe closes in every case)
    seen.update(ray_descendants())  # merged: a scan racing the driver's death finds nothing
time.sleep(grace)  # a clean shutdown has ended everything by now; a killed driver has not
for pid, start in seen.items():
    if (now := stat(pid)) and now[1] == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""
_watchdog: Optional[subprocess.Popen] = None


def _watch_local_ray(grace_seconds: float = 3.0) -> None:
    """Start the watchdog: a small process in a session of its own holding a pipe from this one.
    When the pipe closes it SIGKILLs the Ray processes this process had started (pid and start
    time recorded, so a reused pid is never touched). Linux only (/proc); a no-op elsewhere."""
    global _watchdog
    if _watchdog is not None and _watchdog.poll() is None or not os.path.isdir("/proc/self"):
        return
    try:
        _watchdog = subprocess.Popen([sys.executable, "-c", _RAY_WATCHDOG, str(os.getpid()), str(grace_seconds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
    except OSError as err:  # the job runs anyway; only the cleanup after a kill -9 is lost
        log.warning("no watchdog for the local Ray (%s): after a kill -9 run `ray stop`", err)


def resources_for(cpus: int, gpus: int, config: EngineConfig, nodes: int = 1) -> Resources:
    """How the engine spreads over a cluster; the estimator models the same split.

    One ASR actor per GPU; without GPUs, one per node using that node's cores.
    """
    asr = config.asr_actors or (gpus if gpus else max(1, nodes))
    prep = config.prep_workers or max(1, cpus - asr)
    return Resources(cpus, gpus, prep, asr)


def plan_resources(config: EngineConfig) -> Resources:
    available = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return resources_for(int(available.get("CPU", 1)), int(available.get("GPU", 0)), config, nodes)


_PREPARERS: dict[str, Preparer] = {}  # this worker process's Preparer, by config


def _preparer(config: JobConfig) -> Preparer:
    """One Preparer per worker process and config. Ray reuses worker processes across tasks, so the
    VAD and DNSMOS sessions, and onnxruntime's slow first call (~1 s), are paid once per worker
    instead of once per unit; calibration's few small units would otherwise overprice prep."""
    key = config.model_dump_json()
    if key not in _PREPARERS:
        _PREPARERS.clear()  # one job per worker at a time: keep no stale models
        _PREPARERS[key] = Preparer(config)
        _PREPARERS[key].setup()
    return _PREPARERS[key]


def _prepare(config: JobConfig, unit: int, files: list[SourceFile], journal: Optional[str] = None):
    audios, prepared = _preparer(config)(unit, files, PrepJournal(journal))
    prepared.node = ray.get_runtime_context().get_node_id()  # where the unit ran: summary "nodes"
    return audios, prepared


class _AsrWorker:
    """Ray actor: loads the model once, then transcribes batches of segments."""

    def __init__(self, config: AsrConfig, cpu_threads: int):
        # Ray pins OMP threads to the actor's CPU request; CTranslate2 needs them told explicitly.
        self.transcriber = Transcriber(config.model_copy(update={"cpu_threads": config.cpu_threads or cpu_threads}))
        self.transcriber.setup()

    def ready(self) -> bool:
        return True

    def transcribe(self, audios, journal: Optional[str] = None) -> tuple[list[AsrResult], float, dict]:
        started, before = time.perf_counter(), Counter(self.transcriber.counts)
        results = self.transcriber(audios, AsrJournal(journal) if journal else None)
        counts = Counter(self.transcriber.counts)
        counts.subtract(before)
        return results, time.perf_counter() - started, dict(counts)


def _commit(config: JobConfig, prepared, transcribed, digest: str) -> dict:
    results, asr_seconds, asr_counts = transcribed
    prepared.stage_seconds["asr"] += asr_seconds
    report = UnitCommitter(config)(prepared, results, digest)
    AsrJournal(journal_url(config.output, prepared.unit, digest)).clear()  # the ledger holds the unit now
    return {**report, "asr_counts": asr_counts, "node": prepared.node}  # asr_counts: what calibration fits


PREP_GPU_SHARE = 0.25  # of each GPU, left to the prep tasks that resample or score DNSMOS on it


def prep_uses_gpu(config: JobConfig) -> bool:
    """Whether a prep task has GPU work: torch resampling, or DNSMOS not pinned to the CPU."""
    scores_on_gpu = config.quality.enabled and config.quality.dnsmos_device != "cpu"
    return config.audio.resampler != "soxr" or scores_on_gpu


def gpu_shares(config: JobConfig, resources: Resources) -> tuple[float, float]:
    """(per prep task, per ASR actor). Ray hides the GPUs from a task that asks for none, so prep
    tasks that resample or score on the GPU ask for a slice; the ASR actor keeps the rest."""
    if not resources.gpus:
        return 0.0, 0.0
    if not prep_uses_gpu(config):
        return 0.0, 1.0
    preps_per_gpu = math.ceil(resources.prep_workers / resources.gpus)
    share = max(1e-4, math.floor(PREP_GPU_SHARE / preps_per_gpu * 1e4) / 1e4)  # Ray's resource precision
    return share, 1.0 - PREP_GPU_SHARE


class _Scheduler:
    """Submits units as prep -> ASR -> commit chains, at most `max_in_flight` at a time."""

    def __init__(self, config: JobConfig, resources: Resources):
        self.config = config
        self.resources = resources
        prep_gpu, asr_gpu = gpu_shares(config, resources)
        self.prepare = ray.remote(_prepare).options(num_cpus=1, num_gpus=prep_gpu, num_returns=2, max_retries=2)
        self.commit = ray.remote(_commit).options(num_cpus=0, max_retries=2)
        actor = ray.remote(_AsrWorker).options(num_cpus=1, num_gpus=asr_gpu, max_restarts=2,
                                               max_task_retries=2, scheduling_strategy="SPREAD")
        threads = max(1, resources.cpus // resources.asr_actors)
        self.actors = [actor.remote(config.asr, threads) for _ in range(resources.asr_actors)]
        self.load = Counter({i: 0 for i in range(len(self.actors))})
        ray.get([a.ready.remote() for a in self.actors])  # model loads count as start-up

    def submit(self, unit: WorkUnit):
        journal = journal_url(self.config.output, unit.index, unit.digest)  # prepared unit and ASR batches
        keep_prep = journal if self.config.engine.journal_prepared else None
        audios, prepared = self.prepare.remote(self.config, unit.index, unit.files, keep_prep)
        slot = min(self.load, key=self.load.__getitem__)
        self.load[slot] += 1
        transcribed = self.actors[slot].transcribe.remote(audios, journal)
        return self.commit.remote(self.config, prepared, transcribed, unit.digest), slot

    def release(self, slot: int) -> None:
        self.load[slot] -= 1

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


@dataclass
class RunResult:
    reports: list[dict]
    failures: list[dict]
    startup_seconds: float  # until every ASR actor had its model loaded
    not_started: int = 0  # units left untouched after the output storage failed


def process_units(config: JobConfig, units: list[WorkUnit], resources: Resources,
                  progress: Optional[ProgressFn] = None, done_seconds: float = 0.0,
                  total_seconds: float = 0.0, lease: Optional[OutputLease] = None) -> RunResult:
    """Run units through Ray. A failed unit is recorded and never stops the others; a lost lease
    (another run took the output over) stops the run before it submits more."""
    clock = time.perf_counter()
    scheduler = _Scheduler(config, resources)
    startup = time.perf_counter() - clock
    queue, running, reports, failures = list(units), {}, [], []
    not_started = 0
    if progress:
        progress(done_seconds, total_seconds, 0, len(units))
    try:
        while queue or running:
            while queue and len(running) < resources.max_in_flight:
                if lease:
                    lease.check()
                unit = queue.pop(0)
                ref, slot = scheduler.submit(unit)
                running[ref] = (unit, slot)
            ready, _ = ray.wait(list(running), num_returns=1)
            unit, slot = running.pop(ready[0])
            scheduler.release(slot)
            try:
                reports.append(ray.get(ready[0]))
            except Exception as err:  # noqa: BLE001 - recorded, the unit stays pending for a rerun
                cause = failure_line(err)
                log.error("unit %d failed: %s", unit.index, cause)  # one line; Ray's remote traceback:
                log.debug("unit %d failure details:\n%s", unit.index, storage.redact(err))  # the log file
                failures.append({"unit": unit.index, "error": cause[:2000]})
                if isinstance(err, storage.OutputError) and queue:
                    # a full disk or a revoked key fails every later unit too: spend nothing on them
                    log.error("output storage is failing: %d units not started; rerun resumes", len(queue))
                    not_started += len(queue)
                    queue.clear()
            done_seconds += unit.seconds
            if progress:
                progress(done_seconds, total_seconds, len(reports) + len(failures), len(units))
    finally:
        scheduler.close()
    return RunResult(reports, failures, startup, not_started)


def failure_line(err: BaseException) -> str:
    """`Type: message` of what failed in a unit, on one line, credentials masked: for a Ray task
    error its cause (e.g. `OutputError: cannot write ...: No space left on device`), not the
    remote traceback Ray wraps around it."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return storage.redact(f"{type(err).__name__}: {lines[0] if lines else ''}")


def run_job(config: JobConfig, progress: Optional[ProgressFn] = None,
            manifest: Optional[pa.Table] = None, plan: Optional[dict] = None, restart: bool = False) -> dict:
    """The whole job; writes OUTPUT/summary.json (with the plan it started from) and returns it.

    The run holds the output's lease throughout (one writer per output). `restart` deletes what
    voxmill wrote there first, only once the input listed and the output proved writable."""
    started_at, clock = datetime.now(timezone.utc), time.perf_counter()
    if manifest is None:
        manifest = Discover(config.discover, exclude=config.output)(config.input)
    discover_seconds = time.perf_counter() - clock
    storage.ensure_writable(config.output)
    with OutputLease(config.output, config.engine.lease_seconds, config.engine.lease_wait_seconds) as lease:
        if restart:
            jobstate.clear(config.output)
        return _run_leased(config, manifest, lease, progress, plan, started_at, clock, discover_seconds)


def _run_leased(config: JobConfig, manifest: pa.Table, lease: OutputLease, progress: Optional[ProgressFn],
                plan: Optional[dict], started_at: datetime, clock: float, discover_seconds: float) -> dict:
    units = jobstate.claim(config, manifest)  # earlier runs' units, then new files as new units
    ledger = Ledger(config.output)
    records = ledger.done()
    finished = {u.index: ledger.lookup(records, u.index, u.digest) for u in units}
    todo = [u for u in units if not finished[u.index]]
    journal.sweep(config.output, {journal_name(u.index, u.digest) for u in todo})
    previous = [r for r in finished.values() if r]
    ray_clock = time.perf_counter()
    check_model(config.asr)  # a bad model fails here with one line, not as an ActorDiedError
    connect_ray(config.engine)
    ray_seconds = time.perf_counter() - ray_clock
    resources = plan_resources(config.engine)
    log.info("%d units (%d already done) on %s", len(units), len(previous), resources)
    total = sum(u.seconds for u in units)
    result = process_units(config, todo, resources, progress,
                           done_seconds=total - sum(u.seconds for u in todo), total_seconds=total, lease=lease)
    summary = build_summary(config, manifest, units, previous, result, resources,
                            started_at, time.perf_counter() - clock, discover_seconds)
    summary["startup_seconds"] = ray_seconds + result.startup_seconds
    if plan is not None:
        summary["plan"] = plan
        summary["history"] = history.record(plan, summary)
        history.append(config.plan.history_path, summary["history"])
    storage.write_json(storage.join(config.output, "summary.json"), summary)
    return summary


def build_summary(config: JobConfig, manifest: pa.Table, units: list[WorkUnit], previous: list[dict],
                  result: RunResult, resources: Resources,
                  started_at: datetime, wall_seconds: float, discover_seconds: float) -> dict:
    reports, failures = result.reports, result.failures
    everything = previous + reports
    stage_seconds = Counter({"discover": discover_seconds})
    for report in reports:
        stage_seconds.update(report["stage_seconds"])
    processed = sum(r["input_seconds"] for r in reports)
    return {
        "voxmill_version": versions()["voxmill"],
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": wall_seconds,
        "complete": not failures,
        "counts": {
            "input_files": manifest.num_rows,
            "units": len(units),
            "units_processed": len(reports),
            "units_resumed": len(previous),
            "units_failed": len(failures),
            "units_not_started": result.not_started,
            "samples": sum(r["samples"] for r in everything),
            "shards": sum(len(r["shards"]) for r in everything),
            "rejects": sum(r["rejects"] for r in everything),
        },
        "reject_reasons": dict(sum((Counter(r["reject_reasons"]) for r in everything), Counter())),
        "manifest_hours": manifest_hours(manifest),
        "input_hours": sum(r["input_seconds"] for r in everything) / 3600,
        "output_hours": sum(r["output_seconds"] for r in everything) / 3600,
        "this_run": {
            "input_hours": processed / 3600,
            "audio_seconds_per_second": processed / wall_seconds if wall_seconds else 0.0,
        },
        "stage_seconds": dict(stage_seconds),
        "asr_counts": dict(sum((Counter(r.get("asr_counts", {})) for r in reports), Counter())),
        "resources": vars(resources),
        "nodes": dict(Counter(r.get("node") for r in reports)),  # units prepared per Ray node, this run
        "failures": failures,
        "config": config.model_dump(mode="json"),
        "versions": versions(),
    }
