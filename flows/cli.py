"""`voxmill` command line: the same engine calls as the Prefect flow, with a rich progress bar."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal, Optional, TextIO

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from pipelines import report
from pipelines.io import storage
from pipelines.io.storage import StorageError
from pipelines.job import run_job
from pipelines.plan import history, models
from pipelines.plan.planning import (
    LimitExceeded,
    check_limits,
    load_manifest,
    load_profile,
    manifest_batches,
    parse_duration,
    plan_job,
)
from pipelines.preflight import check_model, check_store
from pipelines.progress import ProgressLines
from pipelines.stages.discover import Discovery, InputError
from pipelines.state import jobstate
from pipelines.state.compaction import compact_output
from pipelines.state.lease import LeaseHeld, LeaseLost, OutputLease
from pipelines.versions import versions
from schemas.config import AsrConfig, AudioConfig, JobConfig, ShardConfig, load_job_config
from schemas.settings import describe, parse_settings


class _App(typer.Typer):
    """The `voxmill` command: an exception no command expected still ends in one line on stderr
    naming the log file that holds its traceback (exit 1), never a traceback on the terminal."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - SystemExit and KeyboardInterrupt pass through
            _print_error(err, prefix="unexpected error: ")
            sys.exit(1)


# Plain help and errors (no rich markup): "[default: flac]" is printed, not read as a style tag,
# and a usage error is one "Error: ..." line that a log or CI keeps whole.
app = _App(add_completion=False, no_args_is_help=True, help="Raw speech in, WebDataset shards out.",
           pretty_exceptions_enable=False, rich_markup_mode=None)
console = Console(stderr=True)
INPUT_OPTION = typer.Option(None, "--input", "-i", metavar="URL", help="fsspec URL, folder or glob of audio")
CONFIG_OPTION = typer.Option(None, "--config", "-c", metavar="PATH",
                             help="YAML job file (every key: deploy/job.example.yaml)")  # load_job_config says what is wrong
SET_OPTION = typer.Option([], "--set", metavar="KEY=VALUE",
                          help="any job config key, e.g. audio.sample_rate=16000, asr.language=null, "
                               "quality.languages='[en, de]' (repeatable; wins over --config, loses to the flags above)")
