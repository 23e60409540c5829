"""How the engine shares GPUs between prep tasks (batched resample) and ASR actors.

This machine has no GPU, so the job test gives a local Ray one *logical* GPU: Ray schedules
exactly as on a GPU node (fractional requests, CUDA_VISIBLE_DEVICES per task), while torch and
CTranslate2, finding no CUDA device, compute on the CPU. A share Ray cannot place would hang.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pipelines.executor.base import resources_for
from pipelines.executor.ray import asr_cpus, gpu_shares
from pipelines.stages.resources import ASR, PREP
from schemas.config import load_job_config


@pytest.mark.parametrize("cpus,gpus", [(16, 1), (64, 8), (4096, 2)])
def test_gpu_shares_fit_on_every_gpu(cpus, gpus):
    config = load_job_config("/in", "/out")
    resources = resources_for(cpus, gpus, config.engine)
    prep, asr = gpu_shares(config, resources)
    per_gpu = -(-resources.prep_workers // gpus)
    assert asr == 1.0 - PREP.gpu_share == 0.75 and 0 < prep
    assert asr + per_gpu * prep <= 1.0 + 1e-9


def test_no_gpu_or_soxr_asks_for_no_prep_gpu():
    config = load_job_config("/in", "/out")
    assert gpu_shares(config, resources_for(2, 0, config.engine)) == (0.0, 0.0)
    cpu_only = load_job_config("/in", "/out", overrides={"audio.resampler": "soxr", "quality.dnsmos_device": "cpu"})
    assert gpu_shares(cpu_only, resources_for(16, 1, cpu_only.engine)) == (0.0, 1.0)
    soxr = load_job_config("/in", "/out", overrides={"audio.resampler": "soxr"})  # DNSMOS still wants the GPU
    assert gpu_shares(soxr, resources_for(16, 1, soxr.engine))[0] > 0


def test_the_split_follows_the_stages_declarations():
    """The executor's requests and the cost model's split both come from `stages/resources.py`."""
    config = load_job_config("/in", "/out")
    assert PREP.uses_gpu(config) and ASR.uses_gpu(config)
    assert not PREP.uses_gpu(load_job_config("/in", "/out", overrides={"audio.resampler": "soxr",
                                                                        "quality.dnsmos_device": "cpu"}))
    assert resources_for(16, 2, config.engine).prep_workers == 16 - 2 * ASR.cpus  # one core per prep task
    cpu_cluster = resources_for(8, 0, config.engine, nodes=2)  # no GPU: an ASR actor per core of each node
    assert (cpu_cluster.asr_actors, cpu_cluster.prep_workers) == (8, 6)  # a node's actors declare 1 core between them
    assert asr_cpus(cpu_cluster) == 0.25 and asr_cpus(resources_for(16, 2, config.engine)) == ASR.cpus
    assert resources_for(64, 0, config.engine).asr_actors == 8  # at most 8 a node: each holds a model


@pytest.mark.slow
def test_a_job_on_a_gpu_shaped_cluster_completes(clips, tmp_path):
    script = textwrap.dedent(f"""
        import json, ray
        from pipelines.job import run_job
        from schemas.config import load_job_config
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
        config = load_job_config({str(clips)!r}, {str(tmp_path / 'out')!r},
                                 overrides={{"engine.unit_minutes": 0.25, "audio.resampler": "torch",
                                            "asr.backend": "tests.fakes:FakeAsr"}})  # scheduling, not ASR
        print(json.dumps(run_job(config)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["complete"] and summary["resources"]["gpus"] == 1
    assert summary["counts"]["units_processed"] >= 3 and summary["counts"]["samples"] >= 5
