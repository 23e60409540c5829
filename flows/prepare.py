"""Prefect flow `prepare_corpus`: validate config -> discover -> plan -> run the Ray job -> summarise -> report.

Thin on purpose: each task calls the same engine functions as the CLI.
"""
from __future__ import annotations

from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from pipelines import report
from pipelines.io import storage
from pipelines.job import run_job
from pipelines.plan.planning import LimitExceeded, check_limits, plan_job
from pipelines.preflight import check_model, check_store
from pipelines.progress import ProgressLines
from pipelines.stages.discover import Discover, Discovery, InputError, manifest_hours
from pipelines.state import jobstate
from schemas.config import JobConfig, load_job_config
from schemas.plan import JobPlan
from schemas.settings import ConfigError, describe


def transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only what may pass on a second try. An input that is
    missing or unreadable, a config the job refuses, a bad model, a plan over its limits, or an
    output that cannot be written (disk full, no permission) fails the same way again: it fails
    the flow at once with its own message instead of after minutes of retry delays."""
    err = state.data if isinstance(state.data, BaseException) else None
    if err is None:
        try:
            err = state.result(raise_on_failure=False)
        except Exception as raised:  # noqa: BLE001 - the result itself could not be read back
            err = raised
    return not isinstance(err, PERMANENT)


PERMANENT = (InputError, ValidationError, ValueError, LimitExceeded, jobstate.ConfigChanged,
             storage.OutputError, FileNotFoundError, PermissionError)


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient, cache_policy=NO_CACHE)
def discover_inputs(config: JobConfig) -> Discovery:
    """The input listed once (streamed into the output's `_ledger/`) and its new files' headers read;
    the plan and the run both use it."""
    check_store(config.input, "input", InputError)  # an unreachable store or no credentials: seconds
    discover = Discover(config.discover, exclude=config.output)
    manifest = discover.probe(discover.list(config.input, config.output))
    get_run_logger().info("found %d audio files (%d new), %.3f h new", manifest.num_rows, manifest.new_files,
                          manifest_hours(manifest))
    return manifest


@task(cache_policy=NO_CACHE)
def plan_run(config: JobConfig, manifest: Discovery) -> dict:
    """Estimate before any compute is spent; publish it; stop here if it breaks a limit."""
    storage.ensure_writable(config.output)  # a bad bucket or key fails before calibration runs
    check_model(config.asr)  # calibration runs the model: a bad one fails here, not in a Ray actor
    plan, _ = plan_job(config, manifest.table())
    create_markdown_artifact(markdown=plan_markdown(plan), key="voxmill-plan",
                             description=f"voxmill plan for {config.input}")
    get_run_logger().info("plan: %.0f s wall (%.0f-%.0f), bottleneck %s, cost %.2f", plan.wall_seconds,
                          plan.wall_seconds_low, plan.wall_seconds_high, plan.bottleneck, plan.cost)
    check_limits(config, plan)
    return plan.model_dump(mode="json")


def plan_markdown(plan: JobPlan) -> str:
    lines = ["| stage | workers | audio s/s | hours | utilisation |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {s.name} | {s.workers} | {s.audio_seconds_per_second:.1f} | {s.seconds / 3600:.3f} | "
              f"{s.utilisation:.0%} |" for s in plan.stages]
    lines += ["", "| estimate | value |", "| --- | --- |",
              f"| input hours | {plan.input.audio_seconds / 3600:.3f} ({plan.input.method}) |",
              f"| wall hours | {plan.wall_seconds / 3600:.3f} ({plan.wall_seconds_low / 3600:.3f}-"
              f"{plan.wall_seconds_high / 3600:.3f}) |",
              f"| bottleneck | {plan.bottleneck} |", f"| GPU-hours | {plan.gpu_hours:.2f} |",
              f"| CPU-hours | {plan.cpu_hours:.2f} |", f"| cost | {plan.cost:.2f} |",
              f"| profile | {plan.hardware.name} |"]
    return "\n".join(lines)


@task(retries=1, retry_delay_seconds=[30], retry_condition_fn=transient, cache_policy=NO_CACHE)
def run_units(config: JobConfig, manifest: Discovery, plan: Optional[dict] = None) -> dict:
    """The job, with a progress line (hours, x realtime, ETA) in the run log every
    engine.progress_seconds while it runs: the UI shows it live, not only at the end."""
    planned = plan["wall_seconds"] if plan else None  # the ETA until a unit has finished
    with ProgressLines(get_run_logger().info, config.engine.progress_seconds, planned) as progress:
        return run_job(config, progress=progress, manifest=manifest, plan=plan)


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


@task(cache_policy=NO_CACHE)
def publish_report(output: str) -> Optional[dict]:
    """OUTPUT/report/ (plots, page, sample clips) and its summary as the `voxmill-report` artifact.

    An output with no index yet (every unit failed) has nothing to report: logged, not raised, so
    the flow still fails with the job's own error.
    """
    try:
        summary = report.write_report(output)
    except report.ReportError as err:
        get_run_logger().warning("no report: %s", err)
        return None
    create_markdown_artifact(markdown=report.markdown(summary), key="voxmill-report",
                             description=f"voxmill dataset report for {output}")
    return summary.model_dump(mode="json")


@flow(name="prepare-corpus", log_prints=True)
def prepare_corpus(
    input: Optional[str] = None,
    output: Optional[str] = None,
    config_path: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    plan: bool = True,
    new_version: bool = False,
) -> dict:
    """Audio under `input` -> WebDataset shards, index and rejects under `output`.

    With `plan` (default) the job is estimated first and refused past `plan.max_wall_hours`
    or `plan.max_cost`, before any compute is spent on it. Runs are incremental: on an output
    that already holds units, only files new since then are processed and appended.
    `new_version` writes a job whose settings changed into OUTPUT/vN/ instead of refusing it.
    After the job, OUTPUT/report/ is written and its summary published as `voxmill-report`.
    """
    try:
        config = load_job_config(input, output, config_path, overrides)
    except ValidationError as err:  # one line naming each key in the run's state, not a pydantic dump
        raise ConfigError(f"invalid job config: {describe(err)}") from None
    if new_version:
        config = jobstate.versioned(config)
    manifest = discover_inputs(config)
    estimate = plan_run(config, manifest) if plan else None
    summary = run_units(config, manifest, estimate)
    create_markdown_artifact(markdown=summary_markdown(summary), key="voxmill-summary",
                             description=f"voxmill run into {config.output}")
    publish_report(config.output)
    if not summary["complete"]:
        raise RuntimeError(f"{summary['counts']['units_failed']} units failed; rerun to resume")
    return summary