AudioFormat = ShardConfig.model_fields["audio_format"].annotation  # Literal: the help and errors list its choices
ExportFormat = Literal["lhotse", "nemo"]
LOG_DIR_ENV = "VOXMILL_LOG_DIR"  # where the details of a failure go [~/.cache/voxmill/logs]
KEEP_LOGS = 50  # older voxmill-*.log files there are deleted
WAIT_FOREVER = 7 * 24 * 3600.0  # --wait: seconds to wait for another run's lease


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"voxmill {versions()['voxmill']}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """voxmill: raw speech collections to training-ready WebDataset shards."""


def _default(model: type[BaseModel], field: str, unset: str = "unset") -> str:
    """`[default: X]` of a config field, read from the model, so the help never drifts from it."""
    value = model.model_fields[field].default
    return f"[default: {unset if value is None else value}]"


class _LineColumn(ProgressColumn):
    """The bar's text is the progress line a log gets (hours, units, x realtime of this run's audio,
    elapsed, ETA), recomputed at each refresh: one reckoning for the terminal and for logs."""

    def __init__(self, lines: ProgressLines):
        super().__init__()
        self.lines = lines

    def render(self, task: Task) -> Text:
        return Text((self.lines.line() or "starting the workers").removeprefix("progress: "))


@app.command()
def run(
    input: Optional[str] = INPUT_OPTION,
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="URL", help="fsspec URL of the output root"),
    config: Optional[Path] = CONFIG_OPTION,
    settings: list[str] = SET_OPTION,
    sample_rate: Optional[int] = typer.Option(None, metavar="HZ",
                                              help=f"output sample rate {_default(AudioConfig, 'sample_rate')}"),
    model: Optional[str] = typer.Option(None, metavar="MODEL", help="faster-whisper model name or path "
                                        + _default(AsrConfig, "model", "bundled tiny.en")),
    language: Optional[str] = typer.Option(None, metavar="LANG",
                                           help=f"language code {_default(AsrConfig, 'language', 'auto-detect')}"),
    audio_format: Optional[AudioFormat] = typer.Option(
        None, help=f"audio in the shards {_default(ShardConfig, 'audio_format')}"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
    skip_plan: bool = typer.Option(False, "--no-plan", help="start without estimating first"),
    restart: bool = typer.Option(False, "--restart", help="delete what voxmill wrote in OUTPUT, start over"),
    new_version: bool = typer.Option(False, "--new-version",
                                     help="changed settings: write OUTPUT/v2/ (v3, ...) instead of refusing"),
    wait: bool = typer.Option(False, "--wait", help="another run holds OUTPUT: wait for it instead of refusing"),
) -> None:
    """Transcribe and shard INPUT into OUTPUT (resumes a run that was stopped; a rerun adds new files).

    Prints the plan (wall time, cost) first and refuses to start past max_wall_hours/max_cost.
    """
    _setup_logging()
    overrides = {"audio.sample_rate": sample_rate, "asr.model": model, "asr.language": language,
                 "shards.audio_format": audio_format, "engine.lease_wait_seconds": WAIT_FOREVER if wait else None}
    job = _job_config(input, output, config, overrides, settings)
    stdout = _json_stdout() if json_out else sys.stdout
    try:
        if restart:  # deletes only after the input is listed and the output proved writable (run_job)
            jobstate.check_restartable(job.output)
        elif new_version:
            job = jobstate.versioned(job)
            console.print(f"writing into {escape(storage.redact(job.output))}")
        check_model(job.asr)  # a bad --model fails here, before Ray starts
        check_store(job.input, "input", InputError)  # an unreachable store or no credentials: seconds
        storage.ensure_writable(job.output)  # a bad bucket or key fails before any calibration
        plan, manifest = (None, None) if skip_plan else plan_job(job)
        if plan is not None:
            _print_plan(plan)
            _within_limits(job, plan, manifest)
        summary = _run_with_progress(job, manifest, plan.model_dump(mode="json") if plan else None, restart)
    except (InputError, StorageError, LimitExceeded, jobstate.ConfigChanged, LeaseHeld, LeaseLost) as err:
        _print_error(err)
        raise typer.Exit(2)
    except ValueError as err:  # the plan refuses an input without one readable file
        _print_error(err)
        raise typer.Exit(2)
    if json_out:
        stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        stdout.flush()
    else:
        _print_summary(summary, job.output)
    if not summary["complete"]:
        _print_failures(summary)
        raise typer.Exit(1)


@app.command()
def compact(
    output: str = typer.Argument(..., metavar="OUTPUT", help="fsspec URL of a voxmill output"),
    wait: float = typer.Option(0.0, "--wait", metavar="SECONDS", help="seconds to wait for a run that holds the output"),
) -> None:
    """Fold OUTPUT's per-unit ledger records, index and rejects parts into a few files (runs do it
    themselves past engine.compact_min_units); readers keep working while it runs."""
    try:
        check_store(output, "output")
        if jobstate.read(output) is None:
            raise FileNotFoundError(f"{output} holds no voxmill job (no _ledger/job.json)")
        with OutputLease(output, wait_seconds=wait):  # one writer per output, compaction included
            folded = compact_output(output)
    except (FileNotFoundError, StorageError, ValueError, LeaseHeld) as err:
        _print_error(err)
        raise typer.Exit(2)
    Console().print(f"compacted {escape(storage.redact(output))}: " + ", ".join(f"{n} {k}" for k, n in folded.items()))


@app.command()
def status(
    output: str = typer.Argument(..., metavar="OUTPUT", help="fsspec URL of a voxmill output"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable status on stdout"),
) -> None:
    """Done, pending and rejected units and hours of OUTPUT; exit 0 only when it is complete."""
    try:
        check_store(output, "output")  # an unreachable store: one line in seconds, not minutes of retries
        state = jobstate.status(output)
    except (FileNotFoundError, StorageError, ValueError) as err:
        _print_error(err)
        raise typer.Exit(2)
    except OSError as err:  # another backend's own error (ftp, sftp, http): connection refused, ...
        _print_error(err, message=f"cannot read output {output}: {type(err).__name__}: {err}")
        raise typer.Exit(2)
    if json_out:
        sys.stdout.write(json.dumps(state, indent=2) + "\n")
    else:
        table = Table(title=f"voxmill status: {escape(storage.redact(output))}", show_header=False)
        for key, value in state.items():
            table.add_row(key.replace("_", " "), f"{value:.3f}" if isinstance(value, float) else str(value))
        Console().print(table)
    if not state["complete"]:
        raise typer.Exit(1)


@app.command()
def inspect(
    output: str = typer.Argument(..., metavar="OUTPUT", help="fsspec URL of a voxmill output"),
    json_out: bool = typer.Option(False, "--json", help="the summary as JSON on stdout"),
    no_report: bool = typer.Option(False, "--no-report", help="print only; write nothing into OUTPUT/report/"),
    samples: int = typer.Option(20, metavar="N", help="sample rows (with playable audio) on the report page"),
    rejected: int = typer.Option(20, metavar="N", help="rejected samples (with their reason and audio, where "
                                                       "rejected/ keeps it) on the report page"),
) -> None:
    """Hours kept and dropped (by reason), samples, shards, sources, languages and score percentiles
    of OUTPUT; writes OUTPUT/report/ (plots and a page that plays kept and rejected samples) unless
    --no-report."""
    try:
        check_store(output, "output")
        summary = (report.gather(output, samples, rejected=rejected) if no_report
                   else report.write_report(output, samples, rejected))
    except (report.ReportError, StorageError) as err:
        _print_error(err)
        raise typer.Exit(2)
    if json_out:
        sys.stdout.write(summary.model_dump_json(indent=2) + "\n")
        return
    _print_dataset(summary)


def _print_dataset(summary: report.DatasetSummary) -> None:
    out = Console()
    table = Table(title=f"voxmill inspect: {escape(storage.redact(summary.output))}", show_header=False)
    for name, value in report.overview_rows(summary):
        table.add_row(name, escape(value))
    out.print(table)
    if summary.dropped:
        dropped = Table(title="dropped", show_header=True)
        for column in ("stage: reason", "rows", "hours"):
            dropped.add_column(column)
        for d in summary.dropped:
            dropped.add_row(escape(d.label), str(d.rows), f"{d.hours:.4f}")
        out.print(dropped)
    spread = Table(title="distributions", show_header=True)
    for column in ("metric", "count", "p5", "p50", "p95"):
        spread.add_column(column)
    for name, d, missing in report.distribution_rows(summary):
        spread.add_row(name, *([missing, "", "", ""] if d is None else
                               [str(d.count), *map(report.number, (d.p5, d.p50, d.p95))]))
    out.print(spread)
    if summary.report:
        out.print(f"report: {escape(summary.report)}", soft_wrap=True)


@app.command()
def backfill(
    output: str = typer.Option(..., "--output", "-o", metavar="URL", help="root: each prefix goes to OUTPUT/<its last path part>"),
    prefix: Optional[list[str]] = typer.Option(None, "--prefix", metavar="URL", help="an input prefix (repeatable)"),
    pattern: Optional[str] = typer.Option(None, metavar="URL", help="input URL with {date}, e.g. 's3://b/raw/{date}/'"),
    date_from: Optional[str] = typer.Option(None, "--from", metavar="DATE", help="first date (YYYY-MM-DD) for --pattern"),
    date_to: Optional[str] = typer.Option(None, "--to", metavar="DATE", help="last date (inclusive) for --pattern"),
    config: Optional[Path] = CONFIG_OPTION,
    settings: list[str] = SET_OPTION,
    concurrency: int = typer.Option(1, metavar="N", help="prefixes in flight at once (each is its own flow run)"),
    json_out: bool = typer.Option(False, "--json", help="per-prefix results as JSON on stdout"),
) -> None:
    """Run many prefixes (or days) as Prefect flow runs; a rerun skips the complete ones."""
    _job_config("each prefix", output, config, {}, settings)  # a bad job file or --set: one line now, not N failed runs
    from flows.backfill import backfill_corpus  # Prefect loads only for this command

    _setup_logging()
    stdout = _json_stdout() if json_out else sys.stdout
    try:
        results = backfill_corpus(output=output, prefixes=prefix, pattern=pattern, date_from=date_from,
                                  date_to=date_to, config_path=str(config) if config else None,
                                  overrides=parse_settings(settings) or None, concurrency=concurrency)
    except (ValueError, RuntimeError) as err:
        _print_error(err)
        raise typer.Exit(1)
    if json_out:
        stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        for r in results:
            console.print(f"{escape(r['prefix'])} -> {escape(r['output'])}: "
                          + ("complete, skipped" if r["skipped"] else f"{r['samples']} samples"))


def _json_stdout() -> TextIO:
    """The real stdout, kept for the JSON summary alone; everything else printed to stdout from
    now on (Ray forwards worker and raylet lines there, even after the job) goes to stderr."""
    real = sys.stdout
    sys.stdout = sys.stderr
    return real


def _print_error(err: BaseException, prefix: str = "", message: Optional[str] = None) -> None:
    """The cause as one unwrapped line on stderr, credentials in URLs masked, naming the log file
    that holds the traceback: logs and CI keep the line whole and greppable, and brackets in a URL
    or message are printed, not read as markup."""
    text = " ".join(str(err).split()) if message is None else message
    _FileLog(logging.DEBUG).emit(logging.LogRecord(
        "voxmill.cli", logging.ERROR, __file__, 0, "%s%s: %s", (prefix, type(err).__name__, text),
        (type(err), err, err.__traceback__)))
    label = "" if message is not None else f"{type(err).__name__}: "
    console.print(f"[red]{escape(prefix)}{label}[/red]{escape(storage.redact(text))} "
                  f"[dim](details: {escape(str(log_path()))})[/dim]", soft_wrap=True)


def _job_config(input, output, config, overrides, settings: tuple[str, ...] = ()) -> JobConfig:
    """The job config from --config, then --set, then the named flags; what is wrong with it is one
    line naming each key, never a pydantic dump."""
    try:
        merged = {**parse_settings(settings), **{k: v for k, v in overrides.items() if v is not None}}
        return load_job_config(input, output, str(config) if config else None, merged)
    except ValidationError as err:  # every field on the same line: "asr.beam_size: must be >= 1 (got 0)"
        _print_error(err, "invalid job config: ", describe(err))
        raise typer.Exit(2)
    except ValueError as err:  # the job file (missing, a folder, not YAML) or a --set
        _print_error(err, "invalid job config: ", str(err))
        raise typer.Exit(2)


def log_path() -> Path:
    """This invocation's log file (created on first use): `$VOXMILL_LOG_DIR` or
    `~/.cache/voxmill/logs`, else the temp folder when that cannot be written."""
    global _LOG_PATH
    if _LOG_PATH is None:
        folder = Path(os.environ.get(LOG_DIR_ENV) or "~/.cache/voxmill/logs").expanduser()
        name = f"voxmill-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(folder)
        except OSError:
            folder = Path(tempfile.gettempdir()) / "voxmill-logs"
            folder.mkdir(parents=True, exist_ok=True)
        for old in sorted(folder.glob("voxmill-*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]:
            old.unlink(missing_ok=True)
        _LOG_PATH = folder / name
    return _LOG_PATH


_LOG_PATH: Optional[Path] = None


class _FileLog(logging.Handler):
    """Everything, with tracebacks, credentials masked; the file opens on the first record."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with open(log_path(), "a", encoding="utf-8") as fh:
                fh.write(storage.redact(self.format(record)) + "\n")
        except OSError:
            pass  # the line on stderr still says what failed


