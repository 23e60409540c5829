"""Training loader on a real finished job: exactly-once splits, filters, bucketing, random access, S3."""
from __future__ import annotations

import pickle
import random
import socket
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import s3fs
import torch
from moto.server import ThreadedMotoServer
from torch.utils.data import DataLoader

from pipelines.loader import (
    IndexedShards,
    SpeechShards,
    bucket_by_seconds,
    distributed_rank,
    padding_ratio,
    parse_filter,
    read_index,
)


@pytest.fixture(scope="module")
def out(finished_job) -> str:
    return finished_job[0].output


def _keys(dataset: SpeechShards, workers: int = 2) -> list[str]:
    # spawn, as training scripts do under Ray/CUDA: forking this test process (Ray, ONNX and
    # CTranslate2 threads loaded by other tests) can kill a worker before it reads anything
    context = "spawn" if workers else None
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context=context)
    return [k for batch in loader for k in (batch["keys"] if "keys" in batch else [batch["key"]])]


@pytest.mark.parametrize("epoch", [0, 1])
def test_every_sample_once_across_2_nodes_x_2_workers(out, epoch):
    index = read_index(out, columns=["key", "shard"])
    assert len(set(index["shard"].to_pylist())) >= 4  # at least one shard per (node, worker)
    per_rank = []
    for rank in range(2):
        dataset = SpeechShards(out, rank=rank, world_size=2, shuffle=50, seed=3)
        dataset.set_epoch(epoch)
        per_rank.append(_keys(dataset))
    assert all(per_rank) and not set(per_rank[0]) & set(per_rank[1])
    seen = Counter(per_rank[0] + per_rank[1])
    assert seen == Counter(index["key"].to_pylist())  # every indexed key exactly once


def test_utterances_are_mono_float_with_text_and_meta(out):
    first = next(iter(SpeechShards(out, sample_rate=16000, shuffle=0)))
    wave = first["waveform"]
    assert wave.dtype == torch.float32 and wave.ndim == 1 and first["sample_rate"] == 16000
    assert first["text"] == first["meta"]["text"] and first["text"]
    assert abs(wave.numel() / 16000 - first["meta"]["duration"]) < 0.01


