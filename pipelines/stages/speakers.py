"""Speakers within one recording: who speaks in each VAD segment, and segments split where the
speaker changes, so that each sample holds one voice.

Each segment is covered by 1.6 s GE2E windows (`speakers.hop_seconds` apart). All the windows of a
recording are clustered together (average linkage on cosine distance, cut at
`speakers.same_speaker_similarity`), so a speaker who comes back later in the file keeps their
label. A lone window that disagrees with both neighbours is taken as noise. Where a segment's
labels change, the boundary is placed where the windows' similarity to the two speakers crosses
over, interpolated between window centres, which is finer than the hop.

Labels are per recording (per decoded excerpt for files cut into several units): `spk0` is the first
voice heard. Linking speakers across recordings is not done here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pipelines.metrics.speaker import FRAME_HOP, RATE, WINDOW_FRAMES, SpeakerEncoder, mel_frames, unit, window_starts
from pipelines.stages.vad import Span
from schemas.config import SpeakersConfig

WINDOW_SECONDS = WINDOW_FRAMES * FRAME_HOP / RATE
MAX_WINDOWS = 4000  # windows clustered at once per recording: the linkage's memory grows with the square
PROBE_SECONDS = 60.0  # speech embedded and clustered to time one window (~1 s on one core)


@dataclass
class SpeakerTurn:
    """One piece of a VAD segment spoken by one speaker."""

    span: Span
    speaker: int  # 0 = the recording's first voice
    purity: float  # share of the piece's windows whose own label is its speaker (1.0: one voice throughout)
    embedding: np.ndarray  # unit-length mean of its windows' embeddings


@dataclass
class _Windows:
    span_index: np.ndarray  # which segment each window belongs to
    centres: np.ndarray  # seconds, in the recording's time
    embeddings: np.ndarray  # (n, 256)


class SpeakerSplitter:
    """VAD spans of one recording in; one-speaker turns out, in time order."""

    def __init__(self, config: SpeakersConfig, encoder: Optional[SpeakerEncoder] = None):
        self.config = config
        self.encoder = encoder or SpeakerEncoder(config.device)

    def __call__(self, audio: np.ndarray, spans: Sequence[Span]) -> list[SpeakerTurn]:
        """`audio`: the recording at 16 kHz; `spans`: its speech segments, in seconds of `audio`."""
        if not spans:
            return []
        windows = self._windows(audio, spans)
        context = _in_context(windows.embeddings, windows.span_index)
        labels = _cluster(context, self.config.same_speaker_similarity)
        labels = _absorb_brief(labels, context, self.config.min_speaker_seconds / self._hop(spans))
        turns: list[SpeakerTurn] = []
        for i, span in enumerate(spans):
            mine = np.flatnonzero(windows.span_index == i)
            turns.extend(self._turns(span, windows, mine, labels))
        return turns

    def _hop(self, spans: Sequence[Span]) -> float:
        return _recording_hop(self.config, sum(s.seconds for s in spans))

    def _windows(self, audio: np.ndarray, spans: Sequence[Span]) -> _Windows:
        hop = self._hop(spans)
        index, centres, embeddings = [], [], []
        for i, span in enumerate(spans):
            samples = audio[round(span.start * RATE): round(span.end * RATE)]
            starts, embeds = self.encoder.windows(samples, hop)
            half = min(WINDOW_SECONDS, span.seconds) / 2
            index.extend([i] * len(starts))
            centres.extend(span.start + starts + half)
            embeddings.append(embeds)
        return _Windows(np.asarray(index), np.asarray(centres), np.concatenate(embeddings))

    def _turns(self, span: Span, windows: _Windows, mine: np.ndarray, labels: np.ndarray) -> list[SpeakerTurn]:
        raw = labels[mine]
        smooth = _smoothed(raw)
        cuts = [span.start]
        for k in np.flatnonzero(smooth[1:] != smooth[:-1]):
            cuts.append(self._boundary(windows, mine, labels, k, smooth))
        cuts.append(span.end)
        turns, first = [], 0
        for start, end in zip(cuts, cuts[1:]):
            last = first + 1
            while last < len(smooth) and smooth[last] == smooth[first]:
                last += 1
            speaker = int(smooth[first])
            purity = float(np.mean(raw[first:last] == speaker))
            embedding = unit(windows.embeddings[mine[first:last]].mean(axis=0))
            turns.append(SpeakerTurn(Span(start, end), speaker, round(purity, 3), embedding))
            first = last
        return _merged_short(turns, self.config.min_turn_seconds)

    def _boundary(self, windows: _Windows, mine: np.ndarray, labels: np.ndarray, k: int,
                  smooth: np.ndarray) -> float:
        """Where speaker smooth[k] hands over to smooth[k+1]: the crossing of the windows' similarity
        to the two speakers' centroids, interpolated between the two window centres around it."""
        before, after = int(smooth[k]), int(smooth[k + 1])
        centroid_a = unit(windows.embeddings[labels == before].mean(axis=0))
        centroid_b = unit(windows.embeddings[labels == after].mean(axis=0))
        lean = windows.embeddings[mine] @ centroid_a - windows.embeddings[mine] @ centroid_b
        centres = windows.centres[mine]
        d0, d1 = lean[k], lean[k + 1]
        if d0 > 0 > d1:
            return float(centres[k] + (centres[k + 1] - centres[k]) * d0 / (d0 - d1))
        return float((centres[k] + centres[k + 1]) / 2)


