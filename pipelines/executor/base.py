"""What every executor shares: how a job spreads over the machines it is given (no Ray here, so
the cost model can price the same split without importing an executor)."""
from __future__ import annotations

from pipelines.records import Resources
from schemas.config import EngineConfig


def resources_for(cpus: int, gpus: int, config: EngineConfig, nodes: int = 1) -> Resources:
    """How the engine spreads over a cluster; the estimator models the same split.

    One ASR actor per GPU; without GPUs, one per node using that node's cores.
    """
    asr = config.asr_actors or (gpus if gpus else max(1, nodes))
    prep = config.prep_workers or max(1, cpus - asr)
    return Resources(cpus, gpus, prep, asr)