class _ConsoleLog(logging.Handler):
    """WARNING and above as one line each (a record's first line, no traceback) on the current
    sys.stderr, which the progress bar redirects so lines print above it."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().strip().splitlines() or [""]
        more = f" (details: {log_path()})" if len(lines) > 1 or record.exc_info else ""
        sys.stderr.write(storage.redact(f"{record.levelname} {record.name}: {lines[0]}{more}") + "\n")


def _setup_logging() -> None:
    """stderr: warnings and errors, one line each. The log file: voxmill's own DEBUG and up and
    everyone's warnings, with tracebacks (Ray workers' output stays in Ray's session logs)."""
    root = logging.getLogger()
    if any(isinstance(h, _ConsoleLog) for h in root.handlers):
        return
    console_log, file_log = _ConsoleLog(logging.WARNING), _FileLog(logging.DEBUG)
    root.addHandler(console_log)
    root.addHandler(file_log)
    root.setLevel(logging.WARNING)
    logging.getLogger("voxmill").setLevel(logging.DEBUG)


@app.command()
def plan(
    input: Optional[str] = INPUT_OPTION,
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="URL", help="price only what a run on this "
                                         "output has left (new files, unfinished units); it is read, not written"),
    config: Optional[Path] = CONFIG_OPTION,
    settings: list[str] = SET_OPTION,
    manifest: Optional[Path] = typer.Option(None, metavar="PATH", help="plan from a saved manifest (Parquet) instead"),
    gpus: Optional[int] = typer.Option(None, metavar="N", help="what-if: GPUs [default: the profiled machine's]"),
    cpus: Optional[int] = typer.Option(None, metavar="N", help="what-if: CPU cores [default: the profiled machine's]"),
    model: Optional[str] = typer.Option(None, metavar="MODEL", help="faster-whisper model name or path; a name "
                                        "with a shipped cost profile (python -m pipelines.plan.models show) is "
                                        "priced without downloading it [default: bundled tiny.en]"),
    deadline: Optional[str] = typer.Option(None, metavar="DURATION", help="smallest resources finishing within, e.g. 24h"),
    profile: Optional[str] = typer.Option(None, metavar="NAME|PATH",
                                          help="hardware profile name or JSON [default: calibrate here]"),
    recalibrate: bool = typer.Option(False, "--recalibrate", help="measure this machine again"),
    history_view: bool = typer.Option(False, "--history", help="show estimate vs actual of past runs"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable plan on stdout"),
) -> None:
    """Estimate wall time, resources and cost of a job before it starts."""
    _setup_logging()
    source = input or (str(manifest) if manifest else None) or ("history-only" if history_view else None)
    job = _job_config(source, output or "plan-only", config,  # --history needs no input, only plan.history_path
                      {"plan.profile": profile, "asr.model": model}, settings)
    if history_view:
        _print_history(history.read(job.plan.history_path))
        return
    try:
        calibration = load_profile(job, profile) if (manifest and profile) else None
        if not models.check_priced(job.asr.model, gpus) and calibration is None:
            check_model(job.asr)  # calibration runs the model: a bad --model fails here first
        table = None
        if manifest:
            table = manifest_batches(str(manifest)) if calibration else load_manifest(str(manifest))
        with tempfile.TemporaryDirectory(prefix="voxmill-plan-") as scratch:  # the listing: not into the output
            planned = job if output else job.model_copy(update={"output": scratch})
            result, _ = plan_job(planned, table, cpus=cpus, gpus=gpus, scratch=scratch,
                                 calibration=calibration, recalibrate=recalibrate,
                                 deadline_seconds=parse_duration(deadline) if deadline else None)
    except (InputError, LimitExceeded, FileNotFoundError, ValueError) as err:
        _print_error(err)
        raise typer.Exit(2)
    if json_out:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        _print_plan(result)


