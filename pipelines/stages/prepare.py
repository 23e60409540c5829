"""Prepare: decode, resample, VAD-segment and encode one work unit's files on a CPU worker.

The output splits in two so Ray moves only what each consumer needs: 16 kHz segment audio
for the ASR actors, and encoded output audio plus metadata for the shard writer.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from pipelines.io import storage
from pipelines.io.keys import segment_key
from pipelines.metrics.scorer import QualityScorer
from pipelines.metrics.signal import audio_hash, clipping_ratio
from pipelines.records import PreparedSegment, PreparedUnit, SourceFile
from pipelines.stages.audio import ASR_RATE, DecodeError, Resampler, Waveform, decode, encode, peak_normalize
from pipelines.stages.references import References
from pipelines.stages.speakers import SpeakerSplitter, SpeakerTurn
from pipelines.stages.vad import Segmenter, Span
from pipelines.state.journal import SEGMENTED, PrepJournal, scores_name
from schemas.config import JobConfig

BATCH_SECONDS = 600.0  # audio decoded together for one batched (GPU) resample
SCORE_CHUNK_SECONDS = 30.0  # segment audio scored, then journaled, together: what a kill mid-scoring loses


class Preparer:
    """One unit of files in; speech segments (and rejects with reasons) out."""

    def __init__(self, config: JobConfig):
        self.audio = config.audio
        self.shard_format = config.shards.audio_format
        self.resample = Resampler(config.audio)
        self.segment = Segmenter(config.vad)
        self.quality = QualityScorer(config.quality) if config.quality.enabled else None
        self.references = References(config.discover)
        self.speakers = SpeakerSplitter(config.speakers) if config.speakers.enabled else None

    def setup(self) -> None:
        self.segment.setup()
        if self.quality:
            self.quality.setup()

    def __call__(self, unit: int, files: list[SourceFile],
                 journal: Optional[PrepJournal] = None) -> tuple[list[np.ndarray], PreparedUnit]:
        """The 16 kHz ASR input of each kept segment, and the unit's segments (in the same order),
        rejects and stage times. With a `journal`, the steps it holds for this unit are read back
        instead of done again, and each step done here is saved to it (see `pipelines.state.journal`);
        the seconds spent reading or writing it are the "journal" stage."""
        journal = journal or PrepJournal()
        clock = time.perf_counter()
        restored = journal.segmented()
        if restored:
            asr_audio, prepared = restored
            prepared.stage_seconds.clear()  # those were the killed run's
            prepared.stage_seconds["journal"] = time.perf_counter() - clock
        else:
            journal.started("segment", SEGMENTED, sum(f.planned_seconds for f in files))
            asr_audio, prepared = self._segment_unit(unit, files)
            with _Clock(prepared.stage_seconds)("journal"):
                journal.put_segmented(asr_audio, prepared)
        if self.quality and asr_audio:
            with _Clock(prepared.stage_seconds)("quality"):
                asr_audio = self._score(asr_audio, prepared, journal)
        with _Clock(prepared.stage_seconds)("decode"):  # input reads; not journaled: a listing per folder
            cut = {seg.source_id for seg in prepared.segments}
            prepared.references = self.references([f for f in files if f.id in cut])
        return asr_audio, prepared

    def _segment_unit(self, unit: int, files: list[SourceFile]) -> tuple[list[np.ndarray], PreparedUnit]:
        prepared = PreparedUnit(unit)
        asr_audio: list[np.ndarray] = []
        for group in self._groups(files):
            asr_audio.extend(self._prepare_group(group, prepared))
        return asr_audio, prepared

    def _score(self, audios: list[np.ndarray], out: PreparedUnit,
               journal: Optional[PrepJournal] = None) -> list[np.ndarray]:
        """Scores, then the segments whose scoring failed are quality rejects here, before ASR
        spends time on them. Returns the audio kept."""
        journal = journal or PrepJournal()
        scored: list[dict | str] = []
        for first, last in score_chunks(audios):
            chunk = journal.scores(first, last - first)
            if chunk is None:
                journal.started("quality", scores_name(first), sum(len(a) for a in audios[first:last]) / ASR_RATE)
                chunk = self._score_all(audios[first:last])
                journal.put_scores(first, chunk)
            scored.extend(chunk)
        kept_segments, kept_audio = [], []
        for seg, audio, scores in zip(out.segments, audios, scored, strict=True):
            if isinstance(scores, str):
                source = SourceFile(seg.source_id, seg.source_uri)
                out.rejects.append(reject_row(source, out.unit, "quality", scores, Span(seg.start, seg.end),
                                              key=seg.key))
                continue
            seg.scores = {**scores, **seg.scores}  # clipping from the decoded-rate audio wins
            kept_segments.append(seg)
            kept_audio.append(audio)
        out.segments = kept_segments
        return kept_audio

    def _score_all(self, audios: list[np.ndarray]) -> list[dict | str]:
        """DNSMOS, SNR and loudness for all the unit's segments at once (DNSMOS windows batch
        across segments). If the batch fails, each segment is scored alone."""
        try:
            return self.quality.score(audios)
        except Exception:  # noqa: BLE001 - isolate the segment that fails
            return [self._score_one(audio) for audio in audios]

    def _score_one(self, audio: np.ndarray) -> dict | str:
        """Scores of one segment, or the error (the reject reason) when scoring it fails."""
        try:
            return self.quality.score([audio])[0]
        except Exception as err:  # noqa: BLE001 - one bad segment is a reject, not a failed unit
            return f"scoring failed: {type(err).__name__}: {err}"[:300]

    def _groups(self, files: list[SourceFile]) -> list[list[SourceFile]]:
        """One file at a time on the CPU (memory follows one file); on a GPU, files up to
        BATCH_SECONDS together, so one resample call serves many of them."""
        if not self.resample.batches:
            return [[f] for f in files]
        groups: list[list[SourceFile]] = [[]]
        seconds = 0.0
        for source in files:
            if groups[-1] and seconds + source.planned_seconds > BATCH_SECONDS:
                groups.append([])
                seconds = 0.0
            groups[-1].append(source)
            seconds += source.planned_seconds
        return groups

    def _prepare_group(self, group: list[SourceFile], out: PreparedUnit) -> list[np.ndarray]:
        clock = _Clock(out.stage_seconds)
        decoded = [(source, self._decode_or_reject(source, out, clock)) for source in group]
        decoded = [(source, wave) for source, wave in decoded if wave is not None]
        if not decoded:
            return []
        waves = [wave for _, wave in decoded]
        try:
            with clock("resample"):
                speech = self.resample.many(waves, ASR_RATE)
                target = self.resample.many(waves, self.audio.sample_rate)
        except Exception as err:  # noqa: BLE001 - one bad file is a reject, not a failed unit
            for source, _ in decoded:
                out.rejects.append(reject_row(source, out.unit, "prepare", f"{type(err).__name__}: {err}"[:300]))
            return []
        audio: list[np.ndarray] = []
        for (source, wave), asr_wave, out_wave in zip(decoded, speech, target):
            try:
                audio.extend(self._segment(source, wave, asr_wave, out_wave, out, clock))
            except Exception as err:  # noqa: BLE001 - one bad file is a reject, not a failed unit
                out.rejects.append(reject_row(source, out.unit, "prepare", f"{type(err).__name__}: {err}"[:300]))
        return audio

    def _decode_or_reject(self, source: SourceFile, out: PreparedUnit, clock: "_Clock") -> Optional[Waveform]:
        """The decoded audio, or None with a reject row. Any other OSError (storage still failing
        after its retries) fails the unit unledgered, so a rerun tries the file again instead of
        recording a permanent reject."""
        if source.error:
            out.rejects.append(reject_row(source, out.unit, "discover", source.error))
            return None
        try:
            with clock("decode"):
                return self._decode(source)
        except (DecodeError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
            out.rejects.append(reject_row(source, out.unit, "decode", str(err) or type(err).__name__))
            return None

    def _segment(self, source: SourceFile, wave: Waveform, speech: Waveform, target: Waveform,
                 out: PreparedUnit, clock: "_Clock") -> list[np.ndarray]:
        base = source.decode_from  # source time of the first decoded sample
        owned = wave.seconds - (source.offset - base)  # seconds of this excerpt (or file)
        owned = min(owned, source.limit) if source.limit else owned
        out.input_seconds += owned
        with clock("vad"):
            spans, short = self.segment(speech.samples)
        spans = [s for s in spans if source.owns(s.start + base)]
        for span in short:
            if source.owns(span.start + base):
                out.rejects.append(reject_row(source, out.unit, "vad", "too short", span.shifted(base)))
        if not spans:
            part = Span(source.offset, source.offset + owned) if source.context else None
            out.rejects.append(reject_row(source, out.unit, "vad", "no speech found", part, duration=owned))
        turns: list[Optional[SpeakerTurn]] = [None] * len(spans)
        if self.speakers and spans:
            with clock("speakers"):
                turns = self.speakers(speech.samples, spans)
                spans = [turn.span for turn in turns]
        with clock("encode"):
            encoded = [self._encode(source, target, span, base) for span in spans]
        gains = [self._gain(_cut(target, span)) for span in spans]
        if self.quality:
            with clock("quality"):
                for seg, span in zip(encoded, spans):
                    seg.scores = {"clipping": round(clipping_ratio(_cut(wave, span)), 6),
                                  "audio_hash": audio_hash(seg.audio)}
        for seg, turn in zip(encoded, turns):
            if turn is not None:
                seg.scores.update(speaker_scores(source, turn))
        out.segments.extend(encoded)
        # scaled as the stored audio was (peak_normalize): the scores and the transcript describe what
        # the shard holds, not the level it came in at
        return [_scaled(_cut(speech, span), gain) for span, gain in zip(spans, gains)]

    def _gain(self, samples: np.ndarray) -> float:
        """The factor `peak_normalize` scales this segment's stored audio by (1.0 when off or silent)."""
        top = float(np.abs(samples).max(initial=0.0))
        return self.audio.peak_normalize / top if self.audio.peak_normalize and top else 1.0

    def _decode(self, source: SourceFile) -> Waveform:
        fs, path = storage.filesystem(source.uri)
        start = source.decode_from
        limit = source.limit + (source.offset - start) + source.context if source.limit else None
        with fs.open(path, "rb") as fh:
            return decode(fh, start, limit)

    def _encode(self, source: SourceFile, target: Waveform, span: Span, base: float) -> PreparedSegment:
        samples = _cut(target, span)
        if self.audio.peak_normalize:
            samples = peak_normalize(samples, self.audio.peak_normalize)
        at = span.shifted(base)  # decoded time -> source time
        return PreparedSegment(
            key=segment_key(source.id, at.start, at.end),
            source_id=source.id,
            source_uri=source.uri,
            start=at.start,
            end=at.end,
            audio=encode(samples, target.rate, self.shard_format),
        )


