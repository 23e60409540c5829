"""How `voxmill plan` prices the metrics that cost more than decode and VAD: a metric declares a cost
model by name (schemas/metrics.py `cost`), and the model says how many units of work an input's
segments hold and what one unit costs on this machine. Calibration measures both; the estimator
multiplies them (pipelines/plan/). Today one model, DNSMOS windows, prices the three DNSMOS scores
(one model pass gives all three); the other metrics cost little beside decode and VAD.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from pipelines.metrics.dnsmos import DNSMOS_WINDOW
from pipelines.metrics.scorer import QualityScorer
from schemas.config import QualityConfig
from schemas.metrics import METRICS, Registry

DNSMOS_COST = "dnsmos_window"
PROBE_WINDOWS = 8  # DNSMOS windows per timed batch (~3 s on one core)


@dataclass(frozen=True)
class CostModel:
    units: Callable[[QualityConfig, Sequence[np.ndarray]], int]  # units of work in these 16 kHz segments
    unit_seconds: Callable[[QualityConfig], float]  # one unit on one core, at full batches, alone: measured here


def dnsmos_windows(config: QualityConfig, speech: Sequence[np.ndarray]) -> int:
    """DNSMOS windows in these segments under this config's windowing: scoring's cost follows them."""
    scorer = QualityScorer(config)
    return sum(len(scorer.window_starts(len(audio))) for audio in speech)


def dnsmos_window_seconds(config: QualityConfig) -> float:
    """Seconds one DNSMOS window costs on one core, at full batches, alone: a constant of the machine."""
    scorer = QualityScorer(config)
    scorer.setup()
    batch = np.random.default_rng(0).normal(0.0, 0.05, (PROBE_WINDOWS, DNSMOS_WINDOW)).astype(np.float32)
    scorer.runner(batch)  # this batch shape's first run allocates
    started = time.perf_counter()
    scorer.runner(batch)
    return (time.perf_counter() - started) / PROBE_WINDOWS


COSTS: dict[str, CostModel] = {DNSMOS_COST: CostModel(dnsmos_windows, dnsmos_window_seconds)}


def priced(config: QualityConfig, name: str, registry: Registry = METRICS) -> Optional[CostModel]:
    """Cost model `name` when a metric this config computes declares it (none when scoring is off)."""
    if not config.enabled or not any(m.cost == name for m in registry):
        return None
    return COSTS[name]
