"""The Ray executor: stream work units through Ray — CPU prep tasks, ASR actors, commits.

Stages overlap across units and within them: a unit is prepared in parts of about PART_SECONDS of
audio, and the ASR actor transcribes each part as soon as it is cut, while CPU workers cut (and
score) the next part or unit and a commit task writes the unit before. A bounded number of units
is in flight, so memory stays flat however large the input is. The loop around the run (lease, failures, progress) is
`executor.base.run_units`; this is the only module that imports Ray.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Iterable, Iterator, Optional

import ray

from pipelines.asr.base import build_backend
from pipelines.executor.base import Outcome, resources_for
from pipelines.io import storage
from pipelines.records import AsrResult, PreparedUnit, Resources, SourceFile
from pipelines.stages.commit import UnitCommitter
from pipelines.stages.prepare import Preparer
from pipelines.stages.resources import ASR, COMMIT, PREP
from pipelines.state.journal import AsrJournal, PrepJournal, journal_url
from pipelines.state.units import PART_SECONDS, WorkUnit, part_shares
from schemas.config import AsrConfig, EngineConfig, JobConfig

log = logging.getLogger("voxmill")


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
    with _token_notice_to_log(local=address in (None, "", "local")):  # "local": a new private one
        ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=False, ignore_reinit_error=True, log_to_driver=forward)


_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"  # Ray's words (2.60)


@contextlib.contextmanager
def _token_notice_to_log(local: bool) -> Iterator[None]:
    """A new local Ray turns token authentication on and says so in a WARNING on every run (on the
    terminal, through logging's last resort). For the local Ray voxmill starts itself that says
    nothing a user must act on: the notice goes to the log file instead. A cluster's stays as is."""
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def to_log(record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(_TOKEN_NOTICE):
            return True
        log.info("local Ray: %s", record.getMessage())
        return False

    if local:
        notices.addFilter(to_log)
    try:
        yield
    finally:
        notices.removeFilter(to_log)


_RAY_WATCHDOG = r"""
import os, re, select, signal, sys, time
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
driver, grace = int(sys.argv[1]), float(sys.argv[2])

def stat(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19]), fields[0]
    except (OSError, IndexError, ValueError):
        return None

def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""

def is_ray(pid):
    line = cmdline(pid)
    return line.startswith("ray::") or "/ray/" in line

def ray_descendants(roots):
    parents = {int(n): st for n in os.listdir("/proc") if n.isdigit() and (st := stat(int(n)))}
    found, frontier = {}, list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, *_) in parents.items() if ppid == parent]
        found.update({pid: parents[pid][1] for pid in children})
        frontier += children
    return {pid: start for pid, start in found.items() if pid != os.getpid() and is_ray(pid)}

def alive(pid, start):
    return bool(now := stat(pid)) and now[1] == start and now[2] != "Z"

driver_start = (stat(driver) or (0, -1, "Z"))[1]  # -1: gone before this started
seen, started = ray_descendants([driver]), time.monotonic()
while True:  # Ray starts its processes in the first seconds: look often then, rarely later
    ready, _, _ = select.select([sys.stdin], [], [], 0.25 if time.monotonic() - started < 60 else 2.0)
    if ready and not os.read(sys.stdin.fileno(), 1) or not alive(driver, driver_start):
        break  # the driver is gone: exit, crash or kill -9 (the pipe closes, unless a process forked
        # from the driver still holds it: so the driver's own /proc entry is watched too)
    seen.update(ray_descendants([driver]))  # merged: a scan racing the driver's death finds nothing
time.sleep(grace)  # a clean shutdown has ended everything by now; a killed driver has not
# workers the raylet forked just before the driver died: orphaned before any scan saw them, they
# would wait out their own timeout on the dead raylet (~25 s). The local session's folder is named
# after the driver's pid, and every worker's command line names it.
session = re.compile(r"/session_[^/\s]*_%d(/|\s|$)" % driver)
for pid in (int(n) for n in os.listdir("/proc") if n.isdigit()):
    if pid not in seen and (st := stat(pid)) and is_ray(pid) and session.search(cmdline(pid)):
        seen[pid] = st[1]
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


def _warm(config: JobConfig) -> None:
    """Builds this worker's Preparer (~2 s of model sessions and first calls) and writes a prep journal
    once (its first write pays lazy imports), while the ASR models load: a small job does not pay
    them one after the other, and calibration's small units do not price them as prep. Later prep
    tasks reuse the worker."""
    _preparer(config)
    with tempfile.TemporaryDirectory(prefix="voxmill-warm-") as scratch:
        PrepJournal(scratch).put_segmented([], PreparedUnit(0))


class _AsrWorker:
    """Ray actor: builds the `asr.backend` and loads its model once, then transcribes batches of segments."""

    def __init__(self, config: AsrConfig, cpu_threads: int):
        # Ray pins OMP threads to the actor's CPU request; CTranslate2 needs them told explicitly.
        self.transcriber = build_backend(config, cpu_threads)
        self.transcriber.setup()

    def ready(self) -> bool:
        return True

    def transcribe(self, audios, journal: Optional[str] = None, share: tuple[int, int] = (0, 1)
                   ) -> tuple[list[AsrResult], float, dict]:
        """`share` (i, k): the i-th of k runs of consecutive segments (see `part_shares`)."""
        started, before = time.perf_counter(), Counter(self.transcriber.counts)
        index, count = share
        audios = audios[index * len(audios) // count:(index + 1) * len(audios) // count]
        results = self.transcriber(audios, AsrJournal(journal) if journal else None)
        counts = Counter(self.transcriber.counts)
        counts.subtract(before)
        return results, time.perf_counter() - started, dict(counts)


def unit_parts(files: list[SourceFile], seconds: Optional[float] = None) -> list[list[SourceFile]]:
    """A unit's files in order, cut into runs of about `seconds` (PART_SECONDS) of audio (a longer file is a part
    alone). Each part is prepared by its own task and transcribed as soon as it is, so ASR starts
    on a unit's first minutes while the rest is still being cut and scored; the cut depends on the
    files alone, so a rerun journals and batches the same parts."""
    seconds = seconds or PART_SECONDS
    parts: list[list[SourceFile]] = [[]]
    total = 0.0
    for source in files:
        length = source.planned_seconds
        if parts[-1] and total + length > seconds:
            parts.append([])
            total = 0.0
        parts[-1].append(source)
        total += length
    return parts


def _merged(parts: list[PreparedUnit]) -> PreparedUnit:
    """One unit from its prepared parts, in order (segments line up with the parts' ASR results)."""
    unit = parts[0]
    for part in parts[1:]:
        unit.segments += part.segments
        unit.rejects += part.rejects
        unit.input_seconds += part.input_seconds
        unit.references.update(part.references)
        for stage, spent in part.stage_seconds.items():
            unit.stage_seconds[stage] = unit.stage_seconds.get(stage, 0.0) + spent
    return unit


def _commit(config: JobConfig, digest: str, count: int, *parts) -> dict:
    """`parts`: the unit's `count` prepared parts, then their ASR results in segment order (each
    part's shares one after another: `part_shares`)."""
    prepared = _merged(list(parts[:count]))
    results, asr_counts = [], Counter()
    for part_results, asr_seconds, counts in parts[count:]:
        results += part_results
        asr_counts.update(counts)
        prepared.stage_seconds["asr"] = prepared.stage_seconds.get("asr", 0.0) + asr_seconds
    report = UnitCommitter(config)(prepared, results, digest)
    AsrJournal(journal_url(config.output, prepared.unit, digest)).clear()  # the ledger holds the unit now
    return {**report, "asr_counts": dict(asr_counts), "node": prepared.node}  # asr_counts: what calibration fits


def gpu_shares(config: JobConfig, resources: Resources) -> tuple[float, float]:
    """(per prep task, per ASR actor), from the stages' declared shares (`stages/resources.py`).
    Ray hides the GPUs from a task that asks for none, so prep tasks with GPU work (resampling,
    DNSMOS) share their declared slice of each GPU; the ASR actor keeps the rest."""
    if not resources.gpus:
        return 0.0, 0.0
    if not PREP.uses_gpu(config):
        return 0.0, ASR.gpu_share
    preps_per_gpu = math.ceil(resources.prep_workers / resources.gpus)
    share = max(1e-4, math.floor(PREP.gpu_share / preps_per_gpu * 1e4) / 1e4)  # Ray's resource precision
    return share, ASR.gpu_share - PREP.gpu_share


def asr_cpus(resources: Resources) -> float:
    """The cores each ASR actor asks Ray for. On a GPU, ASR.cpus. Without one, the actors of a node
    share ASR.cpus between them, and their threads split the node's cores
    (`executor.base.resources_for`). So Ray leaves as many cores to prep tasks as with one actor."""
    if resources.gpus:
        return ASR.cpus
    nodes = max(1, resources.nodes)
    return max(1e-4, math.floor(ASR.cpus * nodes / resources.asr_actors * 1e4) / 1e4)


class _Scheduler:
    """Submits a unit as a prep -> ASR -> commit chain, to the least loaded ASR actor."""

    def __init__(self, config: JobConfig, resources: Resources):
        self.config = config
        self.resources = resources
        prep_gpu, asr_gpu = gpu_shares(config, resources)
        self.prepare = ray.remote(_prepare).options(num_cpus=PREP.cpus, num_gpus=prep_gpu, num_returns=2,
                                                    max_retries=2)
        self.commit = ray.remote(_commit).options(num_cpus=COMMIT.cpus, max_retries=2)
        actor = ray.remote(_AsrWorker).options(num_cpus=asr_cpus(resources), num_gpus=asr_gpu, max_restarts=2,
                                               max_task_retries=2, scheduling_strategy="SPREAD")
        threads = max(1, resources.cpus // resources.asr_actors)
        self.actors = [actor.remote(config.asr, threads) for _ in range(resources.asr_actors)]
        self.load = Counter({i: 0 for i in range(len(self.actors))})  # parts queued or running, per actor
        warm = ray.remote(_warm).options(num_cpus=PREP.cpus, num_gpus=prep_gpu)
        # model loads and the prep workers' set-up count as start-up
        ray.get([a.ready.remote() for a in self.actors] + [warm.remote(config) for _ in range(resources.prep_workers)])

    def submit(self, unit: WorkUnit):
        """The unit's parts (`unit_parts`) as prep tasks, each transcribed as soon as it is prepared by the
        actor with the fewest parts queued (one long unit keeps every actor busy; `part_shares` splits
        the parts of a unit with fewer parts than actors), and one commit of them all. Returns the
        commit and the actors its parts went to."""
        journal = journal_url(self.config.output, unit.index, unit.digest)  # prepared parts and ASR batches
        parts = unit_parts(unit.files)
        shares = part_shares(sum(f.planned_seconds for f in unit.files), len(self.actors))
        prepared, transcribed, slots = [], [], []
        for n, files in enumerate(parts):
            url = storage.join(journal, f"part-{n:04d}")
            keep_prep = url if self.config.engine.journal_prepared else None
            audios, part = self.prepare.remote(self.config, unit.index, files, keep_prep)
            prepared.append(part)
            for share in range(shares):  # in segment order: the commit joins the results as they come
                slot = min(self.load, key=self.load.__getitem__)
                self.load[slot] += 1
                slots.append(slot)
                share_url = url if shares == 1 else f"{url}-asr{share}of{shares}"
                transcribed.append(self.actors[slot].transcribe.remote(audios, share_url, (share, shares)))
        return self.commit.remote(self.config, unit.digest, len(parts), *prepared, *transcribed), slots

    def release(self, slots: list[int]) -> None:
        self.load.subtract(slots)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


class RayExecutor:
    """The `ray` executor (`executor.base.Executor`): a local Ray, or the cluster at
    `engine.ray_address` / RAY_ADDRESS; prep tasks, one ASR actor per GPU (or per core of a CPU node), commit tasks."""

    def __init__(self, config: JobConfig):
        self.config = config
        self.resources: Optional[Resources] = None

    def running(self) -> Optional[Resources]:
        return plan_resources(self.config.engine) if ray.is_initialized() else None

    def start(self) -> Resources:
        connect_ray(self.config.engine)
        self.resources = plan_resources(self.config.engine)
        return self.resources

    def run(self, units: Iterable[WorkUnit]) -> Iterator[tuple[WorkUnit, Outcome]]:
        resources = self.resources or self.start()
        scheduler = _Scheduler(self.config, resources)
        pending, running = iter(units), {}
        try:
            while True:
                while len(running) < resources.max_in_flight and (unit := next(pending, None)) is not None:
                    ref, slots = scheduler.submit(unit)
                    running[ref] = (unit, slots)
                if not running:
                    return
                ready, _ = ray.wait(list(running), num_returns=1)
                unit, slots = running.pop(ready[0])
                scheduler.release(slots)
                try:
                    outcome: Outcome = ray.get(ready[0])
                except Exception as err:  # noqa: BLE001 - the unit's failure, for the shared loop to record
                    outcome = err
                yield unit, outcome
        finally:
            scheduler.close()
