"""Segment: real speech separated by silence splits at the silence; silence yields nothing."""
import numpy as np

from pipelines.stages.audio import Resampler, decode
from pipelines.stages.vad import Segmenter
from schemas.config import AudioConfig, VadConfig


def _speech16k(path) -> np.ndarray:
    with open(path, "rb") as fh:
        return Resampler(AudioConfig())(decode(fh), 16000).samples


def test_two_utterances_with_a_long_pause_become_two_segments(clips):
    a = _speech16k(clips / "2412-153948-0000.flac")
    b = _speech16k(clips / "LJ002-0035.wav")
    silence = np.zeros(16000 * 3, dtype=np.float32)
    audio = np.concatenate([silence, a, silence, b, silence])
    kept, short = Segmenter(VadConfig())(audio)
    assert len(kept) == 2 and not short
    first_end, second_start = 3 + len(a) / 16000, 6 + len(a) / 16000
    assert kept[0].start > 2.5 and kept[0].end < first_end + 0.5
    assert kept[1].start > second_start - 0.5 and kept[1].end < second_start + len(b) / 16000 + 0.5


def test_short_all_speech_clip_stays_one_segment(clips):
    audio = _speech16k(clips / "LJ002-0020.wav")
    kept, short = Segmenter(VadConfig())(audio)
    assert len(kept) == 1 and not short
    assert kept[0].seconds > 0.8 * len(audio) / 16000


def test_silence_and_low_noise_give_no_segments():
    rng = np.random.default_rng(0)
    for audio in (np.zeros(16000 * 5, np.float32), (0.001 * rng.standard_normal(16000 * 5)).astype(np.float32)):
        assert Segmenter(VadConfig())(audio) == ([], [])


def test_long_speech_is_cut_below_max_seconds(clips):
    pieces = [_speech16k(clips / n) for n in ("2412-153948-0000.flac", "2412-153948-0001.flac",
                                              "libri-1088-134315-0000.wav")]
    kept, _ = Segmenter(VadConfig(max_seconds=8.0))(np.concatenate(pieces))
    assert len(kept) >= 4
    assert all(s.seconds <= 8.0 + 1e-6 for s in kept)
