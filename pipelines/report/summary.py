"""Dataset report: what an output holds, read back from its own index, rejects, ledger and summary.

`voxmill inspect` and the Prefect flow both call `write_report` (or `gather` for numbers only). The
numbers come from the committed tables, never from a run's in-memory state, so a report on an
output written by several runs (or by older voxmill versions, whose index parts lack the quality
columns) is as true as one on a fresh output: parts are read under one unified schema and a score
nobody computed is reported as "not scored", not as zero.

The report folder (`OUTPUT/report/`) holds PNG plots, the selected samples' audio and an HTML page
that shows both. Every file is committed whole through `storage`; the page goes last, so a page
that exists never points at a missing plot or clip.
"""
from __future__ import annotations

import html
import io
import math
from datetime import datetime
from typing import Any, Iterable, Optional
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from pipelines.io import storage, tables
from pipelines.io.tables import later_copies, read_parts  # every part under one unified schema; see tables
from pipelines.state import jobstate
from pipelines.state.ledger import Ledger
from schemas.metrics import METRICS, Registry

REPORT_FOLDER = "report"
# Per-segment scores, with the label a reader sees: the labelled metrics of schemas/metrics.py, in
# their display order. Any of them may be missing (older outputs) or null (a part left unscored).
SCORE_LABELS = METRICS.labels()
SAMPLE_SCORES = ("dnsmos_ovrl", "snr_db", "chars_per_second", "avg_logprob")  # columns of the sample table
BASE_COLUMNS = ("key", "shard", "source_id", "duration", "language", "near_duplicate_of", "audio_hash")
INDEX_COLUMNS = (*BASE_COLUMNS, *SCORE_LABELS)
PLOTS = {
    "duration.png": "Segment durations",
    "dnsmos.png": "DNSMOS overall",
    "snr.png": "Signal-to-noise ratio",
    "drops.png": "Hours dropped by reason",
    "throughput.png": "Throughput over the run",
}
AUDIO_EXTENSIONS = ("flac", "wav")


class ReportError(ValueError):
    """The output cannot be reported on (missing, or no index yet); the message says which."""


class Distribution(BaseModel):
    count: int
    mean: float
    min: float
    p5: float
    p25: float
    p50: float
    p75: float
    p95: float
    max: float


class Drop(BaseModel):
    label: str  # "stage: reason", or "stage: metric < threshold" for a quality filter
    stage: str
    rows: int
    hours: float


class LanguageShare(BaseModel):
    language: str
    samples: int
    hours: float


class ThroughputPoint(BaseModel):
    at: datetime
    input_hours: float  # cumulative over units finished by `at`
    output_hours: float


class SampleRow(BaseModel):
    key: str
    shard: str
    duration: float
    language: Optional[str]
    text: str
    scores: dict[str, Optional[float]]
    audio: Optional[str] = None  # relative to the report page, once copied


class DatasetSummary(BaseModel):
    """Everything the CLI prints, the flow publishes and the page shows."""

    output: str
    samples: int
    shards: int
    sources: int
    units: int
    kept_hours: float
    rejects: int
    dropped_hours: float
    input_hours: Optional[float]  # from the ledger; None when no unit recorded it
    trimmed_hours: Optional[float]  # input neither kept nor rejected: silence VAD cut away
    dropped: list[Drop]
    languages: list[LanguageShare]
    duration: Optional[Distribution]
    scores: dict[str, Optional[Distribution]]  # None: not scored
    near_duplicates: Optional[int]  # None: not checked
    exact_duplicates: Optional[int] = None  # samples whose audio another unit also stored; None: not hashed
    throughput: list[ThroughputPoint]
    wall_seconds: Optional[float]
    complete: Optional[bool]
    sample_rows: list[SampleRow]
    report: Optional[str] = None  # URL of index.html once written


# ---- reading ----

def _check_output(output: str) -> None:
    if not storage.exists(output):
        raise ReportError(f"output not found: {output}")
    if not tables.part_urls(output, "index"):
        raise ReportError(f"{output} holds no index (index/part-*.parquet): not a voxmill output, "
                          "or no unit has finished yet")


