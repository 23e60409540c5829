"""`asr.word_timestamps` with the bundled tiny.en: segments that share a packed window and the same
segments decoded alone get the same words at nearly the same times, in seconds of their own audio."""
import pytest

from pipelines.asr.whisper import Transcriber
from pipelines.metrics.text import normalise_text
from pipelines.stages.audio import Resampler, decode
from schemas.config import AsrConfig, AudioConfig

pytestmark = pytest.mark.slow  # the real model

CLIPS = ["LJ002-0035.wav", "common_voice_en_651325.mp3", "jfk.flac"]


def _audio(clips, name):
    with open(clips / name, "rb") as fh:
        return Resampler(AudioConfig())(decode(fh), 16000).samples


def test_packed_and_alone_segments_get_the_same_timed_words(clips):
    audios = [_audio(clips, name) for name in CLIPS]
    packed = Transcriber(AsrConfig(word_timestamps=True))
    alone = Transcriber(AsrConfig(word_timestamps=True, pack_seconds=0))
    together, apart = packed(audios), alone(audios)
    assert packed.counts["packed"] == len(CLIPS) and alone.counts["alone"] == len(CLIPS)
    for audio, shared, own in zip(audios, together, apart):
        for result in (shared, own):
            assert normalise_text(" ".join(w["word"] for w in result.words)) == normalise_text(result.text)
            assert all(0 <= w["start"] <= w["end"] <= len(audio) / 16000 + 5e-4 for w in result.words)  # ms
        if normalise_text(shared.text) == normalise_text(own.text):  # Whisper's alignment of a window's first
            # word snaps to its start (JFK's "And" at 0.0 decoded alone, 0.67 in company): the others agree
            starts = sorted(abs(a["start"] - b["start"]) for a, b in zip(shared.words, own.words))
            assert starts[len(starts) // 2] < 0.1 and starts[-2 if len(starts) > 1 else -1] < 0.3, (shared, own)
    assert Transcriber(AsrConfig(pack_seconds=0))(audios[:1])[0].words is None  # not asked: not stored
