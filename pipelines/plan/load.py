"""How busy the machine is: calibration and runs on a shared machine see different shares of it.

A profile measured on a quiet machine prices a run on a busy one too low (and the reverse), so the
profile and every history record keep the load seen when they were measured, and the plan warns
when the run's share of the CPUs differs from the calibration's (and rescales, see
`estimator.load_slowdown`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from schemas.plan import LoadReading

SHARE_TOLERANCE = 0.25  # relative difference in CPU share that the plan warns about
PROBE_SECONDS = 0.3  # how long the share is measured (a busy loop on one thread)
MIN_SHARE = 0.01


def cores() -> float:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota (containers)."""
    try:
        count = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        count = float(os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, float(quota) / float(period))
    except (OSError, ValueError):
        pass
    return max(count, 1e-3)


def read_load(probe_seconds: float = PROBE_SECONDS) -> LoadReading:
    """The 1-minute load average, and the share of a core a thread gets now: a short busy loop's
    CPU time over its wall time (the load average lags by a minute and counts threads waiting
    on disks; this is what a stage's thread is given, measured)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    wall, cpu = 0.0, 0.0
    while wall < probe_seconds:
        started, spent = time.perf_counter(), time.thread_time()
        _spin()
        wall += time.perf_counter() - started
        cpu += time.thread_time() - spent
    return LoadReading(load=load, cores=cores(), cpu_share=min(1.0, max(cpu / wall, MIN_SHARE)))


def _spin(steps: int = 20_000) -> int:
    total = 0
    for i in range(steps):
        total += i * i
    return total


def differs(calibration: Optional[LoadReading], run: Optional[LoadReading]) -> Optional[float]:
    """The relative change of CPU share from calibration to now, when it is past the tolerance."""
    if calibration is None or run is None:
        return None
    change = run.cpu_share / calibration.cpu_share - 1
    return change if abs(change) > SHARE_TOLERANCE else None
