"""DNSMOS P.835 (speech signal, background, overall MOS): the ONNX model shipped in `speechmos`, on
onnxruntime or converted to torch for a GPU, and the 9.01 s windows it reads of each segment.

A unit's windows are scored in a few batched model calls (`scores`), then averaged per segment as
the reference scorer does one by one.
"""
from __future__ import annotations

import math
from importlib import resources
from typing import Callable, Sequence

import numpy as np

from pipelines.metrics.signal import RATE

DNSMOS_WINDOW = 144160  # samples the P.835 model reads (9.01 s at 16 kHz)
DNSMOS_BATCH = 64  # windows per model call: ~37 MB of input, whatever the unit's length
# The DNS Challenge's polynomial mapping from the P.835 model's raw outputs to MOS (the same
# coefficients speechmos and Microsoft's dnsmos_local.py apply for the non-personalised model).
SIG_POLY = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
BAK_POLY = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
OVRL_POLY = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


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


def scores(runner: Callable[[np.ndarray], np.ndarray], speech: Sequence[np.ndarray],
           starts: Callable[[int], list[int]]) -> list[tuple[float, float, float]]:
    """(sig, bak, ovrl) per segment: every window (`starts(samples)`) of every segment in a few
    batched `runner` calls, then each segment's windows averaged, as the reference scorer does one
    by one. Windows are cut per batch, so memory stays at one batch however many short (tiled)
    segments a unit has."""
    windows = [(i, start) for i, audio in enumerate(speech) for start in starts(len(audio))]
    raw = np.zeros((len(windows), 3), dtype=np.float64)
    for first in range(0, len(windows), DNSMOS_BATCH):
        batch = np.stack([dnsmos_window(speech[i], start) for i, start in windows[first : first + DNSMOS_BATCH]])
        raw[first : first + len(batch)] = runner(batch)
    owners = np.asarray([i for i, _ in windows], dtype=np.int64)
    found = []
    for i in range(len(speech)):
        mean = raw[owners == i].mean(axis=0)
        found.append((float(SIG_POLY(mean[0])), float(BAK_POLY(mean[1])), float(OVRL_POLY(mean[2]))))
    return found


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