# ---- statistics ----

def _values(table: pa.Table, column: str) -> np.ndarray:
    """Non-null, finite float values of a column (empty when the column is absent)."""
    if column not in table.column_names:
        return np.empty(0)
    values = table[column].drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
    return values[np.isfinite(values)]


def distribution(values: np.ndarray) -> Optional[Distribution]:
    if values.size == 0:
        return None
    p = np.percentile(values, [5, 25, 50, 75, 95])
    return Distribution(count=int(values.size), mean=float(values.mean()), min=float(values.min()),
                        p5=p[0], p25=p[1], p50=p[2], p75=p[3], p95=p[4], max=float(values.max()))


def _hours(table: pa.Table) -> float:
    if table.num_rows == 0 or "duration" not in table.column_names:
        return 0.0
    return float(pc.sum(table["duration"]).as_py() or 0.0) / 3600


def drops(rejects: pa.Table) -> list[Drop]:
    """Rejected rows and hours per `stage: reason`, most hours first.

    A quality reject's reason carries its own value ("dnsmos_ovrl 2.41 < 3.00"), which would give
    every row its own bar; rows that name a metric are grouped by metric and threshold instead.
    """
    if rejects.num_rows == 0:
        return []
    none = [None] * rejects.num_rows
    extra = [rejects[c].to_pylist() if c in rejects.column_names else none for c in ("metric", "value", "threshold")]
    groups: dict[tuple[str, str], list[float]] = {}
    for stage, reason, seconds, metric, value, threshold in zip(
            rejects["stage"].to_pylist(), rejects["reason"].to_pylist(), rejects["duration"].to_pylist(), *extra):
        label = drop_label(stage, reason, metric, value, threshold)
        groups.setdefault((label, stage), []).append(seconds or 0.0)
    found = [Drop(label=label, stage=stage, rows=len(s), hours=sum(s) / 3600) for (label, stage), s in groups.items()]
    return sorted(found, key=lambda d: (-d.hours, d.label))


def drop_label(stage: str, reason: str, metric: Optional[str] = None, value: Optional[float] = None,
               threshold: Optional[float] = None) -> str:
    if not metric:
        return f"{stage}: {reason}"
    if value is not None and threshold is not None:
        return f"{stage}: {metric} {'<' if value < threshold else '>'} {threshold:g}"
    return f"{stage}: {metric}"


def languages(index: pa.Table) -> list[LanguageShare]:
    if "language" not in index.column_names or index.num_rows == 0:
        return []
    grouped = index.group_by("language").aggregate([("duration", "sum"), ("duration", "count")])
    shares = [LanguageShare(language=lang or "unknown", samples=n, hours=(s or 0.0) / 3600) for lang, s, n in
              zip(grouped["language"].to_pylist(), grouped["duration_sum"].to_pylist(),
                  grouped["duration_count"].to_pylist())]
    return sorted(shares, key=lambda s: (-s.hours, s.language))


def throughput(records: Iterable[dict], started_at: Optional[str]) -> list[ThroughputPoint]:
    """Cumulative input and kept hours at each unit's finish, from the ledger's `finished_at`.

    A single run starts from zero at the summary's `started_at`; units of earlier runs (which
    finished before it) keep their own times, so an incremental output shows each run's slope.
    """
    timed = sorted((datetime.fromisoformat(r["finished_at"]), r) for r in records if r.get("finished_at"))
    points: list[ThroughputPoint] = []
    if timed and started_at and datetime.fromisoformat(started_at) <= timed[0][0]:
        points.append(ThroughputPoint(at=datetime.fromisoformat(started_at), input_hours=0.0, output_hours=0.0))
    done_in = done_out = 0.0
    for at, record in timed:
        done_in += record.get("input_seconds", 0.0) / 3600
        done_out += record.get("output_seconds", 0.0) / 3600
        points.append(ThroughputPoint(at=at, input_hours=done_in, output_hours=done_out))
    return points


