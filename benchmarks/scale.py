"""The control plane at the real workload's size (issue 21): many files, many units, one driver.

Two variants, side by side in one command:
- **files**: N tiny FLACs (0.2 s of noise: VAD rejects each, so ASR does not dominate and every
  input is still accounted for) through `voxmill run` as a child process with the fake ASR
  backend: wall, the driver's peak RSS, the layout's size, a no-op rerun and `voxmill status`;
- **manifest**: a synthetic manifest of N rows (sorted uris, log-normal clip lengths summing to
  `--hours`) laid into units by the run's own code (`cut_units` + the appended layout), in a
  child process: wall and peak RSS. This is the 18 M-file case with no audio.

    python -m benchmarks.scale --files 10000 100000 --manifest 18000000 [--json out.json]

Targets on a 2-core machine: driver peak RSS under 1.5 GB at any N; 18 M manifest rows laid into
units in under 2 minutes. `cpu_s` and `load_avg` say how much of a wall time was the machine's
other work (the load average over the last minute as the measurement ended). `measure(n_files)` returns one row of the files table as a dict;
other parts of issue 21 (the ledger, compaction, journal requests) add their keys to it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("VOXMILL_SCALE_WORK", tempfile.gettempdir())) / "voxmill-scale"
CONFIG = {"asr": {"backend": "tests.fakes:FakeAsr"}}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
FOLDER_FILES = 10_000  # tiny files per folder, as a collection is laid out by day or speaker

# Extra columns for the files table: name -> fn(output folder, run result) -> value. Other parts of
# issue 21 register theirs here (e.g. the compact ledger's request counts).
EXTRA: dict[str, Callable[[Path, dict], object]] = {}


def make_files(folder: Path, count: int, seed: int = 0) -> None:
    """`count` distinct 0.2 s 16 kHz FLACs of low noise (distinct bytes: no two are one file)."""
    rng = np.random.default_rng(seed)
    made = sum(1 for _ in folder.rglob("*.flac")) if folder.exists() else 0
    for n in range(made, count):
        sub = folder / f"{n // FOLDER_FILES:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        noise = (rng.standard_normal(3200) * 30).astype(np.int16)
        sf.write(sub / f"clip-{n:08d}.flac", noise, 16000, format="FLAC")


class Peak:
    """Polls a process's VmHWM (its peak resident set) until it exits: the driver alone, not Ray's
    own processes (which RUSAGE_CHILDREN would mix in)."""

    def __init__(self, pid: int):
        self.pid, self.kb = pid, 0
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while True:
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.kb = max(self.kb, int(line.split()[1]))
            time.sleep(0.1)

    def gb(self) -> float:
        self.thread.join(timeout=1)
        return self.kb / 1e6


def voxmill(*args: str) -> tuple[float, float, str]:
    """Wall seconds, driver peak RSS (GB) and output of one `voxmill` child process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = Peak(child.pid)
    out, _ = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode not in (0, 1):
        raise SystemExit(f"voxmill {' '.join(args)} failed ({child.returncode}):\n{out[-3000:]}")
    return wall, peak.gb(), out


def measure(n_files: int, work: Path = WORK) -> dict:
    """One row of the files table: a first run over `n_files` tiny files, a no-op rerun, `status`."""
    inputs, output = work / f"in-{n_files}", work / f"out-{n_files}"
    make_files(inputs, n_files)
    shutil.rmtree(output, ignore_errors=True)
    config = work / "job.json"
    config.write_text(json.dumps(CONFIG))
    run = ["run", "--input", str(inputs), "--output", str(output), "--config", str(config), "--no-plan", "--json"]
    wall, rss, text = voxmill(*run)
    if not (output / "summary.json").exists():
        raise SystemExit(f"the run over {n_files} files wrote no summary:\n{text[-3000:]}")
    summary = json.loads((output / "summary.json").read_text())
    rerun_wall, rerun_rss, _ = voxmill(*run)
    status_wall, _, _ = voxmill("status", str(output))
    layout = sum(p.stat().st_size for p in (output / "_ledger").glob("layout-*"))
    row = {"files": n_files, "units": summary["counts"]["units"], "complete": summary["complete"],
           "accounted": summary["counts"]["samples"] + summary["counts"]["rejects"] == n_files,
           "wall_s": round(wall, 1), "driver_peak_gb": round(rss, 2), "layout_mb": round(layout / 1e6, 2),
           "discover_s": round(summary["stage_seconds"].get("discover", 0.0), 1),
           "noop_rerun_s": round(rerun_wall, 1), "noop_rerun_peak_gb": round(rerun_rss, 2),
           "status_s": round(status_wall, 1)}
    row.update({name: fn(output, summary) for name, fn in EXTRA.items()})
    return row