def test_filters_keep_exactly_the_matching_index_rows(out):
    index = read_index(out)
    median = sorted(index["duration"].to_pylist())[index.num_rows // 2]
    conditions = [f"duration < {median}", "avg_logprob >= -0.9", "language == 'en'"]
    expected = {r["key"] for r in index.to_pylist()
                if r["duration"] < median and r["avg_logprob"] >= -0.9 and r["language"] == "en"}
    assert 0 < len(expected) < index.num_rows
    assert set(read_index(out, conditions)["key"].to_pylist()) == expected
    filtered = SpeechShards(out, conditions, batch_seconds=20, rank=0, world_size=1)
    seen = _keys(filtered)
    assert Counter(seen) == Counter(expected)
    # what each DataLoader worker is sent holds no key list (a worker reads its own shards' keys)
    assert len(pickle.dumps(filtered)) < len(pickle.dumps(SpeechShards(out, rank=0, world_size=1))) + 200
    for bad in ["duration < 1; import os", "len(text) > 1", "duration <", "duration ~ 3", "a < b"]:
        with pytest.raises(ValueError):
            parse_filter(bad)
    with pytest.raises(ValueError, match="unknown column"):
        read_index(out, "dnsmos >= 3.2")


def test_duration_bucketing_pads_under_10_percent(out):
    dataset = SpeechShards(out, batch_seconds=30, bucket_pool=64, rank=0, world_size=1)
    batches = list(DataLoader(dataset, batch_size=None, num_workers=0))
    sizes = [len(b["keys"]) for b in batches]
    assert sum(sizes) == dataset.num_samples and max(sizes) > 1
    for b in batches:  # padded seconds within the budget (a lone sample may exceed it)
        assert len(b["keys"]) == 1 or b["waveforms"].numel() / b["sample_rate"] <= 30 + 0.01 * len(b["keys"])
    for b in batches:
        assert b["waveforms"].shape == (len(b["keys"]), int(b["lengths"].max()))
        assert all(b["waveforms"][i, n:].abs().sum() == 0 for i, n in enumerate(b["lengths"].tolist()))
    ratio = padding_ratio(batches)
    assert ratio < 0.10, ratio


def test_bucketing_on_a_long_stream_pads_little_and_fills_batches():
    """5000 speech-like durations (log-normal around 5 s): little padding, yet batches near full."""
    durations = np.clip(np.random.default_rng(0).lognormal(np.log(5), 0.6, 5000), 0.5, 30).tolist()
    batches = list(bucket_by_seconds(({"json": {"duration": d}} for d in durations), 60, 1000, random.Random(0)))
    padded = [len(b) * max(s["json"]["duration"] for s in b) for b in batches]
    assert sorted(s["json"]["duration"] for b in batches for s in b) == sorted(durations)
    assert (sum(padded) - sum(durations)) / sum(padded) < 0.10
    assert sum(padded) / (60 * len(batches)) > 0.8  # not won by tiny batches


def test_random_access_returns_the_shard_bytes(out):
    index = read_index(out, columns=["key", "shard"]).to_pylist()
    shards = IndexedShards(out)
    assert len(shards) == len(index)
    for row in index[:: max(1, len(index) // 8)]:
        with tarfile.open(Path(out) / row["shard"]) as tar:
            stored = {ext: tar.extractfile(f"{row['key']}.{ext}").read() for ext in ("flac", "json")}
        assert shards.raw(row["key"]) == stored
    hits = shards.sink.members.cache_info().hits
    again = shards[index[0]["key"]]
    assert shards.sink.members.cache_info().hits > hits  # offsets of that shard came from the cache
    assert again["key"] == index[0]["key"] and again["waveform"].dtype == torch.float32


@pytest.fixture(scope="module")
def s3_out(out):
    """The finished output copied into a bucket on a private loopback moto server (not test_s3's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("loader-corpus")
    for path in Path(out).glob("*/*"):
        if path.parent.name in ("shards", "index"):
            fs.put_file(str(path), f"loader-corpus/v1/{path.parent.name}/{path.name}")
    yield "s3://loader-corpus/v1", options
    server.stop()


def test_reads_from_s3(out, s3_out):
    url, options = s3_out
    local = read_index(out, columns=["key", "shard"])
    dataset = SpeechShards(url, "duration > 0", batch_seconds=20, storage_options=options, rank=0, world_size=1)
    assert Counter(_keys(dataset)) == Counter(local["key"].to_pylist())
    key, shard = local["key"][0].as_py(), local["shard"][0].as_py()
    with tarfile.open(Path(out) / shard) as tar:
        assert IndexedShards(url, storage_options=options).raw(key)["flac"] == tar.extractfile(f"{key}.flac").read()
    assert pc.sum(read_index(url, storage_options=options)["duration"]).as_py() == pytest.approx(dataset.seconds)


def test_rank_and_world_size_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_rank() == (1, 2) and distributed_rank(0, 4) == (0, 4)
    with pytest.raises(ValueError):
        distributed_rank(rank=0)
    with pytest.raises(ValueError):
        distributed_rank(2, 2)


def test_copies_across_units_are_found_and_skipped_on_request(clips, local_ray, tmp_path):
    """A unit rejects exact copies within itself; a copy that lands in another unit is kept at run
    time, and the index's audio hashes let the report count it and the loader skip it."""
    import shutil

    from pipelines.job import run_job
    from pipelines.report import gather
    from tests.conftest import small_units_config

    source = tmp_path / "in"
    (source / "a").mkdir(parents=True)
    (source / "z").mkdir()
    for name in ("2412-153948-0000.flac", "LJ002-0020.wav"):
        shutil.copy(clips / name, source / "a" / name)
    shutil.copy(clips / "LJ002-0020.wav", source / "z" / "again.wav")  # same bytes, sorted last: another unit
    output = str(tmp_path / "out")
    run_job(small_units_config(str(source), output, **{"engine.unit_minutes": 0.05}))
    index = read_index(output, columns=["key", "source_id", "audio_hash"])
    assert index.num_rows == 3 and len(set(index["audio_hash"].to_pylist())) == 2  # the copy was kept
    assert gather(output).exact_duplicates == 1

    everything = _keys(SpeechShards(output, shuffle=0), workers=0)
    deduplicated = _keys(SpeechShards(output, shuffle=0, drop_duplicates=True), workers=0)
    rows = index.to_pylist()
    copies = [r for r in rows if r["audio_hash"] == next(r2["audio_hash"] for r2 in rows if "again" in r2["source_id"])]
    dropped = max(r["key"] for r in copies)  # the copy with the larger key goes, whichever unit wrote first
    assert sorted(everything) == sorted(index["key"].to_pylist())
    assert sorted(deduplicated) == sorted(k for k in everything if k != dropped)
