"""The report's numbers: what an output holds, read back from its own index, rejects, ledger and summary.

The numbers come from the committed tables, never from a run's in-memory state, so a report on an
output written by several runs (or by older voxmill versions, whose index parts lack the quality
columns) is as true as one on a fresh output: parts are read under one unified schema and a score
nobody computed is reported as "not scored", not as zero.

Each table is read once (its parts opened once, every column the report shows in one scan), and
everything over its rows is Arrow compute: at 100k units and a million index rows no Python loop
walks the rows, only the groups they fall into and the few samples the page shows.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from pipelines.io import storage
from pipelines.io.tables import read_parts  # every part under one unified schema; see tables
from pipelines.state.ledger import Ledger
from schemas.metrics import METRICS, Registry

# Per-segment scores, with the label a reader sees: the labelled metrics of schemas/metrics.py, in
# their display order. Any of them may be missing (older outputs) or null (a part left unscored).
SCORE_LABELS = METRICS.labels()
SAMPLE_SCORES = ("dnsmos_ovrl", "snr_db", "chars_per_second", "avg_logprob")  # columns of the sample table
BASE_COLUMNS = ("key", "shard", "source_id", "duration", "language", "near_duplicate_of", "audio_hash", "text",
                "speaker")
TOP_SPEAKERS = 20  # speakers listed by hours on the page; the count covers all
REJECT_COLUMNS = ("key", "shard", "stage", "reason", "duration", "metric", "value", "threshold", "text", "language")
MAX_THROUGHPUT_POINTS = 1000  # a plot cannot show more; 100k units would make summary.json 100k points long


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


class SpeakerShare(BaseModel):
    speaker: str
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
    reason: Optional[str] = None  # a rejected sample's drop label ("quality: snr_db < 20"); None: kept


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
    rejected_audio: int = 0  # rejects whose audio a `rejected/` shard keeps
    rejected_rows: list[SampleRow] = []  # some of those, to listen to, each with its reason
    speakers: Optional[int] = None  # distinct speaker ids (speakers.enabled); None: not labelled
    speaker_hours: list[SpeakerShare] = []  # the TOP_SPEAKERS with the most hours
    report: Optional[str] = None  # URL of index.html once written


# ---- reading ----

def read_tables(output: str, registry: Registry = METRICS) -> tuple[pa.Table, pa.Table]:
    """(index, rejects): each read once, with every column the report uses (those a part lacks are
    absent: callers test for them); ReportError when `output` is missing or holds no index."""
    if not storage.exists(output):
        raise ReportError(f"output not found: {output}")
    index = read_parts(output, "index", (*BASE_COLUMNS, *registry.labels()))
    if index.num_columns == 0:
        raise ReportError(f"{output} holds no index (index/part-*.parquet): not a voxmill output, "
                          "or no unit has finished yet")
    return index, read_parts(output, "rejects", REJECT_COLUMNS)


# ---- statistics ----

def values(table: pa.Table, column: str) -> np.ndarray:
    """Non-null, finite float values of a column (empty when the column is absent)."""
    if column not in table.column_names:
        return np.empty(0)
    found = table[column].drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
    return found[np.isfinite(found)]


def distribution(found: np.ndarray) -> Optional[Distribution]:
    if found.size == 0:
        return None
    p = np.percentile(found, [5, 25, 50, 75, 95])
    return Distribution(count=int(found.size), mean=float(found.mean()), min=float(found.min()),
                        p5=p[0], p25=p[1], p50=p[2], p75=p[3], p95=p[4], max=float(found.max()))


def _hours(table: pa.Table) -> float:
    if table.num_rows == 0 or "duration" not in table.column_names:
        return 0.0
    return float(pc.sum(table["duration"]).as_py() or 0.0) / 3600


def _column(table: pa.Table, name: str, type: pa.DataType) -> pa.ChunkedArray | pa.Array:
    return table[name] if name in table.column_names else pa.nulls(table.num_rows, type)


def _verdicts(rejects: pa.Table) -> pa.Table:
    """Per reject, what its label is made of: stage, and either its reason or (a quality drop) the
    metric, the side of the threshold it fell on and the threshold; the reason carries the row's own
    value ("dnsmos_ovrl 2.41 < 3.00"), which would give every row its own label."""
    metric = _column(rejects, "metric", pa.string())
    value, threshold = _column(rejects, "value", pa.float64()), _column(rejects, "threshold", pa.float64())
    named = pc.fill_null(pc.not_equal(metric, ""), False)
    crossed = pc.and_(named, pc.and_(pc.is_valid(value), pc.is_valid(threshold)))
    side = pc.if_else(crossed, pc.if_else(pc.fill_null(pc.less(value, threshold), False), "<", ">"), None)
    return pa.table({
        "stage": rejects["stage"],
        "reason": pc.if_else(named, None, rejects["reason"]),
        "metric": pc.if_else(named, metric, None),
        "side": side,
        "threshold": pc.if_else(crossed, pc.cast(threshold, pa.float64()), None),
    })


def _label(stage: str, reason: Optional[str], metric: Optional[str], side: Optional[str],
           threshold: Optional[float]) -> str:
    if not metric:
        return f"{stage}: {reason}"
    return f"{stage}: {metric} {side} {threshold:g}" if side else f"{stage}: {metric}"


def drop_label(stage: str, reason: str, metric: Optional[str] = None, value: Optional[float] = None,
               threshold: Optional[float] = None) -> str:
    """One reject's label, as `drops` groups it."""
    side = ("<" if value < threshold else ">") if metric and value is not None and threshold is not None else None
    return _label(stage, reason, metric, side, threshold)


