"""The one reader of an output's Parquet tables (`index/`, `rejects/`): loader, report and CLI all use it.

- Parts written by different voxmill versions carry different columns (a newer part adds quality
  scores): the schema is unified from every part's footer, not inferred from the first part, so a
  column a part lacks reads as nulls there instead of vanishing from the table or failing the read.
- Filters and column choices are pushed down: only matching row groups and wanted columns load.
- Any fsspec URL, with storage options (endpoint, credentials), opened through `storage.filesystem`
  (S3 retries and backoff included); only committed `part-*.parquet` files are read, never scratch.
- Compaction (`compact`) folds the finished units' parts into one file per block of BLOCK_UNITS
  units (`compact-FIRST-nCOUNT.parquet`), rows in unit order, so 100k units read as ~100 files.
  The manifest `_parts.json` (one object, replaced whole) names those files, the units each one
  covers and the unified schema; it is the commit point. A reader lists the parts first, then
  reads the manifest, and takes its files plus the parts of units it does not cover: the old
  files or the new, never both, never none; a file deleted under a reader makes it resolve again.
  It opens them with the manifest's schema (plus one footer: the newest part's), never a footer
  per part. Old outputs (no manifest) are read as before, footers unified, until compacted.
"""
from __future__ import annotations

import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.io import storage

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
COMPACT_PREFIX, MANIFEST = "compact-", "_parts.json"
BLOCK_UNITS = 1024  # units per compacted file: ~100 files at 100k units, and a rerun rewrites one block
FOOTER_READERS = 16  # parallel footer reads: one ranged request per part on an object store
READ_ATTEMPTS = 5  # resolve and read again when a compaction deleted a file under the reader

log = logging.getLogger("voxmill")


def part_urls(output: str, folder: str, storage_options: Optional[dict] = None) -> list[str]:
    """Full URLs of the files a reader reads under OUTPUT/folder: compacted files, then parts."""
    fs, path = storage.filesystem(storage.join(output, folder), storage_options)
    return [storage.to_url(fs, p) for p in _resolve(fs, path).paths]


def open_parts(output: str, folder: str, storage_options: Optional[dict] = None) -> ds.Dataset:
    """Every committed row under OUTPUT/folder as one dataset: the compacted files and the parts
    they do not cover, with the manifest's schema (or, without one, the schema unified from all
    parts, types promoted permissively); no parts gives an empty dataset with an empty schema."""
    fs, path = storage.filesystem(storage.join(output, folder), storage_options)
    view = _resolve(fs, path)
    return ds.dataset(view.paths, schema=view.schema, filesystem=fs, format="parquet")


def unit_rows(output: str, folder: str, unit: int, storage_options: Optional[dict] = None) -> pa.Table:
    """One unit's rows, in the order its part held them: from its part, or from the compacted file
    that covers it (pushed down to its row groups). FileNotFoundError when neither holds it."""
    fs, path = storage.filesystem(storage.join(output, folder), storage_options)
    for attempt in range(READ_ATTEMPTS):
        manifest = _read_manifest(fs, path)
        covering = [f["name"] for f in (manifest or {}).get("files", [])
                    if any(first <= unit <= last for first, last in f["units"])]
        name = covering[0] if covering else f"{PART_PREFIX}{unit:06d}{PART_SUFFIX}"
        try:
            table = pq.read_table(f"{path.rstrip('/')}/{name}", filesystem=fs)
        except FileNotFoundError:
            if not covering or attempt == READ_ATTEMPTS - 1:
                raise
            continue  # compacted again meanwhile: read the new manifest
        return table.filter(pc.equal(table["unit"], unit)) if covering else table
    raise AssertionError("unreachable")


