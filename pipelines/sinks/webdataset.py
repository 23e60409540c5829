"""The WebDataset sink: tars, each committed whole, rolled over by size or sample count.

A sample is KEY.flac (or .wav) + KEY.json, next to each other in its tar, so one ranged read gets
both. Shard names derive from the unit number (`shards/shard-000012.tar`, then `-01`, `-02` for
the rare unit that overflows one shard); the rejected segments' audio lands in `rejected/` in the
same layout, never in a training shard.
"""
from __future__ import annotations

import re
import tarfile
from functools import lru_cache
from typing import Collection, Iterable, Iterator, Optional

from pipelines.io import storage
from pipelines.sinks.base import TRAINING, Sample
from schemas.config import ShardConfig

TAR_OVERHEAD = 3 * 512  # a tar header per member plus padding, roughly
# A member's key and extension: the key ends at the first dot of the file name, as webdataset's readers
# split it. Matched here because `import webdataset` imports torch (seconds and ~450 MB), which random
# access (the report's clips, IndexedShards) does not need; writing and streaming import it when used.
MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def shard_name(unit: int, part: int, folder: str = TRAINING) -> str:
    """`shards/shard-000012.tar`, then `-01`, `-02` for the rare unit that overflows one shard
    (`rejected/shard-000012.tar` ... for the unit's rejected segments)."""
    suffix = "" if part == 0 else f"-{part:02d}"
    return f"{folder}/shard-{unit:06d}{suffix}.tar"


class WebDatasetSink:
    """Writes a unit's samples to WebDataset tars and reads them back (see `sinks.base.Sink`).

    Random access reads a sample's members with one ranged request; the member offsets of a shard
    come from its tar headers, read once and kept for the last `CACHED_SHARDS` shards.
    """

    CACHED_SHARDS = 256

    def __init__(self, config: ShardConfig, output: str, storage_options: Optional[dict] = None):
        self.config = config
        self.output = output
        self.fs, root = storage.filesystem(output, storage_options)
        self.root = root.rstrip("/")
        self.members = lru_cache(maxsize=self.CACHED_SHARDS)(self._read_members)

    def write(self, unit: int, samples: Iterable[Sample], folder: str = TRAINING) -> list[tuple[str, str]]:
        import webdataset as wds

        placed: list[tuple[str, str]] = []
        for part, group in enumerate(self._groups(samples)):
            name = shard_name(unit, part, folder)
            with storage.atomic_local_file(storage.join(self.output, name)) as scratch:
                with open(scratch, "wb") as fh, wds.TarWriter(fh) as tar:
                    for sample in group:
                        tar.write({"__key__": sample.key, sample.ext or self.config.audio_format: sample.audio,
                                   "json": sample.meta})
            placed.extend((name, s.key) for s in group)
        return placed

    def read(self, shard: str, keys: Optional[Collection[str]] = None) -> Iterator[dict]:
        if keys is None:
            return self._stream(shard)
        return self._pick(shard, list(keys))

    def files(self, folder: str = TRAINING) -> list[str]:
        found = self.fs.glob(f"{self.root}/{folder}/shard-*.tar")
        return sorted(f"{folder}/{path.rstrip('/').rsplit('/', 1)[-1]}" for path in found)

    def _stream(self, shard: str) -> Iterator[dict]:
        """webdataset's own tar expansion, so a sample splits into members exactly as webdataset's
        readers split it (the key ends at the name's first dot)."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        with self.fs.open(f"{self.root}/{shard}", "rb") as stream:
            for sample in group_by_keys(tar_file_expander([{"url": shard, "stream": stream}])):
                sample.pop("__url__", None)
                yield sample

    def _pick(self, shard: str, keys: list[str]) -> Iterator[dict]:
        members = self.members(shard)
        for key in keys:
            spans = members[key]
            start = min(offset for offset, _ in spans.values())
            end = max(offset + size for offset, size in spans.values())
            block = self.fs.cat_file(f"{self.root}/{shard}", start=start, end=end)  # members sit side by side
            yield {"__key__": key, **{ext: block[offset - start: offset - start + size]
                                      for ext, (offset, size) in spans.items()}}

    def _read_members(self, shard: str) -> dict[str, dict[str, tuple[int, int]]]:
        """key -> extension -> (data offset, size), from the tar headers of one shard."""
        members: dict[str, dict[str, tuple[int, int]]] = {}
        with self.fs.open(f"{self.root}/{shard}", "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for info in tar:
                named = MEMBER_NAME.match(info.name)
                if info.isreg() and named:
                    members.setdefault(named.group(1), {})[named.group(2)] = (info.offset_data, info.size)
        return members

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
