"""The ASR plug-in point: an `AsrBackend` Protocol and a dict of backends keyed by `asr.backend`.

A backend is a class built from the job's `AsrConfig`. It loads its model in `setup()` (once per
ASR actor) and turns a batch of 16 kHz mono float32 segments into one `AsrResult` each, in input
order; its own scores travel in `AsrResult.extras` (faster-whisper: `avg_logprob`,
`no_speech_prob`). `counts` holds what the backend did (windows decoded, segments re-decoded,
`encode_seconds`...): the engine reports its per-unit difference and calibration reads `fallback`
from it; a backend without such notions keeps it empty.

Backends are "module:Class" strings imported on first use, so a backend's heavy imports
(CTranslate2, torch models) load only in the process that runs it. `asr.backend` is a name below
or, for a backend that lives outside voxmill, a full "package.module:Class" path.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from pipelines.records import AsrResult
from pipelines.registry import load_class
from schemas.config import AsrConfig

BACKENDS: dict[str, str] = {
    "faster-whisper": "pipelines.asr.whisper:Transcriber",
}
DEFAULT_BACKEND = "faster-whisper"


class AsrBackend(Protocol):
    counts: Counter[str]

    def setup(self) -> None:
        """Load the model (the slow part, once per process)."""

    def __call__(self, audios: Sequence[np.ndarray], journal: Optional[Any] = None) -> list[AsrResult]:
        """One result per segment, in input order. `journal` (a `pipelines.state.journal.AsrJournal`,
        or None) holds batches a killed run finished: a backend that batches deterministically reads
        them back (`journal.get(tag)`) instead of decoding them again, and saves each batch it decodes
        (`journal.started`, `journal.put`); one that ignores it is still correct, only redoes work."""


def backend_class(name: str) -> type:
    """The class `asr.backend` names: a key of `BACKENDS` or a "package.module:Class" path."""
    return load_class("asr.backend", name, BACKENDS)


def build_backend(config: AsrConfig, cpu_threads: int = 0) -> AsrBackend:
    """The job's backend, not yet set up. `cpu_threads`: the threads this process may use, when the
    config leaves them to the engine (Ray pins OMP threads to an actor's CPU request; CTranslate2
    needs them told explicitly)."""
    if cpu_threads and not config.cpu_threads:
        config = config.model_copy(update={"cpu_threads": cpu_threads})
    return backend_class(config.backend)(config)
