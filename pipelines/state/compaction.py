"""Compaction of an output: its ledger records into one table, its index and rejects parts into one
file per block of units (`io.tables.compact`), so every later reader makes a few requests, not
one or two per unit.

It runs at the end of a run once enough records are loose (`engine.compact_min_units`) and on
`voxmill compact OUTPUT`. Only the parts of units with a ledger record are folded: a part
without one belongs to a unit a kill interrupted, which the next run rewrites.
"""
from __future__ import annotations

import logging

from pipelines.io import storage, tables
from pipelines.state.ledger import Ledger

log = logging.getLogger("voxmill")

FOLDERS = ("index", "rejects")


def compact_output(output: str) -> dict[str, int]:
    """Compact everything finished under `output` (the caller holds its lease); what was folded."""
    storage.remove_leftovers(output, (*FOLDERS, "_ledger"))  # scratch files of a compaction killed mid-write
    ledger = Ledger(output)
    finished = ledger.table(["unit"])["unit"].to_pylist()
    folded = {folder: tables.compact(output, folder, finished) for folder in FOLDERS}
    folded["ledger"] = ledger.compact()
    log.info("compacted %s: %s", output, folded)
    return folded


def compact_if_due(output: str, min_units: int) -> dict[str, int]:
    """`compact_output` once `min_units` ledger records are loose (a small output stays as it is)."""
    return compact_output(output) if Ledger(output).loose() >= min_units else {}
