"""The quality filters: which threshold a segment's index row crosses, if any.

Every filter runs at commit, where the transcript meets the acoustic scores. A filter drops a
segment into `rejects/` with the metric, its value and the threshold, so nothing is lost silently
and a looser threshold can be re-applied from the index (`voxmill refilter`). The thresholds are
the `min_<metric>` / `max_<metric>` settings that schemas/metrics.py declares.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from schemas.config import QualityConfig
from schemas.metrics import Registry


@dataclass(frozen=True)
class Verdict:
    """Why a filter drops a segment: the metric, its value, and the threshold it crossed."""

    metric: str
    value: Optional[float]  # None for a categorical metric (language)
    threshold: Optional[float]
    reason: str


def verdict(config: QualityConfig, row: dict, registry: Optional[Registry] = None) -> Optional[Verdict]:
    """The first threshold `row` (an index row with its scores) crosses, or None to keep it.

    Metrics (by default those the config's thresholds were made from) are checked in the registry's
    `check_order`: the first failing one names the reject,
    so the same row always gets the same reason. A missing score (e.g. loudness of a sub-400 ms
    segment) passes: a filter drops only what it measured. Values are compared as the float32 the
    index stores, so a user who filters the index again with the same threshold gets the same rows."""
    for metric in (registry or config.metrics).checked():
        value = _measured(row, metric.name)
        if value is None:
            continue
        rule = RULES.get(metric.name)
        if rule is not None:
            failed = rule(config, value, row)
            if failed:
                return failed
            continue
        for field, _ in metric.thresholds:
            threshold = getattr(config, field)
            if threshold is None:
                continue
            if field.startswith("min_") and value < threshold:
                return _bound(metric.name, value, threshold, "<")
            if field.startswith("max_") and value > threshold:
                return _bound(metric.name, value, threshold, ">")
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


# Filters that are more than their metric's bounds, by metric name: checked in that metric's place.
RULES: dict[str, Callable[[QualityConfig, float, dict], Optional[Verdict]]] = {
    "no_speech_prob": lambda config, value, row: no_speech(config, value, _measured(row, "avg_logprob")),
}


def _bound(metric: str, value: float, threshold: float, op: str) -> Verdict:
    return Verdict(metric, value, threshold, f"{metric} {_fmt(value)} {op} {_fmt(threshold)}")


def _measured(row: dict, metric: str) -> Optional[float]:
    """The row's value as the float32 the index stores, or None when not measured."""
    value = row.get(metric)
    if value is None or not math.isfinite(value):
        return None
    return float(np.float32(value))


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
