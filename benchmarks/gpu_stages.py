"""The GPU stages measured directly, without Ray: batched resample, DNSMOS and batched ASR.

Run on a machine with a CUDA GPU. Each stage is timed on the GPU beside its CPU path in the same
process, on the same audio (a corpus from `make_corpus.py`), and checked against it:

* resample: `Resampler` with torchaudio on the GPU (one padded batch per call) vs soxr (the CPU
  default), both from the source rate to 24 kHz; max error relative to soxr's output;
* DNSMOS: the P.835 ONNX model on onnxruntime (its providers as installed) vs the same graph on
  the GPU through onnx2torch, per 9.01 s window; score differences;
* ASR: `Transcriber` (faster-whisper, packing on) on CUDA float16 at several batch sizes, on the
  corpus's VAD segments (repeated to fill the batches), with WER against the references.

It writes `gpu_stages.json` (every number) and `profile-batchN.json`: a hardware profile per ASR batch size for
`voxmill plan --profile`, with this GPU's ASR rate and this machine's per-worker prep cost.

    python benchmarks/gpu_stages.py --corpus CORPUS --model MODEL_DIR --out OUT_DIR
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np


def gpu() -> str:
    """The torch device to measure: "cuda", or "cpu" for a smoke run on a machine without one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (smoke run)"


