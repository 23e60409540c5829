"""The WebDataset sink: rolls over by count and size, names derive from the unit, no scratch file
left; reads back every sample, or some by key, byte for byte; lists what it wrote."""
import json
import tarfile

import webdataset as wds

from pipelines.sinks.base import REJECTED, Sample, open_sink
from pipelines.sinks.webdataset import WebDatasetSink
from schemas.config import ShardConfig


def _samples(n: int, size: int = 1000) -> list[Sample]:
    return [Sample(f"src-{i:04d}", bytes([i % 256]) * size, {"text": f"t{i}"}) for i in range(n)]


def test_rolls_over_by_sample_count(tmp_path):
    placed = WebDatasetSink(ShardConfig(max_samples=4), str(tmp_path)).write(7, _samples(10))
    shards = sorted({s for s, _ in placed})
    assert shards == ["shards/shard-000007-01.tar", "shards/shard-000007-02.tar", "shards/shard-000007.tar"]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == sorted(s.split("/")[1] for s in shards)
    with tarfile.open(tmp_path / "shards/shard-000007-02.tar") as tar:
        assert tar.getnames() == ["src-0008.flac", "src-0008.json", "src-0009.flac", "src-0009.json"]


def test_rolls_over_by_size(tmp_path):
    placed = WebDatasetSink(ShardConfig(max_bytes=1_000_000), str(tmp_path)).write(0, _samples(5, 300_000))
    per_shard = {}
    for shard, key in placed:
        per_shard.setdefault(shard, []).append(key)
    assert [len(v) for v in per_shard.values()] == [3, 2]
    assert all((tmp_path / s).stat().st_size <= 1_000_000 for s in per_shard)


def test_samples_read_back_with_webdataset(tmp_path):
    WebDatasetSink(ShardConfig(), str(tmp_path)).write(0, _samples(3))
    got = list(wds.WebDataset(str(tmp_path / "shards/shard-000000.tar"), shardshuffle=False).decode())
    assert [g["__key__"] for g in got] == ["src-0000", "src-0001", "src-0002"]
    assert got[1]["json"] == {"text": "t1"} and got[1]["flac"] == bytes([1]) * 1000
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_rejected_samples_go_to_their_own_folder_with_the_same_layout(tmp_path):
    placed = WebDatasetSink(ShardConfig(max_samples=2), str(tmp_path)).write(3, _samples(3), REJECTED)
    assert sorted({s for s, _ in placed}) == ["rejected/shard-000003-01.tar", "rejected/shard-000003.tar"]
    assert not (tmp_path / "shards").exists()
    with tarfile.open(tmp_path / "rejected/shard-000003.tar") as tar:
        assert tar.getnames() == ["src-0000.flac", "src-0000.json", "src-0001.flac", "src-0001.json"]
    copied = [Sample("k", b"RIFF", {"text": ""}, ext="wav")]  # a copy keeps the extension it was stored with
    WebDatasetSink(ShardConfig(), str(tmp_path)).write(4, copied)
    with tarfile.open(tmp_path / "shards/shard-000004.tar") as tar:
        assert tar.getnames() == ["k.json", "k.wav"]


def test_reads_back_all_or_by_key_and_lists_its_files(tmp_path):
    sink = open_sink(ShardConfig(max_samples=2), str(tmp_path))
    assert isinstance(sink, WebDatasetSink)  # shards.format defaults to webdataset
    placed = sink.write(5, _samples(3))
    sink.write(5, _samples(1), REJECTED)
    assert sink.files() == ["shards/shard-000005-01.tar", "shards/shard-000005.tar"]
    assert sink.files(REJECTED) == ["rejected/shard-000005.tar"]
    everything = [s for shard in sorted({s for s, _ in placed}) for s in sink.read(shard)]
    assert sorted(s["__key__"] for s in everything) == ["src-0000", "src-0001", "src-0002"]
    with tarfile.open(tmp_path / "shards/shard-000005.tar") as tar:
        stored = {m.name: tar.extractfile(m).read() for m in tar}
    first = everything[0] if everything[0]["__key__"] == "src-0000" else everything[1]
    assert first == {"__key__": "src-0000", "flac": stored["src-0000.flac"], "json": stored["src-0000.json"]}
    assert json.loads(first["json"]) == {"text": "t0"}
    picked = list(sink.read("shards/shard-000005.tar", ["src-0001", "src-0000"]))
    assert [p["__key__"] for p in picked] == ["src-0001", "src-0000"] and picked[1] == first
    assert sink.members.cache_info().currsize == 1  # the shard's offsets, read once
