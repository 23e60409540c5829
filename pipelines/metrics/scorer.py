"""The acoustic scores of a unit's segments, in the prep task where the segment audio already is (no
second decode, nothing extra crosses Ray): every prep metric of schemas/metrics.py that has a
compute function in `ACOUSTIC`.
"""
from __future__ import annotations

from functools import cached_property
from typing import Callable, Optional, Sequence

import numpy as np

from pipelines.metrics import dnsmos
from pipelines.metrics.signal import RATE, Loudness, clipping_ratio, snr_db
from schemas.config import QualityConfig
from schemas.metrics import METRICS, Registry


class UnitAudio:
    """A unit's 16 kHz float32 segments as the acoustic metrics see them; work several metrics share
    (one DNSMOS pass gives three scores) is done once."""

    def __init__(self, scorer: "QualityScorer", speech: Sequence[np.ndarray]):
        self.scorer = scorer
        self.speech = speech

    @cached_property
    def dnsmos(self) -> list[tuple[float, float, float]]:
        return self.scorer.dnsmos(self.speech)


def per_segment(measure: Callable[[np.ndarray], Optional[float]]) -> Callable[[UnitAudio], list]:
    """A compute function from a measure of one segment."""
    return lambda unit: [measure(audio) for audio in unit.speech]


# The prep metrics (schemas/metrics.py, stage "prep") computed here, by name: each takes a unit's
# segments and gives one value per segment. (audio_hash is of the stored bytes, and clipping is
# measured again on the decoded-rate audio: `stages.prepare` sets those.)
ACOUSTIC: dict[str, Callable[[UnitAudio], list]] = {
    "dnsmos_sig": lambda unit: [sig for sig, _, _ in unit.dnsmos],
    "dnsmos_bak": lambda unit: [bak for _, bak, _ in unit.dnsmos],
    "dnsmos_ovrl": lambda unit: [ovrl for _, _, ovrl in unit.dnsmos],
    "snr_db": per_segment(snr_db),
    "clipping": per_segment(clipping_ratio),
    "loudness_lufs": lambda unit: [unit.scorer.loudness(audio, RATE) for audio in unit.speech],
}


class QualityScorer:
    """Acoustic scores for a batch of 16 kHz segments; the DNSMOS model loads once per worker."""

    def __init__(self, config: QualityConfig, registry: Registry = METRICS,
                 compute: Optional[dict[str, Callable[[UnitAudio], list]]] = None):
        self.config = config
        self.compute = ACOUSTIC if compute is None else compute
        self.metrics = [m for m in registry.at("prep") if m.name in self.compute]
        self.runner = None
        self.loudness = Loudness()

    def setup(self) -> None:
        self.runner = dnsmos.dnsmos_backend(self.config.dnsmos_device)
        self.warm_up()

    def score(self, speech: Sequence[np.ndarray]) -> list[dict[str, Optional[float]]]:
        """One dict of the acoustic metrics per 16 kHz float32 segment, in declaration order.

        Scores are rounded (each metric's `digits`: 3 decimals; clipping 6) so that float noise
        (another batch layout, an accelerator) almost never reaches a sample's JSON; a resumed
        unit repeats the same batches anyway, so its output stays byte-identical.
        (The prep task measures clipping again on the decoded-rate audio, where clipped tops
        are still flat; resampling rings around them.)"""
        if self.runner is None:
            self.setup()
        unit = UnitAudio(self, speech)
        columns = [(m, self.compute[m.name](unit)) for m in self.metrics]
        for metric, values in columns:
            if len(values) != len(speech):
                raise ValueError(f"{metric.name}: {len(values)} values for {len(speech)} segments")
        return [{m.name: round_score(values[i], m.digits) for m, values in columns} for i in range(len(speech))]

    def dnsmos(self, speech: Sequence[np.ndarray]) -> list[tuple[float, float, float]]:
        """(sig, bak, ovrl) per segment (see `dnsmos.scores`)."""
        return dnsmos.scores(self.runner, speech, self.window_starts)

    def window_starts(self, samples: int) -> list[int]:
        """Where this config's DNSMOS windows start in a segment of `samples` (see QualityConfig)."""
        if self.config.dnsmos_windows == "cover":
            return dnsmos.cover_starts(samples)
        return dnsmos.window_starts(samples, round(self.config.dnsmos_hop_seconds * RATE))

    def warm_up(self) -> None:
        """Score two seconds of quiet noise once: the first onnxruntime run and the first loudness
        meter cost about a second more, which no unit should be billed for (calibration's few
        small units would be priced 20-30% dear)."""
        noise = np.random.default_rng(0).normal(0.0, 0.01, 2 * RATE).astype(np.float32)
        self.score([noise])


def round_score(value, digits: Optional[int]):
    """A float score rounded to its metric's digits (None stays None; other values pass)."""
    if value is None or digits is None or isinstance(value, str):
        return value
    return round(float(value), digits)


SCORE_NAMES = tuple(m.name for m in METRICS.at("prep") if m.name in ACOUSTIC)  # what `score` gives per segment
