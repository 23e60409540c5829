"""Quality scores of the real clips, and what scoring costs next to decode + resample + VAD.

Runs the prep stage (`Preparer`, one process, one file at a time) on every clip in
demo/real-speech twice: without quality scoring and with it, best of `--repeat` runs each, and
prints each segment's scores (DNSMOS with the default covering windows) (with `--asr`, also the transcript's speech rate and Whisper's
confidence from the bundled tiny.en) and the cost of the "quality" stage per audio second as a
ratio to decode + resample + VAD (+ encode) on the same clips, for the covering windows and the
reference windowing, and how far covering moves each segment's DNSMOS from the reference.

With `--corpus DIR`, instead compares the two windowings on the VAD segments of the first
`--files` files of a corpus (e.g. one `make_corpus.py` built): score differences and time.

CLI: ``python -m benchmarks.quality [--repeat 3] [--asr] [--json out.json]``
     ``python -m benchmarks.quality --corpus /tmp/voxmill-accuracy/corpus-mixed-30min --files 40``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.metrics.scorer import SCORE_NAMES  # noqa: E402
from pipelines.metrics.text import chars_per_second  # noqa: E402
from pipelines.records import SourceFile
from pipelines.stages.discover import Discover  # noqa: E402
from pipelines.stages.prepare import Preparer  # noqa: E402
from schemas.config import load_job_config  # noqa: E402

DEMO = ROOT / "demo" / "real-speech"
PREP = ("decode", "resample", "vad", "encode")


def sources() -> list[SourceFile]:
    manifest = Discover(load_job_config(str(DEMO), "/tmp/unused").discover)(str(DEMO)).to_pylist()
    return [SourceFile(r["id"], r["uri"], r["duration"], r["error"]) for r in manifest]


def timed_prep(overrides: dict, files: list[SourceFile], repeat: int) -> tuple[dict[str, float], list, list, float]:
    """Best-of-`repeat` stage seconds (each file prepared alone, as units of one file)."""
    config = load_job_config(str(DEMO), "/tmp/unused", overrides=overrides)
    preparer = Preparer(config)
    preparer.setup()
    best: dict[str, float] = {}
    for _ in range(repeat):
        totals: dict[str, float] = defaultdict(float)
        segments, audios, seconds = [], [], 0.0
        for source in files:
            audio, prepared = preparer(0, [source])
            for stage, spent in prepared.stage_seconds.items():
                totals[stage] += spent
            segments += prepared.segments
            audios += audio
            seconds += prepared.input_seconds
        best = {k: min(v, best.get(k, v)) for k, v in totals.items()}
    return best, segments, audios, seconds


def asr_rows(segments: list, audios: list) -> list[dict]:
    from pipelines.asr.whisper import Transcriber

    transcriber = Transcriber(load_job_config(str(DEMO), "/tmp/unused").asr)
    transcriber.setup()
    results = transcriber(audios)
    return [{"text": r.text, "chars_per_second": chars_per_second(r.text, s.end - s.start),
             **r.extras} for s, r in zip(segments, results)]


def compare_windows(corpus: str, files: int) -> None:
    """Covering vs reference DNSMOS windows on a corpus's VAD segments: differences and time."""
    import numpy as np

    from pipelines.metrics.scorer import QualityScorer
    from schemas.config import QualityConfig

    config = load_job_config(corpus, "/tmp/unused", overrides={"quality.enabled": False})
    rows = Discover(config.discover)(corpus).to_pylist()[:files]
    preparer = Preparer(config)
    preparer.setup()
    audios = [a for r in rows for a in preparer(0, [SourceFile(r["id"], r["uri"], r["duration"])])[0]]
    scores, seconds = {}, {}
    for name in ("reference", "cover"):
        scorer = QualityScorer(QualityConfig(dnsmos_windows=name))
        scorer.setup()
        started = time.perf_counter()
        scores[name] = np.array(scorer.dnsmos(audios))
        seconds[name] = time.perf_counter() - started
    diff = scores["cover"] - scores["reference"]
    print(f"{len(audios)} segments, {sum(map(len, audios)) / 16000:.0f} s of speech; "
          f"scoring s reference {seconds['reference']:.1f}, cover {seconds['cover']:.1f}")
    for i, name in enumerate(("sig", "bak", "ovrl")):
        d = diff[:, i]
        print(f"{name}: mean {d.mean():+.3f}  mean abs {np.abs(d).mean():.3f}  "
              f"p95 abs {np.percentile(np.abs(d), 95):.3f}  max abs {np.abs(d).max():.3f}")
    print(f"ovrl correlation {np.corrcoef(scores['cover'][:, 2], scores['reference'][:, 2])[0, 1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--asr", action="store_true", help="also transcribe: speech rate and confidence")
    parser.add_argument("--json", help="write the per-segment rows and timings here")
    parser.add_argument("--corpus", help="compare the DNSMOS windowings on this corpus's segments instead")
    parser.add_argument("--files", type=int, default=40, help="with --corpus: how many of its files")
    args = parser.parse_args()
    if args.corpus:
        compare_windows(args.corpus, args.files)
        return
    files = sources()
    off, _, _, _ = timed_prep({"quality.enabled": False}, files, args.repeat)
    started = time.perf_counter()
    on, segments, audios, seconds = timed_prep({}, files, args.repeat)
    reference, by_reference, _, _ = timed_prep({"quality.dnsmos_windows": "reference"}, files, args.repeat)
    no_overlap, _, _, _ = timed_prep({"quality.dnsmos_windows": "reference", "quality.dnsmos_hop_seconds": 9.01},
                                     files, args.repeat)
    extra = asr_rows(segments, audios) if args.asr else [{} for _ in segments]
    rows = [{"file": Path(s.source_uri).name, "start": round(s.start, 2), "end": round(s.end, 2),
             **{k: s.scores.get(k) for k in SCORE_NAMES}, **e} for s, e in zip(segments, extra)]
    for row in rows:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "text"))
    prep = sum(off.get(s, 0.0) for s in PREP)
    quality = on.get("quality", 0.0)
    timing = {
        "audio_seconds": seconds, "segments": len(segments),
        "prep_seconds_per_audio_second": prep / seconds,
        "quality_seconds_per_audio_second": quality / seconds,
        "quality_over_prep": quality / prep,
        "quality_seconds_per_audio_second_reference": reference.get("quality", 0.0) / seconds,
        "quality_seconds_per_audio_second_reference_hop_9.01": no_overlap.get("quality", 0.0) / seconds,
        **{f"{name}_cover_minus_reference_max": max(abs(a.scores[name] - b.scores[name])
                                                    for a, b in zip(segments, by_reference))
           for name in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")},
        "stage_seconds_without_quality": off, "stage_seconds_with_quality": on,
        "wall_seconds": time.perf_counter() - started,
    }
    print(json.dumps({k: v for k, v in timing.items() if not isinstance(v, dict)}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "timing": timing}, indent=1))


if __name__ == "__main__":
    main()
