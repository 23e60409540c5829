"""Training loader: voxmill shards into PyTorch, filtered through the index, batched by audio seconds;
and the same output as a Hugging Face dataset (`hf_dataset`), audio decoded with soundfile.

The Parquet index is the truth about what an output holds: the shard list and any filter come
from it, so a half-written unit (shards, no index part yet) is never read. Samples are read back
by the output's sink (`shards.format`, `pipelines/sinks/`): streamed shard by shard through a
webdataset pipeline, or one by key (the WebDataset sink reads one sample's members by byte range).

Reading needs only voxmill's core install (`pip install voxmill`: pyarrow, fsspec, webdataset,
soundfile, soxr, numpy, pydantic, pyyaml), plus the trainer's own torch for `SpeechShards` and
`IndexedShards`, and `datasets` for `hf_dataset`. No audio goes through torchcodec/FFmpeg.

Examples (`output` is an output folder or URL; `tests/pipelines/test_readers.py` runs every example here):

>>> data = SpeechShards(output, filters=["dnsmos_ovrl >= 3.2", "language in ('en', 'de')"], sample_rate=16000)
>>> first = next(iter(data))  # {"key", "waveform" (float32 tensor), "sample_rate", "text", "meta"}
>>> rows = read_index(output, "duration < 15 and (snr_db > 20 or dnsmos_ovrl >= 3)", columns=["key", "text"])
>>> one = IndexedShards(output)[rows["key"][0].as_py()]
>>> hf = hf_dataset(output)  # columns: key, audio ({"array", "sampling_rate"}), text, duration, ... (flat)
>>> hf[0]["audio"]["sampling_rate"] == hf[0]["sample_rate"]
True
"""
from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Container, Iterable, Iterator, Optional, Sequence, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf
import webdataset as wds

try:  # the trainer's torch: SpeechShards and IndexedShards need it, read_index and hf_dataset do not
    import torch
    from torch.utils.data import IterableDataset as _IterableDataset
except ImportError:  # pragma: no cover - exercised by the clean-venv test
    torch = None  # type: ignore[assignment]
    _IterableDataset = object  # type: ignore[assignment,misc]

from pipelines.io import tables
from pipelines.sinks.base import Sink
from pipelines.sinks.card import features_yaml
from pipelines.state import jobstate

AUDIO_EXTENSIONS = ("flac", "wav")


class Utterance(TypedDict):
    key: str
    waveform: "torch.Tensor"  # float32, mono, shape (samples,)
    sample_rate: int
    text: str
    meta: dict[str, Any]  # the sample's KEY.json (source, start/end, duration, scores)


class Batch(TypedDict):
    keys: list[str]
    waveforms: "torch.Tensor"  # (batch, longest), zero-padded
    lengths: "torch.Tensor"  # int64 (batch,), samples before padding
    sample_rate: int
    texts: list[str]
    metas: list[dict[str, Any]]


