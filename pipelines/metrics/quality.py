"""Quality: per-segment scores (DNSMOS, SNR, clipping, loudness, content hash) and the filters on them.

Acoustic scores are computed in the prep task, where the segment audio already exists (no second
decode, nothing extra crosses Ray); text scores and every filter run at commit, where the
transcript meets them. A filter drops a segment into `rejects/` with the metric, its value and
the threshold, so nothing is lost silently and a looser threshold can be re-applied from the index.
"""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Optional, Sequence

import numpy as np

from schemas.config import QualityConfig

RATE = 16000  # DNSMOS, SNR and loudness read the 16 kHz segments the ASR actors get
DNSMOS_WINDOW = 144160  # samples the P.835 model reads (9.01 s at 16 kHz)
DNSMOS_BATCH = 64  # windows per model call: ~37 MB of input, whatever the unit's length
# The DNS Challenge's polynomial mapping from the P.835 model's raw outputs to MOS (the same
# coefficients speechmos and Microsoft's dnsmos_local.py apply for the non-personalised model).
SIG_POLY = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
BAK_POLY = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
OVRL_POLY = np.poly1d([-0.06766283, 1.11546468, 0.04602535])
SNR_FRAME = 400  # 25 ms frames, 10 ms hop: the usual short-time analysis for speech
SNR_HOP = 160
CLIP_TOLERANCE = 1e-3  # a sample within this (relative) of the segment's peak sits on the plateau
POWER_FLOOR = 1e-10  # -100 dBFS: digital silence must not turn an SNR into infinity
SCORE_NAMES = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "snr_db", "clipping", "loudness_lufs")


def dnsmos_model_path() -> str:
    """The DNSMOS P.835 ONNX model shipped in the `speechmos` package.

    Its own `speechmos.dnsmos` module is not used: it imports librosa at module load (only for
    the P.808 model, which we do not need) and scores one 9 s window per onnxruntime call; this
    module batches windows across a unit's segments instead.
    """
    return str(resources.files("speechmos") / "dnsmos_models" / "sig_bak_ovr.onnx")


