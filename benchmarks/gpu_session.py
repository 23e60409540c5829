"""The GPU half of the model cost profiles (issue 15 part 4), as one script for one short GPU lease.

The lent GPU machine has torch, transformers and numpy but no faster-whisper, CTranslate2, soundfile
or pydantic, and reaches nothing. So the work is split:

* here, `prepare` packs the real clips into the backend's 29 s windows (16 kHz) with the tokens the
  real tiny.en decodes in each, into one small .npz that travels with the command (`carry`);
* there, `measure` builds each model from its published dimensions with random weights
  (transformers, float16, on the GPU), and times batches of windows: Whisper encoder pass + greedy
  decode forced to each batch's real token count (`min_new_tokens` = `max_new_tokens`, transformers'
  own `GenerationMixin.generate`), Parakeet CTC encoder pass + argmax. It writes JSON after each model
  (a lease cut short keeps what was measured) that `python -m pipelines.plan.models merge` ships.

`--cpu-rehearsal` runs the same code on CPU with the tiny models only, so the script is known to run
before device time is spent on it; its output has kind "cpu-rehearsal", which merge refuses.

    python benchmarks/gpu_session.py prepare --to .gpu/windows.npz            # here
    python3 benchmarks/gpu_session.py measure --windows .gpu/windows.npz --out $OUT/gpu-profiles.json
    python -m pipelines.plan.models merge gpu-profiles.json                   # here, after
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.model_costs import PARAKEET, WHISPER, parakeet_config, whisper_config, whisper_prompt

# cheapest first among those the 50k-hour answer needs, then the rest; Parakeet last
GPU_ORDER = ["tiny.en", "large-v3-turbo", "distil-large-v3", "large-v3", "base", "small", "medium", "tiny",
             "parakeet-ctc-0.6b", "parakeet-ctc-1.1b"]
REHEARSAL = ["tiny.en", "tiny", "parakeet-ctc-0.6b"]  # Parakeet shrunk to 2 layers on CPU


def prepare(to: Path, orders: int) -> None:
    """Windows and their real token counts (needs the job extra: soundfile, CTranslate2, tiny.en)."""
    from benchmarks.model_costs import corpus_windows, features, reference_tokens

    windows = corpus_windows(orders=orders)
    tokens = reference_tokens(features(windows, 80), 4)
    width = max(len(a) for a, _ in windows)
    audio = np.zeros((len(windows), width), dtype=np.float16)
    for row, (samples, _) in enumerate(windows):
        audio[row, : len(samples)] = samples
    to.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(to, audio=audio, lengths=np.array([len(a) for a, _ in windows]),
                        speech=np.array([s for _, s in windows]), tokens=np.array(tokens))
    print(f"{len(windows)} windows, {sum(s for _, s in windows):.0f} s of speech, {sum(tokens)} tokens -> {to}")


def load_windows(path: Path, count: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """`count` windows (the file's, repeated as needed) in order of their token counts: audio,
    speech seconds, token counts."""
    data = np.load(path)
    index = np.arange(count) % len(data["lengths"])
    index = index[np.argsort(data["tokens"][index], kind="stable")]  # batches of like lengths: model_costs.by_tokens
    audio = [data["audio"][i, : data["lengths"][i]].astype(np.float32) for i in index]
    return audio, data["speech"][index], data["tokens"][index]


class Session:
    def __init__(self, device: str, dtype: str, batch: int, windows: Path, count: int):
        import torch

        self.torch = torch
        self.device, self.dtype, self.batch = device, getattr(torch, dtype), batch
        self.audio, self.speech, self.tokens = load_windows(windows, count)
        self.features: dict[int, object] = {}

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def build(self, make):
        """A model with random weights, built in place on the device in the measured dtype."""
        torch = self.torch
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                return make().eval()
        finally:
            torch.set_default_dtype(previous)

    def whisper_features(self, mels: int):
        """Log-mel batches, computed once per mel count (untimed: the backend makes them on CPU)."""
        if mels not in self.features:
            from transformers import WhisperFeatureExtractor

            extract = WhisperFeatureExtractor(feature_size=mels)
            feats = extract(self.audio, sampling_rate=16000, return_tensors="pt").input_features
            self.features[mels] = feats.to(self.device, self.dtype)
        return self.features[mels]

    def time_whisper(self, name: str) -> dict:
        from transformers import GenerationMixin, WhisperForConditionalGeneration

        config = whisper_config(name)
        model = self.build(lambda: WhisperForConditionalGeneration(config))
        feats = self.whisper_features(config.num_mel_bins)
        prompt = whisper_prompt(name)
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id

        def run(part: slice) -> tuple[float, float, int]:
            steps = round(statistics.mean(self.tokens[part]))
            ids = self.torch.tensor([prompt] * len(feats[part]), device=self.device)
            with self.torch.inference_mode():
                self.sync()
                started = time.perf_counter()
                encoded = model.model.encoder(feats[part])
                self.sync()
                encoded_at = time.perf_counter()
                out = GenerationMixin.generate(model, encoder_outputs=encoded, decoder_input_ids=ids,
                                               min_new_tokens=steps, max_new_tokens=steps, do_sample=False,
                                               num_beams=1)
                self.sync()
            assert out.shape[1] == len(prompt) + steps, (out.shape, steps)  # the forced length held
            return encoded_at - started, time.perf_counter() - encoded_at, steps * len(feats[part])

        return self._timed(name, run, f"transformers {str(self.dtype).split('.')[-1]}")

    def time_parakeet(self, name: str, layers: int | None = None) -> dict:
        from transformers import ParakeetFeatureExtractor, ParakeetForCTC

        config = parakeet_config(name)
        if layers:
            config.encoder_config.num_hidden_layers = layers
        model = self.build(lambda: ParakeetForCTC(config))
        inputs = ParakeetFeatureExtractor()(self.audio, sampling_rate=16000, return_tensors="pt", padding="longest")
        feats = inputs.input_features.to(self.device, self.dtype)
        mask = inputs.attention_mask.to(self.device)

        def run(part: slice) -> tuple[float, float, int]:
            with self.torch.inference_mode():
                self.sync()
                started = time.perf_counter()
                model(input_features=feats[part], attention_mask=mask[part]).logits.argmax(-1).cpu()
                self.sync()
            return time.perf_counter() - started, 0.0, 0

        return self._timed(name, run, f"transformers {str(self.dtype).split('.')[-1]}")

    def _timed(self, name: str, run, engine: str) -> dict:
        """One warm-up batch, then every window once, batch by batch."""
        parts = [slice(s, s + self.batch) for s in range(0, len(self.audio), self.batch)]
        run(parts[0])
        encode = decode = 0.0
        tokens = 0
        for part in parts:
            e, d, t = run(part)
            encode, decode, tokens = encode + e, decode + d, tokens + t
        speech = float(self.speech.sum())
        torch = self.torch
        return {"seconds_per_speech_second": (encode + decode) / speech, "device": self.device,
                "hardware": torch.cuda.get_device_name(0) if self.device == "cuda" else "CPU (rehearsal)",
                "engine": engine, "batch_size": self.batch, "windows": len(self.audio),
                "speech_seconds": round(speech, 2), "tokens": tokens or None,
                "encode_seconds": round(encode, 4), "decode_seconds": round(decode, 4),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None,
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def measure(args) -> None:
    import torch

    rehearsal = args.cpu_rehearsal
    if not rehearsal and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu-rehearsal to rehearse on CPU")
    session = Session("cpu" if rehearsal else "cuda", "float32" if rehearsal else "float16",
                      args.batch_size, args.windows, args.count)
    names = args.models or (REHEARSAL if rehearsal else GPU_ORDER)
    report = {"kind": "cpu-rehearsal" if rehearsal else "gpu", "command": " ".join(["python3", *sys.argv]),
              "torch": torch.__version__, "models": {}, "skipped": []}
    started = time.perf_counter()
    for name in names:
        if time.perf_counter() - started > args.budget_seconds:  # the lease is short: keep what is measured
            report["skipped"].append(name)
            continue
        clock = time.perf_counter()
        try:
            if name in WHISPER:
                result = session.time_whisper(name)
            else:
                result = session.time_parakeet(name, layers=2 if rehearsal else None)
        except Exception as err:  # noqa: BLE001 - one model failing there must not cost the others' lease
            report.setdefault("failed", {})[name] = f"{type(err).__name__}: {err}"[:500]
            print(name, "failed:", report["failed"][name], flush=True)
            continue
        result["build_and_time_seconds"] = round(time.perf_counter() - clock, 1)
        report["models"][name] = result
        print(name, json.dumps(result), flush=True)
        args.out.write_text(json.dumps(report, indent=2))
        if session.device == "cuda":
            torch.cuda.empty_cache()
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"done in {report['wall_seconds']} s; skipped {report['skipped'] or 'none'} -> {args.out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    prep = sub.add_parser("prepare", help="here: the windows and their real token counts")
    prep.add_argument("--to", type=Path, default=Path(".gpu/windows.npz"))
    prep.add_argument("--orders", type=int, default=4, help="shuffled packings of the clips (3 windows each)")
    run = sub.add_parser("measure", help="there: time every model on the GPU")
    run.add_argument("--windows", type=Path, default=Path(".gpu/windows.npz"))
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--models", nargs="+", choices=[*WHISPER, *PARAKEET])
    run.add_argument("--count", type=int, default=128, help="windows timed per model")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--budget-seconds", type=float, default=360, help="start no model after this")
    run.add_argument("--cpu-rehearsal", action="store_true", help="on CPU, tiny models only")
    args = parser.parse_args()
    if args.action == "prepare":
        prepare(args.to, args.orders)
    else:
        measure(args)


if __name__ == "__main__":
    main()
