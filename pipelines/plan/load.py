"""How busy the machine is: calibration and runs on a shared machine see different shares of it.

A profile measured on a quiet machine prices a run on a busy one too low (and the reverse), so the
profile and every history record keep the load seen when they were measured, and the plan warns
when the run's share of the CPUs differs from the calibration's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from schemas.plan import LoadReading

SHARE_TOLERANCE = 0.25  # relative difference in CPU share that the plan warns about


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


def read_load(own_threads: int = 0) -> LoadReading:
    """The 1-minute load average and the share of the CPUs a job of `cores()` threads would get
    beside it, as a fair scheduler shares them: cores / (cores + others' runnable threads).
    `own_threads`: runnable threads of this job already counted in the load (0 before it starts)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    available = cores()
    others = max(0.0, load - own_threads)
    return LoadReading(load=load, cores=available, cpu_share=available / (available + others))


def differs(calibration: Optional[LoadReading], run: Optional[LoadReading]) -> Optional[float]:
    """The relative change of CPU share from calibration to now, when it is past the tolerance."""
    if calibration is None or run is None:
        return None
    change = run.cpu_share / calibration.cpu_share - 1
    return change if abs(change) > SHARE_TOLERANCE else None