def pick_rows(index: pa.Table, count: int) -> list[int]:
    """Up to `count` row numbers spread evenly over the index sorted by key: deterministic, and
    (keys start with the source's name) drawn from across the sources rather than the first few."""
    if count <= 0 or index.num_rows == 0:
        return []
    order = pc.sort_indices(index, sort_keys=[("key", "ascending")]).to_numpy()
    spots = np.unique(np.linspace(0, index.num_rows - 1, min(count, index.num_rows)).round().astype(int))
    return [int(order[i]) for i in spots]


def sample_rows(output: str, index: pa.Table, count: int) -> list[SampleRow]:
    """The picked rows with their transcripts (read for those keys only: text is the bulk of an index)."""
    picked = index.take(pa.array(pick_rows(index, count), pa.int64())).to_pylist()  # none: an int64 array still
    keys = [row["key"] for row in picked]
    texts = read_parts(output, "index", ("key", "text"), pc.field("key").isin(keys)) if keys else pa.table({})
    text_of = dict(zip(texts["key"].to_pylist(), texts["text"].to_pylist())) if keys else {}
    return [SampleRow(key=row["key"], shard=row["shard"], duration=row["duration"], language=row.get("language"),
                      text=text_of.get(row["key"]) or "",
                      scores={c: _finite(row.get(c)) for c in SAMPLE_SCORES if c in index.column_names})
            for row in picked]


def _finite(value: Any) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def gather(output: str, samples: int = 20, registry: Registry = METRICS) -> DatasetSummary:
    """The dataset's statistics; raises ReportError when `output` is missing or holds no index."""
    return gather_with_index(output, samples, registry)[0]


def gather_with_index(output: str, samples: int = 20,
                      registry: Registry = METRICS) -> tuple[DatasetSummary, pa.Table]:
    """The statistics and the index columns they came from (the plots draw the same values); a
    distribution per labelled metric of `registry`."""
    _check_output(output)
    labels = registry.labels()
    index = read_parts(output, "index", (*BASE_COLUMNS, *labels))
    rejects = read_parts(output, "rejects", ("stage", "reason", "duration", "metric", "value", "threshold"))
    records = list(Ledger(output).done().values())
    summary = storage.read_json(storage.join(output, "summary.json"), missing={})
    kept, dropped = _hours(index), _hours(rejects)
    input_hours = sum(r.get("input_seconds", 0.0) for r in records) / 3600 if records else None
    duplicates = (index.num_rows - index["near_duplicate_of"].null_count
                  if "near_duplicate_of" in index.column_names else None)
    found = DatasetSummary(
        output=output,
        samples=index.num_rows,
        shards=len(pc.unique(index["shard"])),
        sources=len(pc.unique(index["source_id"])) if "source_id" in index.column_names else 0,
        units=len(records),
        kept_hours=kept,
        rejects=rejects.num_rows,
        dropped_hours=dropped,
        input_hours=input_hours,
        trimmed_hours=max(0.0, input_hours - kept - dropped) if input_hours is not None else None,
        dropped=drops(rejects),
        languages=languages(index),
        duration=distribution(_values(index, "duration")),
        scores={c: distribution(_values(index, c)) for c in labels},
        near_duplicates=duplicates,
        exact_duplicates=int(pc.sum(later_copies(index)).as_py() or 0) if "audio_hash" in index.column_names else None,
        throughput=throughput(records, summary.get("started_at")),
        wall_seconds=summary.get("wall_seconds"),
        complete=summary.get("complete"),
        sample_rows=sample_rows(output, index, samples),
    )
    return found, index


# ---- plots ----

