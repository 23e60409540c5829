"""The summary in words: the HTML page (a Jinja2 template, autoescaped), the markdown artifact and the
(name, value) rows the CLI prints too."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional
from urllib.parse import quote

import jinja2

from pipelines.report.plots import PLOTS
from pipelines.report.summary import SAMPLE_SCORES, DatasetSummary, Distribution
from schemas.metrics import METRICS, Registry

STATS = ("metric", "count", "min", "p5", "p50", "mean", "p95", "max")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def number(value: Optional[float]) -> str:
    """Four significant digits: scores span 0.0015 (clipping) to -32.31 (LUFS) in one table."""
    return "–" if value is None else f"{value:.4g}"


def overview_rows(summary: DatasetSummary) -> list[tuple[str, str]]:
    """(name, value) lines shared by the page, the CLI and the markdown artifact."""
    rows = [
        ("samples", str(summary.samples)),
        ("shards", str(summary.shards)),
        ("sources", str(summary.sources)),
        ("units", str(summary.units)),
        ("input hours", _fmt(summary.input_hours, 4)),
        ("kept hours", _fmt(summary.kept_hours, 4)),
        ("dropped hours", f"{summary.dropped_hours:.4f} ({summary.rejects} rejects)"),
        ("trimmed hours (non-speech)", _fmt(summary.trimmed_hours, 4)),
        ("languages", ", ".join(f"{s.language} {s.samples}" for s in summary.languages) or "–"),
        ("speakers", "not labelled (speakers.enabled)" if summary.speakers is None else str(summary.speakers)),
        ("near duplicates", "not checked" if summary.near_duplicates is None else str(summary.near_duplicates)),
        ("exact copies across units", "not checked" if summary.exact_duplicates is None
         else f"{summary.exact_duplicates} (SpeechShards(drop_duplicates=True) skips them)"),
        ("rejects with audio kept", f"{summary.rejected_audio} (in rejected/ shards)"),
    ]
    if summary.wall_seconds is not None:
        rows.append(("last run wall seconds", f"{summary.wall_seconds:.1f}"))
    if summary.complete is not None:
        rows.append(("complete", str(summary.complete).lower()))
    return rows


def distribution_rows(summary: DatasetSummary,
                      registry: Registry = METRICS) -> list[tuple[str, Optional[Distribution], str]]:
    """(label, distribution, what to say when it is None): a score nobody computed is "not scored";
    durations are missing only when there is no sample at all."""
    labels = registry.labels()
    return [("duration (s)", summary.duration, "no samples"),
            *((labels.get(c, c), d, "not scored") for c, d in summary.scores.items())]


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("pipelines.report", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(number=number, url=quote)
    return environment.get_template("page.html.j2")


def page(summary: DatasetSummary, registry: Registry = METRICS) -> str:
    """The self-contained HTML page: every value autoescaped, clips and plots by relative URL."""
    return _template().render(title=f"voxmill report: {summary.output}", summary=summary,
                              overview=overview_rows(summary), distributions=distribution_rows(summary, registry),
                              stats=STATS, plots=PLOTS, sample_scores=SAMPLE_SCORES)


def markdown(summary: DatasetSummary, registry: Registry = METRICS) -> str:
    """The summary as markdown tables, for the Prefect artifact."""
    lines = ["| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in overview_rows(summary))]
    lines += ["", "| dropped: stage: reason | rows | hours |", "| --- | --- | --- |"]
    lines += [f"| {d.label} | {d.rows} | {d.hours:.4f} |" for d in summary.dropped] or ["| nothing dropped | 0 | 0 |"]
    lines += ["", "| distribution | count | p5 | p50 | p95 |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {missing} | | | |" if d is None else
              f"| {n} | {d.count} | {number(d.p5)} | {number(d.p50)} | {number(d.p95)} |"
              for n, d, missing in distribution_rows(summary, registry)]
    if summary.speaker_hours:
        lines += ["", "| speaker | samples | hours |", "| --- | --- | --- |"]
        lines += [f"| {s.speaker} | {s.samples} | {s.hours:.4f} |" for s in summary.speaker_hours]
    if summary.report:
        lines += ["", f"Report page: `{summary.report}`"]
    return "\n".join(lines)
