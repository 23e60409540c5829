"""Training loader (pipelines/loader.py) vs a plain webdataset loop over the same shards, same run.

The source is a finished voxmill output (WORKDIR/job-out, made by benchmarks/throughput.py; a job
is run when it is missing). Its samples are re-sharded into small shards (and copied `--copies`
times under new keys) so that there are enough shards to shuffle and split. Each loop runs
`--repeats` times, interleaved, and the median is kept: the machine is shared.

CLI: ``python benchmarks/loader.py [--workdir /tmp/voxmill-bench] [--copies 2] [--shard-samples 16]
[--repeats 5]``; writes ``WORKDIR/loader.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import webdataset as wds
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.loader import SpeechShards, padding_ratio, read_index  # noqa: E402
from pipelines.sinks.base import Sample  # noqa: E402
from pipelines.sinks.webdataset import WebDatasetSink  # noqa: E402
from schemas.config import JobConfig, ShardConfig  # noqa: E402
from schemas.tables import INDEX_SCHEMA  # noqa: E402


def source_output(workdir: Path) -> Path:
    """The throughput benchmark's finished output, or a fresh job over its 30-minute mixed corpus."""
    out = workdir / "job-out"
    if (out / "summary.json").exists():
        return out
    from benchmarks.make_corpus import make_corpus
    from pipelines.job import run_job

    corpus = workdir / "corpus-mixed-30min"
    if not corpus.exists():
        make_corpus(corpus, "mixed", 30)
    run_job(JobConfig(input=str(corpus), output=str(out)))
    return out


def reshard(source: Path, target: Path, copies: int, per_shard: int) -> None:
    """Write the source samples (x copies, keys suffixed -cN) as shards of `per_shard` samples + an index."""
    rows = {r["key"]: r for r in read_index(str(source)).to_pylist()}
    urls = sorted(str(p) for p in (source / "shards").glob("*.tar"))
    stored = [s for s in wds.WebDataset(urls, shardshuffle=False) if s["__key__"] in rows]
    samples = [(f"{s['__key__']}-c{c}", s) for c in range(copies) for s in stored]
    writer, index = WebDatasetSink(ShardConfig(max_samples=per_shard), str(target)), []
    for unit in range(0, len(samples), per_shard):
        group = samples[unit: unit + per_shard]
        placed = writer.write(unit // per_shard, (Sample(k, s["flac"], json.loads(s["json"])) for k, s in group))
        index += [dict(rows[s["__key__"]], key=k, shard=shard) for (k, s), (shard, _) in zip(group, placed)]
    (target / "index").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), target / "index" / "part-000000.parquet")


def _flac(data: bytes) -> tuple:
    return sf.read(io.BytesIO(data), dtype="float32")


def plain(urls: list[str], decode_audio: bool, workers: int = 0) -> Iterable[tuple[int, float]]:
    """The baseline: `webdataset.WebDataset(urls).decode()`, FLAC decoded with soundfile when asked
    (the same decoding work as the loader's), through a DataLoader when `workers` > 0."""
    dataset = wds.WebDataset(urls, shardshuffle=False).decode(*([wds.handle_extension("flac", _flac)] * decode_audio))
    for s in DataLoader(dataset, batch_size=None, num_workers=workers) if workers else dataset:
        yield 1, (len(s["flac"][0]) / int(s["flac"][1]) if decode_audio else s["json"]["duration"])


def loader(dataset: SpeechShards, workers: int = 0) -> Iterable[tuple[int, float]]:
    """The loader, iterated directly like the baseline, or through a DataLoader when `workers` > 0."""
    for item in DataLoader(dataset, batch_size=None, num_workers=workers) if workers else dataset:
        if "lengths" in item:
            yield len(item["keys"]), float(item["lengths"].sum()) / item["sample_rate"]
        else:
            yield 1, item["waveform"].numel() / item["sample_rate"]