def _figure():
    """A bare Agg figure: no pyplot, so no global state and no display is ever touched."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(ax, title: str, message: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=16, color="0.4", transform=ax.transAxes)
    ax.set_axis_off()


def histogram_png(values: np.ndarray, title: str, xlabel: str, missing: str = "not scored") -> bytes:
    figure, ax = _figure()
    if values.size == 0:
        _empty(ax, title, missing)
    else:
        ax.hist(values, bins=min(40, max(5, int(np.sqrt(values.size)) * 2)), color="#3b6ea5", edgecolor="white")
        ax.set(title=f"{title} (n={values.size})", xlabel=xlabel, ylabel="samples")
    return _png(figure)


def drops_png(found: list[Drop]) -> bytes:
    figure, ax = _figure()
    if not found:
        _empty(ax, PLOTS["drops.png"], "nothing dropped")
    else:
        labels = [d.label for d in found][::-1]
        hours = [d.hours for d in found][::-1]
        bars = ax.barh(labels, hours, height=0.6, color="#c0504d")
        ax.bar_label(bars, labels=[f"{d.rows} rows" for d in found][::-1], padding=3, fontsize=8)
        ax.set(title=PLOTS["drops.png"], xlabel="hours")
        ax.margins(x=0.15)
        ax.tick_params(axis="y", labelsize=8)
    return _png(figure)


def throughput_png(points: list[ThroughputPoint]) -> bytes:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    figure, ax = _figure()
    if not points:
        _empty(ax, PLOTS["throughput.png"], "no unit finish times in the ledger")
        return _png(figure)
    times = [p.at for p in points]
    ax.step(times, [p.input_hours for p in points], where="post", marker="o", markersize=3, label="input")
    ax.step(times, [p.output_hours for p in points], where="post", marker="o", markersize=3, label="kept")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set(title=PLOTS["throughput.png"], xlabel="time (UTC)", ylabel="cumulative hours")
    ax.legend(loc="upper left")
    return _png(figure)


def plots(summary: DatasetSummary, index: pa.Table) -> dict[str, bytes]:
    """PNG bytes by file name."""
    return {
        "duration.png": histogram_png(_values(index, "duration"), PLOTS["duration.png"], "seconds", "no samples"),
        "dnsmos.png": histogram_png(_values(index, "dnsmos_ovrl"), PLOTS["dnsmos.png"], "DNSMOS OVRL (1-5)",
                                    "dnsmos_ovrl: not scored"),
        "snr.png": histogram_png(_values(index, "snr_db"), PLOTS["snr.png"], "dB", "snr_db: not scored"),
        "drops.png": drops_png(summary.dropped),
        "throughput.png": throughput_png(summary.throughput),
    }


# ---- audio ----

def copy_audio(output: str, report: str, rows: list[SampleRow]) -> None:
    """Each shown sample's stored audio, byte for byte, to report/audio/KEY.<ext>, read by the
    output's sink (the WebDataset sink: one ranged read each)."""
    if not rows:
        return
    sink = jobstate.sink(output)  # the format's own readers load only when clips are copied
    for row in rows:
        members = next(iter(sink.read(row.shard, [row.key])))
        ext = next(e for e in AUDIO_EXTENSIONS if e in members)
        row.audio = f"audio/{row.key}.{ext}"
        storage.write_bytes(storage.join(report, row.audio), members[ext])


def _remove_stale_audio(report: str, rows: list[SampleRow]) -> None:
    """Clips of an earlier report that this one no longer shows (an incremental run moved the picks)."""
    keep = {row.audio.rsplit("/", 1)[-1] for row in rows if row.audio}  # by name: listings give absolute paths
    for url in storage.list_files(storage.join(report, "audio")):
        if url.rsplit("/", 1)[-1] not in keep:
            fs, path = storage.filesystem(url)
            fs.rm(path)


# ---- page ----

def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def number(value: Optional[float]) -> str:
    """Four significant digits: scores span 0.0015 (clipping) to -32.31 (LUFS) in one table."""
    return "–" if value is None else f"{value:.4g}"


def _table(headers: Optional[list[str]], rows: list[list[str]], css: str = "") -> str:
    head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}<tbody>{body}</tbody></table>'


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
        ("near duplicates", "not checked" if summary.near_duplicates is None else str(summary.near_duplicates)),
        ("exact copies across units", "not checked" if summary.exact_duplicates is None
         else f"{summary.exact_duplicates} (SpeechShards(drop_duplicates=True) skips them)"),
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


