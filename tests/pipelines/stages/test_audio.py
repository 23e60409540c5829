"""Decode + resample: mono float32 out of every container, exact lengths, clear errors."""
import io

import numpy as np
import pytest
import soundfile as sf

from pipelines.stages.audio import (
    DecodeError,
    Resampler,
    Waveform,
    decode,
    encode,
    peak_normalize,
    resampled_length,
)
from schemas.config import AudioConfig


def _decode_path(path) -> Waveform:
    with open(path, "rb") as fh:
        return decode(fh)


@pytest.mark.parametrize("name", ["jfk.flac", "common_voice_en_651325.mp3", "stereo.opus", "stereo.sph",
                                  "LJ002-0020.wav"])
def test_every_container_decodes_to_mono(clips, name):
    wave = _decode_path(clips / name)
    assert wave.samples.ndim == 1 and wave.samples.dtype == np.float32
    assert wave.seconds > 0.9


def test_stereo_is_downmixed_by_averaging(tmp_path):
    left = np.full(1600, 0.5, dtype=np.float32)
    right = np.full(1600, -0.1, dtype=np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = _decode_path(tmp_path / "st.wav")
    assert wave.rate == 16000 and np.allclose(wave.samples, 0.2)


@pytest.mark.parametrize("backend", ["soxr", "torch"])
def test_resample_keeps_duration_and_pitch(backend):
    rate = 44100
    t = np.arange(rate * 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = Resampler(AudioConfig(resampler=backend))(Waveform(tone, rate), 24000)
    assert out.rate == 24000 and abs(len(out.samples) - 48000) <= 1
    spectrum = np.abs(np.fft.rfft(out.samples))
    assert abs(np.argmax(spectrum) * 24000 / len(out.samples) - 440) < 2


def test_undecodable_and_non_finite_input_raise_decode_error(tmp_path):
    with pytest.raises(DecodeError):
        decode(io.BytesIO(np.random.default_rng(0).bytes(5000)))
    bad = np.zeros(1600, dtype=np.float32)
    bad[10] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(DecodeError, match="non-finite"):
        _decode_path(tmp_path / "nan.wav")


def test_encode_round_trips_16_bit_flac_and_wav():
    samples = (0.3 * np.sin(np.linspace(0, 200, 24000))).astype(np.float32)
    for fmt in ("flac", "wav"):
        back, rate = sf.read(io.BytesIO(encode(samples, 24000, fmt)), dtype="float32")
        assert rate == 24000 and len(back) == 24000
        assert np.max(np.abs(back - samples)) < 1e-4


def test_peak_normalize_scales_to_the_target_peak():
    out = peak_normalize(np.array([0.1, -0.25, 0.2], dtype=np.float32), 0.9)
    assert np.isclose(np.abs(out).max(), 0.9)
    assert not peak_normalize(np.zeros(4, dtype=np.float32), 0.9).any()


def test_batched_resample_equals_one_file_at_a_time():
    """GPU batches pad files of one rate to a common length: each file's output must be exactly
    what resampling it alone gives (torchaudio's CPU path runs the same code as CUDA)."""
    rng = np.random.default_rng(0)
    waves = [Waveform((0.1 * rng.standard_normal(n)).astype(np.float32), rate)
             for n, rate in [(44100 * 3, 44100), (16000, 16000), (48000 * 2 + 7, 48000), (44100 + 13, 44100)]]
    resampler = Resampler(AudioConfig(resampler="torch"))
    batched = resampler.many(waves, 24000)
    for wave, out in zip(waves, batched):
        alone = resampler(wave, 24000)
        assert out.rate == 24000 and len(out.samples) == len(alone.samples) == resampled_length(len(wave.samples), wave.rate, 24000)
        assert np.array_equal(out.samples, alone.samples)


@pytest.mark.parametrize("length", [44100 + 13, 100003, 123457, 999999])
@pytest.mark.parametrize("rates", [(44100, 24000), (44100, 16000), (48000, 16000), (22050, 16000), (8000, 24000)])
def test_both_backends_return_the_same_length(length, rates):
    """torchaudio returns ceil(n x dst / src) samples, soxr rounds: the torch path (GPU batches)
    cuts to soxr's length, so a machine's backend never changes an output's length."""
    src, dst = rates
    wave = Waveform((0.1 * np.random.default_rng(length).standard_normal(length)).astype(np.float32), src)
    lengths = {backend: len(Resampler(AudioConfig(resampler=backend))(wave, dst).samples) for backend in ("soxr", "torch")}
    assert lengths["soxr"] == lengths["torch"], lengths


def test_a_unit_prepared_in_gpu_batches_equals_file_by_file(clips, monkeypatch):
    """The prep task groups a unit's files for one resample call when it resamples with torch;
    the segments, their keys and their encoded bytes must not depend on the grouping."""
    from pipelines.stages import prepare
    from schemas.config import load_job_config

    config = load_job_config(str(clips), "/unused", overrides={"audio.resampler": "torch"})
    files = [prepare.SourceFile(p.stem, str(p), length=10.0) for p in sorted(clips.iterdir())
             if p.suffix in (".flac", ".wav", ".mp3", ".opus")]

    def run() -> tuple[list[bytes], list[tuple]]:
        preparer = prepare.Preparer(config)
        preparer.setup()
        audio, unit = preparer(0, files)
        return [a.tobytes() for a in audio], [(s.key, s.audio) for s in unit.segments] + \
            [(r["source_id"], r["reason"]) for r in unit.rejects]

    batched = run()
    monkeypatch.setattr(prepare, "BATCH_SECONDS", 0.0)  # every file alone
    assert run() == batched and len(batched[0]) >= 5