def synthetic_manifest(path: Path, files: int, hours: float, seed: int = 0) -> None:
    """Log-normal clip lengths scaled to `hours`, uris in sorted order, written a million rows at a time."""
    from schemas.tables import MANIFEST_SCHEMA

    rng = np.random.default_rng(seed)
    mean = hours * 3600 / files
    with pq.ParquetWriter(path, MANIFEST_SCHEMA) as writer:
        for start in range(0, files, 1 << 20):
            n = min(1 << 20, files - start)
            duration = rng.lognormal(np.log(mean) - 0.245, 0.7, n).clip(0.3, 4 * 3600)
            numbers = pc.utf8_lpad(pc.cast(pa.array(np.arange(start, start + n)), pa.string()), 9, "0")
            uri = pc.binary_join_element_wise("s3://corpus/raw/", numbers, ".flac", "")
            writer.write_table(pa.table({
                "id": pc.binary_join_element_wise("clip-", numbers, ""), "uri": uri,
                "bytes": (duration * 20000).astype(np.int64), "container": pa.array(["flac"] * n),
                "codec": pa.array(["pcm_16"] * n), "sample_rate": pa.array(np.full(n, 16000, np.int32)),
                "channels": pa.array(np.ones(n, np.int16)), "duration": duration,
                "error": pa.nulls(n, pa.string())}, schema=MANIFEST_SCHEMA))


def lay_out(manifest: str, output: str) -> None:
    """In the child: the manifest's batches into units, as `jobstate.claim` does with a discovery."""
    from pipelines.state import layout
    from pipelines.state.units import cut_units
    from schemas.config import EngineConfig

    batches = pq.ParquetFile(manifest).iter_batches(batch_size=layout.ROW_GROUP)
    units = layout.append(output, 0, cut_units(batches, 0, EngineConfig()))
    back = layout.read(output)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"units": len(units), "read_back": len(back), "files_in_last": len(back[-1].files),
                      "cpu_s": usage.ru_utime + usage.ru_stime}))


def measure_manifest(rows: int, hours: float, work: Path = WORK) -> dict:
    path = work / f"manifest-{rows}.parquet"
    if not path.exists():
        synthetic_manifest(path, rows, hours)
    output = work / f"layout-{rows}"
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--lay-out", str(path), str(output)],
                             cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    peak = Peak(child.pid)
    out, _ = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(f"laying out {path} failed")
    result = json.loads(out.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in (output / "_ledger").glob("layout-*"))
    return {"manifest_rows": rows, "hours": round(hours), "units": result["units"], "wall_s": round(wall, 1),
            "cpu_s": round(result["cpu_s"], 1), "load_avg": round(os.getloadavg()[0], 1),
            "peak_gb": round(peak.gb(), 2), "layout_mb": round(size / 1e6, 1)}


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="*", default=[10_000])
    parser.add_argument("--manifest", type=int, nargs="*", default=[])
    parser.add_argument("--hours", type=float, default=50_000)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--lay-out", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lay_out:
        return lay_out(*args.lay_out)
    args.work.mkdir(parents=True, exist_ok=True)
    files = [measure(n, args.work) for n in args.files]
    manifests = [measure_manifest(n, args.hours * n / 18_000_000, args.work) for n in args.manifest]
    print(table(files))
    print()
    print(table(manifests))
    if args.json:
        args.json.write_text(json.dumps({"files": files, "manifest": manifests}, indent=2))


if __name__ == "__main__":
    main()