def _within_limits(job, plan, listed) -> None:
    """`check_limits`; a refused run leaves nothing in the output (not even the plan's listing)."""
    try:
        check_limits(job, plan)
    except LimitExceeded:
        if isinstance(listed, Discovery):
            listed.remove()
        raise


def _print_plan(plan) -> None:
    size = plan.input
    hours = f"{size.audio_seconds / 3600:.3f} h"
    if size.method == "sampled":
        hours += f" ({size.audio_seconds_low / 3600:.1f}-{size.audio_seconds_high / 3600:.1f} h, {size.headers_read} headers sampled)"
    table = Table(title="voxmill plan", show_header=True)
    for column in ("stage", "workers", "audio s/s", "hours", "utilisation"):
        table.add_column(column)
    for stage in plan.stages:
        table.add_row(stage.name, str(stage.workers), f"{stage.audio_seconds_per_second:.1f}",
                      f"{stage.seconds / 3600:.3f}", f"{stage.utilisation:.0%}")
    out = Console(stderr=True)
    out.print(f"input: {size.files} files, {size.bytes / 1e9:.2f} GB, {hours}", soft_wrap=True)  # whole lines in a log
    out.print(escape(f"profile: {plan.hardware.name} ({plan.hardware.source}); speech {plan.data.speech_fraction:.0%}"),
              soft_wrap=True)
    out.print(table)
    resources = plan.resources
    out.print(f"[bold]wall time {_hms(plan.wall_seconds)}[/bold] ({_hms(plan.wall_seconds_low)}-"
              f"{_hms(plan.wall_seconds_high)}) on {resources['gpus']} GPU, {resources['cpus']} CPU; "
              f"bottleneck {plan.bottleneck}; {plan.gpu_hours:.2f} GPU-h, {plan.cpu_hours:.2f} CPU-h, "
              f"cost {plan.cost:.2f}; ~{plan.shards} shards, {plan.output_bytes / 1e9:.2f} GB"
              + (f"; history x{plan.correction:.2f} from {plan.history_runs} runs" if plan.history_runs else ""),
              soft_wrap=True)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _print_history(records: list[dict]) -> None:
    table = Table(title="voxmill history: estimate vs actual")
    for column in ("finished", "output", "input h", "predicted", "actual", "error"):
        table.add_column(column)
    for r in records:
        error = r["predicted_wall_seconds"] / r["actual_wall_seconds"] - 1
        table.add_row(r["at"][:19], escape(storage.redact(r["output"])), f"{r['input_hours']:.3f}", _hms(r["predicted_wall_seconds"]),
                      _hms(r["actual_wall_seconds"]), f"{error:+.0%}")
    Console().print(table)


