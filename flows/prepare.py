"""Prefect flow `prepare_corpus`: validate config -> discover -> run the Ray job -> summarise.

Thin on purpose: each task calls the same engine functions as the CLI.
"""
from __future__ import annotations

from typing import Any, Optional

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.discover import Discover, manifest_hours
from pipelines.engine import run_job
from schemas.config import JobConfig, load_job_config


@task(retries=2, retry_delay_seconds=[10, 60], cache_policy=NO_CACHE)
def discover_inputs(config: JobConfig) -> pa.Table:
    manifest = Discover(config.discover)(config.input)
    get_run_logger().info("found %d audio files, %.3f h", manifest.num_rows, manifest_hours(manifest))
    return manifest


@task(retries=1, retry_delay_seconds=[30], cache_policy=NO_CACHE)
def run_units(config: JobConfig, manifest: pa.Table) -> dict:
    logger = get_run_logger()
    milestones = iter(range(10, 101, 10))
    next_pct = [next(milestones)]

    def report(done: float, total: float, units_done: int, units_total: int) -> None:
        pct = 100 * done / total if total else 100
        while next_pct[0] is not None and pct >= next_pct[0]:
            logger.info("%d%%: %d/%d units, %.3f/%.3f h", next_pct[0], units_done, units_total,
                        done / 3600, total / 3600)
            next_pct[0] = next(milestones, None)

    return run_job(config, progress=report, manifest=manifest)


def summary_markdown(summary: dict) -> str:
    counts = summary["counts"]
    lines = ["| metric | value |", "| --- | --- |"]
    rows = {
        "complete": summary["complete"],
        "input files": counts["input_files"],
        "input hours": f"{summary['input_hours']:.3f}",
        "samples": counts["samples"],
        "output hours": f"{summary['output_hours']:.3f}",
        "shards": counts["shards"],
        "rejects": counts["rejects"],
        "wall seconds": f"{summary['wall_seconds']:.1f}",
        **{f"seconds in {k}": f"{v:.1f}" for k, v in summary["stage_seconds"].items()},
    }
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


@flow(name="prepare-corpus", log_prints=True)
def prepare_corpus(
    input: Optional[str] = None,
    output: Optional[str] = None,
    config_path: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> dict:
    """Audio under `input` -> WebDataset shards, index and rejects under `output`."""
    config = load_job_config(input, output, config_path, overrides)
    manifest = discover_inputs(config)
    summary = run_units(config, manifest)
    create_markdown_artifact(markdown=summary_markdown(summary), key="voxmill-summary",
                             description=f"voxmill run into {config.output}")
    if not summary["complete"]:
        raise RuntimeError(f"{summary['counts']['units_failed']} units failed; rerun to resume")
    return summary
