"""Pack short speech segments into shared 30 s Whisper windows, and split the words back.

Whisper's encoder always reads 30 s. A 6 s VAD segment padded to 30 s wastes four fifths
of that pass, which dominates ASR time on a CPU. Packing several segments (with a silent
gap between them) into one window, then giving each word to the segment its aligned time
falls in, transcribes the same speech with a fraction of the encoder passes. A word that
lands in a gap, or a segment that gets no words, is not guessed at: the caller decodes
those segments on their own.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Placed:
    """A segment's place inside a window, in seconds from the window start."""

    index: int  # position in the caller's list of segments
    start: float
    end: float

    def distance(self, t: float) -> float:
        return max(self.start - t, t - self.end, 0.0)

    def overlap(self, start: float, end: float) -> float:
        return max(0.0, min(end, self.end) - max(start, self.start))


@dataclass
class Window:
    placed: list[Placed] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.placed[-1].end if self.placed else 0.0


def pack_windows(lengths: Sequence[float], capacity: float, gap: float, open_windows: int = 1) -> list[Window]:
    """First fit, in input order, over the last `open_windows` windows (neighbouring segments usually
    share a speaker and topic, so they stay close). With one open window, a segment that does not
    fit closes the window and leaves its tail empty; with three, a later short segment fills it:
    15% fewer windows on the 2-hour peers corpus, WER unchanged (benchmarks/RESULTS.md)."""
    windows: list[Window] = []
    for index, seconds in enumerate(lengths):
        for window in windows[-open_windows:]:
            start = window.end + gap
            if start + seconds <= capacity:
                window.placed.append(Placed(index, start, start + seconds))
                break
        else:
            windows.append(Window([Placed(index, 0.0, seconds)]))
    return windows


def window_audio(window: Window, audios: Sequence[np.ndarray], rate: int) -> np.ndarray:
    """The segments' samples laid out at their placed times, silence between them."""
    out = np.zeros(round(window.end * rate), dtype=np.float32)
    for place in window.placed:
        samples = audios[place.index]
        at = round(place.start * rate)
        out[at : at + len(samples)] = samples[: len(out) - at]
    return out


@dataclass
class Split:
    words: dict[int, list[dict]]  # segment index -> aligned words (faster-whisper dicts)
    unresolved: set[int]  # segments to decode on their own
    reasons: Counter = field(default_factory=Counter)  # why, for the counts plans and runs report

    def unresolve(self, indices, reason: str) -> None:
        new = set(indices) - self.unresolved
        self.unresolved |= new
        self.reasons[reason] += len(new)


def split_words(window: Window, words: Sequence[dict], slack: float, beside_empty: bool = True,
                across_gap: bool = True) -> Split:
    """Give each aligned word to the segment holding its midpoint.

    Punctuation follows the word before it. A word whose midpoint is more than `slack`
    seconds from every segment makes the two nearest segments unresolved; so does a
    segment that receives no words (the decoder may have stopped early, or its words drifted
    into a neighbour), together with its neighbours in the window.
    """
    split = Split({p.index: [] for p in window.placed}, set())
    previous: int | None = None
    for word in words:
        if not any(ch.isalnum() for ch in word["word"]):
            if previous is not None:
                split.words[previous].append(word)
            continue
        middle = (word["start"] + word["end"]) / 2
        ranked = sorted(window.placed, key=lambda p: p.distance(middle))
        if ranked[0].distance(middle) > slack:
            split.unresolve((p.index for p in ranked[:2]), "stray_word")
        spanned = [p.index for p in window.placed if p.overlap(word["start"], word["end"]) > slack]
        if across_gap and len(spanned) > 1:  # one "word" across a gap: the alignment failed there
            split.unresolve(spanned, "word_across_gap")
        previous = ranked[0].index
        split.words[previous].append(word)
    empty = [n for n, p in enumerate(window.placed) if not split.words[p.index]]
    split.unresolve((window.placed[n].index for n in empty), "no_words")
    # an empty segment's words usually went to a neighbour (the alignment drifted by more than
    # the gap): those neighbours' texts are suspect too, so they are decoded again as well
    neighbours = {m for n in empty for m in (n - 1, n + 1) if beside_empty and 0 <= m < len(window.placed)}
    split.unresolve((window.placed[m].index for m in sorted(neighbours)), "beside_empty")
    return split


def words_text(words: Sequence[dict]) -> str:
    return "".join(w["word"] for w in words).strip()


def words_logprob(words: Sequence[dict]) -> float:
    """Mean log-probability per token, from the per-word mean token probabilities."""
    tokens = sum(len(w["tokens"]) for w in words)
    total = sum(len(w["tokens"]) * float(np.log(max(w["probability"], 1e-10))) for w in words)
    return total / tokens if tokens else 0.0