def _run_with_progress(job, manifest=None, plan=None, restart: bool = False) -> dict:
    """A bar on a terminal; elsewhere (RayJob, kubectl logs, nohup, CI) a plain line every
    engine.progress_seconds, which a log keeps and a bar would not draw until the end."""
    planned = plan["wall_seconds"] if plan else None  # the ETA until a unit has finished
    if not console.is_terminal:
        with ProgressLines(_stderr_line, job.engine.progress_seconds, planned) as lines:
            return run_job(job, progress=lines, manifest=manifest, plan=plan, restart=restart)
    lines = ProgressLines(lambda text: None, job.engine.progress_seconds, planned)  # not entered: reckons, writes nothing
    with Progress(TextColumn("[bold]voxmill"), BarColumn(bar_width=24), _LineColumn(lines), console=console) as bar:
        task = bar.add_task("audio", total=None)

        def on_progress(done: float, total: float, units_done: int, units_total: int) -> None:
            lines(done, total, units_done, units_total)
            bar.update(task, completed=done, total=total or 1)

        return run_job(job, progress=on_progress, manifest=manifest, plan=plan, restart=restart)


def _stderr_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()  # a pipe buffers: the line must reach the log now, not at exit


def _print_summary(summary: dict, output: str) -> None:
    counts = summary["counts"]
    table = Table(title=f"voxmill: {escape(storage.redact(output))}", show_header=False)
    rows = [
        ("input files", counts["input_files"]),
        ("input hours", f"{summary['input_hours']:.3f}"),
        ("samples", counts["samples"]),
        ("output hours", f"{summary['output_hours']:.3f}"),
        ("shards", counts["shards"]),
        ("rejects", counts["rejects"]),
        ("wall seconds", f"{summary['wall_seconds']:.1f}"),
        ("speed", f"{summary['this_run']['audio_seconds_per_second']:.1f}x realtime"),
    ]
    rows += [(f"  reject: {reason}", n) for reason, n in sorted(summary["reject_reasons"].items())]
    rows += [(f"  FAILED unit {f['unit']}", error_line(f["error"])[:160]) for f in summary["failures"]]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)


