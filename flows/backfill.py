"""Prefect flow `backfill_corpus`: one `prepare_corpus` flow run per input prefix (or per day of a
date range), at most `concurrency` at a time, each into its own folder under OUTPUT.

Where each prefix goes: OUTPUT/<date> for a date range, OUTPUT/<last path part of the prefix>
otherwise (sanitised), so a day or a prefix is one ordinary voxmill output (ledger, index, status).
Rerunning a backfill skips prefixes whose output is complete (`jobstate.status`) and resumes the rest.
"""
from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.prepare import prepare_corpus
from pipelines.io import storage
from pipelines.state import jobstate


def dated_prefixes(pattern: str, first: str, last: str) -> dict[str, str]:
    """{date: prefix} for each day from `first` to `last` (ISO dates, inclusive), `{date}` filled in."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    if end < start:
        raise ValueError(f"--to {last} is before --from {first}")
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    return {d.isoformat(): pattern.format(date=d.isoformat()) for d in days}


def folder_name(prefix: str) -> str:
    """A prefix's output folder: its last path part, safe on any storage (`s3://b/raw/2026-11-01/` -> `2026-11-01`)."""
    plain = [part for part in prefix.split("/") if part and not any(c in part for c in "*?[")]
    last = plain[-1] if plain else "root"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", last)


def targets(prefixes: list[str], output: str) -> dict[str, str]:
    """{prefix: its output}; two prefixes that would share a folder are refused (outputs never mix)."""
    out = {p: storage.join(output, folder_name(p)) for p in prefixes}
    if len(set(out.values())) != len(out):
        raise ValueError("two prefixes map to the same output folder; give them distinct last path parts")
    return out


def is_complete(output: str) -> bool:
    try:
        return jobstate.status(output)["complete"]
    except FileNotFoundError:
        return False


@task(cache_policy=NO_CACHE, task_run_name="prefix {prefix}")
def run_prefix(prefix: str, output: str, config_path: Optional[str], overrides: Optional[dict[str, Any]],
               plan: bool) -> dict:
    """One prefix as its own `prepare-corpus` flow run (a subflow run of the backfill in the UI)."""
    if is_complete(output):
        get_run_logger().info("%s: %s is complete, skipped", prefix, output)
        return {"prefix": prefix, "output": output, "skipped": True}
    summary = prepare_corpus(input=prefix, output=output, config_path=config_path, overrides=overrides, plan=plan)
    return {"prefix": prefix, "output": output, "skipped": False, "samples": summary["counts"]["samples"]}


@flow(name="backfill-corpus")
def backfill_corpus(output: str, prefixes: Optional[list[str]] = None, pattern: Optional[str] = None,
                    date_from: Optional[str] = None, date_to: Optional[str] = None,
                    config_path: Optional[str] = None, overrides: Optional[dict[str, Any]] = None,
                    concurrency: int = 1, plan: bool = False) -> list[dict]:
    """Backfill many prefixes, `concurrency` flow runs at a time (keep it within the Ray cluster:
    each run takes an ASR actor per GPU, or per node without GPUs, plus prep CPUs)."""
    chosen = list(prefixes or [])
    if pattern:
        if not (date_from and date_to):
            raise ValueError("a pattern needs --from and --to")
        chosen += list(dated_prefixes(pattern, date_from, date_to).values())
    if not chosen:
        raise ValueError("nothing to backfill: give --prefix or --pattern with --from/--to")
    plan_of = targets(chosen, output)
    results: list = []
    step = max(1, concurrency)
    for i in range(0, len(chosen), step):  # at most `concurrency` flow runs in flight
        futures = [run_prefix.submit(p, plan_of[p], config_path, overrides, plan) for p in chosen[i:i + step]]
        results += [f.result(raise_on_failure=False) for f in futures]
    failed = [r for r in results if not isinstance(r, dict)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(chosen)} prefixes failed; rerun to resume: {failed[0]}")
    return results
