"""The Hugging Face dataset card of an output (`OUTPUT/README.md`): the typed features of its
WebDataset shards, so `datasets.load_dataset(OUTPUT)` reads every shard with one schema and infers
nothing (inference from the first shard's samples types a column null there, e.g.
`near_duplicate_of`, and fails on the first later shard holding a string).

The features come from the index schema (`schemas/tables.py`): a sample's KEY.json holds its index
row but the key, unit and shard, every key always present, typed as the index types it
(`sample_meta`). Written by the job at its end, whole, only where no README.md of the user's sits.
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa
import yaml

from pipelines.io import storage
from schemas.config import ShardConfig
from schemas.tables import INDEX_SCHEMA

CARD = "README.md"
MARK = "<!-- written by voxmill: rewritten at the end of each run -->"
# in the index, not in KEY.json: the key is the sample's name; a 256-value speaker embedding would double a
# sample's JSON (join the index on the key for it)
META_EXCLUDED = ("key", "unit", "shard", "speaker_embedding")

_DTYPES = {
    pa.string(): "string", pa.large_string(): "string", pa.bool_(): "bool",
    pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
    pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64",
}


def meta_fields(schema: pa.Schema = INDEX_SCHEMA) -> list[pa.Field]:
    """The fields of a sample's KEY.json, in order."""
    return [f for f in schema if f.name not in META_EXCLUDED]


def sample_meta(row: dict, schema: pa.Schema = INDEX_SCHEMA) -> dict:
    """A KEY.json from an index row: every field of `meta_fields`, always present (null when the row
    lacks it), floats as floats and integers as integers whatever Python gave; then any other key of
    the row not excluded, unchanged."""
    meta: dict = {}
    for f in meta_fields(schema):
        value = row.get(f.name)
        if value is not None:
            if pa.types.is_floating(f.type):
                value = float(value)
            elif pa.types.is_integer(f.type):
                value = int(value)
            elif pa.types.is_string(f.type):
                value = str(value)
            elif pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type):
                value = [_struct(item, f.type.value_type) for item in value]
        meta[f.name] = value
    meta.update((k, v) for k, v in row.items() if k not in meta and k not in META_EXCLUDED)
    return meta


def _struct(item: dict, struct: pa.StructType) -> dict:
    """A struct's fields in order, floats at float32's 7 significant digits (the index's float32 as
    written, not its float64 noise: a refilter writes the same KEY.json as the run)."""
    out = {}
    for f in struct:
        value = item.get(f.name)
        out[f.name] = float(f"{value:.7g}") if value is not None and pa.types.is_floating(f.type) else value
    return out


def _feature(f: pa.Field) -> dict:
    """One field as the card's YAML declares it: a value, a list of values (the speaker embedding) or a
    list of structs (word timestamps)."""
    if pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type):
        return {"name": f.name, "list": [_feature(g) for g in f.type.value_type]}
    if pa.types.is_list(f.type):  # a vector (the speaker embedding)
        return {"name": f.name, "list": _DTYPES[f.type.value_type]}
    return {"name": f.name, "dtype": _DTYPES[f.type]}


def features_yaml(audio_format: str = "flac", schema: pa.Schema = INDEX_SCHEMA) -> list[dict]:
    """`dataset_info.features` as the card's YAML holds it (datasets' `Features._to_yaml_list` form):
    `__key__`, `__url__`, the audio (column named by its extension) and `json`, a struct.

    The audio is declared `binary` (the file's bytes), not `audio`: datasets (4+) encodes and
    decodes its `Audio` feature only through torchcodec, so `audio` would make even loading the
    text fail where torchcodec or its FFmpeg/NPP libraries are missing. Decode the bytes with
    soundfile (`pipelines.loader.hf_dataset` does), or `cast_column(ext, datasets.Audio())` where
    torchcodec works."""
    struct = [_feature(f) for f in meta_fields(schema)]
    return [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
            {"name": audio_format, "dtype": "binary"}, {"name": "json", "struct": struct}]


def card_text(audio_format: str = "flac", schema: pa.Schema = INDEX_SCHEMA) -> str:
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "shards/*.tar"}]}],
        "dataset_info": {"features": features_yaml(audio_format, schema)},
    }
    return (f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n{MARK}\n\n"
            "# voxmill output\n\n"
            "Training samples: `shards/*.tar` (WebDataset: KEY.{fmt} + KEY.json). Index: `index/*.parquet`.\n"
            "`rejected/` holds what the quality filters dropped (not for training).\n\n"
            "```python\n"
            "from datasets import load_dataset\n"
            "data = load_dataset(\"path/to/this/folder\", split=\"train\")  # __key__, {fmt} (bytes), json\n"
            "from pipelines.loader import hf_dataset\n"
            "data = hf_dataset(\"path/to/this/folder\")  # key, audio (decoded with soundfile), flat fields\n"
            "```\n").format(fmt=audio_format)


def ours(fs, path: str) -> bool:
    """Whether `path` (OUTPUT/README.md) is a card voxmill wrote (what `--restart` may delete)."""
    try:
        with fs.open(path, "rb") as fh:
            return MARK.encode() in fh.read()
    except (FileNotFoundError, IsADirectoryError):
        return False


def write_card(output: str, shards: ShardConfig, storage_options: Optional[dict] = None) -> bool:
    """Write OUTPUT/README.md (whole) for an output of WebDataset shards, unless a README.md that
    voxmill did not write is there. Returns whether it was written."""
    if shards.format != "webdataset":
        return False  # another format's files are no tars the webdataset builder reads
    url = storage.join(output, CARD)
    fs, path = storage.filesystem(url, storage_options)
    if fs.exists(path) and not ours(fs, path):
        return False
    storage.write_bytes(url, card_text(shards.audio_format).encode())
    return True