_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def error_line(text: str) -> str:
    """The exception line of a recorded failure: Ray's task errors carry the remote traceback
    first, and a user needs the cause ("OutputError: cannot write ...: No space left on device")."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [m.group(1) + ": " + m.group(2) for m in map(_ERROR_LINE.match, lines) if m]
    return causes[-1] if causes else (lines[0] if lines else text)


def _print_failures(summary: dict) -> None:
    """One clear line on stderr: how many units failed, the first cause, what to do next."""
    failures = summary["failures"]
    first = escape(storage.redact(error_line(failures[0]["error"]))) if failures else "unknown"
    console.print(f"[red]{len(failures)} of {summary['counts']['units']} units failed[/red], first: "
                  f"{first}. Fix the cause and rerun the same command: finished units are kept "
                  f"[dim](details: {escape(str(log_path()))})[/dim]", soft_wrap=True)


@app.command()
def refilter(
    output: str = typer.Argument(..., metavar="OUTPUT", help="fsspec URL of a voxmill output"),
    settings: list[str] = typer.Option(..., "--set", metavar="KEY=VALUE", help="quality.FIELD=VALUE, e.g. quality.min_dnsmos_ovrl=3.0 "
                                                          "or quality.max_clipping=null (repeatable)"),
    new_output: Optional[str] = typer.Option(None, "--output", "-o", metavar="URL",
                                              help="where to write [default: OUTPUT/v2, v3, ...]"),
    json_out: bool = typer.Option(False, "--json", help="the summary as JSON on stdout"),
) -> None:
    """Apply other quality thresholds to OUTPUT without running ASR again: writes a new output (OUTPUT/vN or
    --output) holding what a run with them would keep and reject; a rerun resumes."""
    from pipelines import refilter as refiltering  # the refilter command (issue 16)

    try:
        summary = refiltering.refilter(output, refiltering.parse_settings(settings), new_output)
    except (refiltering.RefilterError, StorageError, FileNotFoundError, LeaseHeld, LeaseLost) as err:
        console.print(f"[red]refilter refused:[/red] {escape(storage.redact(err))}", soft_wrap=True)
        raise typer.Exit(2)
    source = escape(storage.redact(output))
    target = escape(storage.redact(summary.get("config", {}).get("output", output)))
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    elif summary.get("unchanged"):
        console.print(f"{source} already has these settings: nothing to do", soft_wrap=True)
    else:
        moved, counts = summary["refilter"], summary["counts"]
        table = Table(title=f"voxmill refilter: {source} -> {target}", show_header=False)
        for name, value in (("units refiltered", moved["units_refiltered"]), ("units resumed", moved["units_resumed"]),
                            ("samples", counts["samples"]), ("rejects", counts["rejects"]),
                            ("restored (rejected before, kept now)", moved["restored"]),
                            ("dropped (kept before, rejected now)", moved["dropped"])):
            table.add_row(name, str(value))
        Console().print(table)
        if moved["units_pending_in_source"]:
            console.print(f"{moved['units_pending_in_source']} units of {source} are not finished: run "
                          f"`voxmill run` with the new settings on {target} to add them", soft_wrap=True)


@app.command()
def export(
    output: str = typer.Argument(..., metavar="OUTPUT", help="fsspec URL of a voxmill output"),
    to: ExportFormat = typer.Option(..., "--to", help="lhotse (Lhotse Shar: CutSet.from_shar) or nemo (manifest + audio files)"),
    dest: Optional[str] = typer.Option(None, "--dest", metavar="URL", help="where to write [default: OUTPUT/exports/<to>]"),
    filters: list[str] = typer.Option([], "--filter", metavar="FILTER", help="index filter: 'dnsmos_ovrl >= 3' (repeatable)"),
    drop_duplicates: bool = typer.Option(False, "--drop-duplicates", help="audio copied across units: keep one"),
    json_out: bool = typer.Option(False, "--json", help="what was written, as JSON on stdout"),
) -> None:
    """Export OUTPUT's samples (never its rejects) for Lhotse or NeMo trainers; the audio is copied byte for byte."""
    from pipelines import export as exporting  # the export command (issue 17)

    try:
        check_store(output, "output")
        written = exporting.export(output, to, dest, filters, drop_duplicates)
    except (exporting.ExportError, StorageError, FileNotFoundError, ValueError) as err:
        _print_error(err)
        raise typer.Exit(2)
    if json_out:
        sys.stdout.write(json.dumps(written, indent=2) + "\n")
        return
    console.print(f"exported {written['samples']} samples ({written['seconds'] / 3600:.2f} h) from "
                  f"{written['shards']} shards for {to}: {escape(storage.redact(written['dest']))}", soft_wrap=True)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="voxmill")
