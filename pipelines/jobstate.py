"""What an output folder was made with and how far it got: `_ledger/job.json` plus the unit records.

The job record pins the settings that decide the output's bytes; a rerun with other settings on
the same output would mix two datasets, so it is refused unless the user starts over.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

from pipelines import storage
from pipelines.ledger import Ledger
from schemas.config import JobConfig

OUTPUT_PARTS = ("shards", "index", "rejects", "_ledger", "summary.json")
OUTPUT_FOLDERS = ("shards", "index", "rejects", "_ledger")


class ConfigChanged(ValueError):
    """The output was started with other settings; the message names them."""


def output_settings(config: JobConfig) -> dict:
    """The settings that decide what lands in the output (not where or how fast it runs)."""
    data = config.model_dump(mode="json", exclude={"output", "plan"})
    data["engine"] = {k: data["engine"][k] for k in ("unit_minutes", "unit_max_files")}
    return data


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _url(output: str) -> str:
    return storage.join(output, "_ledger", "job.json")


def read(output: str) -> Optional[dict]:
    return storage.read_json(_url(output), missing=None)


def claim(config: JobConfig, units: int, seconds: float) -> None:
    """Record the job on a fresh output, or check that a rerun uses the same settings.

    A rerun after a crash also sweeps the scratch files and probes the crashed run left behind
    (never a committed file: those are either whole or absent).
    """
    settings = output_settings(config)
    previous = read(config.output)
    if previous and previous["fingerprint"] != fingerprint(settings):
        changed = sorted(_diff(previous["settings"], settings))
        raise ConfigChanged(
            f"{config.output} was started with other settings ({', '.join(changed)}); "
            "rerun with the original config, use --restart to start over, or pick a new output")
    storage.remove_leftovers(config.output, OUTPUT_FOLDERS)
    storage.write_json(_url(config.output), {"fingerprint": fingerprint(settings), "settings": settings,
                                             "units": units, "input_seconds": seconds})


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = set(old) | set(new)
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def clear(output: str) -> None:
    """Start over: remove everything voxmill wrote under `output` (and nothing else)."""
    fs, root = storage.filesystem(output)
    for part in OUTPUT_PARTS:
        path = f"{root.rstrip('/')}/{part}"
        if fs.exists(path):
            fs.rm(path, recursive=True)


def status(output: str) -> dict:
    """Done, pending and rejected units and hours of an output, and whether it is complete."""
    job = read(output)
    if job is None:
        raise FileNotFoundError(f"{output} holds no voxmill job (no _ledger/job.json)")
    records = list(Ledger(output).done().values())
    done_seconds = sum(r["input_seconds"] for r in records)
    summary = storage.read_json(storage.join(output, "summary.json"), missing={})
    return {
        "units": job["units"],
        "units_done": len(records),
        "units_pending": job["units"] - len(records),
        "units_failed": len(summary.get("failures", [])),
        "input_hours": job["input_seconds"] / 3600,
        "done_hours": done_seconds / 3600,
        "samples": sum(r["samples"] for r in records),
        "output_hours": sum(r["output_seconds"] for r in records) / 3600,
        "rejects": sum(r["rejects"] for r in records),
        "complete": len(records) == job["units"],
    }
