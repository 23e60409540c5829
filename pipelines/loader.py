"""Training loader: voxmill shards into PyTorch, filtered through the index, batched by audio seconds.

The Parquet index is the truth about what an output holds: the shard list and any filter come
from it, so a half-written unit (shards, no index part yet) is never read. Samples are read back
by the output's sink (`shards.format`, `pipelines/sinks/`): streamed shard by shard through a
webdataset pipeline, or one by key (the WebDataset sink reads one sample's members by byte range).
"""
from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable, Iterator, Optional, Sequence, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf
import soxr
import torch
import webdataset as wds

from pipelines.io import tables
from pipelines.sinks.base import Sink
from pipelines.state import jobstate

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


def _read_shards(sources: Iterable[dict], root: str, storage_options: Optional[dict]) -> Iterator[dict]:
    """The samples of each shard (`url`: its name under the output), read by the output's sink;
    the sink is opened in the process that reads (a DataLoader worker), not pickled into it."""
    sink: Sink = jobstate.sink(root, storage_options)
    base = root.rstrip("/")
    for source in sources:
        for sample in sink.read(source["url"]):
            yield {**sample, "__url__": f"{base}/{source['url']}"}


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
        self.shards = sorted(pc.unique(table["shard"]).to_pylist())  # names under root, as the index holds them
        self.keys = frozenset(table["key"].to_pylist()) if self.filters or self.drop_duplicates else None

    def set_epoch(self, epoch: int) -> None:
        """A new shard order (and shuffle seed) per epoch; every node must be given the same epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Utterance | Batch]:
        return iter(self.pipeline()) if self.shards else iter(())

    def pipeline(self) -> wds.DataPipeline:
        """The webdataset pipeline for this node and (when called inside one) DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, self.rank, info.id if info else 0)))
        stages: list = [
            wds.SimpleShardList(self.shards, seed=self.seed + self.epoch),
            partial(_node_split, rank=self.rank, world_size=self.world_size),
            wds.split_by_worker,
            partial(_read_shards, root=self.root, storage_options=self.storage_options),
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
    """Any sample by key: index -> shard -> the sample, read by the output's sink (`self.sink`).

    The WebDataset sink reads a shard's member offsets once (tar headers only) and caches them, so
    later lookups in the same shard cost one ranged read each.
    """

    def __init__(self, root: str, sample_rate: int | None = None, storage_options: dict | None = None,
                 rejected: bool = False):
        """`rejected=True`: the segments the filters dropped instead, from `rejected/` shards (those
        whose audio the run kept: shards.keep_rejected_audio); never mixed with the training samples."""
        self.sink = jobstate.sink(root, storage_options)
        if rejected:
            table = tables.read_parts(root, "rejects", ("key", "shard"), storage_options=storage_options)
            if "shard" not in table.column_names:
                raise FileNotFoundError(f"{root} keeps no audio of its rejects (made before rejected/ shards existed)")
            table = table.filter(pc.is_valid(table["shard"]))
        else:
            table = read_index(root, columns=["key", "shard"], storage_options=storage_options)
        self.shard_of = dict(zip(table["key"].to_pylist(), table["shard"].to_pylist()))
        self.decoder = _decoder(sample_rate)

    def __len__(self) -> int:
        return len(self.shard_of)

    def __contains__(self, key: str) -> bool:
        return key in self.shard_of

    def raw(self, key: str) -> dict[str, bytes]:
        """The sample's stored files, byte for byte ({"flac": ..., "json": ...})."""
        sample = next(iter(self.sink.read(self.shard_of[key], [key])))
        return {ext: data for ext, data in sample.items() if not ext.startswith("__")}

    def __getitem__(self, key: str) -> Utterance:
        return _decode_one({"__key__": key, **self.raw(key)}, self.decoder)