def score_chunks(audios: list[np.ndarray]) -> list[tuple[int, int]]:
    """[first, last) index ranges of segments holding at most SCORE_CHUNK_SECONDS of audio each
    (or one longer segment).

    The cut depends on the segments alone, so every run scores (and batches DNSMOS windows) in the
    same chunks and scores read back from the journal are those scoring again would give."""
    chunks, first, seconds = [], 0, 0.0
    for i, audio in enumerate(audios):
        length = len(audio) / ASR_RATE
        if i > first and seconds + length > SCORE_CHUNK_SECONDS:
            chunks.append((first, i))
            first, seconds = i, 0.0
        seconds += length
    if first < len(audios):
        chunks.append((first, len(audios)))
    return chunks


def speaker_scores(source: SourceFile, turn: SpeakerTurn) -> dict:
    """A segment's speaker columns. Ids are per recording (`<source_id>/spkN`); the speakers of an excerpt
    of a long file are its own (`<source_id>@<offset s>/spkN`), as excerpts are clustered apart."""
    recording = f"{source.id}@{source.offset:g}" if source.limit else source.id
    return {"speaker": f"{recording}/spk{turn.speaker}", "speaker_purity": turn.purity,
            "speaker_embedding": [float(v) for v in turn.embedding.astype(np.float16)]}


