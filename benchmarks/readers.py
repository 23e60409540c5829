"""Full-pass read time of each reader a trainer would use on an output: Hugging Face `datasets`
(`hf_dataset`, map-style and streaming), plain `webdataset` through a DataLoader with workers, and
voxmill's `SpeechShards` through a DataLoader with workers. Every sample's audio is decoded to float32.

The source is the bundled clips (demo/real-speech) through a job in units of ~15 s with the fake ASR
backend (reading does not depend on the words), its samples copied `--copies` times under new keys into
shards of `--shard-samples` (benchmarks/loader.py `reshard`), with the dataset card a run writes. The job
runs in a child process, so the measuring process holds no Ray and its DataLoader workers fork as a
trainer's would. Each reader makes `--repeats` full passes, interleaved (the machine is shared); the
median is kept. hf_dataset's first call also builds datasets' Arrow cache: timed apart ("prepare").

CLI: ``python benchmarks/readers.py [--workdir /tmp/voxmill-bench-readers] [--copies 60]
[--shard-samples 16] [--workers 2] [--repeats 3]``; writes ``WORKDIR/readers.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # Ray workers: tests.fakes


def build(workdir: Path, copies: int, shard_samples: int) -> Path:
    """The resharded corpus (and its card), made once; the job in this process (called as a child)."""
    from benchmarks.exports import source_output
    from benchmarks.loader import reshard
    from pipelines.sinks.card import write_card
    from schemas.config import ShardConfig

    out = workdir / "corpus"
    if not (out / "index").exists():
        reshard(source_output(workdir), out, copies, shard_samples)
        write_card(str(out), ShardConfig())
    return out


def hf_pass(data) -> Iterable[tuple[int, float]]:
    for row in data:
        yield 1, len(row["audio"]["array"]) / row["audio"]["sampling_rate"]


def webdataset_pass(urls: list[str], workers: int) -> Iterable[tuple[int, float]]:
    import webdataset as wds
    from torch.utils.data import DataLoader

    from pipelines.loader import read_audio

    data = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(wds.handle_extension("flac wav", read_audio))
    for (wave, rate), _ in DataLoader(data.to_tuple("flac", "json"), batch_size=None, num_workers=workers):
        yield 1, len(wave) / rate


def speechshards_pass(root: Path, workers: int) -> Iterable[tuple[int, float]]:
    from torch.utils.data import DataLoader

    from pipelines.loader import SpeechShards

    data = SpeechShards(str(root), shuffle=0, rank=0, world_size=1)
    for item in DataLoader(data, batch_size=None, num_workers=workers):
        yield 1, item["waveform"].numel() / item["sample_rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench-readers"))
    parser.add_argument("--copies", type=int, default=60)
    parser.add_argument("--shard-samples", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build(args.workdir, args.copies, args.shard_samples)
        return
    out = args.workdir / "corpus"
    if not (out / "index").exists():
        subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--copies", str(args.copies),
                        "--shard-samples", str(args.shard_samples), "--build-only"], check=True)

    from pipelines.loader import hf_dataset

    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    cache = args.workdir / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    data = hf_dataset(str(out), cache_dir=str(cache))
    prepare_s = time.perf_counter() - started
    w = args.workers
    loops = {
        "HF datasets: hf_dataset(OUTPUT), rows iterated (map-style, Arrow cache built)": lambda: hf_pass(data),
        "HF datasets: hf_dataset(OUTPUT, streaming=True)": lambda: hf_pass(hf_dataset(str(out), streaming=True)),
        f"webdataset: WebDataset(urls) + read_audio, DataLoader({w} workers)": lambda: webdataset_pass(urls, w),
        f"voxmill: SpeechShards(OUTPUT), DataLoader({w} workers)": lambda: speechshards_pass(out, w),
    }
    from benchmarks.loader import time_passes

    rows = time_passes(loops, args.repeats)
    counts = {row["samples"] for row in rows.values()}
    assert len(counts) == 1, f"readers disagree on the sample count: {rows}"
    result = {"shards": len(urls), "hf_prepare_s": prepare_s, "reads": rows}
    (args.workdir / "readers.json").write_text(json.dumps(result, indent=2))
    first = next(iter(rows.values()))
    print(f"{len(urls)} shards, {first['samples']} samples, {first['audio_s'] / 60:.1f} min of audio; "
          f"hf_dataset prepare (Arrow cache) {prepare_s:.2f} s")
    print("\n| full pass, audio decoded | median | fastest | samples/s | audio s/s |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall_s']:.2f} s | {row['min_wall_s']:.2f} s | {row['samples_per_s']:.0f} "
              f"| {row['audio_s_per_s']:.0f} |")


if __name__ == "__main__":
    main()