# ---- filters: a small boolean grammar, parsed into a pyarrow expression (never eval'd) ----
#
#   filter     := or ;  or := and ("or" and)* ;  and := not ("and" not)* ;  not := "not" not | atom
#   atom       := "(" filter ")" | COLUMN OP VALUE | COLUMN ["not"] "in" "(" VALUE ("," VALUE)* ")"
#               | COLUMN "is" ["not"] "null"
#   OP         := == != < <= > >=     VALUE := a number or a 'quoted' / "quoted" string
#
# Keywords are case-insensitive. A comparison with a null (e.g. `no_speech_prob <= 0.5` on a row
# whose value is null) is false, so the row is dropped, as in SQL.

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<name>[A-Za-z_]\w*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|,)
)""", re.VERBOSE)
_OPS = {"==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal"}
_KEYWORDS = {"and", "or", "not", "in", "is", "null"}


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position, text = [], 0, text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"bad filter {text!r}: cannot read {text[position:].strip()!r}")
        kind = match.lastgroup
        value = match[kind]
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _FilterParser:
    def __init__(self, text: str):
        self.text, self.tokens, self.at = text, _tokens(text), 0
        self.columns: set[str] = set()

    def fail(self, expected: str):
        got = self.tokens[self.at][1] if self.at < len(self.tokens) else "the end"
        raise ValueError(f"bad filter {self.text!r}: expected {expected}, got {got!r} (e.g. \"duration < 15 and "
                         f"language in ('en', 'de')\"; operators {' '.join(_OPS)}, and, or, not, in, is null)")

    def peek(self, kind: str, value: str | None = None) -> bool:
        if self.at < len(self.tokens):
            k, v = self.tokens[self.at]
            return k == kind and (value is None or v == value)
        return False

    def take(self, kind: str, value: str | None = None, expected: str = "") -> str:
        if not self.peek(kind, value):
            self.fail(expected or value or kind)
        self.at += 1
        return self.tokens[self.at - 1][1]

    def parse(self) -> pc.Expression:
        expression = self.or_()
        if self.at != len(self.tokens):
            self.fail("and, or or the end")
        return expression

    def or_(self) -> pc.Expression:
        expression = self.and_()
        while self.peek("keyword", "or"):
            self.at += 1
            expression = expression | self.and_()
        return expression

    def and_(self) -> pc.Expression:
        expression = self.not_()
        while self.peek("keyword", "and"):
            self.at += 1
            expression = expression & self.not_()
        return expression

    def not_(self) -> pc.Expression:
        if self.peek("keyword", "not"):
            self.at += 1
            return ~self.not_()
        return self.atom()

    def value(self) -> object:
        if self.peek("string"):
            return self.take("string")[1:-1]
        raw = self.take("number", expected="a number or a quoted string")
        return float(raw) if re.search(r"[.eE]", raw) else int(raw)

    def atom(self) -> pc.Expression:
        if self.peek("op", "("):
            self.at += 1
            expression = self.or_()
            self.take("op", ")")
            return expression
        column = self.take("name", expected="a column name")
        self.columns.add(column)
        field = pc.field(column)
        if self.peek("keyword", "is"):
            self.at += 1
            negate = self.peek("keyword", "not")
            self.at += negate
            self.take("keyword", "null")
            return pc.is_valid(field) if negate else pc.is_null(field)
        negate = self.peek("keyword", "not")
        if negate or self.peek("keyword", "in"):
            self.at += negate
            self.take("keyword", "in")
            self.take("op", "(")
            values = [self.value()]
            while self.peek("op", ","):
                self.at += 1
                values.append(self.value())
            self.take("op", ")")
            member = pc.is_in(field, pa.array(values))
            return pc.invert(member) & pc.is_valid(field) if negate else member
        if self.at < len(self.tokens) and self.tokens[self.at][1] in _OPS:
            op = self.take("op")
            return getattr(pc, _OPS[op])(field, pc.scalar(self.value()))
        self.fail(f"an operator ({' '.join(_OPS)}, in, not in, is null)")


def parse_filter(condition: str) -> tuple[set[str], pc.Expression]:
    """A filter over index columns as a pyarrow expression, and the columns it names:
    `duration < 15`, `dnsmos_ovrl >= 3.2 and language == 'en'`, `language in ('en', 'de')`,
    `(snr_db > 20 or dnsmos_ovrl >= 3) and not clipping > 0.01`, `near_duplicate_of is null`.
    Parsed by a small grammar (above), never eval'd: anything else is a ValueError."""
    parser = _FilterParser(condition)
    return parser.columns, parser.parse()


def read_index(root: str, filters: str | Sequence[str] = (), columns: Sequence[str] | None = None,
               storage_options: dict | None = None) -> pa.Table:
    """The index rows matching every condition, read with pushdown so only those rows load.

    Every part counts (`tables.open_parts`): a column only newer parts have can be filtered on,
    and reads as null in the older parts' rows.
    """
    return _read_index(root, filters, columns, storage_options)


def _read_index(root: str, filters: str | Sequence[str], columns: Sequence[str] | None,
                storage_options: dict | None, where: pc.Expression | None = None) -> pa.Table:
    """`read_index`, and `where` (an expression of our own, e.g. on `shard`) with the filters."""
    parsed = [parse_filter(c) for c in ([filters] if isinstance(filters, str) else filters)]
    expression = where
    for _, term in parsed:
        expression = term if expression is None else expression & term

    def read(dataset) -> pa.Table:
        if not dataset.files:
            return pa.table({})
        names = dataset.schema.names
        unknown = sorted(set().union(*(columns for columns, _ in parsed)) - set(names))
        if unknown:
            raise ValueError(f"filter on unknown column {unknown}; the index has {names}")
        missing = [c for c in columns or () if c not in names]
        if missing:
            raise ValueError(f"unknown column {missing}; the index has {names}")
        return dataset.to_table(columns=list(columns) if columns else None, filter=expression)

    table = tables.read_retrying(root, "index", read, storage_options)
    if not table.column_names:
        raise FileNotFoundError(f"no index parts under {root.rstrip('/')}/index: not a voxmill output, "
                                "or no unit has finished yet")
    return table


# ---- decoding ----

