"""Throughput of voxmill's stages, the whole job, and a naive per-file baseline, in one run.

Every number is audio seconds of INPUT per wall second (x realtime) over the same corpus.

CLI: ``python benchmarks/throughput.py [--shape mixed] [--minutes 30]
[--workdir /tmp/voxmill-bench] [--skip-naive]``; writes ``WORKDIR/throughput.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.make_corpus import SHAPES, make_corpus, summarize  # noqa: E402
from pipelines.asr.whisper import Transcriber, default_model_path  # noqa: E402
from pipelines.stages.audio import ASR_RATE, DecodeError, Resampler, Waveform, decode, encode  # noqa: E402
from pipelines.stages.vad import Segmenter, Span  # noqa: E402
from schemas.config import AsrConfig, AudioConfig, VadConfig, load_job_config  # noqa: E402

OUT_RATE = AudioConfig().sample_rate  # 24 kHz shard audio


@dataclass
class Row:
    """One measured stage: wall seconds spent on `audio_seconds` of input audio."""

    name: str
    seconds: float
    audio_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def speed(self) -> float:
        return self.audio_seconds / self.seconds if self.seconds else 0.0


class Stopwatch:
    """Accumulates the seconds spent inside `with watch:` blocks."""

    def __init__(self) -> None:
        self.total = 0.0

    def __enter__(self) -> None:
        self._t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.total += time.perf_counter() - self._t


# ----------------------------------------------------------------------------- corpus


def ensure_corpus(workdir: Path, shape: str, minutes: float) -> Path:
    """The corpus directory, built by make_corpus unless a finished one is already there."""
    corpus = workdir / f"corpus-{shape}-{minutes:g}min"
    refs = corpus / "references.jsonl"
    if not refs.exists():
        t = time.perf_counter()
        make_corpus(corpus, shape, minutes, seed=0, overwrite=corpus.exists())
        print(f"built corpus in {time.perf_counter() - t:.0f} s")
    print(summarize(refs))
    return corpus


def audio_files(corpus: Path) -> list[Path]:
    """Every audio file of the corpus, read once so all passes start from a warm page cache."""
    rows = [json.loads(line) for line in (corpus / "references.jsonl").read_text().splitlines()]
    files = sorted(corpus / r["file"] for r in rows)
    for path in files:
        path.read_bytes()
    return files


def decode_path(path: Path) -> Optional[Waveform]:
    """`pipelines.stages.audio.decode`, or None for a file the pipeline would reject."""
    try:
        with open(path, "rb") as fh:
            return decode(fh)
    except (DecodeError, OSError):
        return None


# ----------------------------------------------------------------------------- stages


def bench_decode_resample(files: list[Path]) -> tuple[list[Row], list[Waveform]]:
    """One pass: per file, time decode, then soxr and torchaudio (CPU) resampling of the same
    decoded audio to 24 kHz and 16 kHz, so every path shares one decode timing.
    Returns the rows and the soxr 16 kHz waves (the 24 kHz outputs are dropped)."""
    backends = {name: Resampler(AudioConfig(resampler=name)) for name in ("soxr", "torch")}
    dec, res = Stopwatch(), {name: Stopwatch() for name in backends}
    speech: list[Waveform] = []
    for path in files:
        with dec:
            wave = decode_path(path)
        if wave is None:
            continue
        for name, resample in backends.items():
            with res[name]:
                resample(wave, OUT_RATE)
                out = resample(wave, ASR_RATE)
            if name == "soxr":
                speech.append(out)
    total = sum(w.seconds for w in speech)
    rows = [Row("decode only", dec.total, total, {"files": len(files), "decoded": len(speech)})]
    for name, watch in res.items():
        rows.append(Row(f"decode + resample ({name})", dec.total + watch.total, total))
        rows.append(Row(f"  resample alone ({name})", watch.total, total))
    return rows, speech


def bench_vad(speech: list[Waveform]) -> tuple[Row, list[list[Span]]]:
    segmenter = Segmenter(VadConfig())
    segmenter.setup()
    watch, spans = Stopwatch(), []
    with watch:
        for wave in speech:
            spans.append(segmenter(wave.samples)[0])
    count = sum(map(len, spans))
    return Row("VAD (Silero)", watch.total, sum(w.seconds for w in speech), {"segments": count}), spans


def cut(samples: np.ndarray, rate: int, span: Span) -> np.ndarray:
    return samples[round(span.start * rate) : round(span.end * rate)]


def bench_encode(files: list[Path], spans: list[list[Span]], input_seconds: float) -> Row:
    """FLAC-encode each segment from 24 kHz audio (resampled here, untimed)."""
    resample, watch, out_bytes = Resampler(AudioConfig(resampler="soxr")), Stopwatch(), 0
    waves = (w for w in map(decode_path, files) if w is not None)
    for wave, file_spans in zip(waves, spans, strict=True):
        target = resample(wave, OUT_RATE)
        with watch:
            for span in file_spans:
                out_bytes += len(encode(cut(target.samples, OUT_RATE, span), OUT_RATE, "flac"))
    return Row("encode (FLAC 24 kHz)", watch.total, input_seconds, {"bytes": out_bytes})


def bench_asr(speech: list[Waveform], spans: list[list[Span]], input_seconds: float) -> Row:
    """Batched Transcriber over every VAD segment (model load reported apart)."""
    segments = [cut(w.samples, ASR_RATE, s) for w, ss in zip(speech, spans) for s in ss]
    transcriber = Transcriber(AsrConfig())
    load = time.perf_counter()
    transcriber.setup()
    load = time.perf_counter() - load
    watch = Stopwatch()
    with watch:
        results = transcriber(segments)
    seg_seconds = sum(len(s) for s in segments) / ASR_RATE
    extra = {"model_load_seconds": load, "segment_seconds": seg_seconds,
             "segments": len(segments), "empty": sum(not r.text for r in results),
             **dict(transcriber.counts)}
    return Row("ASR (batched tiny.en, packed windows)", watch.total, input_seconds, extra)


def bench_job(corpus: Path, workdir: Path, quality: bool) -> Row:
    """`run_job` end to end into a fresh output folder (Ray start-up and model load included).

    Without quality scoring the job does the naive loop's work (resample, transcribe) plus VAD and
    shards: that is the like-for-like comparison. With it (the default), DNSMOS and the other
    scores are extra work the naive loop never does."""
    import ray

    from pipelines.job import run_job

    out = workdir / ("job-out" if quality else "job-out-noquality")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = run_job(load_job_config(str(corpus), str(out), overrides={"quality.enabled": quality}))
    wall = time.perf_counter() - t
    ray.shutdown()
    extra = {k: summary[k] for k in ("wall_seconds", "stage_seconds", "counts", "resources")}
    name = "whole job (run_job, quality on)" if quality else "whole job (run_job, quality off)"
    return Row(name, wall, summary["this_run"]["input_hours"] * 3600, extra)


# ----------------------------------------------------------------------------- naive baseline


def naive_baseline(files: list[Path], workdir: Path, beam_size: int) -> Row:
    """Per file: ffmpeg to 16 kHz mono WAV, WhisperModel.transcribe, append to a tar."""
    from faster_whisper import WhisperModel

    t = time.perf_counter()
    model = WhisperModel(default_model_path())
    audio_seconds, tar_path = 0.0, workdir / "naive.tar"
    with tarfile.open(tar_path, "w") as tar, tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(files):
            wav = Path(tmp) / "x.wav"
            ffmpeg = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(path),
                      "-ac", "1", "-ar", "16000", str(wav)]
            if subprocess.run(ffmpeg, capture_output=True).returncode != 0:
                continue
            segments, info = model.transcribe(str(wav), beam_size=beam_size)
            text = " ".join(s.text.strip() for s in segments)
            audio_seconds += info.duration
            key = f"{i:06d}"
            _tar_add(tar, f"{key}.wav", wav.read_bytes())
            _tar_add(tar, f"{key}.json", json.dumps({"file": str(path), "text": text}).encode())
    return Row("naive loop (ffmpeg+transcribe)", time.perf_counter() - t, audio_seconds)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    lines = [f"| {'stage':34} | {'wall s':>8} | {'audio s':>8} | {'x realtime':>10} |",
             f"|{'-' * 36}|{'-' * 10}|{'-' * 10}|{'-' * 12}|"]
    lines += [f"| {r.name:34} | {r.seconds:8.1f} | {r.audio_seconds:8.0f} | {r.speed:10.1f} |"
              for r in rows]
    return "\n".join(lines)


def ratio(rows: dict[str, Row], top: str, bottom: str) -> Optional[float]:
    if top not in rows or bottom not in rows or not rows[bottom].speed:
        return None
    return rows[top].speed / rows[bottom].speed


def step(label: str, fn: Callable, *args):
    print(f"... {label}", flush=True)
    return fn(*args)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="mixed")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/voxmill-bench"))
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    corpus = ensure_corpus(args.workdir, args.shape, args.minutes)
    files = audio_files(corpus)
    decode_rows, speech = step("decode + resample", bench_decode_resample, files)
    decode_row, soxr_row, _, torch_row, _ = decode_rows
    vad_row, spans = step("vad", bench_vad, speech)
    input_seconds = decode_row.audio_seconds
    encode_row = step("encode", bench_encode, files, spans, input_seconds)
    asr_row = step("asr", bench_asr, speech, spans, input_seconds)
    del speech
    job_row = step("whole job, quality off", bench_job, corpus, args.workdir, False)
    scored_row = step("whole job, quality on", bench_job, corpus, args.workdir, True)
    rows = [*decode_rows, vad_row, encode_row, asr_row, job_row, scored_row]
    if not args.skip_naive:
        rows.append(step("naive baseline", naive_baseline, files, args.workdir, AsrConfig().beam_size))

    by_name = {r.name: r for r in rows}
    best = max((soxr_row, torch_row), key=lambda r: r.speed)
    ratios = {
        "job_over_naive": ratio(by_name, job_row.name, "naive loop (ffmpeg+transcribe)"),
        "scored_job_over_naive": ratio(by_name, scored_row.name, "naive loop (ffmpeg+transcribe)"),
        "resample_path_over_decode": ratio(by_name, best.name, decode_row.name),
        "soxr_resample_path_over_decode": ratio(by_name, soxr_row.name, decode_row.name),
        "torch_resample_path_over_decode": ratio(by_name, torch_row.name, decode_row.name),
    }
    print("\n" + table(rows) + "\n")
    print(f"job stage_seconds: { {k: round(v, 1) for k, v in job_row.extra['stage_seconds'].items()} }")
    print(f"ASR model load {asr_row.extra['model_load_seconds']:.1f} s, "
          f"{asr_row.extra['segments']} segments, {asr_row.extra['segment_seconds']:.0f} s of speech")
    for name, target in (("job_over_naive", 2.0), ("resample_path_over_decode", 0.8)):
        value = ratios[name]
        shown = "n/a" if value is None else f"{value:.2f}"
        print(f"{name}: {shown} (target >= {target})")

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "corpus": str(corpus),
        "rows": [{"name": r.name.strip(), "seconds": r.seconds, "audio_seconds": r.audio_seconds,
                  "x_realtime": r.speed, **r.extra} for r in rows],
        "ratios": ratios,
    }
    (args.workdir / "throughput.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.workdir / 'throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
