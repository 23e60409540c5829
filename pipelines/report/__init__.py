"""Dataset report: what an output holds, as numbers (`gather`) or as OUTPUT/report/ (`write_report`).

`voxmill inspect` and the Prefect flow both call these. The report folder holds PNG plots, the
shown samples' audio (kept ones under `audio/`, rejected ones under `rejected/`) and an HTML page
that shows both. Every file is committed whole through `storage`; the page goes last, so a page
that exists never points at a missing plot or clip.

- `summary`: reading the tables and the statistics (Arrow compute, each table read once);
- `plots`: the PNGs; `page`: the HTML (a Jinja2 template), the markdown and the CLI rows.
"""
from __future__ import annotations

from pipelines.io import storage
from pipelines.report.page import distribution_rows, markdown, number, overview_rows, page
from pipelines.report.plots import PLOTS, plots, throughput_png
from pipelines.report.summary import (
    SCORE_LABELS,
    DatasetSummary,
    Distribution,
    Drop,
    ReportError,
    SampleRow,
    ThroughputPoint,
    drop_label,
    drops,
    gather,
    gather_with_index,
    pick_rows,
    throughput,
)
from pipelines.state import jobstate
from schemas.metrics import METRICS, Registry

REPORT_FOLDER = "report"
CLIP_FOLDERS = {False: "audio", True: "rejected"}  # under report/: kept samples' and rejected samples' clips
AUDIO_EXTENSIONS = ("flac", "wav")

__all__ = ["AUDIO_EXTENSIONS", "DatasetSummary", "Distribution", "Drop", "PLOTS", "REPORT_FOLDER", "ReportError",
           "SCORE_LABELS", "SampleRow", "ThroughputPoint", "copy_audio", "distribution_rows", "drop_label", "drops",
           "gather", "gather_with_index", "markdown", "number", "overview_rows", "page", "pick_rows", "plots",
           "throughput", "throughput_png", "write_report"]


def copy_audio(output: str, report: str, rows: list[SampleRow]) -> None:
    """Each shown sample's stored audio, byte for byte, to report/audio/KEY.<ext> (a rejected one's
    to report/rejected/), read by the output's sink (the WebDataset sink: one ranged read each)."""
    if not rows:
        return
    sink = jobstate.sink(output)  # the format's own readers load only when clips are copied
    for row in rows:
        members = next(iter(sink.read(row.shard, [row.key])))
        ext = next(e for e in AUDIO_EXTENSIONS if e in members)
        row.audio = f"{CLIP_FOLDERS[row.reason is not None]}/{row.key}.{ext}"
        storage.write_bytes(storage.join(report, row.audio), members[ext])


def _remove_stale_audio(report: str, rows: list[SampleRow]) -> None:
    """Clips of an earlier report that this one no longer shows (an incremental run moved the picks)."""
    keep = {row.audio for row in rows if row.audio}
    for folder in CLIP_FOLDERS.values():
        for url in storage.list_files(storage.join(report, folder)):
            if f"{folder}/{url.rsplit('/', 1)[-1]}" not in keep:  # by name: listings give absolute paths
                fs, path = storage.filesystem(url)
                fs.rm(path)


def write_report(output: str, samples: int = 20, rejected: int = 20, registry: Registry = METRICS) -> DatasetSummary:
    """Gather, plot, copy the shown clips and commit OUTPUT/report/; returns the summary with the
    page's URL. Clips and plots are committed before the page, the page before stale clips go."""
    summary, index = gather_with_index(output, samples, registry, rejected)
    report = storage.join(output, REPORT_FOLDER)
    shown = [*summary.sample_rows, *summary.rejected_rows]
    copy_audio(output, report, shown)
    for name, png in plots(summary, index).items():
        storage.write_bytes(storage.join(report, name), png)
    summary.report = storage.join(report, "index.html")
    storage.write_bytes(storage.join(report, "summary.json"), summary.model_dump_json(indent=2).encode())
    storage.write_bytes(summary.report, page(summary, registry).encode())
    _remove_stale_audio(report, shown)
    return summary
