"""What each stage asks an executor for: its CPUs and GPU share, declared once here.

The executor (`pipelines/executor/`) turns these into its own requests (Ray's `num_cpus`,
`num_gpus`), and the cost model (`executor.base.resources_for`, the estimator) splits a machine's
cores by them, so neither reads the other's numbers (NeMo Curator's
`nemo_curator/stages/resources.py` does this). No stage code is imported here: the cost model
reads the declarations without loading torch or a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from schemas.config import JobConfig


def _never(config: JobConfig) -> bool:
    return False


def _always(config: JobConfig) -> bool:
    return True


@dataclass(frozen=True)
class Needs:
    """One worker of a stage: the cores it is scheduled on and, where the cluster has GPUs, the
    share of one GPU it takes when `gpu_work` says the config gives it GPU work."""

    cpus: float
    gpu_share: float = 0.0
    gpu_work: Callable[[JobConfig], bool] = _never

    def uses_gpu(self, config: JobConfig) -> bool:
        return self.gpu_share > 0 and self.gpu_work(config)


def prep_gpu_work(config: JobConfig) -> bool:
    """Whether a prep task has GPU work: torch resampling, or DNSMOS not pinned to the CPU."""
    scores_on_gpu = config.quality.enabled and config.quality.dnsmos_device != "cpu"
    return config.audio.resampler != "soxr" or scores_on_gpu


# Prep (decode, resample, VAD, scoring: `stages/prepare.py`): one core per task. `gpu_share` is what
# the prep tasks on one GPU take of it together, when they have GPU work (Ray hides the GPUs from
# a task that asks for none); the executor divides it among them.
PREP = Needs(cpus=1, gpu_share=0.25, gpu_work=prep_gpu_work)
# ASR (`asr/`): one actor per GPU, taking the GPU less what its prep tasks take; without GPUs, one
# per node, scheduled on one core (its threads use every core of the node: see the estimator).
ASR = Needs(cpus=1, gpu_share=1.0, gpu_work=_always)
# Commit (`stages/commit.py`): writes files, waits on storage; asks for no core.
COMMIT = Needs(cpus=0)
