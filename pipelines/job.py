"""The job: discover, claim units, run them on an executor, summarise."""
from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa

from pipelines.executor.base import Executor, ProgressFn, RunResult, open_executor, run_units
from pipelines.io import storage
from pipelines.plan import history
from pipelines.plan.learn import learn_from_run
from pipelines.preflight import check_model
from pipelines.records import Resources
from pipelines.sinks.card import write_card
from pipelines.stages.discover import Discover, Discovery, manifest_hours
from pipelines.stages.references import read_manifest
from pipelines.state import jobstate, journal
from pipelines.state.compaction import compact_if_due
from pipelines.state.journal import journal_name
from pipelines.state.lease import LeaseHeld, OutputLease
from pipelines.state.ledger import Ledger
from pipelines.state.units import WorkUnit
from pipelines.versions import versions
from schemas.config import JobConfig

log = logging.getLogger("voxmill")

def run_job(config: JobConfig, progress: Optional[ProgressFn] = None,
            manifest: Optional[pa.Table | Discovery] = None, plan: Optional[dict] = None,
            restart: bool = False) -> dict:
    """The whole job; writes OUTPUT/summary.json (with the plan it started from) and returns it.

    The run holds the output's lease throughout (one writer per output). `restart` deletes what
    voxmill wrote there first, only once the input listed and the output proved writable."""
    started_at, clock = datetime.now(timezone.utc), time.perf_counter()
    executor = open_executor(config)  # an unknown engine.executor fails here, before any work
    read_manifest(config.discover)  # so does a reference manifest that cannot be read as configured
    storage.ensure_writable(config.output)  # the listing is written there
    discover = Discover(config.discover, exclude=config.output)
    if manifest is None:  # listed once: `voxmill run` hands over the plan's listing
        manifest = discover.list(config.input, config.output)
    discover_seconds = time.perf_counter() - clock
    try:
        return _leased(config, executor, manifest, discover, progress, plan, started_at, clock, discover_seconds,
                       restart)
    except LeaseHeld:
        if isinstance(manifest, Discovery):
            manifest.remove()  # refused: leave nothing behind
        raise


def _leased(config: JobConfig, executor: Executor, manifest: pa.Table | Discovery, discover: Discover,
            progress: Optional[ProgressFn], plan: Optional[dict], started_at: datetime, clock: float,
            discover_seconds: float, restart: bool) -> dict:
    with OutputLease(config.output, config.engine.lease_seconds, config.engine.lease_wait_seconds) as lease:
        if restart:
            jobstate.clear(config.output, keep=manifest.folder if isinstance(manifest, Discovery) else None)
        if isinstance(manifest, Discovery) and not manifest.whole():
            manifest = discover.list(config.input, config.output)  # a run this one waited for swept it
        if isinstance(manifest, Discovery) and (not manifest.probed or (restart and manifest.known)):
            clock_probe = time.perf_counter()
            discover.probe(manifest)  # under the lease: the units it drops are the ones this run keeps
            discover_seconds += time.perf_counter() - clock_probe
        return _run_leased(config, executor, manifest, lease, progress, plan, started_at, clock, discover_seconds)


def _run_leased(config: JobConfig, executor: Executor, manifest: pa.Table, lease: OutputLease,
                progress: Optional[ProgressFn], plan: Optional[dict], started_at: datetime, clock: float,
                discover_seconds: float) -> dict:
    units = jobstate.claim(config, manifest)  # earlier runs' units, then new files as new units
    if isinstance(manifest, Discovery):
        manifest.remove(others=True)  # its files are in units now (and a killed run's headers with them)
    ledger = Ledger(config.output)
    records = ledger.done()
    finished = {u.index: ledger.lookup(records, u.index, u.digest) for u in units}
    todo = [u for u in units if not finished[u.index]]
    journal.sweep(config.output, {journal_name(u.index, u.digest) for u in todo})
    previous = [r for r in finished.values() if r]
    start_clock = time.perf_counter()
    total = sum(u.seconds for u in units)
    if todo:
        check_model(config.asr)  # a bad model fails here with one line, not as an ActorDiedError
        resources = executor.start()
        start_seconds = time.perf_counter() - start_clock
        log.info("%d units (%d already done) on %s", len(units), len(previous), resources)
        result = run_units(executor, todo, progress, done_seconds=total - sum(u.seconds for u in todo),
                           total_seconds=total, lease=lease)
    else:  # nothing left to do: neither Ray nor an ASR actor starts (a no-op rerun takes seconds)
        resources, start_seconds, result = Resources(0, 0, 0, 0), 0.0, RunResult([], [], 0.0)
        log.info("%d units, all done: nothing to run", len(units))
    compact_after_run(config.output, config.engine.compact_min_units)
    summary = build_summary(config, manifest, units, previous, result, resources,
                            started_at, time.perf_counter() - clock, discover_seconds)
    summary["startup_seconds"] = start_seconds + result.startup_seconds
    if plan is not None:
        summary["plan"] = plan
        if history.worth_recording(summary):  # a rerun that processed nothing measured nothing
            summary["history"] = history.record(plan, summary)
            history.append(config.plan.history_path, summary["history"])
            learn_from_run(config, plan, summary)  # the profile's costs move toward what this run measured
    storage.write_json(storage.join(config.output, "summary.json"), summary)
    write_card(config.output, config.shards)  # OUTPUT/README.md: the shards' typed features, for HF datasets
    return summary


def compact_after_run(output: str, min_units: int) -> None:
    """Compact the output once enough units are loose; a failure only leaves it to the next run
    or `voxmill compact` (every unit is committed already)."""
    try:
        compact_if_due(output, min_units)
    except OSError as err:
        log.warning("output not compacted (the next run or `voxmill compact` will): %s", err)


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
            "headers_read": getattr(manifest, "headers_read", manifest.num_rows),  # a rerun reads new files' only
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
            "input_seconds": processed,
            "speech_seconds": sum(r.get("speech_seconds", 0.0) for r in reports),
            "segments": sum(r.get("segments", 0) for r in reports),
            "units": len(reports),
            "audio_seconds_per_second": processed / wall_seconds if wall_seconds else 0.0,
        },
        "stage_seconds": dict(stage_seconds),
        "asr_counts": dict(sum((Counter(r.get("asr_counts", {})) for r in reports), Counter())),
        "resources": vars(resources),
        "nodes": dict(Counter(r.get("node") for r in reports)),  # units prepared per node, this run
        "failures": failures,
        "config": config.model_dump(mode="json"),
        "versions": versions(),
    }
