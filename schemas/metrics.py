"""Every per-segment score, declared once: its index column, where it is computed, the filter
thresholds it brings into `quality:`, its label in the report and the cost model `voxmill plan`
prices it with.

These are declarations only (no computation, no internal imports), so the lowest layer can read
them: `schemas.tables` builds the index columns from them and `schemas.config` the QualityConfig
threshold fields (`min_<name>` / `max_<name>`). The computations live in `pipelines/metrics/`,
keyed by the same names (`scorer.ACOUSTIC` for prep metrics, `text.TEXT` for commit metrics), and
the filters (`pipelines/metrics/filters.py`), the commit's score columns, the report and the
calibration loop over `METRICS`.

A new metric is one `Metric(...)` below (its place in `METRICS` is its index column's place) and
one compute function in `pipelines/metrics/`. Filters check it after the metrics named in
`check_order`, the report and the config show it after those named in `display_order`, unless it
is named there.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Literal, Optional

import pyarrow as pa

# asr: given by the ASR backend with the transcript; prep: measured on the segment audio in the
# prep task (before ASR, where the audio already is); commit: from the transcript at commit.
Stage = Literal["asr", "prep", "commit"]


@dataclass(frozen=True)
class Threshold:
    """One `quality:` setting that filters on a metric: `min_<name>` drops a segment below it,
    `max_<name>` one above it. None (as default or in a job file) turns the filter off."""

    default: Optional[float]
    description: str = ""
    ge: Optional[float] = None  # the range the setting itself is validated against
    le: Optional[float] = None


@dataclass(frozen=True)
class Metric:
    name: str  # the index column, the KEY.json key and the key of its compute function
    type: pa.DataType  # the index column's Arrow type
    stage: Stage  # where it is computed (see Stage)
    comment: str = ""  # what the column holds
    minimum: Optional[Threshold] = None  # quality.min_<name>
    maximum: Optional[Threshold] = None  # quality.max_<name>
    label: Optional[str] = None  # the report's name for its distribution; None: not in the report
    digits: Optional[int] = None  # rounded to this many decimals where computed, so float noise stays out
    cost: Optional[str] = None  # the cost model that prices it in a plan (pipelines/metrics/cost.py COSTS);
    # None: cheap beside decode and VAD, not priced on its own

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type)

    @property
    def thresholds(self) -> tuple[tuple[str, Threshold], ...]:
        """(QualityConfig field, threshold): the floor first."""
        bounds = (("min", self.minimum), ("max", self.maximum))
        return tuple((f"{kind}_{self.name}", bound) for kind, bound in bounds if bound is not None)


@dataclass(frozen=True)
class Registry:
    """The metrics in index column order, and the two other orders that outputs depend on."""

    metrics: tuple[Metric, ...]
    # Filters check these first, in this order (the first failing one names the reject, so the same
    # row always gets the same reason), then any other metric with a threshold, in column order.
    check_order: tuple[str, ...] = ()
    # The report's distribution rows and the QualityConfig threshold fields: these first, then the rest.
    display_order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"a metric is declared twice: {names}")
        unknown = set(self.check_order + self.display_order) - set(names)
        if unknown:
            raise ValueError(f"check_order/display_order name undeclared metrics: {sorted(unknown)}")

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.metrics)

    def __getitem__(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(m.name == name for m in self.metrics)

    def at(self, *stages: Stage) -> tuple[Metric, ...]:
        """The metrics computed at these stages, in column order."""
        return tuple(m for m in self.metrics if m.stage in stages)

    def _ordered(self, first: tuple[str, ...]) -> list[Metric]:
        return [self[name] for name in first] + [m for m in self.metrics if m.name not in first]

    def checked(self) -> list[Metric]:
        """The metrics with a threshold, in the order the filters check them."""
        return [m for m in self._ordered(self.check_order) if m.thresholds]

    def displayed(self) -> list[Metric]:
        return self._ordered(self.display_order)

    def labels(self) -> dict[str, str]:
        """Column -> report label, in display order."""
        return {m.name: m.label for m in self.displayed() if m.label}

    def thresholds(self) -> list[tuple[str, Threshold]]:
        """(QualityConfig field, threshold), in display order."""
        return [pair for m in self.displayed() for pair in m.thresholds]

    def with_metric(self, metric: Metric, before: Optional[str] = None) -> "Registry":
        """A copy with `metric` added: its column before `before`, else last."""
        metrics = list(self.metrics)
        metrics.insert(metrics.index(self[before]) if before else len(metrics), metric)
        return replace(self, metrics=tuple(metrics))


FLOAT = pa.float32()  # scores are stored as float32: filters compare the float32 the index holds

METRICS = Registry(
    metrics=(
        Metric("language", pa.string(), "asr", "detected (or configured) language; filtered by quality.languages"),
        Metric("language_prob", FLOAT, "asr", "language-ID confidence",
               minimum=Threshold(None, "language-ID confidence (multilingual models); Emilia keeps >= 0.8",
                                 ge=0, le=1)),
        Metric("avg_logprob", FLOAT, "asr", "the ASR backend's mean token log-prob (Whisper's)",
               minimum=Threshold(-1.0, "Whisper's mean token log-prob; Whisper itself retries a decode below -1",
                                 le=0),
               label="ASR avg log-prob"),
        Metric("no_speech_prob", FLOAT, "asr",
               "Whisper's no-speech probability of the window; null for a segment that shared a packed window",
               maximum=Threshold(
                   0.6, "Whisper's no-speech rule: a segment is dropped as no speech when its no_speech_prob is "
                        "above this AND its avg_logprob is below min_avg_logprob (Whisper's own pair, 0.6 and -1; "
                        "with min_avg_logprob null, the probability alone). A segment that shared a packed ASR "
                        "window has no no_speech_prob of its own (null: the window's value is one number for all "
                        "its segments)",
                   ge=0, le=1),
               label="ASR no-speech prob"),
        # the quality scores; null when quality.enabled is false or not measurable
        Metric("dnsmos_sig", FLOAT, "prep", "DNSMOS P.835 speech signal, 1-5",
               minimum=Threshold(None, "DNSMOS P.835 speech-signal MOS (1-5)", ge=1, le=5),
               label="DNSMOS signal", digits=3, cost="dnsmos_window"),
        Metric("dnsmos_bak", FLOAT, "prep", "DNSMOS P.835 background, 1-5",
               minimum=Threshold(None, "DNSMOS P.835 background-noise MOS (1-5)", ge=1, le=5),
               label="DNSMOS background", digits=3, cost="dnsmos_window"),
        Metric("dnsmos_ovrl", FLOAT, "prep", "DNSMOS P.835 overall, 1-5",
               minimum=Threshold(
                   2.0, "DNSMOS P.835 overall MOS (1-5): a floor for clearly degraded audio. LJSpeech scores "
                        "2.72-2.98, JFK (1961) 2.45-2.65, JFK at 8 kHz 8-bit 2.16, LibriSpeech under white noise "
                        "at 0 dB SNR 1.60. Emilia keeps >= 3.0 (in-the-wild audio after source separation): that "
                        "drops LJSpeech",
                   ge=1, le=5),
               label="DNSMOS overall", digits=3, cost="dnsmos_window"),
        Metric("snr_db", FLOAT, "prep", "blind SNR estimate (loud vs quiet 25 ms frames)",
               minimum=Threshold(15.0, "blind SNR estimate, dB (loud vs quiet 25 ms frames); clean clips 29-58, "
                                       "white noise at 5 dB SNR reads 12"),
               label="SNR (dB)", digits=3),
        Metric("clipping", FLOAT, "prep", "share of samples on the peak plateau",
               maximum=Threshold(0.001, "share of samples on the segment's peak plateau; clean speech 0, "
                                        "a copy clipped at 30% of its peak 0.0015", ge=0, le=1),
               label="clipping (fraction)", digits=6),
        Metric("loudness_lufs", FLOAT, "prep", "BS.1770 integrated loudness",
               minimum=Threshold(-45.0, "integrated loudness (BS.1770, LUFS) of the 16 kHz segment; "
                                        "clean clips -33 to -13"),
               maximum=Threshold(-5.0, "louder = distorted or clipped level"),
               label="loudness (LUFS)", digits=3),
        Metric("chars_per_second", FLOAT, "commit", "letters+digits of the normalised transcript per second",
               minimum=Threshold(2.0, "letters and digits of the normalised transcript per second (English read "
                                      "speech 9-15; numbers as digits go down to 4): below = words missing", ge=0),
               maximum=Threshold(30.0, "above = hallucinated or misaligned text", ge=0),
               label="characters per second", digits=3),
        # set by the prep task from the stored KEY.flac/KEY.wav bytes; quality.drop_exact_duplicates filters on it
        Metric("audio_hash", pa.string(), "prep", "blake2b-128 hex of the stored KEY.flac/KEY.wav bytes"),
        # set by commit.decide from the unit's earlier kept samples: a flag, never a drop
        Metric("near_duplicate_of", pa.string(), "commit", "key of an earlier sample with the same text and length"),
        # against the segment's reference transcript (OUTPUT index column `reference`): null without one.
        # Declared after the columns older outputs hold, so those keep their places.
        Metric("wer", FLOAT, "commit", "word error rate of the transcript against the reference, normalised text",
               maximum=Threshold(None, "word error rate of the ASR against the segment's reference transcript "
                                       "(normalised text: lower case, no punctuation); how NeMo's speech data "
                                       "processor validates a corpus's transcripts. Segments without a reference "
                                       "pass", ge=0),
               label="WER vs reference", digits=3),
        Metric("cer", FLOAT, "commit", "character error rate of the transcript against the reference",
               maximum=Threshold(None, "character error rate of the ASR against the reference (normalised text); "
                                       "segments without a reference pass", ge=0),
               label="CER vs reference", digits=3),
        # who speaks (speakers.enabled; pipelines/stages/speakers.py): null when off
        Metric("speaker", pa.string(), "prep", "the segment's speaker within its recording: <source_id>/spkN"),
        Metric("speaker_purity", FLOAT, "prep",
               "share of the segment's 1.6 s windows that are its speaker's (below 1: another voice in it too)",
               minimum=Threshold(None, "share of the segment's 1.6 s windows labelled as its own speaker (1.0: one "
                                       "voice throughout; lower: another voice overlaps or was not split off)",
                                 ge=0, le=1),
               label="speaker purity", digits=3),
        Metric("speaker_embedding", pa.list_(pa.float16()), "prep",
               "GE2E speaker embedding (256 values, unit length) of the segment, for speaker-conditioned TTS and clustering"),
    ),
    check_order=("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "snr_db", "clipping", "loudness_lufs",
                 "chars_per_second", "no_speech_prob", "avg_logprob", "language_prob", "wer", "cer", "speaker_purity"),
    display_order=("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "snr_db", "clipping", "loudness_lufs",
                   "chars_per_second", "avg_logprob", "no_speech_prob", "language_prob", "wer", "cer", "speaker_purity"),
)
