"""`voxmill inspect` at the real workload's size (issue 21): 100k units, 1 M index rows.

The output is built directly with pyarrow (10 kept samples per unit from 5 sources; per unit a
file-level VAD reject and a quality reject whose audio sits in `rejected/`; every two units share
a `finished_at`, as units finishing in the same instant do; a summary.json), in one of two layouts:
- `compacted` (default): as a run past engine.compact_min_units, or `voxmill compact`, leaves it:
  a compacted file per 1024 units under the `_parts.json` manifest, the ledger in `units.parquet`;
- `per-unit`: as a run leaves it before compaction: a part per unit per table and a loose ledger
  record per unit; then `compact_output` is timed and `inspect` measured again.
Only the samples the report shows have audio: the rows `pipelines.report.pick_rows` picks point to
one small shard (the picked rejects to one small rejected shard), so `inspect` copies real clips.

Each `voxmill inspect OUTPUT` (it writes the report) runs as its own child process under
`/usr/bin/time`: wall, CPU (user + sys) and peak RSS. The issue's target is under 10 s and 2 GB
(it measured 393 s and 10.6 GB before).

CLI: ``python benchmarks/report_scale.py [--workdir /tmp/voxmill-bench-report] [--units 100000]
[--layout compacted|per-unit] [--repeats 3]``; the built output is kept and reused (measured on a
fresh copy); writes ``WORKDIR/report_scale-LAYOUT-UNITS.json``.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.io import tables  # noqa: E402
from pipelines.report import pick_rows  # noqa: E402
from pipelines.state import ledger  # noqa: E402
from schemas.tables import INDEX_SCHEMA, REJECTS_SCHEMA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES, SEGMENTS = 5, 2  # per unit: 10 index rows
WORDS = np.array("the a speech data set of hours read aloud by many voices in quiet rooms and noisy halls".split())
PICKED_SHARD, PICKED_REJECTS = "shards/shard-bench.tar", "rejected/shard-bench.tar"
STARTED = datetime(2026, 11, 29, 0, 0, tzinfo=timezone.utc)


def keys(rows: np.ndarray) -> list[str]:
    """Row r's key: its source (r // SEGMENTS) and segment, in row order when sorted (as keys sort by source)."""
    return [f"src{r // SEGMENTS:08d}-{(r * 2654435761) % 2**32:08x}-{r % SEGMENTS:03d}" for r in rows.tolist()]


def reject_key(unit: int) -> str:
    return f"src{10**7 + unit:08d}-{unit:08x}-000"


def _table(schema: pa.Schema, columns: dict[str, pa.Array], n: int) -> pa.Table:
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def _texts(rng: np.random.Generator, n: int) -> pa.Array:
    """Transcripts of 5-50 words, drawn from a pool (1M distinct joins would only slow the build)."""
    pool = pa.array([" ".join(rng.choice(WORDS, k)) for k in rng.integers(5, 50, 997)])
    return pool.take(pa.array(rng.integers(0, len(pool), n)))


