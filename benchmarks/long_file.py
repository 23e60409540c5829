"""Peak memory of the whole job on one very long recording: excerpts vs one whole-file task.

Builds a HOURS-long FLAC (silence with a real speech clip every few minutes, so ASR stays
cheap and decode/resample/VAD see every second), then runs `voxmill run` on it in a
subprocess twice, in the same invocation: with the default excerpts, and (unless
--skip-whole) with excerpts so long the file is one task, as the baseline. A sampler reads
each process's peak RSS (VmHWM in /proc) throughout, driver and Ray workers alike.

CLI: ``python -m benchmarks.long_file [--hours 10] [--rate 16000] [--workdir /tmp/voxmill-long]``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.processes import cmdline, descendants  # noqa: E402
from pipelines.stages.audio import Resampler, decode  # noqa: E402
from schemas.config import AudioConfig  # noqa: E402

CLIPS = ["jfk.flac", "2412-153948-0000.flac", "LJ002-0035.wav", "common_voice_en_651325.mp3"]


def make_recording(path: Path, hours: float, rate: int, every_seconds: float) -> float:
    """Writes block by block (never the whole file in memory); returns seconds of speech placed."""
    demo = ROOT / "demo" / "real-speech"
    speech = []
    for name in CLIPS:
        with open(demo / name, "rb") as fh:
            speech.append(Resampler(AudioConfig())(decode(fh), rate).samples)
    placed = 0.0
    block = int(every_seconds * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as out:
        for k in range(int(hours * 3600 / every_seconds)):
            samples = np.zeros(block, dtype=np.float32)
            clip = speech[k % len(speech)]
            at = block // 3
            samples[at : at + len(clip)] = clip
            placed += len(clip) / rate
            out.write(samples)
    return placed


class PeakSampler(threading.Thread):
    """Peak RSS per process in the tree under `root_pid`, read from /proc every `interval` s."""

    def __init__(self, root_pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root_pid, self.interval = root_pid, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in {*descendants(self.root_pid), self.root_pid}:
                status = _read(f"/proc/{pid}/status")
                hwm = next((int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM")), 0)
                name = cmdline(pid)[:60]
                if hwm and hwm > self.peaks.get(pid, ("", 0))[1]:
                    self.peaks[pid] = (name, hwm)
            time.sleep(self.interval)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def run_job(recording: Path, output: Path, excerpt_minutes: float) -> dict:
    config = output.with_suffix(".yaml")
    config.write_text(f"engine:\n  excerpt_minutes: {excerpt_minutes}\n")
    cmd = [str(ROOT / ".venv" / "bin" / "voxmill"), "run", "--input", str(recording), "--output", str(output),
           "--config", str(config), "--no-plan", "--json", "--restart"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.stop.set()
    sampler.join()
    summary = json.loads(stdout)
    workers = [kb for name, kb in sampler.peaks.values() if name.startswith("ray::")]
    by_kind: dict[str, float] = {}
    for name, kb in sampler.peaks.values():  # a pooled worker is titled by the task it last ran
        kind = name.split()[0] if name.startswith("ray::") else "other"
        by_kind[kind] = max(by_kind.get(kind, 0.0), kb / 1024)
    return {
        "excerpt_minutes": excerpt_minutes,
        "wall_seconds": time.perf_counter() - started,
        "complete": summary["complete"],
        "units": summary["counts"]["units"],
        "samples": summary["counts"]["samples"],
        "input_hours": summary["input_hours"],
        "driver_peak_mb": sampler.peaks.get(proc.pid, ("", 0))[1] / 1024,
        "worker_peak_mb": max(workers, default=0) / 1024,
        "peak_mb_by_process": by_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--every", type=float, default=600.0, help="seconds between speech clips")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-long"))
    parser.add_argument("--skip-whole", action="store_true", help="skip the one-task baseline")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    recording = args.workdir / f"recording-{args.hours:g}h-{args.rate}.flac"
    if not recording.exists():
        speech = make_recording(recording, args.hours, args.rate, args.every)
        print(f"built {recording} ({recording.stat().st_size / 1e6:.0f} MB, {speech:.0f} s of speech)")
    rows = [run_job(recording, args.workdir / "out-excerpts", 10.0)]
    if not args.skip_whole:
        rows.append(run_job(recording, args.workdir / "out-whole", args.hours * 60 + 1))
    print("| excerpt | units | samples | input h | wall s | driver peak RSS | largest Ray worker peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['excerpt_minutes']:g} min | {r['units']} | {r['samples']} | {r['input_hours']:.2f} | "
              f"{r['wall_seconds']:.0f} | {r['driver_peak_mb']:.0f} MB | {r['worker_peak_mb']:.0f} MB |")
    for r in rows:
        print(f"{r['excerpt_minutes']:g} min, peak RSS by process:",
              ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(r["peak_mb_by_process"].items())))
    (args.workdir / "long_file.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
