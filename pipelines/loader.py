"""Training loader: voxmill shards into PyTorch, filtered through the index, batched by audio seconds.

The Parquet index is the truth about what an output holds: the shard list and any filter come
from it, so a half-written unit (shards, no index part yet) is never read. Streaming is plain
webdataset; random access reads one tar member by its byte range.
"""
from __future__ import annotations

import io
import os
import random
import re
import tarfile
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Iterable, Iterator, Sequence, TypedDict

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf
import soxr
import torch
import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from pipelines.io import tables

AUDIO_EXTENSIONS = ("flac", "wav")


class Utterance(TypedDict):
    key: str
    waveform: torch.Tensor  # float32, mono, shape (samples,)
    sample_rate: int
    text: str
    meta: dict[str, Any]  # the sample's KEY.json (source, start/end, duration, scores)


class Batch(TypedDict):
    keys: list[str]
    waveforms: torch.Tensor  # (batch, longest), zero-padded
    lengths: torch.Tensor  # int64 (batch,), samples before padding
    sample_rate: int
    texts: list[str]
    metas: list[dict[str, Any]]


# ---- filters: `column op literal`, parsed into a pyarrow expression (never eval'd) ----

_CONDITION = re.compile(
    r"""^\s*(?P<column>[A-Za-z_]\w*)\s*(?P<op>==|!=|<=|>=|<|>)\s*
        (?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|'[^']*'|"[^"]*")\s*$""",
    re.VERBOSE,
)
_OPS = {"==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal"}


def parse_filter(condition: str) -> tuple[str, pc.Expression]:
    """`dnsmos >= 3.2`, `duration < 15`, `language == 'en'`: (column, expression); one comparison with
    a number or a quoted string, nothing else."""
    match = _CONDITION.match(condition)
    if not match:
        raise ValueError(f"bad filter {condition!r}: expected `column op value`, op one of {' '.join(_OPS)}")
    raw = match["value"]
    value: object = raw[1:-1] if raw[0] in "'\"" else float(raw) if re.search(r"[.eE]", raw) else int(raw)
    return match["column"], getattr(pc, _OPS[match["op"]])(pc.field(match["column"]), pc.scalar(value))


def read_index(root: str, filters: str | Sequence[str] = (), columns: Sequence[str] | None = None,
               storage_options: dict | None = None) -> pa.Table:
    """The index rows matching every condition, read with pushdown so only those rows load.

    Every part counts (`tables.open_parts`): a column only newer parts have can be filtered on,
    and reads as null in the older parts' rows.
    """
    parsed = [parse_filter(c) for c in ([filters] if isinstance(filters, str) else filters)]
    dataset = tables.open_parts(root, "index", storage_options)
    if not dataset.files:
        raise FileNotFoundError(f"no index parts under {root.rstrip('/')}/index: not a voxmill output, "
                                "or no unit has finished yet")
    names = dataset.schema.names
    unknown = sorted({column for column, _ in parsed} - set(names))
    if unknown:
        raise ValueError(f"filter on unknown column {unknown}; the index has {names}")
    missing = [c for c in columns or () if c not in names]
    if missing:
        raise ValueError(f"unknown column {missing}; the index has {names}")
    expression = None
    for _, term in parsed:
        expression = term if expression is None else expression & term
    return dataset.to_table(columns=list(columns) if columns else None, filter=expression)


# ---- decoding ----

