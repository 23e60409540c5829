"""Signal measures of one segment: blind SNR, clipping, loudness (BS.1770), and the content hash
of its stored audio."""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import numpy as np

RATE = 16000  # DNSMOS, SNR and loudness read the 16 kHz segments the ASR actors get
SNR_FRAME = 400  # 25 ms frames, 10 ms hop: the usual short-time analysis for speech
SNR_HOP = 160
CLIP_TOLERANCE = 1e-3  # a sample within this (relative) of the segment's peak sits on the plateau
POWER_FLOOR = 1e-10  # -100 dBFS: digital silence must not turn an SNR into infinity


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


class Loudness:
    """Integrated loudness (ITU-R BS.1770-4, LUFS), with one pyloudnorm meter per sample rate."""

    def __init__(self) -> None:
        self._meters: dict[int, object] = {}

    def __call__(self, audio: np.ndarray, rate: int) -> Optional[float]:
        """None when the segment is shorter than one 400 ms gating block or is digital silence.

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


def audio_hash(encoded: bytes) -> str:
    """Hex content hash of a sample's stored audio (`KEY.flac`/`KEY.wav`): users can recompute it
    from the shard, and byte-identical audio (the same file under two names) shares it."""
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def _finite(value: float) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None
