"""With `audio.peak_normalize`, a segment's scores describe the audio its shard stores, not the level
the source came in at (issue 17: loudness_lufs was that of the audio before normalisation)."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr

from pipelines.metrics.signal import Loudness
from pipelines.records import SourceFile
from pipelines.stages.prepare import Preparer
from schemas.config import load_job_config
from tests.conftest import DEMO

CLIPS = ("LJ002-0020.wav", "LJ002-0035.wav")  # 22.05 kHz, peaks well under 0.95


def _prepare(preparer: Preparer, tmp_path, peak: float | None):
    preparer.audio = preparer.audio.model_copy(update={"peak_normalize": peak})  # one model load for both runs
    return preparer(0, [SourceFile(name, str(tmp_path / name)) for name in CLIPS])[1].segments


def _stored_loudness(audio: bytes) -> float:
    """BS.1770 loudness of a shard sample's bytes, at the 16 kHz the scores are measured at."""
    wave, rate = sf.read(io.BytesIO(audio), dtype="float32")
    return Loudness()(soxr.resample(wave, rate, 16000), 16000)


def test_scores_describe_the_peak_normalised_audio_the_shard_stores(tmp_path):
    for name in CLIPS:
        shutil.copy(DEMO / name, tmp_path / name)
    preparer = Preparer(load_job_config(str(tmp_path), str(tmp_path / "out")))
    preparer.setup()
    raw, normalised = _prepare(preparer, tmp_path, None), _prepare(preparer, tmp_path, 0.95)
    assert [s.key for s in raw] == [s.key for s in normalised] and normalised
    for before, after in zip(raw, normalised):
        stored, _ = sf.read(io.BytesIO(after.audio), dtype="float32")
        assert np.abs(stored).max() == pytest.approx(0.95, abs=1e-3)
        assert after.scores["loudness_lufs"] == pytest.approx(_stored_loudness(after.audio), abs=0.3)
        assert before.scores["loudness_lufs"] == pytest.approx(_stored_loudness(before.audio), abs=0.3)
        assert after.scores["loudness_lufs"] - before.scores["loudness_lufs"] > 1  # these clips peak well under 0.95
        assert after.scores["snr_db"] == pytest.approx(before.scores["snr_db"], abs=0.5)  # a ratio: level-free
        assert after.scores["audio_hash"] != before.scores["audio_hash"]
