"""How far one calibration probe can be from the run: the ASR probe over several sample seeds.

    python -m benchmarks.probe_spread [--shapes short long mixed] [--seeds 0 1 2 3]
                                      [--workdir /tmp/voxmill-accuracy]

Uses the corpora and finished outputs of `benchmarks.estimator_accuracy` in WORKDIR. For each
corpus and seed, draws the stratified calibration sample the plan would draw with that seed, runs
the ASR probe on it (in this process), and compares the probe's ASR seconds per second of speech
with the run's (`stage_seconds.asr` / output seconds of its summary.json). The rms of those errors
is what `estimator.PROBE_SPREAD` turns into a plan's interval (times sqrt(segments probed)).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pipelines.plan.calibrate import asr_probe, sample_budget, stratified_sample
from pipelines.plan.planning import discover_for_plan
from schemas.config import load_job_config


def run_rate(output: Path) -> float:
    summary = json.loads((output / "summary.json").read_text())
    return summary["stage_seconds"]["asr"] / (summary["output_hours"] * 3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["short", "long", "mixed"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--calibration-fraction", type=float, default=0.04)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-accuracy"))
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        corpus = args.workdir / f"corpus-{shape}-{args.minutes:g}min"
        actual = run_rate(args.workdir / f"out-{shape}")
        config = load_job_config(str(corpus), str(args.workdir / "probe-unused"),
                                 overrides={"plan.calibration_fraction": args.calibration_fraction})
        size, manifest, _ = discover_for_plan(config)
        budget = sample_budget(config, size.audio_seconds)
        for seed in args.seeds:
            sample = stratified_sample(manifest, budget, config.plan.excerpt_seconds, seed=seed)
            rate, redecoded, segments, *_ = asr_probe(config, sample, threads=2)
            rows.append({"shape": shape, "seed": seed, "segments": segments, "probe_rate": rate,
                         "run_rate": actual, "error": rate / actual - 1, "redecoded": redecoded})
            print(f"{shape:6s} seed {seed}: {segments:3d} segments, probe {rate:.4f} s/s, run {actual:.4f} s/s, "
                  f"error {rate / actual - 1:+.0%}, re-decoded {redecoded:.0%}", flush=True)
    rms = math.sqrt(sum(r["error"] ** 2 for r in rows) / len(rows))
    mean_segments = sum(r["segments"] for r in rows) / len(rows)
    print(f"rms error {rms:.0%} over {len(rows)} probes of {mean_segments:.1f} segments on average: "
          f"spread constant ~ {rms * math.sqrt(mean_segments):.2f}")
    (args.workdir / "probe_spread.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
