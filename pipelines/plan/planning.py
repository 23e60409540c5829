"""`voxmill plan`: size the input, get stage costs (saved profile or a fresh calibration), model the job.

The CLI and the Prefect flow both call `plan_job`; `run` calls it before any compute is spent.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.executor.base import open_executor
from pipelines.io import storage
from pipelines.plan import history, models
from pipelines.plan.calibrate import (
    calibrate,
    machine_key,
    measure_data,
    quick_bound,
    sample_budget,
    stratified_sample,
    top_up,
)
from pipelines.plan.estimator import (
    fit_deadline,
    predict,
    resources_for_profile,
    size_from_manifest,
    size_from_sample,
    trusted,
)
from pipelines.plan.load import read_load
from pipelines.preflight import check_store
from pipelines.records import SourceFile
from pipelines.stages.discover import Discover, Discovery, InputError
from pipelines.stages.listing import read_listing
from pipelines.state import jobstate
from pipelines.state.ledger import Ledger
from schemas.config import JobConfig
from schemas.plan import Calibration, DataProfile, InputSize, JobPlan
from schemas.tables import MANIFEST_SCHEMA

log = logging.getLogger("voxmill.plan")


class LimitExceeded(RuntimeError):
    """The plan breaks `max_wall_hours` or `max_cost`: stop before any compute is spent."""


def discover_for_plan(config: JobConfig, scratch: Optional[str] = None) -> tuple[InputSize, pa.Table, float, Discovery]:
    """Size the input: the headers of its new files when it is small enough (the run reuses them),
    else a random sample of headers; the listing is written once, for the run too (into `scratch`
    instead of the output for `voxmill plan`, which only reads the output)."""
    clock = time.perf_counter()
    discover = Discover(config.discover, exclude=config.output)
    check_store(config.input, "input", InputError)  # an unreachable store fails in seconds, not minutes
    discovery = discover.list(config.input, config.output, scratch)
    if discovery.rows <= config.plan.header_sample_above:
        manifest = discover.probe(discovery).table()
        return size_from_manifest(manifest), manifest, time.perf_counter() - clock, discovery
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(discovery.rows, config.plan.header_sample_size, replace=False))
    sample = discover.manifest(discovery.fs, discovery.listed(positions))
    sizes, extensions = _sizes_and_extensions(discovery)
    size = size_from_sample(sizes, extensions, sample, positions)
    seconds = (time.perf_counter() - clock) * discovery.rows / len(positions)  # the run reads every header
    return size, sample, seconds, discovery


def _sizes_and_extensions(discovery: Discovery) -> tuple[np.ndarray, np.ndarray]:
    """Every listed file's size and extension, read from the listing a batch at a time."""
    sizes, extensions = [], []
    for batch in read_listing(discovery.listing, ["path", "size"]):
        sizes.append(batch.column("size").to_numpy(zero_copy_only=False))
        names = pc.utf8_lower(batch.column("path")).to_pylist()
        extensions.append(np.array([p.rsplit(".", 1)[-1] for p in names]))
    return np.concatenate(sizes).astype(np.int64), np.concatenate(extensions)


SIZE_COLUMNS = ["bytes", "container", "sample_rate", "channels", "duration"]


def load_manifest(path: str) -> pa.Table:
    """A saved manifest (Parquet, manifest schema) whose audio exists: calibration needs its uris."""
    return pq.read_table(path)


def manifest_batches(path: str) -> Iterator[pa.RecordBatch]:
    """Only the size columns, batch by batch: a 50k-hour what-if needs no uris and no audio."""
    return pq.ParquetFile(path).iter_batches(batch_size=1 << 20, columns=SIZE_COLUMNS)


def profile_path(config: JobConfig, name: str) -> Path:
    return Path(os.path.expanduser(config.plan.profiles_dir)) / f"{name}.json"


class ProfileError(ValueError):
    """A saved hardware profile cannot be read (torn by a crash, hand-edited, from another version)."""


