"""Object-store requests per work unit (issue 21), counted against the real S3 API.

moto's ThreadedMotoServer (as the S3 tests use) records every request it serves (its recorder).
The demo clips (local input) run through `run_job` into `s3://corpus/out` with units of ~15 s
(the fake ASR backend: this counts requests, not transcripts), then the same command again
(nothing left to do), then again after `compact_output` when the code has it. Each request is
sorted by what it is for: the unit journal (`_ledger/asr/`: writes, listings, deletes), the ledger
(records, the compacted table, its listings), the layout and job records, the data (shards, index,
rejects), the rest. Per unit = count / units in the output.

"Before and after": run it from an export of an older commit, e.g.

    git archive 02dfddd | tar -x -C /tmp/before && python /tmp/before/benchmarks/s3_requests.py  # copy this file there
    python benchmarks/s3_requests.py

CLI: ``python benchmarks/s3_requests.py [--json OUT.json]``.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORT = _port()
RECORDING = Path(tempfile.mkdtemp(prefix="voxmill-s3req-")) / "recording.jsonl"
os.environ.update({  # before Ray or s3fs start: workers inherit them
    "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{PORT}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1", "MOTO_RECORDER_FILEPATH": str(RECORDING),
    "PYTHONPATH": os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]),
})

OUTPUT = "s3://corpus/out"
PREFIX = "/corpus/out/"


def kind(entry: dict) -> str:
    """What a recorded request was for: `area method` (e.g. `journal PUT`, `ledger LIST`)."""
    url = urlparse(entry["url"])
    query = parse_qs(url.query, keep_blank_values=True)
    path = unquote(url.path)
    method = entry["method"]
    if method == "GET" and ("list-type" in query or "prefix" in query or path.rstrip("/") == "/corpus"):
        method, path = "LIST", "/corpus/" + query.get("prefix", [""])[0]
    elif method == "POST" and "delete" in query:
        method = "DELETE"  # DeleteObjects: one request for many keys, named in its body
        body = base64.b64decode(entry["body"]).decode() if entry.get("body_encoded") else entry.get("body") or ""
        found = re.search(r"<Key>([^<]*)</Key>", body)
        path = "/corpus/" + (found[1] if found else "")
    key = path[len(PREFIX):] if path.startswith(PREFIX) else ""
    if key.startswith("_ledger/asr"):
        area = "journal"
    elif key.startswith("_ledger/unit-") or key.startswith("_ledger/units.") or key.rstrip("/") == "_ledger":
        area = "ledger"
    elif key.startswith("_ledger/"):
        area = "job/layout/lease"
    elif key.split("/", 1)[0] in ("shards", "rejected", "index", "rejects"):
        area = "data"
    else:
        area = "other"
    return f"{area} {method}"


def recorder(action: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{PORT}/moto-api/recorder/{action}",
                                                  method="POST", data=b"")).read()


def counted(run) -> Counter:
    """The requests `run()` made, by `kind`."""
    recorder("reset-recording")
    recorder("start-recording")
    try:
        run()
    finally:
        recorder("stop-recording")
    return Counter(kind(json.loads(line)) for line in RECORDING.read_text().splitlines() if line.strip())


def table(name: str, counts: Counter, units: int) -> list[str]:
    lines = [f"{name}: {sum(counts.values())} requests, {sum(counts.values()) / units:.1f} per unit"]
    for what, n in sorted(counts.items()):
        lines.append(f"  {what:28s} {n:6d}  {n / units:6.2f}/unit")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--unit-minutes", type=float, default=0.25)
    args = parser.parse_args()

    import ray
    import s3fs
    from moto.server import ThreadedMotoServer

    from pipelines.job import run_job
    from schemas.config import load_job_config

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=PORT)
    server.start()
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": f"http://127.0.0.1:{PORT}"}).mkdir("corpus")
    ray.init(num_cpus=2, include_dashboard=False)
    config = load_job_config(str(ROOT / "demo" / "real-speech"), OUTPUT, overrides={
        "engine.unit_minutes": args.unit_minutes, "asr.backend": "tests.fakes:FakeAsr"})
    runs: dict[str, Counter] = {}
    summaries = {}
    runs["first run"] = counted(lambda: summaries.setdefault("first", run_job(config)))
    units = summaries["first"]["counts"]["units"]
    runs["no-op rerun"] = counted(lambda: run_job(config))
    try:
        from pipelines.state.compaction import compact_output
    except ImportError:
        compact_output = None
    if compact_output:
        runs["compaction"] = counted(lambda: compact_output(OUTPUT))
        runs["no-op rerun, compacted"] = counted(lambda: run_job(config))
    ray.shutdown()
    server.stop()
    lines = [f"{units} units, {summaries['first']['counts']['input_files']} input files"]
    for name, counts in runs.items():
        lines += table(name, counts, units)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"units": units, "runs": {k: dict(v) for k, v in runs.items()}}, indent=2))


if __name__ == "__main__":
    main()