def drops(rejects: pa.Table) -> list[Drop]:
    """Rejected rows and hours per label (`stage: reason`, or `stage: metric < threshold` for a
    quality drop), most hours first: grouped in Arrow, so Python sees only the groups."""
    if rejects.num_rows == 0:
        return []
    keys = ["stage", "reason", "metric", "side", "threshold"]
    parts = _verdicts(rejects).append_column("seconds", pc.fill_null(_column(rejects, "duration", pa.float64()), 0.0))
    grouped = parts.group_by(keys).aggregate([("seconds", "sum"), ("seconds", "count")]).to_pylist()
    merged: dict[tuple[str, str], list[float]] = {}
    for group in grouped:
        label = _label(*(group[k] for k in keys))
        found = merged.setdefault((label, group["stage"]), [0, 0.0])
        found[0] += group["seconds_count"]
        found[1] += group["seconds_sum"] or 0.0
    result = [Drop(label=label, stage=stage, rows=rows, hours=seconds / 3600)
              for (label, stage), (rows, seconds) in merged.items()]
    return sorted(result, key=lambda d: (-d.hours, d.label))


def languages(index: pa.Table) -> list[LanguageShare]:
    if "language" not in index.column_names or index.num_rows == 0:
        return []
    grouped = index.group_by("language").aggregate([("duration", "sum"), ("duration", "count")])
    shares = [LanguageShare(language=lang or "unknown", samples=n, hours=(s or 0.0) / 3600) for lang, s, n in
              zip(grouped["language"].to_pylist(), grouped["duration_sum"].to_pylist(),
                  grouped["duration_count"].to_pylist())]
    return sorted(shares, key=lambda s: (-s.hours, s.language))


def throughput(ledger: pa.Table, started_at: Optional[str]) -> list[ThroughputPoint]:
    """Cumulative input and kept hours at each unit's finish, from the ledger table's `finished_at`
    (`Ledger.table()`: columns, not 100k records parsed).

    A single run starts from zero at the summary's `started_at` (see `_start`); units of earlier
    runs (which finished before it) keep their own times, so an incremental output shows each run's
    slope. Units that finished at the same instant keep their ledger order (a stable sort on the
    time alone). Above MAX_THROUGHPUT_POINTS units, evenly spaced ones stand for the rest.
    """
    timed = ledger.filter(pc.is_valid(ledger["finished_at"])) if ledger.num_rows else ledger
    if timed.num_rows == 0:
        return []
    at = [datetime.fromisoformat(t) for t in timed["finished_at"].to_pylist()]
    order = np.argsort([t.timestamp() for t in at], kind="stable")
    done_in, done_out = (np.cumsum(pc.fill_null(timed[c], 0.0).to_numpy()[order]) / 3600
                         for c in ("input_seconds", "output_seconds"))
    start = _start(at[order[0]], timed.slice(int(order[0]), 1), started_at)
    points = [ThroughputPoint(at=start, input_hours=0.0, output_hours=0.0)] if start else []
    shown = np.unique(np.linspace(0, len(order) - 1, min(len(order), MAX_THROUGHPUT_POINTS)).round().astype(int))
    return points + [ThroughputPoint(at=at[order[i]], input_hours=float(done_in[i]), output_hours=float(done_out[i]))
                     for i in shown]


def _start(first: datetime, row: pa.Table, started_at: Optional[str]) -> Optional[datetime]:
    """When the plot starts from zero: the run's start, or (no summary, or one of a later run that
    found everything done) the first unit's finish less the seconds its stages took."""
    if started_at and datetime.fromisoformat(started_at) <= first:
        return datetime.fromisoformat(started_at)
    record = json.loads(row["record"][0].as_py()) if "record" in row.column_names else {}
    worked = sum((record.get("stage_seconds") or {}).values())
    return first - timedelta(seconds=worked) if worked > 0 else None


def pick_rows(table: pa.Table, count: int) -> list[int]:
    """Up to `count` row numbers spread evenly over `table` sorted by key: deterministic, and
    (keys start with the source's name) drawn from across the sources rather than the first few."""
    if count <= 0 or table.num_rows == 0:
        return []
    order = pc.sort_indices(table, sort_keys=[("key", "ascending")]).to_numpy()
    spots = np.unique(np.linspace(0, table.num_rows - 1, min(count, table.num_rows)).round().astype(int))
    return [int(order[i]) for i in spots]


def _picked(table: pa.Table, count: int) -> list[dict]:
    return table.take(pa.array(pick_rows(table, count), pa.int64())).to_pylist()  # an int64 array even when empty


