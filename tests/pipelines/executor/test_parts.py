"""A unit prepared in parts: ASR starts on the first part while the rest is cut, and the unit's
output is the one unit prepared whole gives."""
import shutil

import pyarrow.parquet as pq
import pytest

from pipelines.executor import ray as ray_executor
from pipelines.job import run_job
from pipelines.records import SourceFile
from tests.conftest import small_units_config

CLIPS = ("LJ002-0020.wav", "LJ002-0035.wav", "jfk.flac")


def test_parts_follow_file_order_and_audio_length():
    files = [SourceFile(f"f{n}", f"/x/{n}.wav", duration=d) for n, d in enumerate([100, 150, 100, 400, 20, 30])]
    parts = ray_executor.unit_parts(files, seconds=300)
    assert [[f.id for f in p] for p in parts] == [["f0", "f1"], ["f2"], ["f3"], ["f4", "f5"]]
    assert ray_executor.unit_parts(files, seconds=1e9) == [files]


def _rows(output) -> list[tuple]:
    table = pq.read_table(output / "index", columns=["key", "text", "source_uri"])
    return sorted(zip(*(table[c].to_pylist() for c in ("key", "text", "source_uri"))))


@pytest.fixture
def source(clips, tmp_path):
    """Three clips in a folder of their own: one unit."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in CLIPS:
        shutil.copy(clips / name, folder / name)
    return folder


def test_a_unit_in_parts_gives_the_output_of_the_whole_unit(source, local_ray, tmp_path, monkeypatch):
    split, parts = ray_executor.unit_parts, []
    outputs = {}
    for name, part_seconds in (("whole", 1e9), ("parts", 1.0)):
        monkeypatch.setattr(ray_executor, "unit_parts", lambda files, s=part_seconds: parts.append(split(files, s))
                            or parts[-1])
        outputs[name] = tmp_path / name
        summary = run_job(small_units_config(str(source), str(outputs[name]), **{"engine.unit_minutes": 60}))
        assert summary["complete"] and summary["counts"]["units"] == 1
    assert [len(p) for p in parts] == [1, len(CLIPS)]  # one part per clip in the second run
    assert _rows(outputs["parts"]) == _rows(outputs["whole"]) and len(_rows(outputs["whole"])) >= len(CLIPS)
    assert not list((outputs["parts"] / "_ledger" / "asr").glob("*"))  # the parts' journals went at commit


def test_part_shares_split_a_unit_of_fewer_parts_than_actors():
    from pipelines.state.units import part_shares

    assert part_shares(300.5, 2) == 2  # one long file: one part, split between two one-thread actors
    assert part_shares(302.0, 2) == 2  # cut 300 + 2 s: one part's worth of audio
    assert part_shares(1800.0, 2) == 1 and part_shares(600.0, 8) == 4 and part_shares(30.0, 1) == 1
    assert part_shares(15.0, 2) == 1 and part_shares(250.0, 8) == 2  # a share gets at least 120 s of audio


def test_a_part_split_between_actors_gives_the_output_of_one_actor(source, local_ray, tmp_path, monkeypatch):
    """Each actor transcribes a run of the part's segments; the commit joins them in order."""
    from pipelines.state import units

    monkeypatch.setattr(units, "SHARE_MIN_SECONDS", 1.0)  # the three clips are ~30 s: let them split
    shares, decided = ray_executor.part_shares, []
    monkeypatch.setattr(ray_executor, "part_shares", lambda *a: decided.append(shares(*a)) or decided[-1])
    outputs = {}
    for actors in (1, 2):
        outputs[actors] = tmp_path / f"actors{actors}"
        config = small_units_config(str(source), str(outputs[actors]),
                                    **{"engine.unit_minutes": 60, "engine.asr_actors": actors})
        summary = run_job(config)
        assert summary["complete"] and summary["resources"]["asr_actors"] == actors
    assert decided == [1, 2]
    assert _rows(outputs[2]) == _rows(outputs[1]) and len(_rows(outputs[1])) >= len(CLIPS)
