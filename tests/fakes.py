"""A fake ASR backend for the tests that are not about ASR: `asr.backend: "tests.fakes:FakeAsr"`.

It implements `pipelines.asr.base.AsrBackend` without a model: each segment's transcript is a
pure function of its audio (English-looking words, two a second, at least one, chosen by a hash
of the samples), so a job's output is as deterministic as with Whisper, every segment has text
and a plausible speech rate (the quality filters keep it), and equal audio gives equal text.
Batches go through the ASR journal as the real backend's do (same tags, one per `batch_size`
segments), so the resume and crash tests still exercise it.

The ASR actor imports it by name (`pipelines.asr.base.backend_class`), so `tests` must be
importable wherever a job runs. A local Ray's workers start in the driver's working directory
with it on their path, which covers pytest run from the checkout, but not a child `voxmill`
(its console script puts its own folder first) nor a `ray start` cluster. So tests/conftest.py
puts the checkout on PYTHONPATH at import: the session's Ray, every child process and the Ray
nodes a test starts inherit it (`FAKE_ASR_ENV` says the same for an environment built by hand).
Shipping the fake inside `pipelines/` would reach workers anywhere, but would put test code in
the installed package.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipelines.records import AsrResult
from schemas.config import AsrConfig

FAKE_ASR = "tests.fakes:FakeAsr"
OVERRIDES = {"asr.backend": FAKE_ASR}  # for load_job_config(..., overrides=)
ROOT = Path(__file__).resolve().parent.parent
# for a child process (`voxmill ...` as a user runs it): `tests.fakes` importable in it and in its Ray workers
FAKE_ASR_ENV = {"PYTHONPATH": os.pathsep.join(
    [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]])}
DELAY_ENV = "VOXMILL_FAKE_ASR_DELAY"  # seconds per batch: keeps a crash test's ASR task alive long enough to kill

WORDS = ("the", "speech", "corpus", "reader", "window", "river", "garden", "morning", "letter", "silver",
         "market", "station", "history", "number", "quiet", "yellow")
RATE = 16000


def transcript(audio: np.ndarray) -> AsrResult:
    """The fake's result for one 16 kHz segment: a function of its samples only."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")
    digest = hashlib.blake2b(pcm.tobytes(), digest_size=16).digest()
    count = max(1, round(len(audio) / RATE * 2))
    words = [WORDS[digest[i % len(digest)] % len(WORDS)] for i in range(count)]
    return AsrResult(" ".join(words), "en", 1.0,
                     {"avg_logprob": -0.05 - digest[0] / 283, "no_speech_prob": digest[1] / 1000})


class FakeAsr:
    """The `AsrBackend` of the tests: no model, deterministic words (see `transcript`)."""

    def __init__(self, config: AsrConfig):
        self.config = config
        self.counts: Counter[str] = Counter()

    def setup(self) -> None:
        pass

    def __call__(self, audios: Sequence[np.ndarray], journal=None) -> list[AsrResult]:
        results: list[Optional[AsrResult]] = [None] * len(audios)
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
        size = self.config.batch_size
        delay = float(os.environ.get(DELAY_ENV, "0") or 0)
        for start in range(0, len(order), size):
            batch, tag = order[start:start + size], f"alone-{start:06d}"
            saved = journal.get(tag) if journal is not None else None
            if saved is None:
                if journal is not None:
                    journal.started(tag, sum(len(audios[i]) for i in batch) / RATE)
                time.sleep(delay)
                saved = ({i: self._result(audios[i]) for i in batch}, [])
                self.counts.update(windows=len(batch), alone=len(batch))
                if journal is not None:
                    journal.put(tag, *saved)
            else:
                self.counts.update(restored_windows=len(batch))
            for i, result in saved[0].items():
                results[i] = result
        return results  # type: ignore[return-value]

    def _result(self, audio: np.ndarray) -> AsrResult:
        """`transcript`, with its words evenly over the segment when asr.word_timestamps asks."""
        result = transcript(audio)
        if self.config.word_timestamps:
            words, step = result.text.split(), len(audio) / RATE / max(1, len(result.text.split()))
            result.words = [{"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3),
                             "probability": 0.9} for i, w in enumerate(words)]
        return result