def read_audio(data: bytes, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """FLAC/WAV bytes to float32 mono samples and their rate, decoded with soundfile (libsndfile,
    bundled in its wheel), resampled with soxr when a rate is asked for. Also a webdataset handler:
    `wds.WebDataset(urls).decode(wds.handle_extension("flac wav", read_audio))`."""
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if sample_rate and sample_rate != rate:
        import soxr

        mono, rate = soxr.resample(mono, rate, sample_rate).astype(np.float32, copy=False), sample_rate
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def _read_audio(data: bytes, sample_rate: int | None = None) -> tuple["torch.Tensor", int]:
    """`read_audio` as a torch tensor."""
    wave, rate = read_audio(data, sample_rate)
    return torch.from_numpy(wave), rate


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
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def assign_shards(shards: Sequence[str], seed: int, rank: int, world_size: int, worker: int,
                  workers: int) -> list[tuple[str, int, int]]:
    """What one (node, DataLoader worker) reads: (shard, part, parts) for each of its shards, where it
    keeps the samples whose position in the shard is `part` modulo `parts`.

    The shards are shuffled with `seed` (the same order everywhere), then dealt round-robin over
    the `world_size * workers` readers, node-major (reader = rank * workers + worker). With at least
    as many shards as readers each shard goes whole to one reader; with fewer (a one-shard output
    and two workers), reader r reads shard r mod n and keeps its share of that shard's samples, so
    every sample is still read exactly once and no worker sits idle or fails.
    """
    order = list(shards)
    random.Random(seed).shuffle(order)
    readers = world_size * workers
    reader = rank * workers + worker
    if not order:
        return []
    if len(order) >= readers:
        return [(shard, 0, 1) for shard in order[reader::readers]]
    n = len(order)
    parts = len(range(reader % n, readers, n))  # readers sharing shard reader % n
    return [(order[reader % n], reader // n, parts)]


def _read_shards(assigned: Iterable[tuple[str, int, int]], root: str, storage_options: Optional[dict]) -> Iterator[dict]:
    """The samples of each assigned (shard, part, parts) (`assign_shards`), read by the output's
    sink; the sink is opened in the process that reads (a DataLoader worker), not pickled into it."""
    sink: Sink = jobstate.sink(root, storage_options)
    base = root.rstrip("/")
    for shard, part, parts in assigned:
        for position, sample in enumerate(sink.read(shard)):
            if position % parts == part:
                yield {**sample, "__url__": f"{base}/{shard}"}


def _keep_keys(sample: dict, keys: "Container[str]") -> bool:
    return sample["__key__"] in keys


class _Without:
    """Every key but `dropped`, as a set to test membership in."""

    def __init__(self, dropped: frozenset[str]):
        self.dropped = dropped

    def __contains__(self, key: str) -> bool:
        return key not in self.dropped


@dataclass
class SpeechShards(_IterableDataset):
    """Utterances (or, with `batch_seconds`, padded batches) from a voxmill output, for a DataLoader.

    Shards are shuffled with `seed + epoch` (the same order on every node) and dealt round-robin to
    every (node, DataLoader worker), so each sample is seen exactly once per epoch; with fewer
    shards than readers, readers share a shard by sample position (`assign_shards`). Use
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
        if torch is None:
            raise ImportError("SpeechShards needs torch (pip install torch); hf_dataset and read_index do not")
        super().__init__()
        self.rank, self.world_size = distributed_rank(self.rank, self.world_size)
        columns = ["key", "shard", "duration"] + (["audio_hash"] if self.drop_duplicates else [])
        table = read_index(self.root, self.filters, columns, self.storage_options)  # no hashes: a clear error
        if self.drop_duplicates:
            later = tables.later_copies(table)
            dropped, table = table.filter(later), table.filter(pc.invert(later))
        self.num_samples = table.num_rows
        self.seconds = float(pc.sum(table["duration"]).as_py() or 0.0)
        self.shards = sorted(pc.unique(table["shard"]).to_pylist())  # names under root, as the index holds them
        # No set of every key rides into each DataLoader worker (~1 GB at 20 M samples): a worker
        # reads its own shards' keys (`_worker_keys`); only the dropped copies (few) are kept here.
        self.copies = frozenset(dropped["key"].to_pylist()) if self.drop_duplicates else frozenset()

    def _worker_keys(self, shards: list[str]) -> Container[str] | None:
        """The keys to keep in `shards` (this worker's): those the filters match, less the dropped
        copies; None when every sample is kept. Read from the index with a pushed-down shard filter."""
        if not self.filters and not self.drop_duplicates:
            return None
        if not self.filters:
            return _Without(self.copies)
        where = pc.field("shard").isin(pa.array(shards, pa.string()))
        table = _read_index(self.root, self.filters, ["key"], self.storage_options, where)
        return frozenset(table["key"].to_pylist()) - self.copies

    def set_epoch(self, epoch: int) -> None:
        """A new shard order (and shuffle seed) per epoch; every node must be given the same epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Utterance | Batch]:
        return iter(self.pipeline()) if self.shards else iter(())

    def pipeline(self) -> wds.DataPipeline:
        """The webdataset pipeline for this node and (when called inside one) DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)))
        assigned = assign_shards(self.shards, self.seed + self.epoch, self.rank, self.world_size, worker, workers)
        stages: list = [
            partial(iter, assigned),  # (a bare list would be taken as a list of stages)
            partial(_read_shards, root=self.root, storage_options=self.storage_options),
        ]
        keys = self._worker_keys([shard for shard, _, _ in assigned])
        if keys is not None:
            stages.append(wds.select(partial(_keep_keys, keys=keys)))
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


# ---- Hugging Face datasets ----

def hf_features(audio_format: str = "flac"):
    """The `datasets.Features` of an output's shards, as its dataset card (`OUTPUT/README.md`)
    declares them: `__key__`, `__url__`, the audio file's bytes (a binary column named by its
    extension: no torchcodec needed, see `sinks.card.features_yaml`) and `json` (a struct of typed
    fields). Pass them to `load_dataset("webdataset", data_files=..., features=...)` to read shards
    from anywhere without type inference."""
    from datasets import Features

    return Features._from_yaml_list(features_yaml(audio_format))


def _hf_decode(batch: dict, sample_rate: int | None) -> dict:
    """A `with_transform` for `hf_dataset`: each audio's bytes to {"array", "sampling_rate"}."""
    decoded = []
    for data in batch["audio"]:
        wave, rate = read_audio(data, sample_rate)
        decoded.append({"array": wave, "sampling_rate": rate})
    return dict(batch, audio=decoded)


def _hf_decode_one(row: dict, sample_rate: int | None) -> dict:
    wave, rate = read_audio(row["audio"], sample_rate)
    return {"audio": {"array": wave, "sampling_rate": rate}}


def hf_dataset(root: str, filters: str | Sequence[str] = (), sample_rate: int | None = None, decode: bool = True,
               streaming: bool = False, storage_options: dict | None = None, **load_kwargs: Any):
    """An output as a Hugging Face dataset: columns `key`, `audio` and every KEY.json field flat
    (`text`, `duration`, `dnsmos_ovrl`, ...), typed by the output's schema (nothing inferred).

    `audio` is {"array": float32 mono, "sampling_rate"}, decoded with soundfile on access (and
    resampled with soxr to `sample_rate` when given), so torchcodec/FFmpeg are never needed;
    `decode=False` leaves the file's bytes. `filters` (as `read_index`'s) pick the shards and rows
    through the index. Only indexed shards are read (a unit still being written is skipped).
    `load_kwargs` go to `datasets.load_dataset` (`cache_dir`, `num_proc`, ...); `streaming=True`
    gives an IterableDataset. The transform of a map-style dataset survives slicing and
    iteration, not `map`: decode inside your own `map` with `pipelines.loader.read_audio`."""
    from datasets import load_dataset

    index = read_index(root, filters, ["key", "shard"], storage_options)
    shards = sorted(pc.unique(index["shard"]).to_pylist())
    if not shards:
        raise ValueError(f"no samples in {root} match {filters!r}")
    sink: Sink = jobstate.sink(root, storage_options)
    first = next(iter(sink.read(shards[0])))
    audio_format = next(ext for ext in AUDIO_EXTENSIONS if ext in first)
    base = root.rstrip("/")
    data = load_dataset("webdataset", data_files={"train": [f"{base}/{s}" for s in shards]}, split="train",
                        features=hf_features(audio_format), streaming=streaming,
                        storage_options=storage_options, **load_kwargs)
    data = data.remove_columns(["__url__"]).rename_columns({"__key__": "key", audio_format: "audio"})
    if filters:
        keys = set(index["key"].to_pylist())
        data = data.filter(lambda key: key in keys, input_columns="key")
    nested = [name for name in data.features["json"]]
    data = data.flatten() if not streaming else data.map(lambda row: row["json"], remove_columns=["json"])
    if not streaming:
        data = data.rename_columns({f"json.{name}": name for name in nested})
    if not decode:
        return data
    if streaming:  # features unknown after this map (a dict column)
        return data.map(partial(_hf_decode_one, sample_rate=sample_rate))
    return data.with_transform(partial(_hf_decode, sample_rate=sample_rate))