def _distribution_cells(name: str, d: Optional[Distribution], missing: str) -> list[str]:
    if d is None:
        return [html.escape(name), f'<span class="muted">{missing}</span>', *[""] * 6]
    return [html.escape(name), str(d.count), *(number(v) for v in (d.min, d.p5, d.p50, d.mean, d.p95, d.max))]


def _sample_cells(row: SampleRow) -> list[str]:
    audio = (f'<audio controls preload="metadata" src="{html.escape(quote(row.audio))}"></audio>'
             if row.audio else "")
    scores = [number(row.scores.get(c)) for c in SAMPLE_SCORES]
    return [f"<code>{html.escape(row.key)}</code>", f"{row.duration:.2f}", html.escape(row.language or ""),
            html.escape(row.text), *scores, audio]


def page(summary: DatasetSummary) -> str:
    """The self-contained HTML page: styles inline, plots and clips by relative URL."""
    figures = "".join(f'<figure><img src="{name}" alt="{html.escape(title)}" width="640" height="360"></figure>'
                      for name, title in PLOTS.items())
    overview = _table(None, [[html.escape(k), html.escape(v)] for k, v in overview_rows(summary)])
    dropped = _table(["stage: reason", "rows", "hours"],
                     [[html.escape(d.label), str(d.rows), f"{d.hours:.4f}"] for d in summary.dropped]) \
        if summary.dropped else '<p class="muted">nothing dropped</p>'
    spread = _table(["metric", "count", "min", "p5", "p50", "mean", "p95", "max"],
                    [_distribution_cells(*row) for row in distribution_rows(summary)])
    samples = _table(["key", "seconds", "lang", "text", *SAMPLE_SCORES, "audio"],
                     [_sample_cells(r) for r in summary.sample_rows], "samples")
    title = f"voxmill report: {html.escape(summary.output)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.samples td:nth-child(1) {{ min-width: 14em; max-width: 18em; word-break: break-all; font-size: 0.85em; }}
.samples td:nth-child(4) {{ min-width: 24em; max-width: 40em; }}
.muted {{ color: #888; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
</style></head>
<body>
<h1>{title}</h1>
<h2>Overview</h2>{overview}
<h2>Dropped</h2>{dropped}
<h2>Distributions</h2>{spread}
<h2>Plots</h2>{figures}
<h2>Samples</h2>
<p>{len(summary.sample_rows)} of {summary.samples} samples, spread evenly over the keys.</p>{samples}
</body></html>
"""


def markdown(summary: DatasetSummary) -> str:
    """The summary as markdown tables, for the Prefect artifact."""
    lines = ["| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in overview_rows(summary))]
    lines += ["", "| dropped: stage: reason | rows | hours |", "| --- | --- | --- |"]
    lines += [f"| {d.label} | {d.rows} | {d.hours:.4f} |" for d in summary.dropped] or ["| nothing dropped | 0 | 0 |"]
    lines += ["", "| distribution | count | p5 | p50 | p95 |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {missing} | | | |" if d is None else
              f"| {n} | {d.count} | {number(d.p5)} | {number(d.p50)} | {number(d.p95)} |"
              for n, d, missing in distribution_rows(summary)]
    if summary.report:
        lines += ["", f"Report page: `{summary.report}`"]
    return "\n".join(lines)


# ---- the whole report ----

def write_report(output: str, samples: int = 20) -> DatasetSummary:
    """Gather, plot, copy the shown clips and commit OUTPUT/report/; returns the summary with the
    page's URL. Clips and plots are committed before the page, the page before stale clips go."""
    summary, index = gather_with_index(output, samples)
    report = storage.join(output, REPORT_FOLDER)
    copy_audio(output, report, summary.sample_rows)
    for name, png in plots(summary, index).items():
        storage.write_bytes(storage.join(report, name), png)
    summary.report = storage.join(report, "index.html")
    storage.write_bytes(storage.join(report, "summary.json"), summary.model_dump_json(indent=2).encode())
    storage.write_bytes(summary.report, page(summary).encode())
    _remove_stale_audio(report, summary.sample_rows)
    return summary
