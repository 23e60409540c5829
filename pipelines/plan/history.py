"""Learn from every run: actual vs predicted wall time, kept in a JSON-lines file on any storage.

The correction for a new plan is the median actual/predicted ratio of recent runs on the same
hardware profile; the spread of those ratios becomes the plan's model error.
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
from typing import Optional

from pipelines.io import storage
from schemas.plan import HardwareProfile

RECENT_RUNS = 10
log = logging.getLogger("voxmill.history")


def _url(path: str) -> str:
    return os.path.expanduser(path) if "://" not in path else path


def read(path: str) -> list[dict]:
    """History records from a history file, or from `summary.json` files under an output URL."""
    url = _url(path)
    if not storage.exists(url):
        return []
    fs, local = storage.filesystem(url)
    if fs.isdir(local):  # an output: its summary's record
        summary_url = storage.join(url, "summary.json")
        try:
            summary = storage.read_json(summary_url, missing=None)
        except ValueError as err:  # a torn summary.json: it holds no usable record
            log.warning("ignoring %s: not valid JSON (%s)", storage.redact(summary_url), err)
            return []
        return [summary["history"]] if isinstance(summary, dict) and summary.get("history") else []
    records = []
    with fs.open(local, "rt", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                record = err
            if isinstance(record, dict):
                records.append(record)
            else:  # a torn or foreign line: skipped, the others still correct the plan
                log.warning("skipping line %d of run history %s: not a JSON record (%s)", number,
                            storage.redact(url), record if isinstance(record, Exception) else type(record).__name__)
    return records


def append(path: str, record: dict) -> None:
    """Rewrite the file whole with one more line, so a reader never sees a torn record (the write
    is atomic: a scratch file renamed over the old one). Lines `read` skipped are dropped."""
    lines = [json.dumps(r, sort_keys=True) for r in [*read(path), record]]
    storage.write_bytes(_url(path), ("\n".join(lines) + "\n").encode())


def record(plan: dict, summary: dict) -> dict:
    """What the next plans learn from: this run's estimate beside what it measured, and the load
    the machine had at calibration and at the run (`load.py`)."""
    hardware = plan["hardware"]
    return {
        "at": summary["finished_at"],
        "output": summary["config"]["output"],
        "profile": hardware["name"],
        "profile_learned_runs": hardware.get("learned_runs", 0),
        "input_hours": summary.get("this_run", {}).get("input_hours", summary["input_hours"]),
        "predicted_wall_seconds": plan["wall_seconds"],
        "predicted_low": plan.get("wall_seconds_low"),
        "predicted_high": plan.get("wall_seconds_high"),
        "raw_predicted_wall_seconds": plan["wall_seconds"] / plan.get("correction", 1.0),
        "actual_wall_seconds": summary["wall_seconds"],
        "predicted_stage_seconds": {s["name"]: s["seconds"] for s in plan["stages"]},
        "actual_stage_seconds": summary["stage_seconds"],
        "calibration_load": hardware.get("load"),
        "run_load": plan.get("load"),
    }


def worth_recording(summary: dict) -> bool:
    """A run that processed nothing (a rerun of a finished output) measured no estimate."""
    return summary["counts"].get("units_processed", 0) > 0


def correction(records: list[dict], profile: HardwareProfile | str) -> tuple[float, Optional[float], int]:
    """(factor, log-sd or None, runs used) for plans on `profile`.

    Plans on a profile that learned from runs already carry those runs' costs, so only the
    residuals of such plans correct them (ratios of plans on the bare calibration would count the
    same error twice); a plan on a bare calibration is corrected by plans like it. The factor is
    shrunk toward 1 while few runs back it: one run's ratio is mostly noise."""
    name = profile if isinstance(profile, str) else profile.name
    learned = not isinstance(profile, str) and profile.learned_runs > 0
    ratios = [r["actual_wall_seconds"] / r["raw_predicted_wall_seconds"] for r in records
              if r.get("profile") == name and r.get("raw_predicted_wall_seconds")
              and (r.get("profile_learned_runs", 0) > 0) == learned][-RECENT_RUNS:]
    if not ratios:
        return 1.0, None, 0
    logs = [math.log(r) for r in ratios]
    factor = math.exp(statistics.median(logs) * len(ratios) / (len(ratios) + 1))
    if len(ratios) < 3:
        return factor, None, len(ratios)
    spread = statistics.stdev(logs)
    return factor, max(spread, 0.02), len(ratios)
