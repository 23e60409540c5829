"""`voxmill inspect` at the real workload's size (issue 21): 100k units, 1 M index rows.

The output is built directly with pyarrow, laid out as a run leaves it: one index part and one
rejects part per unit (10 kept samples from 5 sources; a file-level VAD reject and a quality reject
whose audio sits in `rejected/`), one loose ledger record per unit (every two units share a
`finished_at`, as units finishing in the same instant do), a summary.json. Only the samples the
report shows have audio: the rows `pipelines.report.pick_rows` picks point to one small shard (and
the picked rejects to one small rejected shard), so `inspect` copies real clips.

Then, each as its own child process under `/usr/bin/time` (wall and peak RSS):
1. `voxmill inspect OUTPUT` on the per-unit layout, when `--uncompacted` (slow: a footer per part);
2. `compact_output(OUTPUT)`, what a run does at its end past engine.compact_min_units (or
   `voxmill compact`);
3. `voxmill inspect OUTPUT` on the compacted output, `--repeats` times: the issue's target is
   under 10 s and 2 GB (it measured 393 s and 10.6 GB before).

CLI: ``python benchmarks/report_scale.py [--workdir /tmp/voxmill-bench-report] [--units 100000]
[--repeats 3] [--uncompacted]``; the built output is kept and reused (a fresh copy is compacted each
time); writes ``WORKDIR/report_scale.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.report import pick_rows  # noqa: E402
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES, SEGMENTS = 5, 2  # per unit: 10 index rows
WORDS = np.array("the a speech data set of hours read aloud by many voices in quiet rooms and noisy halls".split())
PICKED_SHARD, PICKED_REJECTS = "shards/shard-bench.tar", "rejected/shard-bench.tar"
STARTED = datetime(2026, 11, 29, 0, 0, tzinfo=timezone.utc)


def keys(rows: np.ndarray) -> list[str]:
    """Row r's key: its source (r // SEGMENTS) and segment, in row order when sorted (as keys sort by source)."""
    return [f"src{r // SEGMENTS:08d}-{(r * 2654435761) % 2**32:08x}-{r % SEGMENTS:03d}" for r in rows.tolist()]


def _table(schema: pa.Schema, columns: dict[str, pa.Array], n: int) -> pa.Table:
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def index_part(unit: int, picked: set[int]) -> pa.Table:
    rng = np.random.default_rng(unit)
    n = SOURCES * SEGMENTS
    rows = np.arange(unit * n, (unit + 1) * n)
    duration = rng.uniform(2, 20, n)
    start = np.tile(np.cumsum(np.full(SEGMENTS, 20.0)) - 20.0, SOURCES)
    texts = [" ".join(rng.choice(WORDS, int(d * 2.5))) for d in duration]
    f32 = {name: pa.array(rng.normal(mean, spread, n), pa.float32()) for name, mean, spread in (
        ("dnsmos_sig", 3.4, 0.3), ("dnsmos_bak", 3.9, 0.3), ("dnsmos_ovrl", 3.1, 0.3), ("snr_db", 30, 8),
        ("clipping", 0.0005, 0.0001), ("loudness_lufs", -24, 4), ("chars_per_second", 13, 2),
        ("avg_logprob", -0.3, 0.1), ("no_speech_prob", 0.05, 0.02), ("language_prob", 0.98, 0.01))}
    sources = [f"src{r // SEGMENTS:08d}" for r in rows.tolist()]
    columns = {
        "key": pa.array(keys(rows)),
        "shard": pa.array([PICKED_SHARD if r in picked else f"shards/shard-{unit:06d}.tar" for r in rows.tolist()]),
        "unit": pa.array(np.full(n, unit), INDEX_SCHEMA.field("unit").type),
        "source_id": pa.array(sources), "source_uri": pa.array([f"s3://corpus/raw/{s}.flac" for s in sources]),
        "start": pa.array(start), "end": pa.array(start + duration), "duration": pa.array(duration),
        "sample_rate": pa.array(np.full(n, 24000), INDEX_SCHEMA.field("sample_rate").type),
        "text": pa.array(texts), "language": pa.array(["en"] * n),
        "audio_hash": pa.array([f"{(r * 11400714819323198485) % 2**64:016x}{r:024x}" for r in rows.tolist()]),
        **f32,
    }
    return _table(INDEX_SCHEMA, columns, n)


def rejects_part(unit: int, picked: set[int]) -> pa.Table:
    """A file-level VAD reject (no key, no audio) and a quality reject with its audio in rejected/."""
    rng = np.random.default_rng(unit + 10**7)
    snr = float(rng.uniform(2, 19))
    key = f"src{10**7 + unit:08d}-{unit:08x}-000"
    shard = PICKED_REJECTS if unit in picked else f"rejected/shard-{unit:06d}.tar"
    rows = [{"source_id": f"src{10**8 + unit:08d}", "source_uri": f"s3://corpus/raw/{10**8 + unit}.flac",
             "unit": unit, "stage": "vad", "reason": "no speech found", "start": 0.0, "end": 1.0, "duration": 1.0},
            {"source_id": key[:11], "source_uri": f"s3://corpus/raw/{key[:11]}.flac", "unit": unit, "key": key,
             "stage": "quality", "reason": f"snr_db {snr:.2f} < 20.00", "start": 0.0, "end": 6.0, "duration": 6.0,
             "metric": "snr_db", "value": snr, "threshold": 20.0, "shard": shard, "sample_rate": 24000,
             "text": " ".join(rng.choice(WORDS, 15)), "language": "en", "snr_db": snr}]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


