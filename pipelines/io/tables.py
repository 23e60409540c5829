"""The one reader of an output's Parquet tables (`index/`, `rejects/`): loader, report and CLI all use it.

- Parts written by different voxmill versions carry different columns (a newer part adds quality
  scores): the schema is unified from every part's footer, not inferred from the first part, so a
  column a part lacks reads as nulls there instead of vanishing from the table or failing the read.
- Filters and column choices are pushed down: only matching row groups and wanted columns load.
- Any fsspec URL, with storage options (endpoint, credentials), opened through `storage.filesystem`
  (S3 retries and backoff included); only committed `part-*.parquet` files are read, never scratch.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.io import storage

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
FOOTER_READERS = 16  # parallel footer reads: one ranged request per part on an object store


def part_urls(output: str, folder: str, storage_options: Optional[dict] = None) -> list[str]:
    """Full URLs of the committed parts under OUTPUT/folder, sorted."""
    fs, path = storage.filesystem(storage.join(output, folder), storage_options)
    return [storage.to_url(fs, p) for p in storage.list_paths(fs, path, PART_SUFFIX, PART_PREFIX)]


def open_parts(output: str, folder: str, storage_options: Optional[dict] = None) -> ds.Dataset:
    """Every committed part under OUTPUT/folder as one dataset, its schema unified from all parts
    (types promoted permissively); no parts gives an empty dataset with an empty schema."""
    fs, path = storage.filesystem(storage.join(output, folder), storage_options)
    paths = storage.list_paths(fs, path, PART_SUFFIX, PART_PREFIX)
    with ThreadPoolExecutor(min(FOOTER_READERS, max(1, len(paths)))) as pool:
        schemas = list(pool.map(lambda p: pq.read_schema(p, filesystem=fs), paths))
    schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    return ds.dataset(paths, schema=schema, filesystem=fs, format="parquet")


def read_parts(output: str, folder: str, columns: Iterable[str] = (), filter: Optional[pc.Expression] = None,
               storage_options: Optional[dict] = None) -> pa.Table:
    """The wanted columns (all when none are named) of the rows matching `filter`, from every part.

    A column no part has is left out of the result (callers test for it); naming one in `filter`
    raises ValueError with the columns the parts do have.
    """
    dataset = open_parts(output, folder, storage_options)
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
