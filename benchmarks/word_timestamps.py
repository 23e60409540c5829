"""What `asr.word_timestamps` costs, and how its words agree with the tool a user would pick instead.

The real clips (demo/real-speech) are cut by voxmill's own prep (VAD, quality off) and their speech
segments repeated `--copies` times (the batches a unit would hold). Three ways to transcribe them, on
the same tiny.en model, compute type and threads, interleaved `--repeats` times (the machine is
shared), medians kept:
- voxmill's Transcriber without word timestamps (packed windows, batched);
- voxmill's Transcriber with `word_timestamps: true` (packed segments' words from the packing's own
  alignment, one more alignment pass per batch decoded alone);
- faster-whisper's own `WhisperModel.transcribe(segment, word_timestamps=True)`, segment by segment:
  what a user adds word timestamps with otherwise.
Agreement: for each segment whose normalised words are the same in both, the median and 95th
percentile of |start difference| and |end difference| between voxmill's and faster-whisper's words.

CLI: ``python benchmarks/word_timestamps.py [--copies 3] [--repeats 3] [--threads 2]``; writes
``benchmarks/results/word-timestamps.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.asr.whisper import Transcriber  # noqa: E402
from pipelines.metrics.text import normalise_text  # noqa: E402
from pipelines.records import SourceFile  # noqa: E402
from pipelines.stages.prepare import Preparer  # noqa: E402
from schemas.config import load_job_config  # noqa: E402

DEMO = ROOT / "demo" / "real-speech"


def segments(copies: int) -> list[np.ndarray]:
    """The clips' 16 kHz speech segments as prep cuts them, `copies` times over."""
    with tempfile.TemporaryDirectory() as out:
        config = load_job_config(str(DEMO), out, overrides={"quality.enabled": False})
        preparer = Preparer(config)
        preparer.setup()
        files = [SourceFile(p.stem, str(p)) for p in sorted(DEMO.iterdir()) if p.suffix not in {".md", ".jsonl"}]
        audios, _ = preparer(0, files)
    return list(audios) * copies


def voxmill(audios: list[np.ndarray], words: bool, threads: int) -> tuple[float, list]:
    config = load_job_config("in", "out", overrides={"asr.word_timestamps": words, "asr.cpu_threads": threads}).asr
    transcriber = Transcriber(config)
    transcriber.setup()
    started = time.perf_counter()
    results = transcriber(audios)
    return time.perf_counter() - started, results


def faster_whisper(audios: list[np.ndarray], model) -> tuple[float, list]:
    started = time.perf_counter()
    results = []
    for audio in audios:
        pieces, _ = model.transcribe(audio, language="en", beam_size=1, word_timestamps=True,
                                     condition_on_previous_text=False, vad_filter=False)
        results.append([{"word": w.word.strip(), "start": w.start, "end": w.end} for p in pieces for w in p.words])
    return time.perf_counter() - started, results


def agreement(ours: list, theirs: list[list[dict]]) -> dict:
    """|start| and |end| differences of words where both transcripts have the same normalised words."""
    starts, ends, compared = [], [], 0
    for result, words in zip(ours, theirs):
        mine = result.words or []
        if [normalise_text(w["word"]) for w in mine] != [normalise_text(w["word"]) for w in words] or not words:
            continue
        compared += 1
        starts += [abs(a["start"] - b["start"]) for a, b in zip(mine, words)]
        ends += [abs(a["end"] - b["end"]) for a, b in zip(mine, words)]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return {"segments_compared": compared, "segments": len(ours), "words": len(starts),
            "start_median_s": pct(starts, 50), "start_p95_s": pct(starts, 95),
            "end_median_s": pct(ends, 50), "end_p95_s": pct(ends, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    from pipelines.asr.whisper import default_model_path

    audios = segments(args.copies)
    speech = sum(len(a) for a in audios) / 16000
    model = WhisperModel(default_model_path(), device="cpu", compute_type="int8", cpu_threads=args.threads,
                         local_files_only=True)
    times: dict[str, list[float]] = {"voxmill": [], "voxmill_words": [], "faster_whisper_words": []}
    for _ in range(args.repeats):
        times["voxmill"].append(voxmill(audios, False, args.threads)[0])
        seconds, ours = voxmill(audios, True, args.threads)
        times["voxmill_words"].append(seconds)
        seconds, theirs = faster_whisper(audios, model)
        times["faster_whisper_words"].append(seconds)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {"segments": len(audios), "speech_seconds": speech, "threads": args.threads, "repeats": args.repeats,
              "seconds": times, "median_seconds": median,
              "words_cost": median["voxmill_words"] / median["voxmill"],
              "speedup_vs_faster_whisper_words": median["faster_whisper_words"] / median["voxmill_words"],
              "agreement": agreement(ours, theirs)}
    out = ROOT / "benchmarks" / "results" / "word-timestamps.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