def load_profile(config: JobConfig, name_or_path: str) -> Calibration:
    path = Path(name_or_path).expanduser() if name_or_path.endswith(".json") else profile_path(config, name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no hardware profile {name_or_path} (looked at {path})")
    try:
        return Calibration.model_validate_json(path.read_bytes())
    except ValueError as err:  # pydantic's ValidationError: one line naming the file
        lines = [re.sub(r"\s*\[type=.*", "", line.strip()) for line in str(err).splitlines()[1:]
                 if line.strip() and not line.strip().startswith("For further")]
        cause = " ".join(lines[:2]) or type(err).__name__
        raise ProfileError(f"hardware profile {path} is unreadable ({cause}); delete it or run "
                           "`voxmill plan --recalibrate`") from err


def save_profile(config: JobConfig, calibration: Calibration) -> Path:
    """Committed whole (scratch file, fsync, rename): a crash never leaves a torn profile."""
    path = profile_path(config, calibration.hardware.name)
    storage.write_bytes(str(path), calibration.model_dump_json(indent=2).encode())
    return path


DATA_SAMPLE_SECONDS = 60.0  # audio a plan without calibration decodes and VADs for the input's speech


def costs(config: JobConfig, sample_source: pa.Table, input_seconds: float, recalibrate: bool = False,
          notes: Optional[list[str]] = None) -> Calibration:
    """Stage costs: the named profile, else this machine's saved one (topped up by a calibration
    when it was measured on too little audio and the input is worth one), else a fresh
    calibration; an input under `plan.calibrate_above_seconds` is never calibrated for: it gets
    the saved profile or a quick bound. What the choice rests on goes into `notes`."""
    notes = [] if notes is None else notes
    worth = recalibrate or input_seconds >= config.plan.calibrate_above_seconds
    budget = sample_budget(config, input_seconds)
    if not worth:  # no calibration to pay for: measure the input's speech (decode + VAD) on more of it
        budget = max(budget, min(DATA_SAMPLE_SECONDS, input_seconds))
    sample = stratified_sample(sample_source, budget, config.plan.excerpt_seconds)
    if not sample:
        raise InputError("no readable audio to calibrate on")
    name = config.plan.profile
    saved = None
    if name is None and not recalibrate:
        path = profile_path(config, machine_key(config, _gpus_here(config)))
        try:
            saved = load_profile(config, str(path)) if path.exists() else None
        except ProfileError as err:  # this machine's own profile, torn: measure again and replace it
            log.warning("%s; calibrating this machine again", err)
    if name is None and saved is None:
        if not worth:
            notes.append(f"small job ({input_seconds:.0f} s of audio, under plan.calibrate_above_seconds "
                         f"{config.plan.calibrate_above_seconds:.0f} s): not calibrated, planned on a quick bound")
            return Calibration(hardware=quick_bound(config, _gpus_here(config)),
                               data=measure_data(config, sample, 1.0))
        calibration = calibrate(config, sample)
        save_profile(config, calibration)
        return calibration
    saved = saved or load_profile(config, name)
    if name is None and not trusted(saved.hardware):
        if worth:
            fresh = calibrate(config, sample)
            topped = top_up(saved.hardware, fresh.hardware)
            save_profile(config, Calibration(hardware=topped, data=fresh.data))
            notes.append(f"profile {topped.name} was measured on too little audio: topped up by a calibration "
                         f"here (now {topped.measured_on_seconds + topped.learned_seconds:.0f} s)")
            return Calibration(hardware=topped, data=fresh.data)
        notes.append(f"small job ({input_seconds:.0f} s of audio): the untrusted profile is used as it is")
    data = measure_data(config, sample, saved.data.kept_fraction, saved.data.fallback_fraction)
    return Calibration(hardware=saved.hardware, data=data)


def pending(config: JobConfig, manifest: pa.Table) -> tuple[pa.Table, Optional[str]]:
    """What a run on `config.output` will process, as a manifest: the files no unit holds yet, and
    the files of units its ledger does not hold as done (a crashed or stopped run's); with a note
    saying so when the output holds units. Read-only: the run claims the units itself."""
    if not isinstance(manifest, pa.Table) or jobstate.read(config.output) is None:
        return manifest, None  # a new output (or `voxmill plan` with none): everything is pending
    units = jobstate.layout(config.output)
    ledger = Ledger(config.output)
    records = ledger.done()
    unfinished = [u for u in units if not ledger.lookup(records, u.index, u.digest)]
    held = {f.id for u in units for f in u.files}
    new = manifest.filter(pc.invert(pc.is_in(manifest.column("id"), pa.array(sorted(held), pa.string()))))
    rows = [_manifest_row(f) for u in unfinished for f in u.files]
    todo = pa.concat_tables([new, pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)]) if rows else new
    note = (f"{len(units) - len(unfinished)} of {len(units)} units done in {config.output}: only pending work "
            f"is priced ({new.num_rows} new files, {len(unfinished)} unfinished units)")
    return todo, note


def _manifest_row(piece: SourceFile) -> dict:
    """A unit's file (or excerpt of one) as a manifest row: enough to size and sample it."""
    return {"id": piece.id, "uri": piece.uri, "bytes": 0, "container": piece.uri.rsplit(".", 1)[-1].lower(),
            "codec": None, "sample_rate": None, "channels": None,
            "duration": piece.limit if piece.limit is not None else piece.duration, "error": None}


