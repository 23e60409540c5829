"""Planning at 50,000 hours: a synthetic manifest of ~18 M files (metadata only), planned on a saved profile.

    python -m benchmarks.plan_scale --profile PROFILE.json [--files 18000000] [--hours 50000]

Reports the time and peak memory of `voxmill plan` on it (target: under 60 s and 2 GB) and the
deadline answer: the resources that finish the 50k hours within 24 h.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.tables import MANIFEST_SCHEMA


def synthetic_manifest(path: Path, files: int, hours: float, seed: int = 0) -> None:
    """Log-normal clip lengths scaled to `hours`; 70% FLAC, rates 16/24/44.1/48 kHz."""
    rng = np.random.default_rng(seed)
    duration = rng.lognormal(np.log(8.0), 0.7, files).clip(0.3, 4 * 3600)
    duration *= hours * 3600 / duration.sum()
    numbers = pc.cast(pa.array(np.arange(files)), pa.string())
    uri = pc.binary_join_element_wise("s3://corpus/raw/", numbers, ".flac", "")
    flac = rng.random(files) < 0.7
    table = pa.table({
        "id": numbers, "uri": uri,
        "bytes": (duration * np.where(flac, 20000, 32000)).astype(np.int64),
        "container": pa.array(np.where(flac, "flac", "wav")),
        "codec": pa.array(np.where(flac, "pcm_16", "pcm_16")),
        "sample_rate": pa.array(rng.choice([16000, 24000, 44100, 48000], files).astype(np.int32)),
        "channels": pa.array(np.where(rng.random(files) < 0.9, 1, 2).astype(np.int16)),
        "duration": duration,
        "error": pa.nulls(files, pa.string()),
    }, schema=MANIFEST_SCHEMA)
    pq.write_table(table, path)


def timed_plan(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (GB) of one `voxmill plan` process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "plan", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    if done.returncode:
        raise SystemExit(done.stderr)
    return wall, peak, done.stderr + done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", required=True)
    parser.add_argument("--files", type=int, default=18_000_000)
    parser.add_argument("--hours", type=float, default=50_000)
    parser.add_argument("--workdir", default="/tmp/voxmill-plan-scale")
    args = parser.parse_args()
    path = Path(args.workdir) / f"manifest-{args.files}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        synthetic_manifest(path, args.files, args.hours)
    base = ["--manifest", str(path), "--profile", args.profile]
    wall, peak, text = timed_plan(base)
    print(f"plan of {args.files} files / {args.hours:.0f} h: {wall:.1f} s, peak RSS {peak:.2f} GB")
    print(text)
    wall, peak, text = timed_plan([*base, "--deadline", "24h"])
    print(f"deadline 24h: {wall:.1f} s, peak RSS {peak:.2f} GB")
    print(text)


if __name__ == "__main__":
    main()