def _read_audio(data: bytes, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """FLAC/WAV bytes to a float32 mono tensor, resampled with soxr when a rate is asked for."""
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if sample_rate and sample_rate != rate:
        mono, rate = soxr.resample(mono, rate, sample_rate).astype(np.float32, copy=False), sample_rate
    return torch.from_numpy(np.ascontiguousarray(mono)), rate


def _decoder(sample_rate: int | None) -> wds.Decoder:
    """webdataset's decoder with an audio handler; JSON through its default handlers."""
    audio = wds.handle_extension(" ".join(AUDIO_EXTENSIONS), partial(_read_audio, sample_rate=sample_rate))
    return wds.Decoder([audio], partial=True)


def _utterance(sample: dict) -> Utterance:
    ext = next(e for e in AUDIO_EXTENSIONS if e in sample)
    waveform, rate = sample[ext]
    meta = sample.get("json") or {}
    return Utterance(key=sample["__key__"], waveform=waveform, sample_rate=rate, text=meta.get("text", ""), meta=meta)


def collate(items: Sequence[Utterance]) -> Batch:
    """Pad to the longest waveform in the batch; `lengths` says where each one really ends."""
    rates = {u["sample_rate"] for u in items}
    if len(rates) != 1:
        raise ValueError(f"mixed sample rates in one batch {sorted(rates)}: pass sample_rate= to resample")
    lengths = np.array([u["waveform"].numel() for u in items], dtype=np.int64)
    # numpy, not torch: a plain copy with no intra-op thread pool to wake (tens of ms on a busy host)
    padded = np.zeros((len(items), int(lengths.max())), dtype=np.float32)
    for row, u in enumerate(items):
        padded[row, : lengths[row]] = u["waveform"].numpy()
    waveforms, lengths = torch.from_numpy(padded), torch.from_numpy(lengths)
    return Batch(keys=[u["key"] for u in items], waveforms=waveforms, lengths=lengths, sample_rate=rates.pop(),
                 texts=[u["text"] for u in items], metas=[u["meta"] for u in items])


def padding_ratio(batches: Iterable[Batch]) -> float:
    """Padded-in zeros / all samples of the padded tensors: the compute bucketing saves."""
    padded = total = 0
    for batch in batches:
        total += batch["waveforms"].numel()
        padded += batch["waveforms"].numel() - int(batch["lengths"].sum())
    return padded / total if total else 0.0


# ---- bucketing ----

def _seconds(sample: dict) -> float:
    return float(sample["json"]["duration"])


def bucket_by_seconds(samples: Iterable[dict], max_seconds: float, pool: int, rng: random.Random,
                      max_spread: float = 1.1) -> Iterator[list]:
    """Sort a pool of samples by duration and cut it into batches of at most `max_seconds` padded.

    Neighbours in duration share a batch, and a batch's longest is at most `max_spread` times its
    shortest, so padding stays under 1 - 1/max_spread. Batches of a pool go out in random order.
    Samples are still encoded here, so a large pool costs little memory.
    """
    buffer: list[dict] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= pool:
            yield from _cut(buffer, max_seconds, max_spread, rng)
            buffer = []
    yield from _cut(buffer, max_seconds, max_spread, rng)


def _cut(buffer: list[dict], max_seconds: float, max_spread: float, rng: random.Random) -> list[list[dict]]:
    batches: list[list[dict]] = []
    batch: list[dict] = []
    for sample in sorted(buffer, key=_seconds):
        seconds = _seconds(sample)  # the longest so far: padded cost is count x longest
        if batch and ((len(batch) + 1) * seconds > max_seconds or seconds > max_spread * _seconds(batch[0])):
            batches.append(batch)
            batch = []
        batch.append(sample)
    if batch:
        batches.append(batch)
    rng.shuffle(batches)
    return batches


def _decode_one(sample: dict, decoder: wds.Decoder) -> Utterance:
    return _utterance(decoder(sample))


def _decode_batch(samples: list[dict], decoder: wds.Decoder) -> Batch:
    return collate([_utterance(decoder(s)) for s in samples])


# ---- streaming ----

def distributed_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit rank/world size, else torch.distributed's, else RANK/WORLD_SIZE, else a single node."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _node_split(urls: Iterable[dict], rank: int, world_size: int) -> Iterator[dict]:
    for i, url in enumerate(urls):
        if i % world_size == rank:
            yield url


def _open_shards(sources: Iterable[dict], storage_options: dict) -> Iterator[dict]:
    """webdataset's url_opener, through fsspec (s3://, gs://, ... and local paths)."""
    for source in sources:
        with fsspec.open(source["url"], "rb", **storage_options) as stream:
            yield {**source, "stream": stream}  # the tar is read whole before the next pull closes it


def _keep_keys(sample: dict, keys: frozenset[str]) -> bool:
    return sample["__key__"] in keys


@dataclass
class SpeechShards(torch.utils.data.IterableDataset):
    """Utterances (or, with `batch_seconds`, padded batches) from a voxmill output, for a DataLoader.

    Shards are shuffled with `seed + epoch` (the same order on every node), dealt round-robin to
    nodes, then to DataLoader workers, so each sample is seen exactly once per epoch. Use
    `DataLoader(dataset, batch_size=None, num_workers=N)` when batching here; call `set_epoch`.
    Nodes can get unequal sample counts (shards differ in size): under DDP, stop all ranks at the
    shortest (e.g. `torch.distributed.algorithms.Join`).
    """

    root: str
    filters: str | Sequence[str] = ()
    sample_rate: int | None = None  # resample on load (soxr); None keeps the stored rate
    batch_seconds: float | None = None  # batch by padded audio seconds, bucketed by duration
    bucket_pool: int = 1000  # samples sorted together for bucketing (still encoded: cheap)
    bucket_spread: float = 1.1  # longest / shortest in a batch: padding < 1 - 1/spread
    shuffle: int = 1000  # sample shuffle buffer (0: none)
    seed: int = 0
    epoch: int = 0
    rank: int | None = None
    world_size: int | None = None
    storage_options: dict | None = None
    drop_duplicates: bool = False  # byte-identical audio in several units: keep the smallest key only

    def __post_init__(self) -> None:
        super().__init__()
        self.rank, self.world_size = distributed_rank(self.rank, self.world_size)
        columns = ["key", "shard", "duration"] + (["audio_hash"] if self.drop_duplicates else [])
        table = read_index(self.root, self.filters, columns, self.storage_options)  # no hashes: a clear error
        if self.drop_duplicates:
            table = table.filter(pc.invert(tables.later_copies(table)))
        self.num_samples = table.num_rows
        self.seconds = float(pc.sum(table["duration"]).as_py() or 0.0)
        base = self.root.rstrip("/")
        self.urls = [f"{base}/{s}" for s in sorted(pc.unique(table["shard"]).to_pylist())]
        self.keys = frozenset(table["key"].to_pylist()) if self.filters or self.drop_duplicates else None

    def set_epoch(self, epoch: int) -> None:
        """A new shard order (and shuffle seed) per epoch; every node must be given the same epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Utterance | Batch]:
        return iter(self.pipeline()) if self.urls else iter(())

    def pipeline(self) -> wds.DataPipeline:
        """The webdataset pipeline for this node and (when called inside one) DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, self.rank, info.id if info else 0)))
        stages: list = [
            wds.SimpleShardList(self.urls, seed=self.seed + self.epoch),
            partial(_node_split, rank=self.rank, world_size=self.world_size),
            wds.split_by_worker,
            partial(_open_shards, storage_options=self.storage_options or {}),
            tar_file_expander,
            group_by_keys,
        ]
        if self.keys is not None:
            stages.append(wds.select(partial(_keep_keys, keys=self.keys)))
        stages.append(wds.decode(only=["json"]))  # audio stays encoded until its batch is formed
        if self.shuffle:
            stages.append(wds.shuffle(self.shuffle, initial=min(self.shuffle, 100), rng=rng))
        decoder = _decoder(self.sample_rate)
        if self.batch_seconds:
            stages.append(partial(bucket_by_seconds, max_seconds=self.batch_seconds, pool=self.bucket_pool,
                                  rng=rng, max_spread=self.bucket_spread))
            stages.append(wds.map(partial(_decode_batch, decoder=decoder)))
        else:
            stages.append(wds.map(partial(_decode_one, decoder=decoder)))
        return wds.DataPipeline(*stages)