def _gpus_here(config: JobConfig) -> int:
    """The GPUs a run would get: those of the executor's compute when it is up, else this machine's."""
    running = open_executor(config).running()
    if running is not None:
        return running.gpus
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def plan_job(config: JobConfig, manifest: Optional[pa.Table | Iterable[pa.RecordBatch]] = None,
             cpus: Optional[int] = None,
             gpus: Optional[int] = None, deadline_seconds: Optional[float] = None,
             calibration: Optional[Calibration] = None,
             recalibrate: bool = False, scratch: Optional[str] = None) -> tuple[JobPlan, Optional[pa.Table]]:
    """The plan, and the full manifest when every header was read (None when sizing sampled them).
    Only what a run on `config.output` has left is priced; `scratch`: where the input's listing goes
    when the output must not be written (`voxmill plan`)."""
    load = read_load()  # the machine before this plan's own work: the run's share of it
    discovery = None
    if manifest is None:
        size, manifest, discover_seconds, discovery = discover_for_plan(config, scratch)
    else:
        size, discover_seconds = size_from_manifest(manifest), 0.0
    notes: list[str] = []
    everything, (todo, note) = manifest, pending(config, manifest)
    if note is not None:
        notes.append(note)
        if todo.num_rows == 0:  # every file listed is in a unit, and every unit is done
            return _nothing_to_do(config, size, load, notes, calibration), discovery or everything
        size, manifest = size_from_manifest(todo), todo
    if size.audio_seconds <= 0:
        raise InputError(f"no readable audio in {config.input}")
    calibration = models.costs_for(  # a shipped model profile prices ASR without the model
        config, lambda: _gpus_here(config) if gpus is None else gpus,
        lambda measured: costs(measured, manifest, size.audio_seconds, recalibrate, notes), given=calibration)
    records = history.read(config.plan.history_path)
    factor, error, runs = history.correction(records, calibration.hardware)
    common = dict(ray_running=open_executor(config).running() is not None, discover_seconds=discover_seconds,
                  correction=factor, history_error=error, history_runs=runs, load=load)
    if deadline_seconds:
        plan = fit_deadline(config, size, calibration.hardware, calibration.data, deadline_seconds, **common)
        if plan is None:
            raise LimitExceeded(f"no resources up to 4096 GPUs or nodes finish within {deadline_seconds / 3600:.1f} h")
    else:
        resources = resources_for_profile(config, calibration.hardware, cpus, gpus)
        plan = predict(config, size, calibration.hardware, calibration.data, resources, **common)
    plan = plan.model_copy(update={"notes": notes + plan.notes,
                                   "pending_files": manifest.num_rows if note is not None else None})
    for note in plan.notes:
        log.warning("plan: %s", note)
    if discovery is not None:
        return plan, discovery  # the run probes what the plan sampled, without listing again
    return plan, everything if size.method == "headers" and isinstance(everything, pa.Table) else None


def _nothing_to_do(config: JobConfig, size: InputSize, load, notes: list[str],
                   calibration: Optional[Calibration]) -> JobPlan:
    """A rerun of a finished output: no unit to process, nothing to calibrate or price."""
    hardware = (calibration.hardware if calibration else quick_bound(config, 0))
    data = calibration.data if calibration else DataProfile(
        speech_fraction=0.0, segments_per_speech_second=0.0, kept_fraction=1.0,
        output_bytes_per_output_second=0.0, sample_seconds=0.0, sample_files=0)
    empty = size.model_copy(update={"files": 0, "bytes": 0, "audio_seconds": 0.0, "audio_seconds_low": 0.0,
                                    "audio_seconds_high": 0.0, "breakdown": {}})
    resources = vars(resources_for_profile(config, hardware, None, None))
    return JobPlan(input=empty, hardware=hardware, data=data, resources=resources, stages=[], bottleneck="none",
                   wall_seconds=0.0, wall_seconds_low=0.0, wall_seconds_high=0.0, gpu_hours=0.0, cpu_hours=0.0,
                   cost=0.0, prices={}, output_bytes=0.0, shards=0, load=load, pending_files=0,
                   notes=notes + ["nothing to do: every unit is done"])


def check_limits(config: JobConfig, plan: JobPlan) -> None:
    hours = plan.wall_seconds / 3600
    if config.plan.max_wall_hours and hours > config.plan.max_wall_hours:
        raise LimitExceeded(f"planned wall time {hours:.2f} h exceeds max_wall_hours {config.plan.max_wall_hours}")
    if config.plan.max_cost and plan.cost > config.plan.max_cost:
        raise LimitExceeded(f"planned cost {plan.cost:.2f} exceeds max_cost {config.plan.max_cost}")


def parse_duration(text: str) -> float:
    """'24h', '90m', '3600s' or '1.5d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)

