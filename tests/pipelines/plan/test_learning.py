"""The plan learns from every run, prices only pending work, and never calibrates for a small job.

Real jobs on the bundled clips with the fake ASR backend (the point is the plan, not ASR cost),
on the session's Ray.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest

from pipelines.job import run_job
from pipelines.plan.calibrate import machine_key
from pipelines.plan.estimator import QUICK_BOUND, trusted
from pipelines.plan.learn import LEARNED
from pipelines.plan.planning import load_profile, plan_job, profile_path, save_profile
from schemas.config import load_job_config
from schemas.plan import Calibration
from tests.fakes import OVERRIDES as FAKE_ASR

FIRST = ("2412-153948-0000.flac", "jfk.flac", "LJ002-0020.wav", "stereo.mp3")


def _config(tmp_path, source, **overrides):
    return load_job_config(str(source), str(tmp_path / "out"), overrides={
        **FAKE_ASR, "engine.unit_minutes": 0.5, "plan.profiles_dir": str(tmp_path / "profiles"),
        "plan.history_path": str(tmp_path / "history.jsonl"), **overrides})


def _history(tmp_path) -> list[dict]:
    path = tmp_path / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow  # three jobs in a row (about 25 s on a quiet machine)
def test_a_small_job_learns_its_profile_from_its_runs_and_plans_only_new_files(clips, local_ray, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for name in FIRST:
        shutil.copy(clips / name, source / name)
    config = _config(tmp_path, source)
    own = profile_path(config, machine_key(config, 0))

    # no profile, a job under plan.calibrate_above_seconds: a quick bound, said so, nothing calibrated
    first, manifest = plan_job(config)
    assert first.hardware.source == QUICK_BOUND and not own.exists()
    assert any("quick bound" in note for note in first.notes)
    assert 0 < first.wall_seconds_low < first.wall_seconds < first.wall_seconds_high
    summary = run_job(config, manifest=manifest, plan=first.model_dump(mode="json"))

    # the run measured this machine: its costs became the profile (all of them: nothing older)
    learned = load_profile(config, str(own)).hardware
    run = summary["this_run"]
    assert learned.source == LEARNED and learned.learned_runs == 1
    assert learned.learned_seconds == pytest.approx(run["input_seconds"])
    prep = sum(summary["stage_seconds"].get(s, 0.0) for s in ("decode", "resample", "vad", "encode", "quality",
                                                              "journal"))
    assert learned.prep_seconds_per_input_second == pytest.approx(prep / run["input_seconds"], rel=0.8)
    assert learned.asr_seconds_per_speech_second < 0.045 / 4  # the fake ASR is near free; the bound was not
    record = _history(tmp_path)[-1]
    assert record["run_load"]["cores"] > 0 and record["profile_learned_runs"] == 0

    # new files: only they are priced, on the learned (still untrusted: little audio) profile
    for name in sorted(p.name for p in clips.iterdir() if p.suffix != ".jsonl" and p.suffix != ".md"):
        if name not in FIRST:
            shutil.copy(clips / name, source / name)
    second, manifest = plan_job(config)
    assert second.pending_files == 7 and second.input.files == 7
    assert second.hardware.source == LEARNED and not trusted(second.hardware)
    assert any("only pending work is priced (7 new files, 0 unfinished units)" in n for n in second.notes), second.notes
    assert any("untrusted profile" in n for n in second.notes)
    again = run_job(config, manifest=manifest, plan=second.model_dump(mode="json"))
    assert again["counts"]["units_processed"] > 0
    assert second.wall_seconds_low <= again["wall_seconds"] <= second.wall_seconds_high
    assert load_profile(config, str(own)).hardware.learned_runs == 2

    # a rerun of the finished output: nothing to price, and nothing recorded or learned
    records = len(_history(tmp_path))
    third, manifest = plan_job(config)
    assert third.pending_files == 0 and third.wall_seconds == 0.0 and "nothing to do" in third.notes[-1], third.notes
    done = run_job(config, manifest=manifest, plan=third.model_dump(mode="json"))
    assert done["counts"]["units_processed"] == 0 and "history" not in done
    assert len(_history(tmp_path)) == records and load_profile(config, str(own)).hardware.learned_runs == 2


@pytest.mark.slow  # a calibration: Ray units and the ASR probe
def test_a_profile_measured_on_too_little_audio_is_topped_up(clips, local_ray, tmp_path):
    """A trusted profile is used as saved; an untrusted one is topped up by a calibration on an
    input worth one (here: above a lowered plan.calibrate_above_seconds)."""
    # one two-thread actor: the probe can time it on the thread prep leaves (one-thread actors have none)
    config = _config(tmp_path, clips, **{"plan.calibrate_above_seconds": 30, "engine.asr_actors": 1})
    quick, _ = plan_job(config.model_copy(update={"plan": config.plan.model_copy(
        update={"calibrate_above_seconds": 1e9})}))
    thin = quick.hardware.model_copy(update={"source": "calibration", "measured_on_seconds": 4.0,
                                             "asr_probe_segments": 1})
    save_profile(config, Calibration(hardware=thin, data=quick.data))
    plan, _ = plan_job(config)
    topped = load_profile(config, str(profile_path(config, thin.name))).hardware
    assert topped.measured_on_seconds > 4.0 and topped.asr_probe_segments > 1 and topped.load is not None
    assert topped.asr_speed_beside_prep > 0  # the probe timed ASR on the cores prep leaves it (a ratio of times)
    assert plan.hardware.measured_on_seconds == topped.measured_on_seconds
    assert any("topped up" in note for note in plan.notes)
    assert not math.isclose(topped.asr_seconds_per_speech_second, thin.asr_seconds_per_speech_second)