def timed(fn: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    """Best of `repeats` wall times (the first call warms up and is not counted) and the result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def load_corpus(corpus: Path):
    from pipelines.stages.audio import decode

    refs = [json.loads(line) for line in (corpus / "references.jsonl").read_text().splitlines() if line.strip()]
    waves = []
    for ref in refs:
        with open(corpus / ref["file"], "rb") as fh:
            waves.append(decode(fh))
    return refs, waves


def bench_resample(waves) -> dict:
    """Each (source rate, target rate) pair a job meets most: 44.1/48 kHz masters to the 24 kHz
    shards and the 16 kHz ASR audio, and 16 kHz sources up to 24 kHz. The corpus is brought to each
    source rate with soxr first (untimed)."""
    import soxr

    from pipelines.stages.audio import Resampler, Waveform
    from schemas.config import AudioConfig

    cpu = Resampler(AudioConfig(resampler="soxr"))
    gpu = Resampler(AudioConfig(resampler="torch"))
    out: dict = {"pairs": []}
    for src, dst in ((16000, 24000), (44100, 24000), (48000, 24000), (44100, 16000), (48000, 16000)):
        sources = [w if w.rate == src else Waveform(soxr.resample(w.samples, w.rate, src).astype(np.float32), src)
                   for w in waves]
        seconds = sum(w.seconds for w in sources)
        cpu_s, cpu_out = timed(lambda: cpu.many(sources, dst), repeats=2)
        gpu_s, gpu_out = timed(lambda: (gpu.many(sources, dst), sync())[0], repeats=3)
        snr = [10 * np.log10(np.sum(b.samples.astype(np.float64) ** 2) /
                             max(np.sum((a.samples - b.samples).astype(np.float64) ** 2), 1e-20))
               for a, b in zip(gpu_out, cpu_out) if len(a.samples) == len(b.samples) and np.any(b.samples)]
        pair = {"source_rate": src, "target_rate": dst, "input_seconds": seconds,
                "soxr_audio_x": seconds / cpu_s, "gpu_audio_x": seconds / gpu_s, "gpu_over_soxr": cpu_s / gpu_s,
                "median_snr_vs_soxr_db": float(np.median(snr)), "min_snr_vs_soxr_db": float(min(snr)),
                "length_match": all(len(a.samples) == len(b.samples) for a, b in zip(gpu_out, cpu_out))}
        out["pairs"].append(pair)
        print("resample", json.dumps(pair), flush=True)
    return out


def prepare(refs, corpus: Path, quality: bool):
    """VAD segments at 16 kHz (the audio ASR and DNSMOS read), as a job's prep task makes them;
    with `quality`, scored as well (DNSMOS on the GPU when there is one: quality.dnsmos_device auto)."""
    from pipelines.records import SourceFile
    from pipelines.stages.prepare import Preparer
    from schemas.config import JobConfig

    config = JobConfig(input=str(corpus), output="/tmp/unused", quality={"enabled": quality})
    preparer = Preparer(config)
    preparer.setup()
    files = [SourceFile(id=Path(r["file"]).stem, uri=str(corpus / r["file"])) for r in refs]
    preparer(0, files[:1])  # warm-up: the first CUDA resample and DNSMOS calls pick their kernels
    start = time.perf_counter()
    audios, prepared = preparer(0, files)
    seconds = time.perf_counter() - start
    return audios, prepared, {"quality": quality, "seconds": seconds, "input_seconds": prepared.input_seconds,
                              "seconds_per_input_second": seconds / prepared.input_seconds,
                              "stage_seconds": dict(prepared.stage_seconds)}


def bench_dnsmos(audios) -> dict:
    """The scorer's two DNSMOS runners on the same windows, and whole-segment scores both ways."""
    import onnxruntime as ort

    from pipelines.metrics.dnsmos import OnnxDnsmos, TorchDnsmos, cover_starts, dnsmos_model_path, dnsmos_window
    from pipelines.metrics.scorer import QualityScorer
    from schemas.config import QualityConfig

    windows = np.stack([dnsmos_window(a, s) for a in audios for s in cover_starts(len(a))])
    windows = np.concatenate([windows] * -(-256 // len(windows)))[:256]  # a small corpus is repeated
    cpu = OnnxDnsmos()
    out: dict = {"windows": len(windows), "ort_providers": ort.get_available_providers(), "cpu_cores": os.cpu_count()}
    ort_s, ort_raw = timed(lambda: cpu(windows[:32]), repeats=1)  # 32 windows keep the one-core timing short
    out["ort_seconds_per_window"] = ort_s / 32
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    wide = ort.InferenceSession(dnsmos_model_path(), options, providers=["CPUExecutionProvider"])
    wide_s, _ = timed(lambda: wide.run(None, {cpu.input_name: windows[:32]})[0], repeats=1)
    out["ort_all_cores_seconds_per_window"] = wide_s / 32
    on_gpu = TorchDnsmos(gpu())
    import torch

    for size in (8, 32, 64, 256) if gpu() == "cuda" else (8, 32, 64):  # 256 windows take >20 GB on a CPU
        if gpu() == "cuda":
            torch.cuda.reset_peak_memory_stats()
        gpu_s, gpu_raw = timed(lambda: on_gpu(windows[:size]))
        out[f"gpu_batch{size}_seconds_per_window"] = gpu_s / size
        if gpu() == "cuda":
            out[f"gpu_batch{size}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if size == 32:
            out["gpu_max_abs_diff_raw"] = float(np.abs(gpu_raw - ort_raw).max())
    out["gpu_over_one_core"] = out["ort_seconds_per_window"] / out["gpu_batch64_seconds_per_window"]
    auto = QualityScorer(QualityConfig())
    auto.setup()
    out["auto_runner"] = f"{type(auto.runner).__name__} on {auto.runner.device}"
    some = audios[:24]
    pinned = QualityScorer(QualityConfig(dnsmos_device="cpu"))
    auto_scores, cpu_scores = auto.score(some), pinned.score(some)
    for name in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"):
        out[f"{name}_max_abs_diff"] = max(abs(a[name] - b[name]) for a, b in zip(auto_scores, cpu_scores))
    return out


def bench_asr(audios, prepared, refs, model: str, batch_sizes: list[int], device: str = "cuda") -> dict:
    import jiwer

    from pipelines.asr.whisper import Transcriber
    from pipelines.metrics.text import normalise_text
    from pipelines.stages.audio import ASR_RATE
    from schemas.config import AsrConfig

    speech = sum(len(a) for a in audios) / ASR_RATE
    out: dict = {"segments": len(audios), "speech_seconds": speech, "device": device, "runs": []}
    texts_by_file = {Path(r["file"]).stem: r.get("text") for r in refs}
    for size in batch_sizes:
        compute = "float16" if device == "cuda" else "int8"
        transcriber = Transcriber(AsrConfig(model=model, device=device, compute_type=compute, batch_size=size,
                                              cpu_threads=(os.cpu_count() or 1) if device == "cpu" else 0))
        load_start = time.perf_counter()
        transcriber.setup()
        load = time.perf_counter() - load_start
        repeats = max(1, int(np.ceil(size * 29.0 * 2 / speech)))  # at least two full batches
        transcriber(audios[:8])  # warm-up: the first CUDA calls allocate and pick kernels
        start = time.perf_counter()
        results = transcriber(audios * repeats)
        seconds = time.perf_counter() - start
        hyp: dict[str, list[str]] = {}
        for seg, result in zip(prepared.segments, results[: len(audios)]):
            hyp.setdefault(seg.source_id, []).append(result.text)
        pairs = [(normalise_text(texts_by_file[k]), normalise_text(" ".join(v))) for k, v in hyp.items() if texts_by_file.get(k)]
        wer = jiwer.wer([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
        out["runs"].append({
            "batch_size": size, "compute_type": compute, "model_load_seconds": load, "repeats": repeats,
            "seconds": seconds, "seconds_per_speech_second": seconds / (speech * repeats),
            "speech_x_realtime": speech * repeats / seconds, "wer": wer, "files_scored": len(pairs),
            "fallback_share": transcriber.counts["fallback"] / (len(audios) * repeats),
        })
        print(json.dumps(out["runs"][-1]), flush=True)
    return out


def hardware_profile(results: dict, base: dict, batch_size: int) -> dict:
    """`base` (a saved profile) with this machine's measured ASR and prep costs put in."""
    run = next(r for r in results["asr"]["runs"] if r["batch_size"] == batch_size)
    hardware = dict(base["hardware"])
    prep = results["prep"]["seconds_per_input_second"]
    from pipelines.metrics.dnsmos import TorchDnsmos

    per_window = results["dnsmos"][f"gpu_batch{TorchDnsmos.CHUNK}_seconds_per_window"]
    windows = base["data"].get("dnsmos_windows_per_input_second") or 0.0
    hardware.update(
        name=f"measured-faster-whisper-tiny-en-{gpu_name().replace(' ', '-').lower()}",
        cpu_model=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (prep per worker measured there)",
        cpus=os.cpu_count() or 1, gpu_name=gpu_name(), gpus=1 if gpu() == "cuda" else 0,
        compute_type=run["compute_type"], device="cuda", batch_size=batch_size,
        prep_seconds_per_input_second=prep + per_window * windows,
        quality_seconds_per_input_second=per_window * windows, dnsmos_seconds_per_window=per_window,
        asr_seconds_per_speech_second=run["seconds_per_speech_second"],
        asr_probe_segments=results["asr"]["segments"],
        measured_at=datetime.now(timezone.utc).isoformat(),
        source=(f"measured by benchmarks/gpu_stages.py on {gpu_name()}: ASR = faster-whisper "
                f"{run['compute_type']} batch {batch_size} with packing, {results['asr']['speech_seconds']:.0f} s of "
                f"VAD speech x{run['repeats']}; prep (decode + VAD + encode, one worker) on one core of that machine; "
                f"DNSMOS per window on its GPU (the scorer's batches of {TorchDnsmos.CHUNK}); write, start-up and model load from "
                f"{base['hardware']['name']}"),
    )
    return {"hardware": hardware, "data": base["data"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--asr-device", default=None, help="default: cuda when torch sees a GPU")
    parser.add_argument("--skip-resample", action="store_true")
    parser.add_argument("--asr-from", type=Path, help="take the ASR runs from an earlier gpu_stages.json")
    parser.add_argument("--cpu-asr", action="store_true", help="also time ASR on this machine's CPUs (batch 16)")
    parser.add_argument("--base-profile", type=Path,
                        default=Path(__file__).parent.parent / "deploy/profiles/published-faster-whisper-tiny-en-cuda.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    results: dict = {"gpu": gpu_name(), "torch": torch.__version__, "cpus": os.cpu_count()}
    refs, waves = load_corpus(args.corpus)
    if not args.skip_resample:
        results["resample"] = bench_resample(waves)
    audios, prepared, results["prep"] = prepare(refs, args.corpus, quality=False)
    print("prep", json.dumps(results["prep"]), flush=True)
    results["prep_scored"] = prepare(refs, args.corpus, quality=True)[2]
    print("prep scored", json.dumps(results["prep_scored"]), flush=True)
    try:
        results["dnsmos"] = bench_dnsmos(audios)
    except Exception as err:  # noqa: BLE001 - record it and measure the rest
        results["dnsmos"] = {"error": repr(err)}
    print("dnsmos", json.dumps(results["dnsmos"]), flush=True)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    if args.asr_from:
        earlier = json.loads(args.asr_from.read_text())
        results["asr"], results["asr_from"] = earlier["asr"], {"file": str(args.asr_from), "gpu": earlier["gpu"]}
        sizes = [run["batch_size"] for run in results["asr"]["runs"]]
    else:
        results["asr"] = bench_asr(audios, prepared, refs, args.model, sizes, args.asr_device or gpu())
    if args.cpu_asr:
        try:
            results["asr_cpu"] = bench_asr(audios, prepared, refs, args.model, [16], "cpu")
        except Exception as err:  # noqa: BLE001
            results["asr_cpu"] = {"error": repr(err)}
    (args.out / "gpu_stages.json").write_text(json.dumps(results, indent=2))
    if "gpu_batch8_seconds_per_window" in results["dnsmos"] and results["asr"]["device"] == "cuda":
        base = json.loads(args.base_profile.read_text())
        for size in sizes:
            profile = hardware_profile(results, base, size)
            (args.out / f"profile-batch{size}.json").write_text(json.dumps(profile, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "asr"}, indent=1))
    for run in results["asr"]["runs"] + results.get("asr_cpu", {}).get("runs", []):
        print(f"ASR {run['compute_type']} batch {run['batch_size']:3d}: {run['speech_x_realtime']:8.1f}x realtime, WER {run['wer']}")


if __name__ == "__main__":
    main()
