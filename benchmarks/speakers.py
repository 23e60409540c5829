"""Speakers (issue 20): what the speaker stage costs, how well it finds speaker changes, and the share
of a real job's time it adds.

1. Conversations built from the real clips (LibriSpeech readers 2412 and 1088, JFK, the AMI headset,
   LJ Speech): each recording alternates 2-3 of those voices in 3-8 s turns with 0.2-0.8 s gaps, so
   every true change is known. `SpeakerSplitter` runs on the real VAD's spans, on one CPU thread, as
   in a prep task. Reported: audio seconds per second of the stage, changes found within 0.5 s,
   spurious changes, and whether each recording gets as many speakers as it has.
2. The same recordings plus the demo clips through `voxmill run` (real tiny.en, quality on), with
   speakers off and on, interleaved: wall time of each and the prep tasks' "speakers" stage seconds
   against all stage seconds.

CLI: ``.venv/bin/python benchmarks/speakers.py [--work DIR] [--recordings 12] [--reps 2] [--no-job]``
(about 4 minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.metrics.speaker import SpeakerEncoder  # noqa: E402
from pipelines.stages.audio import ASR_RATE, Resampler, Waveform  # noqa: E402
from pipelines.stages.speakers import SpeakerSplitter, speaker_window_seconds, speaker_windows  # noqa: E402
from pipelines.stages.vad import Segmenter  # noqa: E402
from schemas.config import AudioConfig, SpeakersConfig, VadConfig  # noqa: E402

REAL = Path("/work/shared/corpora/real-speech")
VOICES = {"reader-2412": ["2412-153948-0000.flac", "2412-153948-0001.flac"],
          "reader-1088": ["libri-1088-134315-0000.wav"], "jfk": ["jfk.flac"],
          "ami": ["ES2011a.Headset-0-40s-46s.wav"], "lj": ["LJ002-0020.wav", "LJ002-0035.wav"]}
TOLERANCE = 0.5  # seconds: a found change this close to a true one counts as found


def _load(name: str) -> np.ndarray:
    samples, rate = sf.read(REAL / name, dtype="float32", always_2d=True)
    return Resampler(AudioConfig()).many([Waveform(samples.mean(axis=1), rate)], ASR_RATE)[0].samples


def conversation(rng: np.random.Generator, audio: dict[str, np.ndarray]) -> tuple[np.ndarray, list[float], int]:
    """(16 kHz audio, true change times, number of voices) of one made-up conversation."""
    voices = list(rng.choice(sorted(audio), size=int(rng.integers(2, 4)), replace=False))
    pieces, changes, now, last = [], [], 0.0, None
    for turn in range(int(rng.integers(4, 8))):
        voice = voices[turn % len(voices)] if turn else voices[0]
        clip = audio[voice]
        length = min(len(clip), int(rng.uniform(3, 8) * ASR_RATE))
        start = int(rng.integers(0, len(clip) - length + 1))
        gap = np.zeros(int(rng.uniform(0.2, 0.8) * ASR_RATE), np.float32)
        if last is not None and voice != last:
            changes.append(now + len(gap) / ASR_RATE / 2)  # mid-gap: the change happens in the silence
        pieces += [gap, clip[start: start + length]]
        now += (len(gap) + length) / ASR_RATE
        last = voice
    return np.concatenate(pieces), changes, len(set(voices))


def stage_figures(recordings: list[tuple[np.ndarray, list[float], int]]) -> dict:
    import torch

    torch.set_num_threads(1)
    segmenter = Segmenter(VadConfig())
    segmenter.setup()
    splitter = SpeakerSplitter(SpeakersConfig(enabled=True, device="cpu"), SpeakerEncoder("cpu"))
    splitter(recordings[0][0][: 3 * ASR_RATE], segmenter(recordings[0][0][: 3 * ASR_RATE])[0])  # load the model
    seconds = found = true = spurious = right_count = 0.0
    elapsed = 0.0
    windows = 0
    for audio, changes, voices in recordings:
        spans, _ = segmenter(audio)
        windows += speaker_windows(splitter.config, [audio[round(s.start * ASR_RATE): round(s.end * ASR_RATE)]
                                                     for s in spans])
        started = time.perf_counter()
        turns = splitter(audio, spans)
        elapsed += time.perf_counter() - started
        seconds += len(audio) / ASR_RATE
        # a change between segments counts too: the speaker label differs from the previous turn's
        guessed = [t.span.start for prev, t in zip(turns, turns[1:]) if t.speaker != prev.speaker]
        hits = [c for c in changes if any(abs(g - c) <= TOLERANCE + 0.5 * _gap(turns, g) for g in guessed)]
        found += len(hits)
        true += len(changes)
        spurious += sum(1 for g in guessed if not any(abs(g - c) <= TOLERANCE + 0.5 * _gap(turns, g) for c in changes))
        right_count += len({t.speaker for t in turns}) == voices
    per_window = speaker_window_seconds(splitter.config, splitter.encoder)  # what calibration measures
    return {"recordings": len(recordings), "audio_seconds": round(seconds, 1), "stage_seconds": round(elapsed, 2),
            "windows": windows, "probe_ms_per_window": round(per_window * 1000, 2),
            "measured_ms_per_window": round(elapsed / windows * 1000, 2),
            "plan_priced_s": round(per_window * windows, 2), "priced_vs_measured": round(per_window * windows / elapsed, 3),
            "x_realtime_one_thread": round(seconds / elapsed, 1), "changes": int(true),
            "found_within_0.5s": int(found), "spurious": int(spurious),
            "speaker_count_right": f"{int(right_count)}/{len(recordings)}"}


def _gap(turns, at: float) -> float:
    """The silence before the turn starting at `at` (a change placed anywhere in it is right)."""
    before = [t.span.end for t in turns if t.span.end <= at + 1e-6]
    return at - max(before) if before and abs(max(before) - at) > 1e-6 else 0.0


def job_figures(folder: Path, work: Path, reps: int) -> list[dict]:
    rows = []
    for rep in range(reps):
        for enabled in (False, True):
            out = work / f"out-{rep}-{int(enabled)}"
            shutil.rmtree(out, ignore_errors=True)
            config = work / f"job-{int(enabled)}.yaml"
            config.write_text(f"input: {folder}\noutput: {out}\nspeakers: {{enabled: {str(enabled).lower()}}}\n"
                              f"plan: {{profiles_dir: {work / 'profiles'}, history_path: {work / 'history.jsonl'}}}\n")
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--json"],
                                 cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if run.returncode:
                raise RuntimeError(run.stderr[-2000:])
            summary = json.loads(run.stdout)
            stages = summary.get("stage_seconds", {})
            priced = summary["plan"]["hardware"].get("speakers_seconds_per_input_second") or 0.0
            rows.append({"speakers": enabled, "wall_s": round(wall, 1), "samples": summary["counts"]["samples"],
                         "speakers_stage_s": round(stages.get("speakers", 0.0), 2),
                         "plan_priced_speakers_s": round(priced * summary["this_run"]["input_seconds"], 2),
                         "plan_source": summary["plan"]["hardware"]["source"],
                         "all_stages_s": round(sum(stages.values()), 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--recordings", type=int, default=12)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-job", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vx-speakers-"))
    rng = np.random.default_rng(0)
    audio = {voice: np.concatenate([_load(n) for n in names]) for voice, names in VOICES.items()}
    recordings = [conversation(rng, audio) for _ in range(args.recordings)]
    print(json.dumps({"stage": stage_figures(recordings)}), flush=True)
    if args.no_job:
        return
    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for n, (samples, _, _) in enumerate(recordings):
        sf.write(folder / f"conversation-{n:02d}.flac", samples, ASR_RATE)
    for clip in REAL.iterdir():
        if clip.suffix in {".flac", ".wav", ".mp3"} and not clip.name.startswith("stereo"):
            shutil.copy(clip, folder / clip.name)
    rows = job_figures(folder, work, args.reps)
    off = [r["wall_s"] for r in rows if not r["speakers"]]
    on = [r["wall_s"] for r in rows if r["speakers"]]
    share = [r["speakers_stage_s"] / r["all_stages_s"] for r in rows if r["speakers"] and r["all_stages_s"]]
    print(json.dumps({"job": {"wall_off_s": off, "wall_on_s": on, "wall_ratio_on_off": round(np.mean(on) / np.mean(off), 3),
                              "speakers_share_of_stage_seconds": round(float(np.mean(share)), 3)}}))


if __name__ == "__main__":
    main()
