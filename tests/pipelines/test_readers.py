"""Readers of a finished output as a trainer uses them: Hugging Face `datasets` (the dataset card's
typed features, `hf_dataset`'s audio + flat columns), plain `webdataset` with DataLoader workers,
voxmill's loader on fewer shards than workers, the filter grammar, every doc example, and (slow)
a clean venv with only the reader install."""
from __future__ import annotations

import doctest
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds
import yaml
from torch.utils.data import DataLoader

import pipelines.loader as loader
from pipelines.loader import SpeechShards, assign_shards, hf_dataset, hf_features, read_audio, read_index
from pipelines.sinks.card import META_EXCLUDED, card_text, features_yaml, sample_meta
from schemas.tables import INDEX_SCHEMA
from tests.fakes import ROOT


@pytest.fixture(scope="module")
def out(finished_job) -> str:
    output = finished_job[0].output
    assert len(list(Path(output, "shards").glob("*.tar"))) >= 3
    return output


def _shard_files(out: str) -> list[str]:
    return sorted(str(p) for p in Path(out, "shards").glob("*.tar"))


def _keys(dataset, workers: int) -> list[str]:
    context = "spawn" if workers else None  # as test_loader: never fork this process (Ray, ONNX threads)
    batches = DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context=context)
    return [k for b in batches for k in (b["keys"] if "keys" in b else [b["key"] if "key" in b else b["__key__"]])]


# ---- one typed schema in every KEY.json, shipped in the dataset card ----

def test_every_key_json_has_the_cards_fields_and_types(out):
    card = Path(out, "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    struct = next(f["struct"] for f in header["dataset_info"]["features"] if f["name"] == "json")
    assert [f["name"] for f in struct] == [f.name for f in INDEX_SCHEMA if f.name not in META_EXCLUDED]
    python = {"string": str, "float32": float, "float64": float, "int32": int}
    for shard in _shard_files(out):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    assert list(meta) == [f["name"] for f in struct]
                    for f in struct:
                        assert meta[f["name"]] is None or type(meta[f["name"]]) is python[f["dtype"]], f


def test_sample_meta_types_every_field():
    meta = sample_meta({"key": "k", "unit": 3, "shard": "s", "start": 0, "sample_rate": 24000.0, "text": "hi",
                        "dnsmos_ovrl": np.float32(3.5)})
    assert set(meta) == {f.name for f in INDEX_SCHEMA} - set(META_EXCLUDED)
    assert type(meta["start"]) is float and type(meta["sample_rate"]) is int and meta["near_duplicate_of"] is None
    assert type(meta["dnsmos_ovrl"]) is float


def _write_shard(path: Path, rows: list[dict]) -> None:
    wave = (np.sin(np.arange(2400) / 10) * 0.3).astype(np.float32)
    with open(path, "wb") as fh, wds.TarWriter(fh) as tar:
        for row in rows:
            data = io.BytesIO()
            sf.write(data, wave, 24000, format="FLAC")
            tar.write({"__key__": row["key"], "flac": data.getvalue(), "json": sample_meta(row)})


def test_a_later_shard_with_a_near_duplicate_loads_with_the_card(tmp_path):
    """The bug: inference from shard 0 typed near_duplicate_of null; shard 1 holds a string."""
    from datasets import load_dataset

    (tmp_path / "shards").mkdir()
    base = {"text": "same words", "duration": 0.1, "start": 0.0, "end": 0.1, "sample_rate": 24000}
    _write_shard(tmp_path / "shards" / "shard-000000.tar", [dict(base, key=f"a-{i}") for i in range(6)])
    _write_shard(tmp_path / "shards" / "shard-000001.tar", [dict(base, key="b-0", near_duplicate_of="a-0")])
    files = {"train": sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))}
    inferred = load_dataset("webdataset", data_files=files, split="train", streaming=True).features
    assert str(inferred["json"]["near_duplicate_of"]) == "Value('null')"  # inferred from shard 0: the bug
    (tmp_path / "README.md").write_text(card_text("flac"))
    data = load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / "c1"))
    assert data.features == hf_features("flac") and len(data) == 7
    assert data[6]["json"]["near_duplicate_of"] == "a-0" and data[6]["flac"][:4] == b"fLaC"
    assert features_yaml("flac") == hf_features("flac")._to_yaml_list()  # the card is what datasets writes


def test_load_dataset_reads_the_output_folder_by_its_card(out, tmp_path):
    from datasets import load_dataset

    data = load_dataset(out, split="train", cache_dir=str(tmp_path))
    index = read_index(out, columns=["key"])
    assert data.features == hf_features("flac")
    assert Counter(data["__key__"]) == Counter(index["key"].to_pylist())