class OnnxDnsmos:
    """The P.835 graph on onnxruntime: on the CPU, or CUDA where onnxruntime-gpu is installed."""

    def __init__(self) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no per-session warnings in every prep task's log
        options.intra_op_num_threads = 1  # a prep task holds one CPU; more threads only oversubscribe
        try:
            self.session = ort.InferenceSession(dnsmos_model_path(), options, providers=providers)
        except Exception:  # noqa: BLE001 - a CUDA build without a visible GPU: the CPU still works
            self.session = ort.InferenceSession(dnsmos_model_path(), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Raw (sig, bak, ovrl) per [n, DNSMOS_WINDOW] float32 row."""
        return self.session.run(None, {self.input_name: windows})[0]


class TorchDnsmos:
    """The same ONNX graph converted to torch (onnx2torch) and run on a torch device.

    onnxruntime's CUDA build is a separate, large package that cannot share a machine with the
    CPU one; torch is already in every voxmill install, so on a GPU the scorer runs there. Its raw
    scores match onnxruntime's to about 0.01 (float32 kernels differ); scores are rounded to 3
    decimals, and one machine always picks the same backend, so a resumed unit repeats them."""

    # Windows per torch call. The graph's activations take ~0.14 GiB of GPU memory per window
    # (64 windows: 8.9 GiB; 8: 1.1 GiB, on an H100), and every prep task on a GPU holds its own;
    # 8 windows run within 20% of the fastest batch (0.85 ms against 0.68 ms a window).
    CHUNK = 8

    def __init__(self, device: str = "cuda") -> None:
        import warnings

        import torch
        from onnx2torch import convert

        # onnx2torch's Slice indexes with a list, which torch deprecates: noise in every prep log
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        self.torch = torch
        self.device = device
        self.model = convert(dnsmos_model_path()).eval().to(device)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return np.concatenate([
                self.model(self.torch.from_numpy(windows[i : i + self.CHUNK]).to(self.device)).float().cpu().numpy()
                for i in range(0, len(windows), self.CHUNK)
            ])


def dnsmos_backend(device: str):
    """The runner `quality.dnsmos_device` asks for; auto takes the GPU when torch sees one and
    onnx2torch is installed, else onnxruntime on the CPU."""
    if device == "cpu":
        return OnnxDnsmos()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("quality.dnsmos_device is cuda, but this worker sees no CUDA GPU")
        return TorchDnsmos("cuda")
    try:
        import torch

        if torch.cuda.is_available():
            return TorchDnsmos("cuda")
    except ImportError:  # onnx2torch is the `gpu` extra: without it the CPU path still scores
        pass
    return OnnxDnsmos()


class QualityScorer:
    """Acoustic scores for a batch of 16 kHz segments; the DNSMOS model loads once per worker."""

    def __init__(self, config: QualityConfig):
        self.config = config
        self.runner = None
        self._meters: dict[int, object] = {}

    def setup(self) -> None:
        self.runner = dnsmos_backend(self.config.dnsmos_device)
        self.warm_up()

    def score(self, speech: Sequence[np.ndarray]) -> list[dict[str, Optional[float]]]:
        """One dict of SCORE_NAMES per 16 kHz float32 segment.

        Scores are rounded (3 decimals; clipping 6) so that float noise (another batch layout,
        an accelerator) almost never reaches a sample's JSON; a resumed unit repeats the same
        batches anyway, so its output stays byte-identical.
        (The prep task measures clipping again on the decoded-rate audio, where clipped tops
        are still flat; resampling rings around them.)"""
        if self.runner is None:
            self.setup()
        mos = self.dnsmos(speech)
        return [
            {
                "dnsmos_sig": _round(sig), "dnsmos_bak": _round(bak), "dnsmos_ovrl": _round(ovrl),
                "snr_db": _round(snr_db(audio)),
                "clipping": _round(clipping_ratio(audio), 6),
                "loudness_lufs": _round(self.loudness(audio, RATE)),
            }
            for (sig, bak, ovrl), audio in zip(mos, speech, strict=True)
        ]

    def dnsmos(self, speech: Sequence[np.ndarray]) -> list[tuple[float, float, float]]:
        """(sig, bak, ovrl) per segment: every 9.01 s window of every segment in a few batched calls,
        then each segment's windows averaged, as the reference scorer does one by one. Windows are
        cut per batch, so memory stays at one batch however many short (tiled) segments a unit has."""
        windows = [(i, start) for i, audio in enumerate(speech) for start in self.window_starts(len(audio))]
        raw = np.zeros((len(windows), 3), dtype=np.float64)
        for first in range(0, len(windows), DNSMOS_BATCH):
            batch = np.stack([dnsmos_window(speech[i], start) for i, start in windows[first : first + DNSMOS_BATCH]])
            raw[first : first + len(batch)] = self.runner(batch)
        owners = np.asarray([i for i, _ in windows], dtype=np.int64)
        scores = []
        for i in range(len(speech)):
            mean = raw[owners == i].mean(axis=0)
            scores.append((float(SIG_POLY(mean[0])), float(BAK_POLY(mean[1])), float(OVRL_POLY(mean[2]))))
        return scores

    def window_starts(self, samples: int) -> list[int]:
        """Where this config's DNSMOS windows start in a segment of `samples` (see QualityConfig)."""
        if self.config.dnsmos_windows == "cover":
            return cover_starts(samples)
        return window_starts(samples, round(self.config.dnsmos_hop_seconds * RATE))

    def warm_up(self) -> None:
        """Score two seconds of quiet noise once: the first onnxruntime run and the first loudness
        meter cost about a second more, which no unit should be billed for (calibration's few
        small units would be priced 20-30% dear)."""
        noise = np.random.default_rng(0).normal(0.0, 0.01, 2 * RATE).astype(np.float32)
        self.score([noise])

    def loudness(self, audio: np.ndarray, rate: int) -> Optional[float]:
        """Integrated loudness (ITU-R BS.1770-4, LUFS); None when the segment is shorter than one
        400 ms gating block or is digital silence.

        Audio whose every block is under BS.1770's absolute gate (-70 LUFS) has no integrated
        loudness by the standard; it is measured here with the relative gate only (the audio
        turned up to a 0 dBFS peak, measured, and the gain taken off again: the relative gate
        does not move with level). Otherwise the quietest audio had no score and passed the
        min_loudness_lufs floor it fails most (issue 16: speech at -60 dBFS peak reads -75 LUFS)."""
        import pyloudnorm

        meter = self._meters.get(rate)
        if meter is None:
            meter = self._meters[rate] = pyloudnorm.Meter(rate)
        if len(audio) < int(0.4 * rate) + 1:
            return None
        audio = np.asarray(audio, dtype=np.float64)
        loudness = _finite(meter.integrated_loudness(audio))
        peak = float(np.abs(audio).max())
        if loudness is not None or peak <= 0.0:
            return loudness
        raised = _finite(meter.integrated_loudness(audio / peak))
        return None if raised is None else raised + 20 * math.log10(peak)


def window_starts(samples: int, hop: int) -> list[int]:
    """Where the reference scorer's windows start (Microsoft's dnsmos_local.py, which speechmos
    follows): audio under 9.01 s is doubled until it is that long (`dnsmos_window`), then windows
    start every hop while the window count `floor(seconds) - 9.01` allows and the window fits."""
    if samples == 0:
        raise ValueError("empty segment")
    length = _tiled_length(samples)
    count = int((math.floor(length / RATE) - DNSMOS_WINDOW / RATE) / (hop / RATE)) + 1
    return [i * hop for i in range(count) if i * hop + DNSMOS_WINDOW <= length]


def cover_starts(samples: int) -> list[int]:
    """Few windows that cover a segment: one for a segment up to 9.01 s (of its doubled audio, as
    the reference pads), else ceil((length - 9.01 s) / 4.5 s) + 1 spread evenly from start to end,
    so neighbouring windows overlap by at least half.

    The reference's 1 s hop reads a 1.5 s segment 3 times and an 8 s one 7 times (after
    doubling), so its cost per second swings 18x with segment length; covering reads every
    sample once or twice, about 3x fewer windows on VAD segments, at the same mean score
    within a few hundredths of a MOS point (benchmarks/quality.py)."""
    if samples == 0:
        raise ValueError("empty segment")
    if samples <= DNSMOS_WINDOW:
        return [0]
    count = math.ceil((samples - DNSMOS_WINDOW) / (DNSMOS_WINDOW // 2)) + 1
    return [round(i * (samples - DNSMOS_WINDOW) / (count - 1)) for i in range(count)]


def dnsmos_window(audio: np.ndarray, start: int) -> np.ndarray:
    """One float32 window of DNSMOS_WINDOW samples from `start` (of the doubled audio when short)."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < DNSMOS_WINDOW:
        audio = np.tile(audio, _tiled_length(len(audio)) // len(audio))
    return audio[start : start + DNSMOS_WINDOW]


def _tiled_length(samples: int) -> int:
    while samples < DNSMOS_WINDOW:
        samples *= 2
    return samples


def snr_db(audio: np.ndarray) -> Optional[float]:
    """A blind SNR estimate (NIST STNR style): the loud frames' power (95th percentile of 25 ms
    frame powers) over the noise floor (their 5th percentile). VAD segments keep pauses and
    200 ms of padding, so the quiet frames hear the background. Capped at 100 dB (digital silence)."""
    audio = np.asarray(audio, dtype=np.float64)
    if len(audio) < SNR_FRAME:
        return None
    frames = np.lib.stride_tricks.sliding_window_view(audio, SNR_FRAME)[::SNR_HOP]
    power = np.maximum((frames**2).mean(axis=1), POWER_FLOOR)
    level = 10 * np.log10(power)
    return float(min(100.0, np.percentile(level, 95) - np.percentile(level, 5)))


def clipping_ratio(audio: np.ndarray) -> float:
    """Share of samples on the segment's peak plateau (within CLIP_TOLERANCE of its peak).

    Measured against the segment's own peak, not full scale, so audio clipped first and turned
    down later still shows its flat tops; clean speech touches its peak in a handful of samples."""
    magnitude = np.abs(np.asarray(audio, dtype=np.float32))
    peak = float(magnitude.max()) if len(magnitude) else 0.0
    if peak <= 0.0:
        return 0.0
    on_plateau = int(np.count_nonzero(magnitude >= peak * (1 - CLIP_TOLERANCE)))
    return on_plateau / len(magnitude) if on_plateau > 1 else 0.0


def audio_hash(encoded: bytes) -> str:
    """Hex content hash of a sample's stored audio (`KEY.flac`/`KEY.wav`): users can recompute it
    from the shard, and byte-identical audio (the same file under two names) shares it."""
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def normalise_text(text: str) -> str:
    """Lower case, NFKC, punctuation and symbols gone, whitespace collapsed: the text that the
    speech rate counts and the near-duplicate check compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(c if unicodedata.category(c)[0] in "LNM" or c == "'" else " " for c in text)
    return " ".join(kept.split())


def chars_per_second(text: str, seconds: float) -> Optional[float]:
    """Spoken characters (letters and digits of the normalised text, no spaces) per second."""
    if seconds <= 0:
        return None
    return len(re.sub(r"[\s']", "", normalise_text(text))) / seconds


@dataclass(frozen=True)
class Verdict:
    """Why a filter drops a segment: the metric, its value, and the threshold it crossed."""

    metric: str
    value: Optional[float]  # None for a categorical metric (language)
    threshold: Optional[float]
    reason: str


def _bound(metric: str, value: float, threshold: float, op: str) -> Verdict:
    return Verdict(metric, value, threshold, f"{metric} {_fmt(value)} {op} {_fmt(threshold)}")


# (metric, config field of the minimum, config field of the maximum), checked in this order: the
# first failing one names the reject, so the same row always gets the same reason.
BOUNDS = (
    ("dnsmos_ovrl", "min_dnsmos_ovrl", None),
    ("dnsmos_sig", "min_dnsmos_sig", None),
    ("dnsmos_bak", "min_dnsmos_bak", None),
    ("snr_db", "min_snr_db", None),
    ("clipping", None, "max_clipping"),
    ("loudness_lufs", "min_loudness_lufs", "max_loudness_lufs"),
    ("chars_per_second", "min_chars_per_second", "max_chars_per_second"),
    ("no_speech_prob", None, "max_no_speech_prob"),  # Whisper's rule, with avg_logprob: see no_speech
    ("avg_logprob", "min_avg_logprob", None),
    ("language_prob", "min_language_prob", None),
)


def verdict(config: QualityConfig, row: dict) -> Optional[Verdict]:
    """The first threshold `row` (an index row with its scores) crosses, or None to keep it.

    A missing score (e.g. loudness of a sub-400 ms segment) passes: a filter drops only what it
    measured. Values are compared as the float32 the index stores, so a user who filters the
    index again with the same threshold gets the same rows."""
    for metric, low, high in BOUNDS:
        value = _measured(row, metric)
        if value is None:
            continue
        if metric == "no_speech_prob":
            failed = no_speech(config, value, _measured(row, "avg_logprob"))
            if failed:
                return failed
            continue
        minimum = getattr(config, low) if low else None
        maximum = getattr(config, high) if high else None
        if minimum is not None and value < minimum:
            return _bound(metric, value, minimum, "<")
        if maximum is not None and value > maximum:
            return _bound(metric, value, maximum, ">")
    if config.languages is not None and row.get("language") not in config.languages:
        allowed = ", ".join(config.languages)
        return Verdict("language", None, None, f"language {row.get('language')} not in [{allowed}]")
    return None


def no_speech(config: QualityConfig, no_speech_prob: float, avg_logprob: Optional[float]) -> Optional[Verdict]:
    """Whisper's own no-speech rule: a decode is silence only when the model thinks so
    (no_speech_prob > max_no_speech_prob) AND its words are unsure (avg_logprob <
    min_avg_logprob); faster-whisper skips a window on exactly that pair (0.6 and -1.0). A high
    no_speech_prob with confident words is speech: tiny.en gives windows of clear espeak-ng
    sentences up to 0.55, and one clear word decoded alone ("London.") 0.62 at avg_logprob -0.42
    (benchmarks/filters.py), so the probability alone drops speech. With min_avg_logprob
    null the probability decides alone, as in Whisper with no log_prob_threshold. A segment that
    shared a packed window has no no_speech_prob of its own (None, see `AsrResult`) and is never
    dropped by this rule; its avg_logprob still has its own filter.

    Checked before the avg_logprob floor, so a reject that fails both is named "no speech"."""
    threshold = config.max_no_speech_prob
    if threshold is None or no_speech_prob <= threshold:
        return None
    reason = f"no speech: no_speech_prob {_fmt(no_speech_prob)} > {_fmt(threshold)}"
    floor = config.min_avg_logprob
    if floor is not None:
        if avg_logprob is None or avg_logprob >= floor:
            return None
        reason += f" and avg_logprob {_fmt(avg_logprob)} < {_fmt(floor)}"
    return Verdict("no_speech_prob", no_speech_prob, threshold, reason)


def _measured(row: dict, metric: str) -> Optional[float]:
    """The row's value as the float32 the index stores, or None when not measured."""
    value = row.get(metric)
    if value is None or not math.isfinite(value):
        return None
    return float(np.float32(value))


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _round(value: Optional[float], digits: int = 3) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def _finite(value: float) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None
