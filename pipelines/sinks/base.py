"""The output-format plug-in point: a `Sink` Protocol and a dict of sinks keyed by `shards.format`.

A sink stores the samples of one work unit under `OUTPUT/shards/` (training) or `OUTPUT/rejected/`
(the audio of the segments the filters dropped) and reads them back. Everything else in an output
is the same whatever the format: the index and rejects parts (Parquet) name each sample's shard by
the path `write` returned, and the ledger records them. So whatever writes samples (commit), reads
them back (the loader, the report's clips, refilter) or sizes and deletes shard files (calibration,
`--restart`) goes through a sink, and another format is one module plus one line of config:
`shards.format: NAME` for a name below, or `shards.format: package.module:Class` for a sink that
lives outside voxmill (lhotse's `lhotse/shar/writers/shar.py` picks its writers by name the same way).

Sinks are "module:Class" strings imported on first use, so a format's own dependencies load only in
the process that writes or reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Iterator, Optional, Protocol

from pipelines.registry import load_class
from schemas.config import ShardConfig

TRAINING, REJECTED = "shards", "rejected"  # the two sample folders under the output root
FOLDERS = (TRAINING, REJECTED)

SINKS: dict[str, str] = {
    "webdataset": "pipelines.sinks.webdataset:WebDatasetSink",
}
DEFAULT_FORMAT = "webdataset"  # what every output made before `shards.format` existed holds


@dataclass
class Sample:
    key: str
    audio: bytes
    meta: dict = field(default_factory=dict)  # the sample's KEY.json
    ext: str = ""  # the audio's extension; "" = the config's audio_format (a copy keeps its own)


class Sink(Protocol):
    """Built as `Sink(config: ShardConfig, output: str, storage_options: Optional[dict] = None)`;
    `output` is the output root (an fsspec URL), `storage_options` fsspec's (readers on S3 pass them)."""

    def write(self, unit: int, samples: Iterable[Sample], folder: str = TRAINING) -> list[tuple[str, str]]:
        """Store one unit's samples under `folder`, each file committed whole (`storage.atomic_local_file`),
        with names derived from the unit, so a unit done again overwrites its files instead of adding
        more. Returns (shard, key) for each sample, in order; `shard` is relative to the output root
        and is what the index and rejects rows hold."""

    def read(self, shard: str, keys: Optional[Collection[str]] = None) -> Iterator[dict]:
        """The samples stored in `shard` (as `write` named it), each as {"__key__": key, EXT: bytes}
        with every stored file byte for byte ("flac" or "wav", and "json": the KEY.json). All of
        them in stored order, streamed; with `keys`, only those, in the order given (random access:
        a key the shard lacks raises KeyError)."""

    def files(self, folder: str = TRAINING) -> list[str]:
        """Every file this format wrote under `folder` (relative to the output root, sorted): what
        calibration sizes and `--restart` deletes. Scratch files are never listed."""


def sink_class(name: str) -> type:
    """The class `shards.format` names: a key of `SINKS` or a "package.module:Class" path."""
    return load_class("shards.format", name, SINKS)


def open_sink(config: ShardConfig, output: str, storage_options: Optional[dict] = None) -> Sink:
    """The sink of `config.format` on the output `output`."""
    return sink_class(config.format)(config, output, storage_options)