# ---- hf_dataset: audio + flat fields, decoded with soundfile ----

def test_hf_dataset_has_audio_and_flat_fields(out, tmp_path):
    index = read_index(out)
    data = hf_dataset(out, cache_dir=str(tmp_path))
    assert data.column_names[:2] == ["key", "audio"] and {"text", "duration", "dnsmos_ovrl"} <= set(data.column_names)
    assert "json" not in data.column_names and Counter(data["key"]) == Counter(index["key"].to_pylist())
    rows = {r["key"]: r for r in index.to_pylist()}
    for row in data.select(range(0, len(data), 5)):
        audio = row["audio"]
        assert audio["array"].dtype == np.float32 and audio["sampling_rate"] == row["sample_rate"] == 24000
        assert abs(len(audio["array"]) / 24000 - row["duration"]) < 0.01
        assert row["text"] == rows[row["key"]]["text"]
    resampled = hf_dataset(out, filters="duration < 4 and language == 'en'", sample_rate=16000,
                           cache_dir=str(tmp_path))
    expected = read_index(out, "duration < 4 and language == 'en'", ["key"])["key"].to_pylist()
    assert 0 < len(resampled) == len(expected) < index.num_rows and resampled[0]["audio"]["sampling_rate"] == 16000


_NO_TORCHCODEC = """
import sys
sys.modules["torchcodec"] = None  # `import torchcodec` raises ImportError, find_spec says it is absent
"""


