"""Refilter: other quality thresholds on a finished output, without decoding or ASR again.

`voxmill refilter OUTPUT --set quality.min_dnsmos_ovrl=3.0` reads, unit by unit, what a run
committed: the index part (kept segments), the rejects part (dropped segments, with their text and
scores) and the shards holding their audio (`shards/` and `rejected/`). It decides every segment
again with `commit.decide` under the new QualityConfig, in the unit's segment order (so exact
duplicates and `near_duplicate_of` come out as a fresh run would give them), and writes a new,
whole output: training shards with the samples now kept, rejected shards with those now dropped
(audio bytes copied exactly from whichever shard held them), index and rejects parts, and a ledger
record per unit, written last by the same `UnitCommitter.commit` a run uses. File-level rejects
(discover, decode, vad, prepare, a failed scoring) carry over unchanged.

The new output's `_ledger/job.json` holds the new settings and fingerprint, and its layout is the
source's, so `voxmill run` with those settings on it is accepted (its units are done; new input
files become new units). A rerun skips the units whose record exists; a killed refilter resumes.

It refuses (RefilterError, one line): a folder that is no voxmill job; a source made without
quality scores, or before rejects kept their text and scores; a setting that changes how segments
are scored rather than which are kept; and thresholds that would bring back a segment whose audio
the source did not keep (`shards.keep_rejected_audio: false`).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping, Optional

import yaml
from pydantic import ValidationError

from pipelines.io import storage, tables
from pipelines.sinks.base import open_sink
from pipelines.sinks.card import write_card
from pipelines.stages.commit import UnitCommitter, decide
from pipelines.state import jobstate
from pipelines.state import layout as layouts
from pipelines.state.lease import OutputLease
from pipelines.state.ledger import Ledger
from pipelines.state.units import WorkUnit
from pipelines.versions import versions
from schemas.config import JobConfig, QualityConfig
from schemas.tables import INDEX_SCHEMA

# Settings that change the scores themselves, not which segments are kept: a refilter cannot apply them.
SCORING_FIELDS = ("enabled", "dnsmos_windows", "dnsmos_device", "dnsmos_hop_seconds")
ROW_COLUMNS = tuple(name for name in INDEX_SCHEMA.names if name != "shard")  # a segment's row, as decide takes it
AUDIO_EXTENSIONS = ("flac", "wav")

ProgressFn = Callable[[int, int], None]  # units done, units to do


class RefilterError(ValueError):
    """The output cannot be refiltered as asked; the message says why and what to do instead."""


def threshold_fields() -> list[str]:
    return [name for name in QualityConfig.model_fields if name not in SCORING_FIELDS]


def parse_settings(pairs: Iterable[str]) -> dict[str, object]:
    """`quality.min_dnsmos_ovrl=3.0`, `quality.languages=[en, de]`, `quality.max_clipping=null`:
    the QualityConfig fields to change and their (YAML-parsed) values."""
    changes: dict[str, object] = {}
    allowed = threshold_fields()
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name.startswith("quality."):
            raise RefilterError(f"--set {pair!r}: expected quality.FIELD=VALUE (one of {', '.join(allowed)})")
        field = name.removeprefix("quality.")
        if field in SCORING_FIELDS:
            raise RefilterError(f"--set {name}: it changes how segments are scored, not which are kept; refilter "
                                "only re-applies thresholds: use `voxmill run --new-version` for it")
        if field not in allowed:
            raise RefilterError(f"--set {name}: no such quality threshold (one of {', '.join(allowed)})")
        try:
            changes[field] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise RefilterError(f"--set {pair!r}: cannot read the value: {err}".splitlines()[0]) from err
    if not changes:
        raise RefilterError("nothing to refilter: give at least one --set quality.FIELD=VALUE")
    return changes


def source_config(source: str) -> JobConfig:
    """The config `source` was made with, from its `_ledger/job.json`; refuses what cannot be refiltered."""
    job = jobstate.read(source)
    if job is None:
        raise RefilterError(f"{source} holds no voxmill job (no _ledger/job.json): refilter reads an output "
                            "that `voxmill run` wrote")
    try:
        config = JobConfig.model_validate({**job["settings"], "output": source})
    except (ValidationError, KeyError) as err:
        raise RefilterError(f"{source} was made by another voxmill version whose settings this one cannot read "
                            f"({str(err).splitlines()[0]}); run the job again with `voxmill run --new-version`") from err
    if not config.quality.enabled:
        raise RefilterError(f"{source} was made with quality.enabled: false, so it has no scores to filter on; "
                            "run the job again with quality on (`voxmill run --new-version`)")
    return config


def target_config(source: JobConfig, changes: Mapping[str, object], output: Optional[str]) -> JobConfig:
    """The source's config with the new thresholds, writing into `output`, or (none given) into the
    source itself when nothing changes, else the first OUTPUT/vN that is new or made with them."""
    try:
        quality = QualityConfig.model_validate({**source.quality.model_dump(), **changes})
    except ValidationError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise RefilterError(f"invalid threshold: {' '.join(lines)}") from err
    config = source.model_copy(update={"quality": quality})
    if output is None:
        return jobstate.versioned(config)
    config = config.model_copy(update={"output": output})
    job = jobstate.read(output)
    if job is not None and job["fingerprint"] != jobstate.fingerprint(jobstate.output_settings(config)):
        raise RefilterError(f"{output} already holds a job with other settings: give a new --output, or leave "
                            "--output out to write SOURCE/vN")
    return config


def refilter(source: str, changes: Mapping[str, object], output: Optional[str] = None,
             progress: Optional[ProgressFn] = None) -> dict:
    """Refilter `source` with the QualityConfig fields in `changes` into a new output (see module
    doc); returns the summary it writes to NEW/summary.json ({"unchanged": True, ...} when the
    settings are the source's own and nothing is written)."""
    started_at, clock = datetime.now(timezone.utc), time.perf_counter()
    src = source_config(source)
    config = target_config(src, changes, output)
    if jobstate.fingerprint(jobstate.output_settings(config)) == jobstate.read(source)["fingerprint"]:
        return {"output": source, "source": source, "unchanged": True, "complete": True}
    if _same_place(config.output, source):
        raise RefilterError(f"{source} cannot be refiltered into itself: give another --output")
    units = jobstate.layout(source)
    records = Ledger(source).done()
    done = [(u, r) for u in units if (r := Ledger(source).lookup(records, u.index, u.digest))]
    finished = Ledger(config.output).done()
    todo = [(u, r) for u, r in done if not Ledger(config.output).lookup(finished, u.index, u.digest)]
    for unit, _ in todo:  # every refusal comes before anything is written
        _check_unit(src, config, unit)
    storage.ensure_writable(config.output)
    with OutputLease(config.output) as lease:  # one writer per output, as for `voxmill run`
        _claim(source, config, units)
        committer = UnitCommitter(config)
        reports = []
        for n, (unit, record) in enumerate(todo):
            lease.check()
            reports.append(refilter_unit(src, committer, config.quality, unit, record))
            if progress:
                progress(n + 1, len(todo))
        summary = _summary(source, config, changes, units, done, reports, started_at, time.perf_counter() - clock)
        storage.write_json(storage.join(config.output, "summary.json"), summary)
        write_card(config.output, config.shards)  # OUTPUT/README.md, as a run writes it
    return summary


def refilter_unit(src: JobConfig, committer: UnitCommitter, quality: QualityConfig, unit: WorkUnit,
                  record: dict) -> dict:
    """One unit of the source, decided again and committed (data first, ledger record last)."""
    started = time.perf_counter()
    kept, dropped, carried = _read_unit(src.output, unit)
    members = _read_shards(src, sorted({r["shard"] for r in kept} | {r["shard"] for r in dropped if r["shard"]}))
    rows = [_row(r, members.get(r["key"])) for r in _in_segment_order(unit, kept, dropped)]
    decided = decide(quality, rows)
    was_kept = {r["key"] for r in kept}
    lost = [row["key"] for row, why in decided if why is None and row["key"] not in members]
    if lost:  # _check_unit refuses this before anything is written; a source changed since would land here
        raise RefilterError(f"unit {unit.index}: {len(lost)} kept segments have no audio in {src.output} "
                            f"(e.g. {lost[0]})")
    audio = {key: (files[ext], ext) for key, files in members.items()
             for ext in AUDIO_EXTENSIONS if ext in files}
    moved = {"restored": sum(1 for row, why in decided if why is None and row["key"] not in was_kept),
             "dropped": sum(1 for row, why in decided if why is not None and row["key"] in was_kept)}
    return committer.commit(unit.index, unit.digest, decided, audio, carried, record["input_seconds"],
                            {"refilter": time.perf_counter() - started}, started,
                            extra={"refiltered_from": src.output, "moved": moved})


def _check_unit(src: JobConfig, config: JobConfig, unit: WorkUnit) -> None:
    """Refuse, before writing, a unit whose rejects lack text and scores, or whose new decisions
    keep a segment the source dropped without its audio."""
    kept, dropped, _ = _read_unit(src.output, unit)
    decided = decide(config.quality, [_row(r) for r in _in_segment_order(unit, kept, dropped)])
    stored = {r["key"] for r in kept} | {r["key"] for r in dropped if r["shard"]}
    lost = [row["key"] for row, why in decided if why is None and row["key"] not in stored]
    if lost:
        raise RefilterError(
            f"these thresholds keep {len(lost)} segment(s) of unit {unit.index} (e.g. {lost[0]}) that {src.output} "
            "rejected without keeping their audio (shards.keep_rejected_audio: false): refilter cannot bring them "
            "back; loosen no threshold, or run the job again with `voxmill run --new-version`")


def _read_unit(output: str, unit: WorkUnit) -> tuple[list[dict], list[dict], list[dict]]:
    """A committed unit's index rows (kept), its segment rejects (dropped after ASR, with their text
    and scores) and its other rejects (file-level, or scoring failed before ASR: carried over)."""
    index = _read_part(output, "index", unit.index)
    rejects = _read_part(output, "rejects", unit.index)
    if "text" not in rejects.column_names or "shard" not in rejects.column_names:
        raise RefilterError(
            f"{output} was made before rejects kept their text and scores (rejects/part-{unit.index:06d}.parquet "
            "has no text column): its dropped segments cannot be decided again; run the job again with "
            "`voxmill run --new-version` (or --restart)")
    rows = rejects.to_pylist()
    dropped = [r for r in rows if r["key"] is not None and r["text"] is not None]
    carried = [r for r in rows if not (r["key"] is not None and r["text"] is not None)]
    return index.to_pylist(), dropped, carried


def _read_part(output: str, folder: str, unit: int):
    url = storage.join(output, folder, f"part-{unit:06d}.parquet")
    try:
        return tables.unit_rows(output, folder, unit)  # its part, or the compacted file that holds it
    except FileNotFoundError as err:
        raise RefilterError(f"{url} is missing although unit {unit} has a ledger record: the output is damaged; "
                            "delete that unit's _ledger/unit-*.json and rerun `voxmill run` on it first") from err
    except OSError as err:
        raise storage.StorageError(f"cannot read {url}: {type(err).__name__}: {err}") from err


def _in_segment_order(unit: WorkUnit, kept: list[dict], dropped: list[dict]) -> list[dict]:
    """Kept and dropped segments merged back into the order the unit cut them: by the position of
    the file (or excerpt) each starts in within the unit, then by start. Each list keeps its own
    order (the commit wrote both in segment order), which is checked: a merge that disagreed
    would decide duplicates differently from a run."""
    def position(row: dict) -> tuple[int, float]:
        places = [i for i, f in enumerate(unit.files) if f.id == row["source_id"]]
        owner = next((i for i in places if unit.files[i].owns(row["start"])), places[0] if places else len(unit.files))
        return owner, row["start"]

    merged = sorted(kept + dropped, key=position)
    for part in (kept, dropped):
        keys = {r["key"] for r in part}
        if [r["key"] for r in merged if r["key"] in keys] != [r["key"] for r in part]:
            raise RefilterError(f"unit {unit.index}: its segments cannot be put back in order (the layout does not "
                                "match the rows); the output is damaged or from another voxmill version")
    return merged


def _row(table_row: dict, files: Optional[dict] = None) -> dict:
    """The segment's index row as a run built it: from its KEY.json when its audio is at hand (the
    exact values the run wrote, e.g. avg_logprob before the index's float32), else from the table."""
    meta = json.loads(files["json"]) if files and "json" in files else {}
    return {name: meta[name] if name in meta else table_row.get(name) for name in ROW_COLUMNS}


def _read_shards(src: JobConfig, shards: list[str]) -> dict[str, dict[str, bytes]]:
    """key -> extension -> the stored file's bytes, from every named shard (one at a time), read by
    the source's sink (its `shards.format`)."""
    sink = open_sink(src.shards, src.output)
    members: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        url = storage.join(src.output, shard)
        try:
            for sample in sink.read(shard):
                members[sample["__key__"]] = {ext: data for ext, data in sample.items() if not ext.startswith("__")}
        except FileNotFoundError as err:
            raise RefilterError(f"{url} is missing: the output is damaged (its rows name that shard)") from err
        except OSError as err:
            raise storage.StorageError(f"cannot read {url}: {type(err).__name__}: {err}") from err
    return members


def _claim(source: str, config: JobConfig, units: list[WorkUnit]) -> None:
    """Record the new job before any unit is written: the source's layout (same units, same
    digests) and a job.json with the new settings; a rerun checks and keeps them."""
    storage.remove_leftovers(config.output, jobstate.OUTPUT_FOLDERS)
    target = {u.index: u.digest for u in jobstate.layout(config.output)}
    clash = [u.index for u in units if u.index in target and target[u.index] != u.digest]
    if clash:
        raise RefilterError(f"{config.output} holds other work units (unit {clash[0]} differs from {source}'s): "
                            "give a new --output")
    layouts.copy(source, config.output)
    settings = jobstate.output_settings(config)
    storage.write_json(storage.join(config.output, "_ledger", "job.json"), {
        "fingerprint": jobstate.fingerprint(settings), "settings": settings, "units": len(units),
        "input_seconds": sum(u.seconds for u in units), "units_added": 0, "refiltered_from": source})


def _summary(source: str, config: JobConfig, changes: Mapping[str, object], units: list[WorkUnit],
             done: list, reports: list[dict], started_at: datetime, wall_seconds: float) -> dict:
    records = list(Ledger(config.output).done().values())
    moved = sum((Counter(r.get("moved", {})) for r in reports), Counter())
    return {
        "voxmill_version": versions()["voxmill"],
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": wall_seconds,
        "complete": len(records) == len(units),
        "refilter": {"source": source, "set": {f"quality.{k}": v for k, v in changes.items()},
                     "units_refiltered": len(reports), "units_resumed": len(done) - len(reports),
                     "units_pending_in_source": len(units) - len(done),
                     "restored": moved["restored"], "dropped": moved["dropped"]},
        "counts": {
            "units": len(units),
            "units_processed": len(reports),
            "units_resumed": len(records) - len(reports),
            "units_failed": 0,
            "samples": sum(r["samples"] for r in records),
            "shards": sum(len(r["shards"]) for r in records),
            "rejected_shards": sum(len(r.get("rejected_shards", [])) for r in records),
            "rejects": sum(r["rejects"] for r in records),
        },
        "reject_reasons": dict(sum((Counter(r["reject_reasons"]) for r in records), Counter())),
        "input_hours": sum(r["input_seconds"] for r in records) / 3600,
        "output_hours": sum(r["output_seconds"] for r in records) / 3600,
        "stage_seconds": dict(sum((Counter(r["stage_seconds"]) for r in reports), Counter())),
        "failures": [],
        "config": config.model_dump(mode="json"),
        "versions": versions(),
    }


def _same_place(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