def sample_rows(index: pa.Table, count: int) -> list[SampleRow]:
    """Up to `count` kept samples, spread over the keys, with their transcripts and scores."""
    return [SampleRow(key=row["key"], shard=row["shard"], duration=row["duration"], language=row.get("language"),
                      text=row.get("text") or "",
                      scores={c: _finite(row.get(c)) for c in SAMPLE_SCORES if c in index.column_names})
            for row in _picked(index, count)]


def heard_rejects(rejects: pa.Table) -> pa.Table:
    """The rejects whose audio a `rejected/` shard keeps (file-level rejects and outputs made with
    shards.keep_rejected_audio off have none)."""
    if rejects.num_rows == 0 or "shard" not in rejects.column_names:
        return rejects.slice(0, 0)
    return rejects.filter(pc.and_(pc.is_valid(rejects["shard"]), pc.is_valid(rejects["key"])))


def rejected_rows(heard: pa.Table, count: int) -> list[SampleRow]:
    """Up to `count` of the rejects with audio, spread over the keys, each with its drop label."""
    return [SampleRow(key=row["key"], shard=row["shard"], duration=row.get("duration") or 0.0,
                      language=row.get("language"), text=row.get("text") or "", scores={},
                      reason=drop_label(row["stage"], row["reason"], row.get("metric"), row.get("value"),
                                        row.get("threshold")))
            for row in _picked(heard, count)]


def _later_copies(index: pa.Table) -> Optional[int]:
    """How many samples `tables.later_copies` flags, counted without its sort: each audio hash held
    by n rows makes n - 1 copies. None when the index has no hashes."""
    if "audio_hash" not in index.column_names:
        return None
    hashes = index["audio_hash"]
    return len(hashes) - hashes.null_count - pc.count_distinct(hashes).as_py()


def speakers(index: pa.Table) -> tuple[Optional[int], list[SpeakerShare]]:
    """(how many speakers, the ones with the most hours) of a speaker-labelled index; (None, []) without."""
    if "speaker" not in index.column_names or index.num_rows == index["speaker"].null_count:
        return None, []
    grouped = index.filter(pc.is_valid(index["speaker"])).group_by("speaker").aggregate(
        [("duration", "sum"), ("duration", "count")])
    top = grouped.sort_by([("duration_sum", "descending"), ("speaker", "ascending")]).slice(0, TOP_SPEAKERS)
    shares = [SpeakerShare(speaker=name, samples=n, hours=seconds / 3600) for name, seconds, n in
              zip(top["speaker"].to_pylist(), top["duration_sum"].to_pylist(), top["duration_count"].to_pylist())]
    return grouped.num_rows, shares


def _finite(value: Any) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def gather(output: str, samples: int = 20, registry: Registry = METRICS, rejected: int = 20) -> DatasetSummary:
    """The dataset's statistics; raises ReportError when `output` is missing or holds no index."""
    return gather_with_index(output, samples, registry, rejected)[0]


def gather_with_index(output: str, samples: int = 20, registry: Registry = METRICS,
                      rejected: int = 20) -> tuple[DatasetSummary, pa.Table]:
    """The statistics and the index columns they came from (the plots draw the same values); a
    distribution per labelled metric of `registry`, `samples` kept and `rejected` rejected rows."""
    index, rejects = read_tables(output, registry)
    ledger = Ledger(output).table()
    summary = storage.read_json(storage.join(output, "summary.json"), missing={})
    kept, dropped = _hours(index), _hours(rejects)
    input_hours = (pc.sum(ledger["input_seconds"]).as_py() or 0.0) / 3600 if ledger.num_rows else None
    duplicates = (index.num_rows - index["near_duplicate_of"].null_count
                  if "near_duplicate_of" in index.column_names else None)
    heard = heard_rejects(rejects)
    speaker_count, speaker_hours = speakers(index)
    found = DatasetSummary(
        output=output,
        samples=index.num_rows,
        shards=pc.count_distinct(index["shard"]).as_py(),
        sources=pc.count_distinct(index["source_id"]).as_py() if "source_id" in index.column_names else 0,
        units=ledger.num_rows,
        kept_hours=kept,
        rejects=rejects.num_rows,
        dropped_hours=dropped,
        input_hours=input_hours,
        trimmed_hours=max(0.0, input_hours - kept - dropped) if input_hours is not None else None,
        dropped=drops(rejects),
        languages=languages(index),
        duration=distribution(values(index, "duration")),
        scores={c: distribution(values(index, c)) for c in registry.labels()},
        near_duplicates=duplicates,
        exact_duplicates=_later_copies(index),
        throughput=throughput(ledger, summary.get("started_at")),
        wall_seconds=summary.get("wall_seconds"),
        complete=summary.get("complete"),
        sample_rows=sample_rows(index, samples),
        rejected_audio=heard.num_rows,
        rejected_rows=rejected_rows(heard, rejected),
        speakers=speaker_count,
        speaker_hours=speaker_hours,
    )
    return found, index