def record(unit: int) -> dict:
    """A ledger record as commit writes it; units 2k and 2k+1 finish at the same instant."""
    return {"unit": unit, "digest": f"{unit:040x}", "input_seconds": 140.0, "output_seconds": 110.0, "samples": 10,
            "segments": 11, "rejects": 2, "shards": [f"shards/shard-{unit:06d}.tar"],
            "rejected_shards": [f"rejected/shard-{unit:06d}.tar"],
            "reject_reasons": {"vad: no speech found": 1, "quality: snr_db": 1}, "speech_seconds": 116.0,
            "stage_seconds": {"decode": 0.5, "vad": 0.2, "asr": 3.0, "quality": 1.0, "write": 0.3},
            "finished_at": (STARTED + timedelta(seconds=60 + (unit // 2) * 0.5)).isoformat()}


def write_units(out: Path, units: range, picked: set[int], picked_rejects: set[int]) -> None:
    for unit in units:
        pq.write_table(index_part(unit, picked), out / f"index/part-{unit:06d}.parquet")
        pq.write_table(rejects_part(unit, picked_rejects), out / f"rejects/part-{unit:06d}.parquet")
        (out / f"_ledger/unit-{unit:06d}.json").write_text(json.dumps(record(unit), indent=2, sort_keys=True))


def clip(seconds: float, seed: int) -> bytes:
    buffer = io.BytesIO()
    wave = np.random.default_rng(seed).normal(0, 0.05, int(24000 * seconds)).astype(np.float32)
    sf.write(buffer, wave, 24000, format="FLAC")
    return buffer.getvalue()


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def build(out: Path, units: int, processes: int) -> None:
    """The per-unit layout of `units` units (see module doc)."""
    if out.exists():
        shutil.rmtree(out)
    for folder in ("index", "rejects", "_ledger"):
        (out / folder).mkdir(parents=True)
    rows = units * SOURCES * SEGMENTS
    picked = {int(r) for r in pick_rows(pa.table({"key": keys(np.arange(rows))}), 20)}
    reject_keys = pa.table({"key": [f"src{10**7 + u:08d}-{u:08x}-000" for u in range(units)]})
    picked_rejects = {int(u) for u in pick_rows(reject_keys, 20)}
    chunks = [range(start, min(units, start + 2000)) for start in range(0, units, 2000)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(write_units, [out] * len(chunks), chunks, [picked] * len(chunks), [picked_rejects] * len(chunks)))
    shown = index_part_rows(picked)
    write_shard(out / PICKED_SHARD, {f"{k}.{ext}": data for k, d in shown.items()
                                     for ext, data in (("flac", clip(min(d, 3.0), zlib.crc32(k.encode()))), ("json", b"{}"))})
    write_shard(out / PICKED_REJECTS, {f"src{10**7 + u:08d}-{u:08x}-000.{ext}": data for u in picked_rejects
                                       for ext, data in (("flac", clip(2.0, u)), ("json", b"{}"))})
    (out / "summary.json").write_text(json.dumps({"started_at": (STARTED + timedelta(seconds=1)).isoformat(),
                                                  "wall_seconds": 60 + units / 4, "complete": True}))


def index_part_rows(picked: set[int]) -> dict[str, float]:
    """The picked rows' keys and durations, as index_part made them."""
    per_unit = SOURCES * SEGMENTS
    found = {}
    for unit in sorted({r // per_unit for r in picked}):
        part = index_part(unit, picked)
        for key, duration, row in zip(part["key"].to_pylist(), part["duration"].to_pylist(),
                                      range(unit * per_unit, (unit + 1) * per_unit)):
            if row in picked:
                found[key] = duration
    return found


def timed(command: list[str], timeout: float) -> dict:
    """Wall seconds and peak RSS (GB) of `command` as a child process, from /usr/bin/time."""
    result = subprocess.run(["/usr/bin/time", "-f", "TIMED %e %M", *command], capture_output=True, text=True,
                            cwd=ROOT, timeout=timeout)
    line = next(x for x in result.stderr.splitlines()[::-1] if x.startswith("TIMED "))
    wall, kb = line.split()[1:]
    if result.returncode:
        raise RuntimeError(f"{command} failed: {result.stderr[-2000:]}")
    return {"wall_s": float(wall), "peak_rss_gb": int(kb) / 1024**2, "stdout_tail": result.stdout[-400:]}


def inspect(out: Path, timeout: float) -> dict:
    return timed([str(ROOT / ".venv/bin/voxmill"), "inspect", str(out)], timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench-report"))
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="to build the parts")
    parser.add_argument("--uncompacted", action="store_true", help="also inspect the per-unit layout (slow)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    built = args.workdir / f"built-{args.units}"
    results: dict = {"units": args.units, "index_rows": args.units * SOURCES * SEGMENTS, "rejects_rows": 2 * args.units}
    if not (built / "summary.json").exists():
        clock = datetime.now()
        build(built, args.units, args.processes)
        results["build_s"] = (datetime.now() - clock).total_seconds()
        print(f"built {built} in {results['build_s']:.0f} s", flush=True)
    if args.uncompacted:
        results["inspect_per_unit_layout"] = inspect(built, args.timeout)
        print("per-unit layout:", results["inspect_per_unit_layout"], flush=True)
    out = args.workdir / "compacted"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(built, out, ignore=shutil.ignore_patterns("report"))
    results["compact"] = timed([sys.executable, "-c", "import sys; from pipelines.state.compaction import "
                                "compact_output; print(compact_output(sys.argv[1]))", str(out)], args.timeout)
    print("compact:", results["compact"], flush=True)
    results["inspect"] = [inspect(out, args.timeout) for _ in range(args.repeats)]
    for run in results["inspect"]:
        print(f"inspect: {run['wall_s']:.1f} s, {run['peak_rss_gb']:.2f} GB", flush=True)
    results["load_average"] = os.getloadavg()
    (args.workdir / "report_scale.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
