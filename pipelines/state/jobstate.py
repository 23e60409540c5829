"""What an output folder was made with and how far it got: `_ledger/job.json` plus the unit records.

The job record pins the settings that decide the output's bytes; a rerun with other settings on
the same output would mix two datasets, so it is refused unless the user starts over.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.io import storage
from pipelines.sinks import card
from pipelines.sinks.base import DEFAULT_FORMAT, FOLDERS, Sink, open_sink
from pipelines.state import layout as layouts
from pipelines.state.lease import PREFIX as LEASE_PREFIX
from pipelines.state.ledger import Ledger
from pipelines.state.ledger import totals as ledger_totals
from pipelines.state.units import WorkUnit, cut_units, ordered
from schemas.config import JobConfig, ShardConfig, SpeakersConfig

OUTPUT_FOLDERS = (*FOLDERS, "index", "rejects", "_ledger")
# Settings added after outputs were made, with the value every earlier output was made with: left
# out of the settings (and so of the fingerprint) while at it, so those outputs keep their
# fingerprint (a rerun, `--new-version` and refilter's "nothing changed" compare fingerprints).
LATER_DEFAULTS = {("shards", "format"): DEFAULT_FORMAT, ("asr", "backend"): "faster-whisper",
                  ("shards", "keep_rejected_audio"): True, ("asr", "word_timestamps"): False,
                  ("discover", "reference_extensions"): ["normalized.txt", "txt", "lab"],
                  ("discover", "reference_manifest"): None, ("discover", "reference_path_column"): "audio_filepath",
                  ("discover", "reference_text_column"): "text", ("quality", "max_wer"): None,
                  ("quality", "max_cer"): None, ("quality", "min_speaker_purity"): None,
                  **{("speakers", key): value for key, value in SpeakersConfig().model_dump(mode="json").items()}}


class ConfigChanged(ValueError):
    """The output was started with other settings; the message names them."""


def output_settings(config: JobConfig) -> dict:
    """The settings that decide what lands in the output (not where or how fast it runs)."""
    data = config.model_dump(mode="json", exclude={"output", "plan"})
    data["engine"] = {k: data["engine"][k] for k in ("unit_minutes", "unit_max_files")}
    for (section, key), value in LATER_DEFAULTS.items():
        if data[section].get(key) == value:
            del data[section][key]
    return {section: values for section, values in data.items() if values != {}}  # a section added later, at its defaults


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _url(output: str) -> str:
    return storage.join(output, "_ledger", "job.json")


def read(output: str) -> Optional[dict]:
    return storage.read_json(_url(output), missing=None)


def sink(output: str, storage_options: Optional[dict] = None) -> Sink:
    """The sink that reads `output`'s samples back: the `shards.format` its job was made with
    (`_ledger/job.json`); the default format when the output has no job record (made before
    `shards.format` existed, or a copy of only its shards and index)."""
    fs, path = storage.filesystem(_url(output), storage_options)
    try:
        with fs.open(path, "rb") as fh:
            settings = json.load(fh).get("settings", {})
    except FileNotFoundError:
        settings = {}
    shards = settings.get("shards", {})
    return open_sink(ShardConfig(format=shards.get("format", DEFAULT_FORMAT)), output, storage_options)


def claim(config: JobConfig, manifest: pa.Table) -> list[WorkUnit]:
    """Record the job on a fresh output, or check that a rerun uses the same settings; return its units.

    Incremental by design: the units of earlier runs are read back from `_ledger/layout-*` and
    files not in any of them become new units numbered after the last one (known units keep their
    files and numbers, so a late file never shifts a boundary: a unit cut off by a crash is redone
    under the same name). The new layout is committed before any unit starts, so a crashed run
    resumes with the very same units. `manifest` is a table (its known files are dropped here) or a
    discovery whose `batches()` yields only new files, in uri order (pipelines.stages.discover).
    A rerun after a crash also sweeps the scratch files and probes the crashed run left behind
    (never a committed file: those are either whole or absent).
    """
    settings = output_settings(config)
    previous = read(config.output)
    changed = changed_settings(previous, settings) if previous else []
    if changed:
        raise ConfigChanged(
            f"{config.output} was started with other settings ({', '.join(changed)}); rerun with the "
            "original config, use --new-version to write OUTPUT/vN/ beside it, --restart to start over, "
            "or pick a new output")
    storage.remove_leftovers(config.output, OUTPUT_FOLDERS)
    known = layout(config.output)
    start = max((u.index for u in known), default=-1) + 1
    added = layouts.append(config.output, start, cut_units(new_files(config.output, manifest), start, config.engine))
    units = known + added
    storage.write_json(_url(config.output), {"fingerprint": fingerprint(settings), "settings": settings,
                                             "units": len(units), "input_seconds": sum(u.seconds for u in units),
                                             "units_added": len(added)})
    return units


def changed_settings(job: dict, settings: dict) -> list[str]:
    """How `settings` differ from those a job record was made with (`key: old -> new`), if at all."""
    if job["fingerprint"] == fingerprint(settings):
        return []
    return sorted(_diff(job["settings"], settings))


def new_files(output: str, manifest) -> Iterable[pa.RecordBatch]:
    """Manifest batches of the files no unit of `output` holds yet, in uri order."""
    if not isinstance(manifest, pa.Table):
        return manifest.batches()
    known = layouts.known_ids(output)
    fresh = manifest.filter(pc.invert(pc.is_in(manifest.column("id"), value_set=known))) if len(known) else manifest
    return ordered(fresh).to_batches(max_chunksize=layouts.ROW_GROUP)


def layout(output: str) -> list[WorkUnit]:
    """Every unit this output was planned with, over all its runs, in index order."""
    return layouts.read(output)


def versioned(config: JobConfig) -> JobConfig:
    """`--new-version`: the same job into OUTPUT itself when its settings match (or it is new),
    else into the first OUTPUT/vN/ (N = 2, 3, ...) that is new or was made with these settings.

    Every version is a whole, separate output with its own ledger; none is ever mixed with another.
    """
    wanted = output_settings(config)
    candidate, n = config.output, 1
    while True:
        job = read(candidate)
        if job is None or not changed_settings(job, wanted):
            return config.model_copy(update={"output": candidate})
        n += 1
        candidate = storage.join(config.output, f"v{n}")


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


class NotAnOutput(ValueError):
    """`--restart` on a folder that holds files but no voxmill job: nothing is deleted."""


# what voxmill writes in each table folder of an output (the sample folders: what its sink lists;
# `_ledger/` is wholly voxmill's once job.json is there)
WRITTEN = {folder: ("part-*.parquet", "compact-*.parquet", "_parts.json") for folder in ("index", "rejects")}


def check_restartable(output: str) -> None:
    """Refuse `--restart` unless `output` is new, empty, or holds a voxmill job (`_ledger/job.json`):
    a mistyped output must never cost a user their own files."""
    if read(output) is not None:
        return
    fs, root = storage.filesystem(output)
    try:
        present = fs.exists(root) and fs.ls(root, detail=False)
    except FileNotFoundError:
        return
    if present:
        raise NotAnOutput(f"{output} holds files but no voxmill job (no _ledger/job.json): --restart deletes "
                          "only what voxmill wrote, so it deleted nothing; pick another output")


def clear(output: str, keep: Optional[str] = None) -> None:
    """Start over: remove what voxmill wrote under `output` and nothing else — its own file names in
    its own folders, every file of `_ledger/` but the lease this run holds, `summary.json` —
    and then each of those folders that is left empty."""
    check_restartable(output)
    fs, root = storage.filesystem(output)
    root = root.rstrip("/")
    samples = sink(output)
    stored = [f"{root}/{name}" for folder in FOLDERS for name in samples.files(folder)]
    doomed = stored + [p for folder, patterns in WRITTEN.items() for pattern in patterns
                       for p in fs.glob(f"{root}/{folder}/{pattern}")]
    kept = storage.filesystem(keep)[1].rstrip("/") if keep else None  # this run's listing
    doomed += [p for p in storage.list_paths(fs, f"{root}/_ledger")
               if not p.rsplit("/", 1)[-1].startswith(LEASE_PREFIX) and p.rstrip("/") != kept]
    doomed += [f"{root}/summary.json"] if fs.exists(f"{root}/summary.json") else []
    doomed += [f"{root}/{card.CARD}"] if card.ours(fs, f"{root}/{card.CARD}") else []  # a README of yours stays
    for path in doomed:
        fs.rm(path, recursive=True)
    nested = {path.rsplit("/", 1)[0] for path in stored} - {f"{root}/{folder}" for folder in FOLDERS}
    for folder in sorted(nested, key=len, reverse=True):  # a format's own subfolders, deepest first
        _remove_if_empty(fs, folder)
    for folder in (*FOLDERS, *WRITTEN, "_ledger"):
        _remove_if_empty(fs, f"{root}/{folder}")


def _remove_if_empty(fs, path: str) -> None:
    try:
        if fs.isdir(path) and not fs.ls(path, detail=False):
            fs.rm(path, recursive=True)
    except (FileNotFoundError, OSError):
        pass  # not there, or holds something of the user's: leave it


def status(output: str) -> dict:
    """Done, pending and rejected units and hours of an output, and whether it is complete."""
    job = read(output)
    if job is None:
        raise FileNotFoundError(f"{output} holds no voxmill job (no _ledger/job.json)")
    records = Ledger(output).table(["input_seconds", "output_seconds", "samples", "rejects"])  # typed: no record parsed
    done = ledger_totals(records)
    summary = storage.read_json(storage.join(output, "summary.json"), missing={})
    return {
        "units": job["units"],
        "units_done": records.num_rows,
        "units_pending": job["units"] - records.num_rows,
        "units_failed": len(summary.get("failures", [])),
        "input_hours": job["input_seconds"] / 3600,
        "done_hours": done["input_seconds"] / 3600,
        "samples": done["samples"],
        "output_hours": done["output_seconds"] / 3600,
        "rejects": done["rejects"],
        "complete": records.num_rows == job["units"],
    }
