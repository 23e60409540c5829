"""Long recordings are cut into excerpts (bounded memory) without losing or doubling a segment.

Speech is placed right across each excerpt edge: the excerpt that holds a segment's start owns
it, the next one sees it in its overlap and leaves it, so the segments equal a whole-file pass.
"""
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import soundfile as sf

from pipelines.job import run_job
from pipelines.records import SourceFile
from pipelines.stages.audio import Resampler, decode
from pipelines.stages.discover import Discover
from pipelines.stages.prepare import Preparer
from pipelines.state.units import plan_units
from schemas.config import AudioConfig, DiscoverConfig, EngineConfig, JobConfig
from tests.conftest import REAL_ASR
from tests.fakes import FAKE_ASR

RATE = 44100
MINUTES = 4
# (clip, start second): each of the edges at 60, 120 and 180 s falls inside a clip
LAYOUT = [("jfk.flac", 5.0), ("2412-153948-0000.flac", 55.0), ("LJ002-0035.wav", 85.0),
          ("jfk.flac", 114.0), ("common_voice_en_651325.mp3", 150.0), ("2412-153948-0000.flac", 175.0),
          ("LJ002-0020.wav", 230.0)]


@pytest.fixture(scope="module")
def long_recordings(clips, tmp_path_factory):
    """A 4-minute 44.1 kHz stereo FLAC of real speech and silence, and the same as Opus."""
    folder = tmp_path_factory.mktemp("long")
    noise = np.random.default_rng(0).normal(0, 1e-4, (MINUTES * 60 * RATE, 2)).astype(np.float32)
    for name, start in LAYOUT:
        with open(clips / name, "rb") as fh:
            speech = Resampler(AudioConfig())(decode(fh), RATE).samples
        at = int(start * RATE)
        noise[at : at + len(speech)] += speech[:, None]
    sf.write(folder / "meeting.flac", noise, RATE)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(folder / "meeting.flac"),
                    "-c:a", "libopus", str(folder / "meeting.opus")], check=True)
    return folder


def _prepare(sources: list[SourceFile]):
    # segments only: quality scores (DNSMOS, most of prep's time) change no span
    preparer = Preparer(JobConfig(input="-", output="-", quality={"enabled": False}))
    preparer.setup()
    prepared = [preparer(0, [source])[1] for source in sources]
    segments = [seg for unit in prepared for seg in unit.segments]
    return segments, sum(unit.input_seconds for unit in prepared), [r for u in prepared for r in u.rejects]


@pytest.mark.parametrize("name", ["meeting.flac", "meeting.opus"])
def test_excerpts_give_the_segments_of_a_whole_file_pass(long_recordings, name):
    manifest = Discover(DiscoverConfig())(str(long_recordings / name))
    (unit,) = plan_units(manifest, EngineConfig(unit_minutes=60))
    (row,) = manifest.to_pylist()
    whole, whole_seconds, _ = _prepare([SourceFile(row["id"], row["uri"], row["duration"])])

    (excerpted,) = plan_units(manifest, EngineConfig(unit_minutes=60, excerpt_minutes=1))
    assert [f.offset for f in excerpted.files] == pytest.approx([0, 60, 120, 180])
    pieces, piece_seconds, rejects = _prepare(excerpted.files)

    assert len(whole) >= len(LAYOUT) and not rejects
    # the same spans, none lost or doubled; an edge may move by one 32 ms VAD window, because
    # resampling and Silero's state start afresh at the excerpt's first decoded sample
    assert len(pieces) == len(whole)
    for piece, span in zip(pieces, whole):
        assert piece.start == pytest.approx(span.start, abs=0.033)
        assert piece.end == pytest.approx(span.end, abs=0.033)
    assert piece_seconds == pytest.approx(whole_seconds, abs=0.05) == pytest.approx(MINUTES * 60, abs=0.1)
    assert excerpted.digest != unit.digest  # a different plan is a different unit for the ledger


def _excerpt_job(long_recordings: Path, output: Path, backend: str) -> tuple[JobConfig, dict, list[dict]]:
    config = JobConfig.model_validate({
        "input": str(long_recordings / "meeting.flac"), "output": str(output),
        "engine": {"unit_minutes": 1, "excerpt_minutes": 1}, "asr": {"backend": backend},
        "quality": {"enabled": False},  # no filter may drop a segment here; DNSMOS would be most of the time
    })
    summary = run_job(config)
    return config, summary, ds.dataset(str(output / "index"), format="parquet").to_table().to_pylist()


def test_a_job_over_excerpts_indexes_each_segment_once(long_recordings, local_ray, tmp_path):
    config, summary, index = _excerpt_job(long_recordings, tmp_path / "out", FAKE_ASR)
    manifest = Discover(DiscoverConfig())(config.input)
    (row,) = manifest.to_pylist()
    whole, _, _ = _prepare([SourceFile(row["id"], row["uri"], row["duration"])])
    assert summary["complete"] and summary["counts"]["units"] == 4
    assert len(index) == len({row["key"] for row in index}) == len(whole)
    starts = sorted(row["start"] for row in index)
    assert starts == pytest.approx([s.start for s in whole], abs=0.033)


@pytest.mark.slow
def test_words_at_excerpt_edges_are_transcribed(long_recordings, local_ray, tmp_path):
    """The real model over the excerpts: the words of the repeated JFK sentence come out whole."""
    _, summary, index = _excerpt_job(long_recordings, tmp_path / "out", REAL_ASR)
    assert summary["complete"]
    words = re.sub(r"[^a-z ]", " ", " ".join(row["text"].lower() for row in index)).split()
    assert "ask not what your country can do for you" in " ".join(words)