def read_retrying(output: str, folder: str, read: Callable[[ds.Dataset], pa.Table],
                  storage_options: Optional[dict] = None) -> pa.Table:
    """`read(open_parts(...))`, opened again when a compaction deleted a file it was reading."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read(open_parts(output, folder, storage_options))
        except FileNotFoundError as err:
            if attempt == READ_ATTEMPTS - 1:
                raise
            log.info("%s/%s changed while reading (%s): reading it again", output, folder, err)
    raise AssertionError("unreachable")


@dataclass
class _View:
    """What a reader reads under one folder: the files, their schema, and the manifest."""

    paths: list[str]
    schema: pa.Schema
    manifest: Optional[dict]
    parts: dict[int, str]  # the parts the manifest does not cover, by unit
    listed: list[str]  # every committed file in the folder (the parts and compacted files)


def _resolve(fs, path: str) -> _View:
    listed = storage.list_paths(fs, path, PART_SUFFIX)  # before the manifest: see the module docstring
    manifest = _read_manifest(fs, path)
    covered = _covered(manifest)
    parts = {u: p for p in listed if (u := _part_unit(p)) is not None and u not in covered}
    if manifest is None:
        return _View(list(parts.values()), _footer_schema(fs, list(parts.values())), None, parts, listed)
    schema = _schema_from(manifest)
    if parts:  # parts written since the compaction: one footer, the newest part's, joins the schema
        newest = pq.read_schema(parts[max(parts)], filesystem=fs)
        schema = pa.unify_schemas([schema, newest], promote_options="permissive")
    compacted = [f"{path.rstrip('/')}/{f['name']}" for f in manifest["files"]]
    return _View(compacted + list(parts.values()), schema, manifest, parts, listed)


def _footer_schema(fs, paths: list[str]) -> pa.Schema:
    with ThreadPoolExecutor(min(FOOTER_READERS, max(1, len(paths)))) as pool:
        schemas = list(pool.map(lambda p: pq.read_schema(p, filesystem=fs), paths))
    return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])


def _part_unit(path: str) -> Optional[int]:
    name = path.rsplit("/", 1)[-1]
    stem = name[len(PART_PREFIX):-len(PART_SUFFIX)]
    return int(stem) if name.startswith(PART_PREFIX) and stem.isdigit() else None


def _read_manifest(fs, path: str) -> Optional[dict]:
    try:
        return json.loads(fs.cat_file(f"{path.rstrip('/')}/{MANIFEST}"))
    except FileNotFoundError:
        return None


def _covered(manifest: Optional[dict]) -> set[int]:
    return {u for f in (manifest or {}).get("files", []) for first, last in f["units"] for u in range(first, last + 1)}


def _schema_from(manifest: dict) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(manifest["schema"])))


def _ranges(units: Iterable[int]) -> list[list[int]]:
    """Sorted units as [first, last] runs: a block of consecutive units is one pair."""
    runs: list[list[int]] = []
    for unit in sorted(units):
        if runs and unit == runs[-1][1] + 1:
            runs[-1][1] = unit
        else:
            runs.append([unit, unit])
    return runs


def compact(output: str, folder: str, finished: Iterable[int], storage_options: Optional[dict] = None) -> int:
    """Fold the parts of `finished` units (those with a ledger record: a part without one may be
    rewritten) into their blocks' compacted files; returns how many parts were folded.

    Exact: a block's file holds its units' rows in unit order, then part order, whatever the
    history of compactions, so the same units give the same bytes. Safe against kill -9: new
    files get new names, the manifest is replaced whole only after they are committed, and
    parts and old files are deleted only after it; what a kill leaves behind, readers ignore and
    the next compaction deletes. One writer at a time (the caller holds the output's lease).
    """
    fs, path = storage.filesystem(storage.join(output, folder), storage_options)
    view = _resolve(fs, path)
    finished = set(finished)
    folding = {u: p for u, p in view.parts.items() if u in finished}
    manifest = view.manifest or {"files": []}
    if folding:
        manifest = _fold(fs, path, view, folding)
        _write_manifest(output, folder, manifest, storage_options)
    _sweep(fs, view.listed, manifest)
    return len(folding)


def _fold(fs, path: str, view: _View, folding: dict[int, str]) -> dict:
    """Write the new files of every block that gets parts; the manifest that names them."""
    schema = _footer_schema(fs, list(folding.values()))
    if view.manifest:
        schema = pa.unify_schemas([_schema_from(view.manifest), schema], promote_options="permissive")
    files = {f["name"]: f for f in (view.manifest or {}).get("files", [])}
    by_block = {f["units"][0][0] // BLOCK_UNITS: f for f in files.values()}
    for block in sorted({u // BLOCK_UNITS for u in folding}):
        old = by_block.get(block)
        adding = {u: p for u, p in folding.items() if u // BLOCK_UNITS == block}
        units = sorted(adding) + [u for first, last in (old["units"] if old else []) for u in range(first, last + 1)]
        sources = ([f"{path.rstrip('/')}/{old['name']}"] if old else []) + [adding[u] for u in sorted(adding)]
        table = ds.dataset(sources, schema=schema, filesystem=fs, format="parquet").to_table()
        table = table.take(pc.sort_indices(table, [("unit", "ascending")]))  # stable: part order kept
        name = f"{COMPACT_PREFIX}{block * BLOCK_UNITS:06d}-n{len(units):06d}{PART_SUFFIX}"
        with storage.atomic_local_file(storage.to_url(fs, f"{path.rstrip('/')}/{name}"), PART_SUFFIX) as scratch:
            pq.write_table(table, scratch, row_group_size=ROW_GROUP_ROWS)
        if old:
            del files[old["name"]]
        files[name] = {"name": name, "units": _ranges(units), "rows": table.num_rows}
    return {"version": 1, "schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
            "files": [files[n] for n in sorted(files)]}


ROW_GROUP_ROWS = 64 * 1024  # a filter on unit or shard skips the row groups it cannot match


def _write_manifest(output: str, folder: str, manifest: dict, storage_options: Optional[dict]) -> None:
    fs, path = storage.filesystem(storage.join(output, folder, MANIFEST), storage_options)
    with storage.atomic_local_file(storage.to_url(fs, path), ".json") as scratch:
        scratch.write_text(json.dumps(manifest, sort_keys=True))


def _sweep(fs, listed: list[str], manifest: dict) -> None:
    """Delete the parts the manifest covers and the compacted files it does not name."""
    covered, named = _covered(manifest), {f["name"] for f in manifest["files"]}
    for p in listed:
        name = p.rsplit("/", 1)[-1]
        stale = name not in named if name.startswith(COMPACT_PREFIX) else _part_unit(p) in covered
        if stale:
            _remove(fs, p)


def _remove(fs, path: str) -> None:
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def read_parts(output: str, folder: str, columns: Iterable[str] = (), filter: Optional[pc.Expression] = None,
               storage_options: Optional[dict] = None) -> pa.Table:
    """The wanted columns (all when none are named) of the rows matching `filter`, from every part.

    A column no part has is left out of the result (callers test for it); naming one in `filter`
    raises ValueError with the columns the parts do have.
    """
    def read(dataset: ds.Dataset) -> pa.Table:
        if not dataset.files:
            return pa.table({})
        names = dataset.schema.names
        wanted = [c for c in columns if c in names] if columns else None
        try:
            return dataset.to_table(columns=wanted, filter=filter)
        except pa.ArrowInvalid as err:
            if "No match for FieldRef" not in str(err):
                raise
            raise ValueError(f"filter {filter} names a column no part of {folder}/ has; they have {names}") from err

    return read_retrying(output, folder, read, storage_options)


def later_copies(index: pa.Table) -> pa.Array:
    """True for each index row whose stored audio is byte-identical (same `audio_hash`) to a row
    with a smaller key: the copies to drop, keeping one per audio, the same one whatever order
    the units committed in. A unit rejects copies within itself at run time; this finds those
    across units, from the index alone. All False when the index has no hashes."""
    if "audio_hash" not in index.column_names or index.num_rows == 0:
        return pa.array(np.zeros(index.num_rows, dtype=bool))
    order = pa.table({"key": index["key"], "hash": index["audio_hash"], "row": pa.array(np.arange(index.num_rows))})
    hashed = order.filter(pc.is_valid(order["hash"])).sort_by([("hash", "ascending"), ("key", "ascending")])
    flags = np.zeros(index.num_rows, dtype=bool)
    if hashed.num_rows > 1:
        hashes = hashed["hash"].combine_chunks()
        repeat = pc.equal(hashes.slice(1), hashes.slice(0, len(hashes) - 1)).to_numpy(zero_copy_only=False)
        flags[hashed["row"].to_numpy()[1:][repeat]] = True  # same hash as the row sorted before it
    return pa.array(flags)