def _recording_hop(config: SpeakersConfig, speech_seconds: float) -> float:
    """The configured hop, widened for a recording so long its windows would pass `MAX_WINDOWS`."""
    return max(config.hop_seconds, speech_seconds / MAX_WINDOWS)


def speaker_windows(config: SpeakersConfig, speech: Sequence[np.ndarray]) -> int:
    """Windows the splitter embeds for these 16 kHz segments, taken as one recording's: the stage's
    cost follows them (`voxmill plan` prices it per window, as it prices DNSMOS)."""
    hop = _recording_hop(config, sum(len(a) for a in speech) / RATE)
    return sum(len(window_starts(mel_frames(len(a)), hop)) for a in speech)


def speaker_window_seconds(config: SpeakersConfig, encoder: Optional[SpeakerEncoder] = None) -> float:
    """Seconds one window costs on one core: the mel, the encoder and the clustering of a minute of
    speech in 10 s segments, timed after a first pass that loads the weights. A constant of the
    machine; the plan multiplies it by the input's windows per second (`speaker_windows`)."""
    splitter = SpeakerSplitter(config, encoder)
    audio = np.random.default_rng(0).normal(0.0, 0.05, round(PROBE_SECONDS * RATE)).astype(np.float32)
    spans = [Span(t, t + 10.0) for t in np.arange(0.0, PROBE_SECONDS, 10.0)]
    splitter(audio[: 2 * RATE], [Span(0.0, 2.0)])  # the weights load and the first batch allocates
    started = time.perf_counter()
    splitter(audio, spans)
    seconds = time.perf_counter() - started
    return seconds / speaker_windows(config, [audio[round(s.start * RATE): round(s.end * RATE)] for s in spans])


def _cluster(embeddings: np.ndarray, same_speaker: float) -> np.ndarray:
    """Speaker labels 0, 1, ... in order of first appearance."""
    if len(embeddings) == 1:
        return np.zeros(1, dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    found = fcluster(tree, t=1.0 - same_speaker, criterion="distance")
    return _by_first_appearance(found)


def _by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """The same grouping, numbered 0, 1, ... in the order the labels are first met."""
    order = {label: n for n, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.asarray([order[label] for label in labels.tolist()])


def _in_context(embeddings: np.ndarray, span_index: np.ndarray) -> np.ndarray:
    """Each window's embedding averaged with its neighbours in the same segment: 1.6 s says little
    about a voice on its own, 2.4 s of context clusters far more steadily."""
    out = embeddings.copy()
    for i in range(len(embeddings)):
        near = [j for j in (i - 1, i, i + 1) if 0 <= j < len(embeddings) and span_index[j] == span_index[i]]
        out[i] = unit(embeddings[near].mean(axis=0))
    return out


def _absorb_brief(labels: np.ndarray, embeddings: np.ndarray, min_windows: float) -> np.ndarray:
    """Clusters of fewer than `min_windows` windows are not taken as speakers (a cough, a laugh, noise):
    their windows join the most similar remaining cluster. Labels are renumbered by first appearance."""
    counts = np.bincount(labels)
    keep = [k for k in range(len(counts)) if counts[k] >= min_windows]
    if not keep or len(keep) == len(counts):
        return labels
    centroids = np.stack([unit(embeddings[labels == k].mean(axis=0)) for k in keep])
    out = labels.copy()
    brief = ~np.isin(labels, keep)
    out[brief] = np.asarray(keep)[np.argmax(embeddings[brief] @ centroids.T, axis=1)]
    return _by_first_appearance(out)


def _smoothed(labels: np.ndarray) -> np.ndarray:
    """A window whose label differs from both neighbours (which agree) takes theirs."""
    out = labels.copy()
    for i in range(1, len(labels) - 1):
        if labels[i - 1] == labels[i + 1] != labels[i]:
            out[i] = labels[i - 1]
    return out


def _merged_short(turns: list[SpeakerTurn], min_seconds: float) -> list[SpeakerTurn]:
    """Turns shorter than `min_seconds` join their longer neighbour (a short turn is too little to
    tell a voice by, and too short a sample to train on)."""
    while len(turns) > 1:
        shortest = min(range(len(turns)), key=lambda i: turns[i].span.seconds)
        if turns[shortest].span.seconds >= min_seconds:
            break
        left = turns[shortest - 1] if shortest > 0 else None
        right = turns[shortest + 1] if shortest + 1 < len(turns) else None
        into = shortest - 1 if right is None or (left and left.span.seconds >= right.span.seconds) else shortest + 1
        a, b = sorted((shortest, into))
        keep = turns[into]
        turns[a: b + 1] = [SpeakerTurn(Span(turns[a].span.start, turns[b].span.end), keep.speaker,
                                       round(keep.purity * keep.span.seconds / (turns[b].span.end - turns[a].span.start), 3),
                                       keep.embedding)]
    return turns
