"""The records stages hand each other: plain dataclasses with no internal imports, so no two
stage modules import each other (the asr/journal/prepare circle lived on these)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SourceFile:
    id: str
    uri: str
    duration: float | None = None
    error: str | None = None
    offset: float = 0.0  # an excerpt of a long file: start and length in source seconds
    limit: float | None = None
    context: float = 0.0  # > 0: decode this much around the excerpt, keep spans starting inside it
    length: float = 0.0  # planned seconds, for scheduling (a guess from bytes when no duration)

    @property
    def planned_seconds(self) -> float:
        """What scheduling counts this file as: its planned length, else its header's duration."""
        return self.length or self.duration or 0.0

    @property
    def decode_from(self) -> float:
        return max(0.0, self.offset - self.context)

    def owns(self, start: float) -> bool:
        """Whether a span starting at `start` (source seconds) belongs to this excerpt.

        Neighbouring excerpts overlap by `context` so VAD sees the same audio around each
        boundary in both; a span belongs to the excerpt its start falls in, exactly once.
        """
        if not self.context:
            return True
        return self.offset <= start and (self.limit is None or start < self.offset + self.limit)


@dataclass
class PreparedSegment:
    key: str
    source_id: str
    source_uri: str
    start: float
    end: float
    audio: bytes  # encoded output audio (FLAC/WAV)
    scores: dict = field(default_factory=dict)  # acoustic quality scores (pipelines.metrics.scorer); {} when off


@dataclass
class PreparedUnit:
    unit: int
    segments: list[PreparedSegment] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    input_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    node: Optional[str] = None  # the Ray node that prepared it (summary "nodes")
    references: dict[str, str] = field(default_factory=dict)  # source id -> its file's reference transcript


@dataclass
class AsrResult:
    """One segment's transcript. `extras` holds the backend's own scores by name, which other
    backends may not have (NeMo Curator's pattern); the index reads the ones it has columns for
    (`avg_logprob`, `no_speech_prob`: null when a backend lacks them).

    faster-whisper's: `avg_logprob`, the mean token log-prob of the words; `no_speech_prob`,
    Whisper's probability that the 30 s window it decoded holds no speech. A segment decoded on
    its own has its own; a segment that shared a packed window has None: the window's value is
    one number for all of its speech and gaps (read at the first decoder step, before any word),
    so it measures none of the segments in it (see `Transcriber._decode_packed`)."""

    text: str
    language: str
    language_prob: float
    extras: dict[str, Optional[float]] = field(default_factory=dict)
    # asr.word_timestamps: {"word", "start", "end", "probability"} per word, seconds in the segment
    words: Optional[list[dict]] = None

    @classmethod
    def from_json(cls, fields: dict) -> "AsrResult":
        """A result saved with `dataclasses.asdict`, also one saved before `extras` existed
        (Whisper's scores as fields of their own: an ASR journal a killed run left behind)."""
        core = ("text", "language", "language_prob", "extras", "words")
        extras = {**{k: v for k, v in fields.items() if k not in core}, **(fields.get("extras") or {})}
        return cls(fields["text"], fields["language"], fields["language_prob"], extras, fields.get("words"))


@dataclass
class Resources:
    cpus: int
    gpus: int
    prep_workers: int
    asr_actors: int
    nodes: int = 1

    @property
    def max_in_flight(self) -> int:
        return self.prep_workers + 2 * self.asr_actors
