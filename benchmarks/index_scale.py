"""Reading an output at the real workload's size (issue 21): 100k units, 1 M index rows.

The output is built directly with pyarrow by `benchmarks/report_scale.py`'s `build` (compacted,
as a run past engine.compact_min_units or `voxmill compact` leaves it; or `--layout per-unit`, as
a run leaves it before compaction, with today's per-unit ledger records), plus a `_ledger/job.json`.
Then each reader runs as its own child process under `/usr/bin/time` (wall, CPU, peak RSS):
- `read_index`: every column, and a filter with two columns;
- `SpeechShards` with a filter (its init reads the index; the size of what each worker is sent);
- `Ledger.done()`: every unit's record, as `run_job` reads them (a no-op rerun's bookkeeping);
- `jobstate.status` (what `voxmill status OUTPUT` prints).
Each prints the seconds of the call itself (imports excluded: the loader's torch import alone is
~0.7 GB and, on a loaded machine, many seconds); the process's wall and peak RSS are reported too.
The issue's targets: read_index under 10 s and 2 GB (it measured 57 s and 7.2 GB on per-unit
parts), status under 2 s at 100k units.

CLI: ``python benchmarks/index_scale.py [--workdir /tmp/voxmill-bench-index] [--units 100000]
[--layout compacted|per-unit]``; the built output is kept and reused; writes
``WORKDIR/index_scale-LAYOUT-UNITS.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report_scale import SEGMENTS, SOURCES, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv/bin/python")

# each prints the seconds of the call itself (imports excluded: torch alone is ~0.7 GB and seconds)
READERS = {
    # what a user would reach for instead: pyarrow's dataset over the folder (every file in it)
    "pyarrow_dataset": ("import pyarrow.dataset as ds",
                        "ds.dataset(OUT + '/index', format='parquet').to_table().num_rows"),
    "read_index": ("from pipelines.loader import read_index", "read_index(OUT).num_rows"),
    "read_index_filtered": ("from pipelines.loader import read_index",
                            "read_index(OUT, 'dnsmos_ovrl >= 3.2', columns=['key', 'shard']).num_rows"),
    "speech_shards": ("import pickle; from pipelines.loader import SpeechShards",
                      "len(pickle.dumps(SpeechShards(OUT, 'dnsmos_ovrl >= 3.2', rank=0, world_size=1)))"),
    "ledger_done": ("from pipelines.state.ledger import Ledger", "len(Ledger(OUT).done())"),
    "status": ("from pipelines.state.jobstate import status", "status(OUT)['units_done']"),
}
PROBE = "{imports}; import time; c = time.perf_counter(); r = {call}; print('CALL', time.perf_counter() - c, r)"


def measured(name: str, out: Path, timeout: float) -> dict:
    """The reader in a child process: its call's seconds and result, and the process's wall and peak RSS."""
    imports, call = READERS[name]
    code = PROBE.format(imports=imports, call=call.replace("OUT", repr(str(out))))
    result = subprocess.run(["/usr/bin/time", "-f", "TIMED %e %U %S %M", PY, "-c", code], capture_output=True,
                            text=True, cwd=ROOT, timeout=timeout)
    if result.returncode:
        raise RuntimeError(f"{name} failed: {result.stderr[-2000:]}")
    wall, user, system, kb = next(x for x in result.stderr.splitlines()[::-1] if x.startswith("TIMED ")).split()[1:]
    _, seconds, value = next(x for x in result.stdout.splitlines() if x.startswith("CALL ")).split(" ", 2)
    return {"call_s": float(seconds), "result": value, "process_wall_s": float(wall),
            "cpu_s": float(user) + float(system), "peak_rss_gb": int(kb) / 1024**2, "load_average": os.getloadavg()[0]}


def job_record(out: Path, units: int) -> None:
    """What `jobstate.claim` leaves in `_ledger/job.json` (status reads its unit count)."""
    (out / "_ledger" / "job.json").write_text(json.dumps({"fingerprint": "bench", "settings": {}, "units": units,
                                                          "input_seconds": 140.0 * units, "units_added": units}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench-index"))
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--layout", choices=("compacted", "per-unit"), default="compacted")
    parser.add_argument("--processes", type=int, default=2, help="to build the tables")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    out = args.workdir / f"{args.layout}-{args.units}"
    results: dict = {"units": args.units, "layout": args.layout, "index_rows": args.units * SOURCES * SEGMENTS}
    if not (out / "_ledger" / "job.json").exists():
        clock = time.perf_counter()
        build(out, args.units, args.processes, args.layout == "per-unit")
        job_record(out, args.units)
        results["build_s"] = time.perf_counter() - clock
        print(f"built {out} in {results['build_s']:.0f} s", flush=True)
    for name in READERS:
        r = results[name] = measured(name, out, args.timeout)
        print(f"{name}: {r['call_s']:.2f} s (process {r['process_wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
              f"{r['peak_rss_gb']:.2f} GB peak; load {r['load_average']:.0f}) -> {r['result']}", flush=True)
    results["load_average"] = os.getloadavg()
    (args.workdir / f"index_scale-{args.layout}-{args.units}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
