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
import pyarrow.parquet as pq

from pipelines.executor.base import open_executor
from pipelines.io import storage
from pipelines.plan import history
from pipelines.plan.calibrate import calibrate, machine_key, measure_data, sample_budget, stratified_sample
from pipelines.plan.estimator import (
    fit_deadline,
    predict,
    resources_for_profile,
    size_from_manifest,
    size_from_sample,
)
from pipelines.preflight import check_store
from pipelines.stages.discover import Discover, InputError
from schemas.config import JobConfig
from schemas.plan import Calibration, InputSize, JobPlan

log = logging.getLogger("voxmill.plan")


class LimitExceeded(RuntimeError):
    """The plan breaks `max_wall_hours` or `max_cost`: stop before any compute is spent."""


def discover_for_plan(config: JobConfig) -> tuple[InputSize, pa.Table, float]:
    """Size the input: every header when it is small enough, else a random sample of headers."""
    clock = time.perf_counter()
    discover = Discover(config.discover, exclude=config.output)
    check_store(config.input, "input", InputError)  # an unreachable store fails in seconds, not minutes
    fs, listed = discover.list_audio(config.input)
    if len(listed) <= config.plan.header_sample_above:
        manifest = discover.manifest(fs, listed)
        return size_from_manifest(manifest), manifest, time.perf_counter() - clock
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(len(listed), config.plan.header_sample_size, replace=False))
    sample = discover.manifest(fs, [listed[i] for i in positions])
    sizes = np.array([item.size for item in listed], dtype=np.int64)
    extensions = np.array([item.path.rsplit(".", 1)[-1].lower() for item in listed])
    size = size_from_sample(sizes, extensions, sample, positions)
    seconds = (time.perf_counter() - clock) * len(listed) / len(positions)  # the run reads every header
    return size, sample, seconds


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


def costs(config: JobConfig, sample_source: pa.Table, input_seconds: float,
          recalibrate: bool = False) -> Calibration:
    """Stage costs: the named profile, else this machine's saved one, else a fresh calibration."""
    sample = stratified_sample(sample_source, sample_budget(config, input_seconds), config.plan.excerpt_seconds)
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
        calibration = calibrate(config, sample)
        save_profile(config, calibration)
        return calibration
    saved = saved or load_profile(config, name)
    data = measure_data(config, sample, saved.data.kept_fraction, saved.data.fallback_fraction)
    return Calibration(hardware=saved.hardware, data=data)


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
             recalibrate: bool = False) -> tuple[JobPlan, Optional[pa.Table]]:
    """The plan, and the full manifest when every header was read (None when sizing sampled them)."""
    if manifest is None:
        size, manifest, discover_seconds = discover_for_plan(config)
    else:
        size, discover_seconds = size_from_manifest(manifest), 0.0
    if size.audio_seconds <= 0:
        raise InputError(f"no readable audio in {config.input}")
    calibration = calibration or costs(config, manifest, size.audio_seconds, recalibrate)
    records = history.read(config.plan.history_path)
    factor, error, runs = history.correction(records, calibration.hardware.name)
    common = dict(ray_running=open_executor(config).running() is not None, discover_seconds=discover_seconds,
                  correction=factor, history_error=error, history_runs=runs)
    if deadline_seconds:
        plan = fit_deadline(config, size, calibration.hardware, calibration.data, deadline_seconds, **common)
        if plan is None:
            raise LimitExceeded(f"no resources up to 4096 GPUs or nodes finish within {deadline_seconds / 3600:.1f} h")
    else:
        resources = resources_for_profile(config, calibration.hardware, cpus, gpus)
        plan = predict(config, size, calibration.hardware, calibration.data, resources, **common)
    return plan, manifest if size.method == "headers" and isinstance(manifest, pa.Table) else None


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

