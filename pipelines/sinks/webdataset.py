"""Shard writer: WebDataset tars, each committed whole, rolled over by size or sample count.

Training samples go to `shards/`; with `shards.keep_rejected_audio`, the segments the filters
dropped go to `rejected/` in the same layout (KEY.flac + KEY.json), never into a training shard.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import webdataset as wds

from pipelines.io import storage
from schemas.config import ShardConfig

TAR_OVERHEAD = 3 * 512  # a tar header per member plus padding, roughly
TRAINING, REJECTED = "shards", "rejected"  # the two shard folders under the output root


@dataclass
class Sample:
    key: str
    audio: bytes
    meta: dict = field(default_factory=dict)
    ext: str = ""  # the audio member's extension; "" = the config's audio_format (a copy keeps its own)


def shard_name(unit: int, part: int, folder: str = TRAINING) -> str:
    """`shards/shard-000012.tar`, then `-01`, `-02` for the rare unit that overflows one shard
    (`rejected/shard-000012.tar` ... for the unit's rejected segments)."""
    suffix = "" if part == 0 else f"-{part:02d}"
    return f"{folder}/shard-{unit:06d}{suffix}.tar"


class ShardWriter:
    """Writes one work unit's samples; returns (shard, key) pairs once each shard is committed.

    Shard names derive from the unit number, so redoing a unit after a crash overwrites the
    same shards instead of adding duplicates. `folder` is `shards` (training) or `rejected`.
    """

    def __init__(self, config: ShardConfig, output_url: str, folder: str = TRAINING):
        self.config = config
        self.output_url = output_url
        self.folder = folder

    def write(self, unit: int, samples: Iterable[Sample]) -> list[tuple[str, str]]:
        placed: list[tuple[str, str]] = []
        for part, group in enumerate(self._groups(samples)):
            name = shard_name(unit, part, self.folder)
            with storage.atomic_local_file(storage.join(self.output_url, name)) as scratch:
                with open(scratch, "wb") as fh, wds.TarWriter(fh) as tar:
                    for sample in group:
                        tar.write({"__key__": sample.key, sample.ext or self.config.audio_format: sample.audio,
                                   "json": sample.meta})
            placed.extend((name, s.key) for s in group)
        return placed

    def _groups(self, samples: Iterable[Sample]) -> Iterator[list[Sample]]:
        group: list[Sample] = []
        size = 0
        for sample in samples:
            cost = len(sample.audio) + 2 * TAR_OVERHEAD + 512
            if group and (size + cost > self.config.max_bytes or len(group) >= self.config.max_samples):
                yield group
                group, size = [], 0
            group.append(sample)
            size += cost
        if group:
            yield group