def index_block(units: range, picked: set[int]) -> pa.Table:
    """The index rows of `units`, in unit order: 5 sources of 2 segments each per unit."""
    rng = np.random.default_rng(units.start)
    per_unit = SOURCES * SEGMENTS
    rows = np.arange(units.start * per_unit, units.stop * per_unit)
    n = len(rows)
    duration = rng.uniform(2, 20, n)
    start = (rows % SEGMENTS) * 20.0
    f32 = {name: pa.array(rng.normal(mean, spread, n), pa.float32()) for name, mean, spread in (
        ("dnsmos_sig", 3.4, 0.3), ("dnsmos_bak", 3.9, 0.3), ("dnsmos_ovrl", 3.1, 0.3), ("snr_db", 30, 8),
        ("clipping", 0.0005, 0.0001), ("loudness_lufs", -24, 4), ("chars_per_second", 13, 2),
        ("avg_logprob", -0.3, 0.1), ("no_speech_prob", 0.05, 0.02), ("language_prob", 0.98, 0.01))}
    sources = [f"src{r:08d}" for r in (rows // SEGMENTS).tolist()]
    columns = {
        "key": pa.array(keys(rows)),
        "shard": pa.array([PICKED_SHARD if r in picked else f"shards/shard-{r // per_unit:06d}.tar"
                           for r in rows.tolist()]),
        "unit": pa.array(rows // per_unit, INDEX_SCHEMA.field("unit").type),
        "source_id": pa.array(sources), "source_uri": pa.array([f"s3://corpus/raw/{s}.flac" for s in sources]),
        "start": pa.array(start), "end": pa.array(start + duration), "duration": pa.array(duration),
        "sample_rate": pa.array(np.full(n, 24000), INDEX_SCHEMA.field("sample_rate").type),
        "text": _texts(rng, n), "language": pa.array(["en"] * n),
        "audio_hash": pa.array([f"{(r * 11400714819323198485) % 2**64:016x}{r:024x}" for r in rows.tolist()]),
        **f32,
    }
    return _table(INDEX_SCHEMA, columns, n)


def rejects_block(units: range, picked: set[int]) -> pa.Table:
    """Per unit, a file-level VAD reject (no key, no audio) and a quality reject with its audio in rejected/."""
    rng = np.random.default_rng(units.start + 10**7)
    unit = np.repeat(np.arange(units.start, units.stop), 2)
    n, quality = len(unit), np.tile([False, True], len(units))
    snr = rng.uniform(2, 19, n)
    key = [reject_key(u) if q else None for u, q in zip(unit.tolist(), quality.tolist())]
    source = [k[:11] if k else f"src{10**8 + u:08d}" for k, u in zip(key, unit.tolist())]
    columns = {
        "source_id": pa.array(source), "source_uri": pa.array([f"s3://corpus/raw/{s}.flac" for s in source]),
        "unit": pa.array(unit, REJECTS_SCHEMA.field("unit").type), "key": pa.array(key),
        "stage": pa.array(np.where(quality, "quality", "vad")),
        "reason": pa.array([f"snr_db {v:.2f} < 20.00" if q else "no speech found"
                            for v, q in zip(snr.tolist(), quality.tolist())]),
        "start": pa.array(np.zeros(n)), "end": pa.array(np.where(quality, 6.0, 1.0)),
        "duration": pa.array(np.where(quality, 6.0, 1.0)),
        "metric": pa.array(np.where(quality, "snr_db", None).tolist(), pa.string()),
        "value": pa.array([v if q else None for v, q in zip(snr.tolist(), quality.tolist())], pa.float64()),
        "threshold": pa.array([20.0 if q else None for q in quality.tolist()], pa.float64()),
        "shard": pa.array([(PICKED_REJECTS if u in picked else f"rejected/shard-{u:06d}.tar") if q else None
                           for u, q in zip(unit.tolist(), quality.tolist())]),
        "text": pa.array([t if q else None for t, q in zip(_texts(rng, n).to_pylist(), quality.tolist())]),
        "language": pa.array([("en" if q else None) for q in quality.tolist()], pa.string()),
        "snr_db": pa.array([v if q else None for v, q in zip(snr.tolist(), quality.tolist())], pa.float32()),
    }
    return _table(REJECTS_SCHEMA, columns, n)


def record(unit: int) -> dict:
    """A ledger record as commit writes it; units 2k and 2k+1 finish at the same instant."""
    return {"unit": unit, "digest": f"{unit:040x}", "input_seconds": 140.0, "output_seconds": 110.0, "samples": 10,
            "segments": 11, "rejects": 2, "shards": [f"shards/shard-{unit:06d}.tar"],
            "rejected_shards": [f"rejected/shard-{unit:06d}.tar"],
            "reject_reasons": {"vad: no speech found": 1, "quality: snr_db": 1}, "speech_seconds": 116.0,
            "stage_seconds": {"decode": 0.5, "vad": 0.2, "asr": 3.0, "quality": 1.0, "write": 0.3},
            "finished_at": (STARTED + timedelta(seconds=60 + (unit // 2) * 0.5)).isoformat()}


def write_block(out: Path, units: range, picked: set[int], picked_rejects: set[int], per_unit: bool) -> None:
    """One block of units: as compaction leaves it (a compacted file per table, rows in unit order),
    or as a run leaves it before compaction (a part per unit per table, a loose ledger record per unit)."""
    for folder, table in (("index", index_block(units, picked)), ("rejects", rejects_block(units, picked_rejects))):
        if per_unit:
            for unit in units:
                pq.write_table(table.filter(pc.equal(table["unit"], unit)), out / f"{folder}/part-{unit:06d}.parquet")
        else:
            name = f"{tables.COMPACT_PREFIX}{units.start:06d}-n{len(units):06d}{tables.PART_SUFFIX}"
            pq.write_table(table, out / folder / name, row_group_size=tables.ROW_GROUP_ROWS)
    if per_unit:
        for unit in units:
            (out / f"_ledger/unit-{unit:06d}.json").write_text(json.dumps(record(unit), indent=2, sort_keys=True))


def manifest(units: int, rows_per_unit: int, schema: pa.Schema) -> dict:
    """`_parts.json` naming the blocks, as `tables.compact` writes it."""
    blocks = [range(first, min(units, first + tables.BLOCK_UNITS)) for first in range(0, units, tables.BLOCK_UNITS)]
    return {"version": 1, "schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
            "files": [{"name": f"{tables.COMPACT_PREFIX}{b.start:06d}-n{len(b):06d}{tables.PART_SUFFIX}",
                       "units": [[b.start, b.stop - 1]], "rows": len(b) * rows_per_unit} for b in blocks]}


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


def build(out: Path, units: int, processes: int, per_unit: bool) -> None:
    """`units` units laid out per unit or compacted (see `write_block`)."""
    if out.exists():
        shutil.rmtree(out)
    for folder in ("index", "rejects", "_ledger"):
        (out / folder).mkdir(parents=True)
    per = SOURCES * SEGMENTS
    picked = {int(r) for r in pick_rows(pa.table({"key": keys(np.arange(units * per))}), 20)}
    picked_rejects = {int(u) for u in pick_rows(pa.table({"key": [reject_key(u) for u in range(units)]}), 20)}
    blocks = [range(first, min(units, first + tables.BLOCK_UNITS)) for first in range(0, units, tables.BLOCK_UNITS)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(write_block, *zip(*[(out, b, picked, picked_rejects, per_unit) for b in blocks])))
    if not per_unit:
        for folder, schema in (("index", INDEX_SCHEMA), ("rejects", REJECTS_SCHEMA)):
            rows = per if folder == "index" else 2
            (out / folder / tables.MANIFEST).write_text(json.dumps(manifest(units, rows, schema), sort_keys=True))
        pq.write_table(ledger.to_table([record(u) for u in range(units)]), out / "_ledger" / ledger.TABLE)
    shown = {key: duration for key, duration, row in _picked_rows(picked)}
    write_shard(out / PICKED_SHARD, {f"{k}.{ext}": data for k, d in shown.items() for ext, data in
                                     (("flac", clip(min(d, 3.0), zlib.crc32(k.encode()))), ("json", b"{}"))})
    write_shard(out / PICKED_REJECTS, {f"{reject_key(u)}.{ext}": data for u in picked_rejects
                                       for ext, data in (("flac", clip(2.0, u)), ("json", b"{}"))})
    (out / "summary.json").write_text(json.dumps({"started_at": (STARTED + timedelta(seconds=1)).isoformat(),
                                                  "wall_seconds": 60 + units / 4, "complete": True}))


def _picked_rows(picked: set[int]) -> list[tuple[str, float, int]]:
    """(key, duration, row) of the picked rows, as index_block made them."""
    per = SOURCES * SEGMENTS
    found = []
    for block in sorted({r // per // tables.BLOCK_UNITS for r in picked}):
        first = block * tables.BLOCK_UNITS
        table = index_block(range(first, first + tables.BLOCK_UNITS), picked)
        for row in sorted(r for r in picked if r // per // tables.BLOCK_UNITS == block):
            local = row - first * per
            found.append((table["key"][local].as_py(), table["duration"][local].as_py(), row))
    return found


def timed(command: list[str], timeout: float) -> dict:
    """Wall seconds and peak RSS (GB) of `command` as a child process, from /usr/bin/time."""
    result = subprocess.run(["/usr/bin/time", "-f", "TIMED %e %U %S %M", *command], capture_output=True, text=True,
                            cwd=ROOT, timeout=timeout)
    if result.returncode:
        raise RuntimeError(f"{command} failed: {result.stderr[-2000:]}")
    line = next(x for x in result.stderr.splitlines()[::-1] if x.startswith("TIMED "))
    wall, user, system, kb = line.split()[1:]
    return {"wall_s": float(wall), "cpu_s": float(user) + float(system), "peak_rss_gb": int(kb) / 1024**2,
            "load_average": os.getloadavg()[0]}


def inspect(out: Path, timeout: float) -> dict:
    return timed([str(ROOT / ".venv/bin/voxmill"), "inspect", str(out)], timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench-report"))
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--layout", choices=("compacted", "per-unit"), default="compacted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="to build the tables")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    per_unit = args.layout == "per-unit"
    built = args.workdir / f"{args.layout}-{args.units}"
    results: dict = {"units": args.units, "layout": args.layout, "index_rows": args.units * SOURCES * SEGMENTS,
                     "rejects_rows": 2 * args.units}
    if not (built / "summary.json").exists():
        clock = time.perf_counter()
        build(built, args.units, args.processes, per_unit)
        results["build_s"] = time.perf_counter() - clock
        print(f"built {built} in {results['build_s']:.0f} s", flush=True)
    out = args.workdir / "measured"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(built, out)
    results["inspect"] = [inspect(out, args.timeout)]
    print(f"inspect ({args.layout}): {results['inspect'][0]['wall_s']:.1f} s, "
          f"{results['inspect'][0]['peak_rss_gb']:.2f} GB", flush=True)
    if per_unit:
        results["compact"] = timed([sys.executable, "-c", "import sys; from pipelines.state.compaction import "
                                    "compact_output; print(compact_output(sys.argv[1]))", str(out)], args.timeout)
        print(f"compact_output: {results['compact']['wall_s']:.1f} s, {results['compact']['peak_rss_gb']:.2f} GB")
        results["inspect_after_compaction"] = [inspect(out, args.timeout) for _ in range(args.repeats)]
    else:
        results["inspect"] += [inspect(out, args.timeout) for _ in range(args.repeats - 1)]
    for run in results.get("inspect_after_compaction", results["inspect"]):
        print(f"inspect: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, {run['peak_rss_gb']:.2f} GB",
              flush=True)
    summary = json.loads((out / "report/summary.json").read_text())
    assert summary["samples"] == results["index_rows"] and summary["rejects"] == results["rejects_rows"], summary
    assert summary["units"] == args.units and len(summary["rejected_rows"]) == 20, summary["units"]
    results["load_average"] = os.getloadavg()
    (args.workdir / f"report_scale-{args.layout}-{args.units}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
