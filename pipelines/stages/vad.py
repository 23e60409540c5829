"""Segment: Silero VAD (the ONNX model inside faster-whisper) splits recordings into utterances."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

from schemas.config import VadConfig

ABSORB_GAP_SECONDS = 1.0  # a short span joins a neighbour only across a pause this short


@dataclass(frozen=True)
class Span:
    start: float  # seconds
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def shifted(self, offset: float) -> "Span":
        return Span(self.start + offset, self.end + offset) if offset else self


class Segmenter:
    """Maps 16 kHz mono audio to speech spans of `min_seconds`..`max_seconds`.

    Short gaps are bridged and short spans merged into neighbours, so a clip that is all
    speech stays one segment. Spans still under `min_seconds` are returned separately so the
    caller can record them as rejects rather than lose them.
    """

    def __init__(self, config: VadConfig):
        self.config = config
        self.options = VadOptions(
            threshold=config.threshold,
            min_silence_duration_ms=config.min_silence_ms,
            speech_pad_ms=config.pad_ms,
            max_speech_duration_s=config.max_seconds,
            min_speech_duration_ms=250,
        )

    def setup(self) -> None:
        get_vad_model()  # load once per worker, not per file

    def __call__(self, audio16k: np.ndarray) -> tuple[list[Span], list[Span]]:
        duration = len(audio16k) / 16000
        stamps = get_speech_timestamps(audio16k, self.options, sampling_rate=16000)
        spans = [Span(max(0.0, s["start"] / 16000), min(duration, s["end"] / 16000)) for s in stamps]
        spans = self._merge(spans, self.config.merge_gap_seconds)
        spans = self._absorb_short(spans)
        kept = [s for s in spans if s.seconds >= self.config.min_seconds]
        short = [s for s in spans if s.seconds < self.config.min_seconds]
        return kept, short

    def _merge(self, spans: list[Span], max_gap: float) -> list[Span]:
        merged: list[Span] = []
        for span in spans:
            last = merged[-1] if merged else None
            if last and span.start - last.end <= max_gap and span.end - last.start <= self.config.max_seconds:
                merged[-1] = Span(last.start, span.end)
            else:
                merged.append(span)
        return merged

    def _absorb_short(self, spans: list[Span]) -> list[Span]:
        """Join a too-short span to the nearer neighbour when the result still fits."""
        out = list(spans)
        i = 0
        while i < len(out):
            if out[i].seconds >= self.config.min_seconds or len(out) == 1:
                i += 1
                continue
            joined = self._join_with_neighbour(out, i)
            if joined is None:
                i += 1
        return out

    def _join_with_neighbour(self, spans: list[Span], i: int) -> int | None:
        candidates = []
        if i > 0:
            candidates.append((spans[i].start - spans[i - 1].end, i - 1))
        if i + 1 < len(spans):
            candidates.append((spans[i + 1].start - spans[i].end, i))
        for gap, left in sorted(candidates):
            if gap > ABSORB_GAP_SECONDS:
                break
            joined = Span(spans[left].start, spans[left + 1].end)
            if joined.seconds <= self.config.max_seconds:
                spans[left : left + 2] = [joined]
                return left
        return None
