"""Estimator accuracy: plan, then run the real job, on corpora of different shapes; predicted vs actual.

    python -m benchmarks.estimator_accuracy [--shapes short long mixed] [--minutes 30]

For each corpus (built by make_corpus.py): `voxmill plan --recalibrate` calibrates this machine on
under 5% of the audio and saves the profile; `voxmill run` then plans again from that profile,
prints the estimate and runs the job. The table compares the estimate the run started with to its
measured wall time (discover to summary). Target: within +-20% on every corpus.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.make_corpus import make_corpus


def voxmill(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"voxmill {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def measure(shape: str, minutes: float, workdir: Path, calibration_fraction: float) -> dict:
    corpus = workdir / f"corpus-{shape}-{minutes:g}min"
    if not (corpus / "references.jsonl").exists():
        make_corpus(corpus, shape, minutes)
    state = workdir / f"state-{shape}"
    job = workdir / f"job-{shape}.yaml"
    job.write_text(f"input: {corpus}\noutput: {workdir / f'out-{shape}'}\n"
                   f"plan: {{profiles_dir: {state / 'profiles'}, history_path: {state / 'history.jsonl'}, "
                   f"calibration_fraction: {calibration_fraction}}}\n")
    subprocess.run(["rm", "-rf", str(workdir / f"out-{shape}"), str(state)], check=True)
    clock = time.perf_counter()
    calibration_plan = voxmill("plan", "--config", str(job), "--recalibrate", "--json")
    plan_seconds = time.perf_counter() - clock
    summary = voxmill("run", "--config", str(job), "--json")
    plan = summary["plan"]
    return {
        "shape": shape,
        "files": plan["input"]["files"],
        "audio_minutes": plan["input"]["audio_seconds"] / 60,
        "calibrated_minutes": calibration_plan["hardware"]["measured_on_seconds"] / 60,
        "calibrated_share": calibration_plan["hardware"]["measured_on_seconds"] / plan["input"]["audio_seconds"],
        "calibration_wall_seconds": plan_seconds,
        "speech_fraction_planned": plan["data"]["speech_fraction"],
        "speech_fraction_actual": summary["output_hours"] / max(summary["input_hours"], 1e-9),
        "predicted_wall_seconds": plan["wall_seconds"],
        "interval": [plan["wall_seconds_low"], plan["wall_seconds_high"]],
        "actual_wall_seconds": summary["wall_seconds"],
        "error": plan["wall_seconds"] / summary["wall_seconds"] - 1,
        "bottleneck": plan["bottleneck"],
        "predicted_stage_seconds": {s["name"]: s["seconds"] for s in plan["stages"]},
        "actual_stage_seconds": summary["stage_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=["short", "long", "mixed"])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--workdir", default="/tmp/voxmill-accuracy")
    parser.add_argument("--calibration-fraction", type=float, default=0.04, help="share of the audio (< 5%%)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes:
        rows.append(measure(shape, args.minutes, workdir, args.calibration_fraction))
        row = rows[-1]
        print(f"{shape:6s} {row['audio_minutes']:6.1f} min  calibrated on {row['calibrated_share']:5.1%}  "
              f"predicted {row['predicted_wall_seconds']:7.1f} s  actual {row['actual_wall_seconds']:7.1f} s  "
              f"error {row['error']:+6.1%}  bottleneck {row['bottleneck']}", flush=True)
    (workdir / "accuracy.json").write_text(json.dumps(rows, indent=2))
    worst = max(abs(r["error"]) for r in rows)
    print(f"worst error {worst:.1%} (target 20%): {'met' if worst <= 0.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
