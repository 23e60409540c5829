"""The whole job on a GPU machine: `voxmill plan` (calibrating here, under Ray) and then the run.

Prints the plan's wall time and interval beside the real one, the resources Ray gave each stage,
and WER of the index against the corpus references. Used on the lent H100 (benchmarks/RESULTS.md).

    python benchmarks/gpu_job.py CORPUS OUTPUT [--batch-size 64] [--calibration-fraction 0.1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.dataset as ds
import ray

from pipelines.job import run_job
from pipelines.metrics.text import normalise_text
from pipelines.plan.planning import plan_job
from schemas.config import load_job_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("output")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default=None, help="faster-whisper model path (default: the bundled tiny.en)")
    parser.add_argument("--calibration-fraction", type=float, default=0.1)
    args = parser.parse_args()
    config = load_job_config(str(args.corpus), args.output, overrides={
        "asr.batch_size": args.batch_size, "asr.model": args.model,
        "plan.calibration_fraction": args.calibration_fraction})
    clock = time.perf_counter()
    plan, manifest = plan_job(config)
    plan_seconds = time.perf_counter() - clock
    print("plan", json.dumps({"wall_seconds": plan.wall_seconds, "low": plan.wall_seconds_low,
                              "high": plan.wall_seconds_high, "resources": plan.resources,
                              "bottleneck": plan.bottleneck, "plan_seconds": plan_seconds,
                              "asr_seconds_per_speech_second": plan.hardware.asr_seconds_per_speech_second,
                              "gpu": plan.hardware.gpu_name}), flush=True)
    print("ray resources", ray.cluster_resources(), flush=True)
    summary = run_job(config, manifest=manifest, plan=plan.model_dump(mode="json"))
    index = ds.dataset(f"{args.output}/index", format="parquet").to_table(columns=["source_uri", "start", "text"])
    refs = {Path(json.loads(line)["file"]).stem: json.loads(line).get("text")
            for line in (args.corpus / "references.jsonl").read_text().splitlines() if line.strip()}
    rows = sorted(zip(*(index.column(c).to_pylist() for c in ("source_uri", "start", "text"))))
    hyp: dict[str, list[str]] = {}
    for source, _, text in rows:
        hyp.setdefault(Path(source).stem, []).append(text)
    import jiwer

    pairs = [(normalise_text(refs[k]), normalise_text(" ".join(v))) for k, v in hyp.items() if refs.get(k)]
    wer = jiwer.wer([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    error = summary["wall_seconds"] / plan.wall_seconds - 1
    print("result", json.dumps({"predicted": plan.wall_seconds, "interval": [plan.wall_seconds_low, plan.wall_seconds_high],
                                "actual": summary["wall_seconds"], "error": error, "counts": summary["counts"],
                                "reject_reasons": summary["reject_reasons"], "resources": summary["resources"],
                                "this_run": summary["this_run"],
                                "stage_seconds": summary["stage_seconds"], "wer": wer, "files_scored": len(pairs)}))


if __name__ == "__main__":
    main()
