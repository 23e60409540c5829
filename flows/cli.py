"""`voxmill` command line: the same engine calls as the Prefect flow, with a rich progress bar."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from pipelines.discover import InputError
from pipelines.engine import run_job
from pipelines.storage import OutputError
from schemas.config import load_job_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Raw speech in, WebDataset shards out.")
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """voxmill: raw speech collections to training-ready WebDataset shards."""


class _HoursColumn(ProgressColumn):
    """Audio hours done / total and throughput as a multiple of real time."""

    def render(self, task: Task) -> Text:
        speed = (task.completed / task.elapsed) if task.elapsed else 0.0
        return Text(f"{task.completed / 3600:.3f}/{(task.total or 0) / 3600:.3f} h  {speed:.1f}x realtime")


@app.command()
def run(
    input: Optional[str] = typer.Option(None, "--input", "-i", help="fsspec URL, folder or glob of audio"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="fsspec URL of the output root"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML job file", exists=True),
    sample_rate: Optional[int] = typer.Option(None, help="output sample rate [24000]"),
    model: Optional[str] = typer.Option(None, help="faster-whisper model name or path [bundled tiny.en]"),
    language: Optional[str] = typer.Option(None, help="language code; unset = auto-detect"),
    audio_format: Optional[str] = typer.Option(None, help="flac or wav in the shards [flac]"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout"),
) -> None:
    """Transcribe and shard INPUT into OUTPUT (resumes a run that was stopped)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"audio.sample_rate": sample_rate, "asr.model": model, "asr.language": language,
                 "shards.audio_format": audio_format}
    try:
        job = load_job_config(input, output, str(config) if config else None, overrides)
    except (ValidationError, ValueError) as err:
        console.print(f"[red]invalid job config:[/red] {err}")
        raise typer.Exit(2)
    try:
        summary = _run_with_progress(job)
    except (InputError, OutputError) as err:
        console.print(f"[red]{type(err).__name__}:[/red] {err}")
        raise typer.Exit(2)
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    else:
        _print_summary(summary, job.output)
    if not summary["complete"]:
        raise typer.Exit(1)


def _run_with_progress(job) -> dict:
    columns = [TextColumn("[bold]voxmill"), BarColumn(), _HoursColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("audio", total=None)

        def on_progress(done: float, total: float, units_done: int, units_total: int) -> None:
            bar.update(task, completed=done, total=total or 1)

        return run_job(job, progress=on_progress)


def _print_summary(summary: dict, output: str) -> None:
    counts = summary["counts"]
    table = Table(title=f"voxmill: {output}", show_header=False)
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
    rows += [(f"  FAILED unit {f['unit']}", f["error"][:120]) for f in summary["failures"]]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