# ---- random access ----

class IndexedShards:
    """Any sample by key: index -> shard -> the member's byte range, read with one ranged request.

    The member offsets of a shard are read once (tar headers only) and cached, so later lookups
    in the same shard cost one read each.
    """

    def __init__(self, root: str, sample_rate: int | None = None, storage_options: dict | None = None,
                 cached_shards: int = 256, rejected: bool = False):
        """`rejected=True`: the segments the filters dropped instead, from `rejected/` shards (those
        whose audio the run kept: shards.keep_rejected_audio); never mixed with the training samples."""
        self.fs, path = fsspec.url_to_fs(root, **(storage_options or {}))
        self.base = path.rstrip("/")
        if rejected:
            table = tables.read_parts(root, "rejects", ("key", "shard"), storage_options=storage_options)
            if "shard" not in table.column_names:
                raise FileNotFoundError(f"{root} keeps no audio of its rejects (made before rejected/ shards existed)")
            table = table.filter(pc.is_valid(table["shard"]))
        else:
            table = read_index(root, columns=["key", "shard"], storage_options=storage_options)
        self.shard_of = dict(zip(table["key"].to_pylist(), table["shard"].to_pylist()))
        self.decoder = _decoder(sample_rate)
        self.members = lru_cache(maxsize=cached_shards)(self._read_members)

    def __len__(self) -> int:
        return len(self.shard_of)

    def __contains__(self, key: str) -> bool:
        return key in self.shard_of

    def _read_members(self, shard: str) -> dict[str, dict[str, tuple[int, int]]]:
        """key -> extension -> (data offset, size), from the tar headers of one shard."""
        members: dict[str, dict[str, tuple[int, int]]] = {}
        with self.fs.open(f"{self.base}/{shard}", "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for info in tar:
                key, ext = base_plus_ext(info.name)
                if info.isreg() and key:
                    members.setdefault(key, {})[ext] = (info.offset_data, info.size)
        return members

    def raw(self, key: str) -> dict[str, bytes]:
        """The sample's stored files, byte for byte ({"flac": ..., "json": ...}), in one ranged read:
        a sample's members sit next to each other in the tar."""
        shard = self.shard_of[key]
        spans = self.members(shard)[key]
        start = min(offset for offset, _ in spans.values())
        end = max(offset + size for offset, size in spans.values())
        block = self.fs.cat_file(f"{self.base}/{shard}", start=start, end=end)
        return {ext: block[offset - start: offset - start + size] for ext, (offset, size) in spans.items()}

    def __getitem__(self, key: str) -> Utterance:
        return _decode_one({"__key__": key, **self.raw(key)}, self.decoder)