def measure(loop: Callable[[], Iterable[tuple[int, float]]]) -> tuple[float, int, float]:
    started, samples, seconds = time.perf_counter(), 0, 0.0
    for n, s in loop():
        samples, seconds = samples + n, seconds + s
    return time.perf_counter() - started, samples, seconds


def time_passes(loops: dict[str, Callable[[], Iterable[tuple[int, float]]]], repeats: int) -> dict[str, dict]:
    """Each full pass `repeats` times, interleaved (a noisy machine slows every reader alike):
    median and best wall, samples and audio seconds, and the rates from the median. A loop yields
    (samples, audio seconds) per item it reads (readers.py, exports.py use it too)."""
    runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            runs[name].append(measure(loop))
    rows = {name: {"wall_s": statistics.median(r[0] for r in rs), "min_wall_s": min(r[0] for r in rs),
                   "samples": rs[0][1], "audio_s": rs[0][2]} for name, rs in runs.items()}
    for row in rows.values():
        row["samples_per_s"] = row["samples"] / row["wall_s"]
        row["audio_s_per_s"] = row["audio_s"] / row["wall_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench"))
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--shard-samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    args = parser.parse_args()

    out = args.workdir / "loader-out"
    if not (out / "index").exists():
        reshard(source_output(args.workdir), out, args.copies, args.shard_samples)
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    root = str(out)
    loops: dict[str, Callable[[], Iterable[tuple[int, float]]]] = {
        "plain WebDataset(urls).decode() (audio left encoded)": lambda: plain(urls, False),
        "plain WebDataset(urls).decode(flac -> soundfile)": lambda: plain(urls, True),
        "loader, samples (index, shuffle 1000, decode)": lambda: loader(SpeechShards(root, rank=0, world_size=1)),
        f"loader, bucketed batches ({args.batch_seconds:g} s, padded + lengths)":
            lambda: loader(SpeechShards(root, batch_seconds=args.batch_seconds, rank=0, world_size=1)),
        "loader, samples, resample to 16 kHz (soxr)":
            lambda: loader(SpeechShards(root, sample_rate=16000, rank=0, world_size=1)),
        "plain + soundfile, DataLoader 2 workers":
            lambda: plain(urls, True, workers=2),
        "loader, samples, DataLoader 2 workers":
            lambda: loader(SpeechShards(root, rank=0, world_size=1), workers=2),
        "loader, bucketed batches, DataLoader 2 workers":
            lambda: loader(SpeechShards(root, batch_seconds=args.batch_seconds, rank=0, world_size=1), workers=2),
    }
    rows = time_passes(loops, args.repeats)
    batches = list(SpeechShards(root, batch_seconds=args.batch_seconds, rank=0, world_size=1))
    base = rows["plain WebDataset(urls).decode(flac -> soundfile)"]["samples_per_s"]
    result = {
        "shards": len(urls), "rows": rows,
        "ratio_loader_vs_plain": rows["loader, samples (index, shuffle 1000, decode)"]["samples_per_s"] / base,
        "ratio_bucketed_vs_plain": rows[list(loops)[3]]["samples_per_s"] / base,
        "ratio_2_workers": rows["loader, samples, DataLoader 2 workers"]["samples_per_s"]
        / rows["plain + soundfile, DataLoader 2 workers"]["samples_per_s"],
        "padding_ratio": padding_ratio(batches),
        "batches": len(batches), "mean_batch_seconds": sum(float(b["lengths"].sum()) / b["sample_rate"]
                                                              for b in batches) / len(batches),
    }
    (args.workdir / "loader.json").write_text(json.dumps(result, indent=2))
    print(f"{len(urls)} shards, {rows[list(loops)[0]]['samples']} samples, "
          f"{rows[list(loops)[0]]['audio_s']:.0f} s of audio, median of {args.repeats}")
    print("| loop | wall s (median) | wall s (min) | samples/s | audio s/s |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall_s']:.2f} | {row['min_wall_s']:.2f} | {row['samples_per_s']:.0f} "
              f"| {row['audio_s_per_s']:.0f} |")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