def test_readers_decode_without_torchcodec(out, tmp_path):
    """hf_dataset (map-style and streaming) and webdataset with the soundfile handler, in a process
    where torchcodec cannot be imported (and no NPP library is preloaded)."""
    script = _NO_TORCHCODEC + f"""
import webdataset as wds
from pipelines.loader import hf_dataset, read_audio
out = {out!r}
row = hf_dataset(out, cache_dir={str(tmp_path)!r})[0]
assert row["audio"]["array"].size and row["audio"]["sampling_rate"] == 24000
streamed = next(iter(hf_dataset(out, streaming=True)))
assert streamed["audio"]["array"].size and streamed["text"]
import glob
sample = next(iter(wds.WebDataset(sorted(glob.glob(out + "/shards/*.tar")), shardshuffle=False)
                   .decode(wds.handle_extension("flac wav", read_audio))))
wave, rate = sample["flac"]
assert wave.size and rate == 24000 and sample["json"]["text"]
assert sys.modules["torchcodec"] is None
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


# ---- webdataset with workers; voxmill's loader on fewer shards than workers ----

def test_plain_webdataset_with_two_workers_reads_every_sample_once(out):
    dataset = (wds.WebDataset(_shard_files(out), shardshuffle=False, nodesplitter=wds.single_node_only,
                              workersplitter=wds.split_by_worker, empty_check=False)
               .decode(wds.handle_extension("flac wav", read_audio)).to_tuple("__key__", "flac", "json"))
    keys = [key for key, _, _ in DataLoader(dataset, batch_size=None, num_workers=2,
                                            multiprocessing_context="spawn")]
    assert Counter(keys) == Counter(read_index(out, columns=["key"])["key"].to_pylist())


@pytest.fixture(scope="module")
def one_shard(out, tmp_path_factory) -> str:
    """One unit of the finished output (its index part, its one shard, the job record): a one-shard output."""
    target = tmp_path_factory.mktemp("one-shard")
    for part in sorted(Path(out, "index").glob("part-*.parquet")):
        shards = set(pq.read_table(part, columns=["shard"])["shard"].to_pylist())
        if len(shards) == 1 and pq.read_metadata(part).num_rows >= 3:
            break
    else:
        pytest.fail("no unit with one shard and 3 samples")
    (target / "index").mkdir()
    (target / "shards").mkdir()
    (target / "_ledger").mkdir()
    shutil.copy(part, target / "index" / part.name)
    shutil.copy(Path(out, shards.pop()), target / "shards")
    shutil.copy(Path(out, "_ledger", "job.json"), target / "_ledger" / "job.json")
    return str(target)


@pytest.mark.parametrize("world_size", [1, 2])
def test_one_shard_and_two_workers_read_every_sample_once(one_shard, world_size):
    expected = Counter(read_index(one_shard, columns=["key"])["key"].to_pylist())
    seen: list[str] = []
    for rank in range(world_size):
        seen += _keys(SpeechShards(one_shard, rank=rank, world_size=world_size, shuffle=0), workers=2)
    assert Counter(seen) == expected


@pytest.mark.parametrize("shards", range(0, 7))
def test_shard_assignment_covers_each_sample_once(shards):
    names = [f"s{i}" for i in range(shards)]
    for world_size in (1, 2, 3):
        for workers in (1, 2, 4):
            seen = Counter()
            for rank in range(world_size):
                for worker in range(workers):
                    for shard, part, parts in assign_shards(names, 7, rank, world_size, worker, workers):
                        seen.update((shard, i) for i in range(20) if i % parts == part)
            assert seen == Counter((s, i) for s in names for i in range(20)), (shards, world_size, workers)


# ---- the filter grammar ----

def test_filters_with_and_or_in_match_a_python_reading(out):
    index = read_index(out).to_pylist()
    median = sorted(r["duration"] for r in index)[len(index) // 2]
    cases = {
        f"duration < {median} and language == 'en'": lambda r: r["duration"] < median and r["language"] == "en",
        f"duration >= {median} or snr_db > 30": lambda r: r["duration"] >= median or (r["snr_db"] or 0) > 30,
        "language in ('en', 'de') and not duration < 2": lambda r: r["language"] in ("en", "de") and r["duration"] >= 2,
        "source_id not in ('x', 'y')": lambda r: r["source_id"] not in ("x", "y"),
        f"(duration < {median} or duration > 100) AND near_duplicate_of is null":
            lambda r: r["duration"] < median and r["near_duplicate_of"] is None,
        "no_speech_prob is not null or avg_logprob < 0": lambda r: r["no_speech_prob"] is not None or r["avg_logprob"] < 0,
    }
    for condition, keep in cases.items():
        got = sorted(read_index(out, condition, ["key"])["key"].to_pylist())
        assert got == sorted(r["key"] for r in index if keep(r)), condition
    both = read_index(out, [f"duration < {median}", "language in ('en')"], ["key"])
    assert both.num_rows == sum(r["duration"] < median and r["language"] == "en" for r in index)


@pytest.mark.parametrize("bad", ["duration < 1; import os", "len(text) > 1", "duration <", "duration ~ 3", "a < b",
                                 "__import__('os')", "duration < 1 and", "(duration < 1", "duration in ()",
                                 "duration < 1 duration > 2", "and < 1", "duration is 3"])
def test_bad_filters_are_refused(bad):
    with pytest.raises(ValueError, match="bad filter"):
        loader.parse_filter(bad)


def test_unknown_columns_are_named(out):
    with pytest.raises(ValueError, match=r"unknown column \['dnsmos'\]"):
        read_index(out, "duration < 3 or dnsmos >= 3.2")


# ---- every doc example runs ----

def test_the_loader_docstring_examples_run(out, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    test = doctest.DocTestParser().get_doctest(loader.__doc__, {**vars(loader), "output": out}, "loader", None, 0)
    assert len(test.examples) >= 5
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_training_loader_examples_run(out, tmp_path):
    """Each python block of the README's Training loader section, in a fresh process (so the
    DataLoader workers fork as a user's would), with OUTPUT and s3://bucket/corpus/ the finished job."""
    section = _readme_section("Training loader").split("\n### ", 1)[0]  # its own text, not the subsections
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        code = block.replace('"s3://bucket/corpus/"', json.dumps(out)).replace('"OUTPUT', json.dumps(out)[:-1])
        env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=300)
        assert done.returncode == 0, f"{block}\n{done.stderr[-3000:]}"


# ---- a clean venv with only the reader install ----

TRAINERS_TORCH = ("torch", "torchgen", "functorch", "nvidia", "cuda", "triton", "sympy", "mpmath", "networkx",
                  "jinja2", "markupsafe", "filelock")  # torch and what it imports, as a trainer already has them


def _lhotse_requirements() -> list[str]:
    """lhotse's own requirements but torch (the trainer's, linked in): what `pip install lhotse` next to
    a torch adds."""
    from importlib.metadata import requires

    wanted = [r.split(";")[0].strip() for r in requires("lhotse") or [] if "extra ==" not in r]
    return [r for r in wanted if re.split(r"[<>=!~ \[]", r)[0].lower() != "torch"]