def _scaled(samples: np.ndarray, gain: float) -> np.ndarray:
    return samples if gain == 1.0 else (samples * gain).astype(np.float32)


def _cut(wave: Waveform, span: Span) -> np.ndarray:
    return wave.samples[round(span.start * wave.rate) : round(span.end * wave.rate)]


def reject_row(
    source: SourceFile, unit: int, stage: str, reason: str, span: Span | None = None,
    duration: float | None = None, key: str | None = None,
    metric: str | None = None, value: float | None = None, threshold: float | None = None,
) -> dict:
    """One row of REJECTS_SCHEMA; `metric`/`value`/`threshold` say which quality filter dropped it."""
    return {
        "source_id": source.id,
        "source_uri": source.uri,
        "unit": unit,
        "key": key,
        "stage": stage,
        "reason": reason,
        "start": span.start if span else None,
        "end": span.end if span else None,
        "duration": span.seconds if span else (duration if duration is not None else source.duration),
        "metric": metric,
        "value": value,
        "threshold": threshold,
    }


class _Clock:
    """Adds the seconds spent in a `with` block to a per-stage total."""

    def __init__(self, totals: dict[str, float]):
        self.totals = totals

    def __call__(self, stage: str) -> "_Clock":
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.totals[self._stage] += time.perf_counter() - self._start
