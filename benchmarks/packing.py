"""Packing VAD segments into shared Whisper windows: variants against each segment decoded alone.

    python -m benchmarks.packing --corpus /tmp/h1/mixed30 \
        --variant now: --variant gap0.5:asr.pack_gap_seconds=0.5 \
        --variant before:asr.pack_open_windows=1,_zero_frames=true --no-alone

The corpus's segments are cut once by the real prep stage (decode, resample, VAD; cached as .npz
beside the results), then decoded alone, one window each: the texts packing must reproduce. Each
variant is the `faster-whisper` backend with its settings, on the same segments, in one process:
its windows, seconds, the segments it decoded again, and the WER of its per-segment texts against
the lone decodes. That WER sees text given to the wrong segment of a file, which a per-file WER
(benchmarks/peers.py) cannot: a split that is wrong shows here first.
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks.peers import corpus_rows, word_error_rates
from pipelines.asr import packing, whisper
from pipelines.io import storage
from pipelines.asr.whisper import Transcriber
from pipelines.metrics.text import normalise_text
from pipelines.records import SourceFile
from pipelines.stages.discover import Discover
from pipelines.stages.prepare import Preparer
from schemas.config import AsrConfig, load_job_config


def segments(corpus: Path, cache: Path, prep: Optional[dict] = None) -> tuple[list[np.ndarray], list[str]]:
    """The corpus's kept VAD segments at 16 kHz, in input order, and the file each is from (cached;
    `prep`: job settings for cutting them, e.g. {"vad.merge_gap_seconds": 2.0}: give each its own cache)."""
    files_cache = cache.with_suffix(".json")
    if cache.exists() and files_cache.exists():
        with np.load(cache) as saved:
            return [saved[f"s{i:05d}"] for i in range(len(saved.files))], json.loads(files_cache.read_text())
    config = load_job_config(str(corpus), "/tmp/unused", overrides={"quality.enabled": False, **(prep or {})})
    discover = Discover(config.discover)
    fs, found = discover.list_audio(str(corpus))
    rows = discover.manifest(fs, found).to_pylist()
    files = [SourceFile(r["id"], r["uri"], r["duration"], r["error"]) for r in rows]
    preparer = Preparer(config)
    preparer.setup()
    audios, prepared = preparer(0, files)
    names = [str(Path(storage.filesystem(s.source_uri)[1]).relative_to(corpus.resolve())) for s in prepared.segments]
    np.savez(cache, **{f"s{i:05d}": a for i, a in enumerate(audios)})
    files_cache.write_text(json.dumps(names))
    return audios, names


class TimestampedPrompt(Transcriber):
    """Packed windows decoded in Whisper's timestamp mode (`_timestamps=true`): the model is trained to
    carry on past pauses there, where in text-only mode it often stops at the first long one."""

    def _prompt(self, tokenizer, language: str) -> list[int]:
        prompt = self.model.get_prompt(tokenizer, previous_tokens=[], without_timestamps=False)
        if self.model.model.is_multilingual:
            prompt[prompt.index(tokenizer.language)] = tokenizer.tokenizer.token_to_id(f"<|{language}|>")
        return prompt


SILENCE_PADDED = whisper._features


def zero_padded_frames(model, audio: np.ndarray) -> np.ndarray:
    """faster-whisper's padding (`_zero_frames=true`): the clip's log-mel frames, then zero frames to 30 s."""
    from faster_whisper.audio import pad_or_trim

    return pad_or_trim(model.feature_extractor(audio)[..., :-1])


def decode(asr: AsrConfig, audios: list[np.ndarray], timestamps: bool = False, keep_neighbours: bool = False,
           across_gap: bool = True, zero_frames: bool = False) -> dict:
    whisper.split_words = partial(packing.split_words, beside_empty=not keep_neighbours, across_gap=across_gap)
    whisper._features = zero_padded_frames if zero_frames else SILENCE_PADDED
    transcriber = (TimestampedPrompt if timestamps else Transcriber)(asr)
    transcriber.setup()
    transcriber([audios[0]])  # first call allocates
    transcriber.counts.clear()
    started = time.perf_counter()
    results = transcriber(audios)
    return {"seconds": time.perf_counter() - started, "texts": [r.text for r in results],
            "counts": {k: round(v, 2) for k, v in transcriber.counts.items()}}


def wer_by_file(corpus: Path, texts: list[str], names: list[str]) -> dict:
    """Per-file WER against the corpus's references, each file's segments joined in order (as peers.py)."""
    joined: dict[str, list[str]] = {}
    for text, name in zip(texts, names):
        joined.setdefault(name, []).append(text)
    return word_error_rates(corpus_rows(corpus), {name: " ".join(parts) for name, parts in joined.items()})


def wer(texts: list[str], references: list[str]) -> float:
    import jiwer

    pairs = [(normalise_text(r), normalise_text(t)) for t, r in zip(texts, references)]
    pairs = [(r, t) for r, t in pairs if r]
    return float(jiwer.wer([r for r, _ in pairs], [t for _, t in pairs]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,KEY=VALUE (asr.* keys)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-packing"))
    ap.add_argument("--prep-set", action="append", default=[],
                    help="a job setting for cutting the segments, e.g. vad.max_seconds=29 (use a fresh --workdir)")
    ap.add_argument("--no-alone", action="store_true", help="skip the lone decodes (and the WER against them)")
    ap.add_argument("--threads", type=int, default=0, help="CTranslate2 threads (asr.cpu_threads); 0 = its default")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    prep = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.prep_set)}
    audios, names = segments(args.corpus, args.workdir / "segments.npz", prep)
    speech = sum(len(a) for a in audios) / 16000
    print(f"{len(audios)} segments, {speech / 60:.1f} min of speech")
    solo_path = args.workdir / "solo.json"
    if not solo_path.exists() and not args.no_alone:
        solo_path.write_text(json.dumps(decode(AsrConfig(pack_seconds=0), audios)))
    solo = json.loads(solo_path.read_text()) if solo_path.exists() else None
    if solo:
        print(f"{'alone':12} {solo['seconds']:7.1f} s  windows {solo['counts'].get('windows', 0):4}  "
              f"{wer_by_file(args.corpus, solo['texts'], names)}")
    rows = {}
    for spec in args.variant or ["now:"]:
        name, _, settings = spec.partition(":")
        changes = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
        timestamps = json.loads(changes.pop("_timestamps", "false"))
        keep = json.loads(changes.pop("_keep_neighbours", "false"))
        across = not json.loads(changes.pop("_trust_across_gap", "false"))
        zero_frames = json.loads(changes.pop("_zero_frames", "false"))
        asr = AsrConfig(**{"cpu_threads": args.threads, **{k.removeprefix("asr."): json.loads(v) for k, v in changes.items()}})
        got = decode(asr, audios, timestamps, keep, across, zero_frames)
        got["wer_vs_alone"] = wer(got["texts"], solo["texts"]) if solo else None
        got.update(wer_by_file(args.corpus, got["texts"], names))
        rows[name] = {k: v for k, v in got.items() if k != "texts"}
        counts = got["counts"]
        print(f"{name:12} {got['seconds']:7.1f} s  windows {counts.get('windows', 0):4}  "
              f"again {counts.get('fallback', 0):4}  WER vs alone {got['wer_vs_alone'] or float('nan'):.3f}  "
              f"WER {got['wer']} (real {got['wer_real']}, espeak {got['wer_espeak']})  {counts}")
    (args.workdir / "packing.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