@pytest.mark.slow
def test_a_clean_reader_venv_loads_a_multi_shard_output(out, tmp_path):
    """The "Done means" of issue 17, on a real job's output of >= 3 shards, in a new venv.

    `pip install "voxmill[hf]"` (the core, plus datasets): no torch, Ray, Prefect, faster-whisper or
    torchcodec come with it. There hf_dataset decodes every sample's audio, webdataset reads the
    shards and the NeMo export reads by NeMo's manifest contract (paths relative to the manifest,
    soundfile). Then with the trainer's own torch (this environment's, linked in after the venv's
    packages) and lhotse installed beside it (its other requirements, as `pip install lhotse` next to a
    torch adds them): SpeechShards and webdataset each read every sample once with 2 DataLoader
    workers, and lhotse reads the Lhotse Shar export, every cut's audio decoded."""
    import torch

    from pipelines.export import export

    lhotse_dest, nemo_dest = tmp_path / "lhotse", tmp_path / "nemo"
    assert export(out, "lhotse", str(lhotse_dest))["shards"] >= 3
    export(out, "nemo", str(nemo_dest))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    source = tmp_path / "src"  # the package's files only: building in the checkout would write into it
    for name in ("pipelines", "flows", "schemas"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{source}[hf]"], check=True, timeout=600)
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.lower()
    for heavy in ("torch=", "ray=", "prefect=", "faster-whisper=", "torchcodec=", "ctranslate2=", "s3fs="):
        assert f"\n{heavy}" not in f"\n{installed}", heavy
    expected = sorted(read_index(out, columns=["key"])["key"].to_pylist())
    reader = f"""
import glob, json, os, sys
import soundfile as sf
import webdataset as wds
from pipelines.loader import hf_dataset, read_audio, read_index
out, expected = {out!r}, {expected!r}
data = hf_dataset(out, cache_dir={str(tmp_path / "hf")!r})
assert sorted(data["key"]) == expected
for row in data:
    assert row["audio"]["array"].size and row["audio"]["sampling_rate"] == row["sample_rate"] == 24000
urls = sorted(glob.glob(out + "/shards/*.tar"))
assert len(urls) >= 3
keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False).decode(wds.handle_extension("flac", read_audio))]
assert sorted(keys) == expected
manifest = {str(nemo_dest / "manifest.json")!r}
lines = [json.loads(line) for line in open(manifest)]
assert sorted(line["key"] for line in lines) == expected
for line in lines:  # NeMo's contract: a relative audio_filepath is relative to the manifest's folder
    wave, rate = sf.read(os.path.join(os.path.dirname(manifest), line["audio_filepath"]), dtype="float32")
    assert abs(len(wave) / rate - line["duration"]) < 1e-6 and line["text"]
for name in ("torch", "ray", "prefect", "torchcodec", "faster_whisper", "s3fs"):
    assert name not in sys.modules, name
print("ok")
"""
    done = subprocess.run([python, "-c", reader], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]

    site = Path(torch.__file__).parent.parent
    linked = tmp_path / "trainers-torch"
    linked.mkdir()
    for name in TRAINERS_TORCH:
        if (site / name).exists():
            (linked / name).symlink_to(site / name)
    venv_site = next((venv / "lib").glob("python*/site-packages"))
    (venv_site / "zz-trainers-torch.pth").write_text(f"{linked}\n")  # after the venv's own packages
    # urllib3: lhotse imports it (lhotse/ais) without requiring it; a trainer's environment usually has it
    for args in (["--no-deps", "lhotse"], [*_lhotse_requirements(), "urllib3"]):
        subprocess.run([python, "-m", "pip", "install", "--quiet", *args], check=True, timeout=600)
    assert not (venv_site / "torch").exists()  # the trainer's torch stays the one in use
    trainer = f"""
import glob, sys
import webdataset as wds
from torch.utils.data import DataLoader
from lhotse import CutSet
from pipelines.loader import SpeechShards, read_audio
out, expected = {out!r}, {expected!r}
data = SpeechShards(out, sample_rate=16000, batch_seconds=20)
keys = [k for b in DataLoader(data, batch_size=None, num_workers=2, multiprocessing_context="spawn") for k in b["keys"]]
assert sorted(keys) == expected
urls = sorted(glob.glob(out + "/shards/*.tar"))
plain = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(wds.handle_extension("flac wav", read_audio))
loader = DataLoader(plain.to_tuple("__key__", "flac", "json"), batch_size=None, num_workers=2,
                    multiprocessing_context="spawn")
assert sorted(key for key, _, _ in loader) == expected
cuts = list(CutSet.from_shar(in_dir={str(lhotse_dest)!r}))
assert sorted(cut.id for cut in cuts) == expected
for cut in cuts:
    audio = cut.load_audio()
    assert audio.shape[0] == 1 and audio.shape[1] == cut.recording.num_samples > 0
    assert cut.supervisions[0].text
for name in ("ray", "prefect", "torchcodec", "torchaudio", "faster_whisper"):
    assert name not in sys.modules, name
print("ok")
"""
    done = subprocess.run([python, "-c", trainer], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
