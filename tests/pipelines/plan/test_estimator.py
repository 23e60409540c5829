"""The estimator: pipeline model on known stage costs, sampling, deadlines, limits, history."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from pipelines.executor.base import resources_for
from pipelines.plan import history
from pipelines.plan.calibrate import stratified_sample
from pipelines.plan.estimator import (
    PROBE_SPREAD,
    QUICK_BOUND,
    fit_deadline,
    predict,
    size_from_manifest,
    size_from_sample,
)
from pipelines.plan.load import differs, read_load
from pipelines.plan.planning import LimitExceeded, check_limits, parse_duration, plan_job
from pipelines.stages.discover import InputError
from schemas.config import load_job_config
from schemas.plan import DataProfile, HardwareProfile, LoadReading
from schemas.tables import MANIFEST_SCHEMA

HOUR = 3600.0


def _hardware(**changes) -> HardwareProfile:
    values = dict(name="test-gpu", cpu_model="test", cpus=8, gpus=1, gpu_name="test", asr_model="tiny.en",
                  compute_type="float16", device="cuda", batch_size=16, prep_seconds_per_input_second=0.01,
                  asr_seconds_per_segment=0.5, write_seconds_per_unit=1.0, ray_start_seconds=5.0,
                  model_load_seconds=10.0, measured_on_seconds=600.0, measured_at="2026-01-01")
    return HardwareProfile(**{**values, **changes})


DATA = DataProfile(speech_fraction=0.5, segments_per_speech_second=0.25, kept_fraction=1.0,
                   output_bytes_per_output_second=30000.0, sample_seconds=100.0, sample_files=10)


def _manifest(durations: list[float], container: str = "flac") -> pa.Table:
    n = len(durations)
    return pa.Table.from_pylist([
        {"id": f"f{i}", "uri": f"/data/f{i}.{container}", "bytes": int(d * 32000), "container": container,
         "codec": "pcm_16", "sample_rate": 16000, "channels": 1, "duration": d, "error": None}
        for i, d in enumerate(durations)], schema=MANIFEST_SCHEMA) if n else MANIFEST_SCHEMA.empty_table()


@pytest.fixture
def config(tmp_path):
    return load_job_config("/in", "/out", overrides={
        "engine.unit_minutes": 60, "plan.history_path": str(tmp_path / "history.jsonl"),
        "plan.profiles_dir": str(tmp_path / "profiles")})


def test_wall_time_follows_the_bottleneck_stage(config):
    size = size_from_manifest(_manifest([3600.0] * 10))  # 10 h in 10 units of 1 h
    plan = predict(config, size, _hardware(), DATA, resources_for(cpus=9, gpus=2, config=config.engine))
    asr = 36000 * 0.5 * 0.25 * 0.5 / 2  # speech * segments/s * s/segment / actors
    prep = 36000 * 0.01 / 7
    assert plan.bottleneck == "asr"
    stages = {s.name: s for s in plan.stages}
    assert stages["asr"].seconds == pytest.approx(asr) and stages["prep"].seconds == pytest.approx(prep)
    assert stages["asr"].workers == 2 and stages["prep"].workers == 7 and stages["asr"].utilisation == 1.0
    fill, tail = 300 * 0.01, 1.0  # one 5-min piece's prep before ASR starts, one unit's write after it ends
    assert plan.wall_seconds == pytest.approx(15.0 + asr + fill + tail)
    assert plan.gpu_hours == pytest.approx(plan.wall_seconds * 2 / HOUR)
    assert plan.cost == pytest.approx(plan.gpu_hours * 2.5 + plan.cpu_hours * 0.05)
    assert plan.wall_seconds_low < plan.wall_seconds < plan.wall_seconds_high


def test_more_gpus_move_the_bottleneck_to_the_cpus(config):
    size = size_from_manifest(_manifest([3600.0] * 10))
    few = predict(config, size, _hardware(), DATA, resources_for(cpus=3, gpus=2, config=config.engine))
    many = predict(config, size, _hardware(), DATA, resources_for(cpus=3, gpus=64, config=config.engine))
    assert few.bottleneck == "asr" and many.bottleneck == "prep"
    assert many.wall_seconds < few.wall_seconds


def test_on_cpus_alone_prep_slows_asr_down_and_keeps_its_own_speed(config):
    """No GPU: the ASR actors' threads use every core, so ASR runs slower while prep is busy, by
    prep's busy time (all but the first 5-min piece's) x its share of the time-shared cores
    (prep workers / (prep workers + ASR threads)); the prep workers keep a core each (scoring ran
    as fast beside ASR as alone in the accuracy runs)."""
    size = size_from_manifest(_manifest([3600.0] * 10))
    cpu = _hardware(name="cpu", cpus=2, gpus=0, gpu_name=None, device="cpu", compute_type="int8")
    resources = resources_for(cpus=2, gpus=0, config=config.engine)  # 2 one-thread ASR actors, 1 prep worker
    assert (resources.asr_actors, resources.prep_workers) == (2, 1)
    asr = 36000 * 0.5 * 0.25 * 0.5 / 2  # each actor's busy seconds
    heavy_prep = predict(config, size, cpu.model_copy(update={"prep_seconds_per_input_second": 0.2}), DATA, resources)
    stages = {s.name: s.seconds for s in heavy_prep.stages}
    assert heavy_prep.bottleneck == "prep"
    assert stages["prep"] == pytest.approx(36000 * 0.2)
    light_prep = predict(config, size, cpu, DATA, resources)
    stages = {s.name: s.seconds for s in light_prep.stages}
    assert light_prep.bottleneck == "asr"  # the first unit's prep is the fill
    assert stages["asr"] == pytest.approx(asr + (36000 * 0.01 - 300 * 0.01 + 10 * 1.0) / 3)


def test_sampled_headers_extrapolate_with_an_interval_that_holds_the_truth():
    rng = np.random.default_rng(1)
    truth = rng.lognormal(2.0, 0.8, 100_000)
    sizes = (truth * 32000 * rng.uniform(0.9, 1.1, truth.size)).astype(np.int64)  # bytes ~ duration
    extensions = np.where(rng.random(truth.size) < 0.5, "flac", "wav")
    positions = np.sort(rng.choice(truth.size, 2000, replace=False))
    sample = _manifest(list(truth[positions]))
    size = size_from_sample(sizes, extensions, sample, positions)
    assert size.method == "sampled" and size.files == 100_000 and size.headers_read == 2000
    assert size.audio_seconds_low <= truth.sum() <= size.audio_seconds_high
    assert (size.audio_seconds_high - size.audio_seconds_low) / truth.sum() < 0.05


def test_deadline_mode_finds_the_fewest_gpus(config):
    size = size_from_manifest(_manifest([3600.0] * 100))  # 100 h
    deadline = 6 * HOUR
    hardware = _hardware(prep_seconds_per_input_second=0.2)  # 72,000 CPU-seconds of prep
    plan = fit_deadline(config, size, hardware, DATA, deadline)
    assert plan is not None and plan.wall_seconds <= deadline and plan.deadline_seconds == deadline
    gpus, cpus = plan.resources["gpus"], plan.resources["cpus"]
    assert gpus >= 2 and plan.resources["prep_workers"] >= 4
    fewer_gpus = predict(config, size, hardware, DATA, resources_for(cpus + 512, gpus - 1, config.engine))
    fewer_cpus = predict(config, size, hardware, DATA, resources_for(cpus - 1, gpus, config.engine))
    assert fewer_gpus.wall_seconds > deadline and fewer_cpus.wall_seconds > deadline


def test_deadline_on_a_cpu_profile_counts_whole_nodes(config):
    cpu = _hardware(gpus=0, gpu_name=None, device="cpu", cpus=2, asr_seconds_per_segment=1.0)
    size = size_from_manifest(_manifest([3600.0] * 20))
    plan = fit_deadline(config, size, cpu, DATA, HOUR)  # 9,000 s of ASR: 4,500 s on a node's two actors
    nodes = plan.resources["nodes"]
    assert plan.resources["cpus"] == 2 * nodes and plan.resources["asr_actors"] == 2 * nodes
    assert plan.wall_seconds <= HOUR
    assert nodes > 1 and predict(config, size, cpu, DATA, resources_for(2 * (nodes - 1), 0, config.engine,
                                                                         nodes - 1)).wall_seconds > HOUR


def test_limits_stop_before_work(config):
    size = size_from_manifest(_manifest([3600.0] * 10))
    plan = predict(config, size, _hardware(), DATA, resources_for(9, 2, config.engine))
    check_limits(config, plan)  # no limits set: passes
    strict = config.model_copy(update={"plan": config.plan.model_copy(update={"max_wall_hours": 0.01})})
    with pytest.raises(LimitExceeded, match="exceeds max_wall_hours"):
        check_limits(strict, plan)
    cheap = config.model_copy(update={"plan": config.plan.model_copy(update={"max_cost": 0.001})})
    with pytest.raises(LimitExceeded, match="exceeds max_cost"):
        check_limits(cheap, plan)


def test_history_corrects_the_next_estimate(config):
    size = size_from_manifest(_manifest([3600.0] * 10))
    resources = resources_for(9, 2, config.engine)
    first = predict(config, size, _hardware(), DATA, resources).model_dump(mode="json")
    for ratio in (1.25, 1.3, 1.2):
        summary = {"finished_at": "2026-01-01T00:00:00", "config": {"output": "/out"}, "input_hours": 10.0,
                   "wall_seconds": first["wall_seconds"] * ratio, "stage_seconds": {"asr": 1.0}}
        history.append(config.plan.history_path, history.record(first, summary))
    records = history.read(config.plan.history_path)
    factor, error, runs = history.correction(records, _hardware())
    assert runs == 3 and factor == pytest.approx(1.25 ** 0.75) and 0.02 <= error < 0.1  # shrunk: 3 runs
    corrected = predict(config, size, _hardware(), DATA, resources, correction=factor, history_error=error,
                        history_runs=runs)
    assert corrected.wall_seconds == pytest.approx(first["wall_seconds"] * 1.25 ** 0.75)
    assert history.correction(records, "another-machine") == (1.0, None, 0)
    # once the profile learned from runs, its costs hold those runs: only plans made on learned costs
    # correct it (their residuals), never the ratios of plans on the bare calibration
    assert history.correction(records, _hardware(learned_runs=1)) == (1.0, None, 0)
    learned = predict(config, size, _hardware(learned_runs=1), DATA, resources).model_dump(mode="json")
    summary = {"finished_at": "2026-01-02T00:00:00", "config": {"output": "/out"}, "input_hours": 10.0,
               "wall_seconds": learned["wall_seconds"] * 0.9, "stage_seconds": {"asr": 1.0}}
    history.append(config.plan.history_path, history.record(learned, summary))
    factor, error, runs = history.correction(history.read(config.plan.history_path), _hardware(learned_runs=1))
    assert runs == 1 and error is None and factor == pytest.approx(0.9 ** 0.5)


def test_stratified_sample_respects_budget_and_cuts_long_files():
    manifest = pa.concat_tables([_manifest([5.0] * 200), _manifest([600.0] * 3, container="wav")])
    sample = stratified_sample(manifest, budget_seconds=120, excerpt_seconds=30)
    total = sum(s.duration for s in sample)
    assert 100 <= total <= 160
    long_ones = [s for s in sample if s.uri.endswith(".wav")]
    assert long_ones and all(s.limit and s.limit <= 30 and 0 <= s.offset <= 570 for s in long_ones)
    assert any(s.uri.endswith(".flac") for s in sample)


def test_empty_or_unreadable_input_is_a_clear_error(config, tmp_path):
    with pytest.raises(InputError, match="no audio files"):
        plan_job(config.model_copy(update={"input": str(tmp_path)}))
    (tmp_path / "bad.wav").write_bytes(b"RIFF....not really a wave file")
    with pytest.raises(ValueError, match="no readable audio"):
        plan_job(config.model_copy(update={"input": str(tmp_path)}))


def test_parse_duration():
    assert [parse_duration(t) for t in ("24h", "90m", "3600s", "1.5d", "120")] == [86400, 5400, 3600, 129600, 120]


def test_plan_json_round_trips(config):
    size = size_from_manifest(_manifest([5.0, 20.0]))
    plan = predict(config, size, _hardware(), DATA, resources_for(9, 1, config.engine))
    assert json.loads(plan.model_dump_json())["input"]["breakdown"]["duration"]["10-60s"]["files"] == 1


def test_cpu_asr_shares_its_cores_with_prep(config):
    """On a CPU-only profile the ASR actors (one a core) thread over every core, so prep's CPU time
    lengthens the ASR stage by its share of the time-shared cores; with a GPU it does not."""
    size = size_from_manifest(_manifest([3600.0] * 10))
    cpu = _hardware(name="test-cpu", gpus=0, gpu_name=None, device="cpu", cpus=4)
    resources = resources_for(cpus=4, gpus=0, config=config.engine)
    assert (resources.asr_actors, resources.prep_workers) == (4, 3)
    plan = predict(config, size, cpu, DATA, resources)
    busy = 36000 * 0.5 * 0.25 * 0.5  # ASR's busy seconds, shared by the actors
    prep_busy = (36000 * 0.01 - 300 * 0.01 + 10 * 1.0) / 3  # per prep worker (but the first piece's), + write
    stages = {s.name: s for s in plan.stages}
    assert stages["asr"].seconds == pytest.approx(busy / 4 + prep_busy * 3 / (3 + 4))
    gpu = predict(config, size, _hardware(), DATA, resources_for(cpus=4, gpus=1, config=config.engine))
    assert {s.name: s for s in gpu.stages}["asr"].seconds == pytest.approx(busy)  # one actor, on the GPU
    # measured: the probe found ASR keeps 80% of its speed on the cores the prep workers leave it
    measured = predict(config, size, cpu.model_copy(update={"asr_speed_beside_prep": 0.8}), DATA, resources)
    assert {s.name: s for s in measured.stages}["asr"].seconds == pytest.approx(busy / 4 + prep_busy * 0.2)


def test_a_small_asr_probe_widens_the_interval_until_history_narrows_it(config):
    """A probe of 9 segments leaves the ASR rate uncertain by PROBE_SPREAD / 3 (sd): the 95%
    interval must say so; past runs on the profile replace that guess with what they measured."""
    size = size_from_manifest(_manifest([3600.0] * 10))
    resources = resources_for(cpus=9, gpus=2, config=config.engine)
    plain = predict(config, size, _hardware(), DATA, resources)
    probed = predict(config, size, _hardware(asr_seconds_per_speech_second=0.06, asr_probe_segments=9), DATA, resources)
    spread = math.log(probed.wall_seconds_high / probed.wall_seconds) / 1.96
    assert spread == pytest.approx((0.07**2 + (PROBE_SPREAD / 3) ** 2) ** 0.5)
    assert probed.wall_seconds_low == pytest.approx(probed.wall_seconds / math.exp(1.96 * spread))
    assert spread > math.log(plain.wall_seconds_high / plain.wall_seconds) / 1.96
    learned = predict(config, size, _hardware(asr_seconds_per_speech_second=0.06, asr_probe_segments=9), DATA,
                      resources, history_error=0.05, history_runs=3)
    assert learned.wall_seconds_high / learned.wall_seconds == pytest.approx(math.exp(1.96 * 0.05))


def test_the_interval_widens_with_what_is_unknown_and_never_goes_below_zero(config):
    """Log-normal: an untrusted profile (too little audio measured) and a quick bound (none) widen
    it; the newcomer's plan of 46 s used to print -1:59:05 as its low end."""
    size = size_from_manifest(_manifest([20.0] * 15))
    resources = resources_for(cpus=2, gpus=0, config=config.engine)
    cpu = dict(name="cpu", cpus=2, gpus=0, gpu_name=None, device="cpu", asr_seconds_per_speech_second=0.3,
               asr_probe_segments=1)
    widths = {}
    for label, changes in {"trusted": {}, "untrusted": {"measured_on_seconds": 11.7},
                           "quick": {"measured_on_seconds": 0.0, "source": QUICK_BOUND}}.items():
        plan = predict(config, size, _hardware(**cpu, **changes), DATA, resources)
        assert 0 < plan.wall_seconds_low < plan.wall_seconds < plan.wall_seconds_high
        assert plan.wall_seconds_low * plan.wall_seconds_high == pytest.approx(plan.wall_seconds**2)
        widths[label] = plan.wall_seconds_high / plan.wall_seconds_low
        if label != "trusted":
            assert any(label.replace("quick", "quick bound") in note for note in plan.notes), plan.notes
    assert widths["trusted"] < widths["untrusted"] < widths["quick"]


def test_a_busier_machine_than_at_calibration_slows_the_cpu_stages_and_says_so(config):
    size = size_from_manifest(_manifest([3600.0] * 10))
    quiet, busy = LoadReading(load=0.0, cores=2, cpu_share=1.0), LoadReading(load=2.0, cores=2, cpu_share=0.5)
    cpu = _hardware(name="cpu", cpus=2, gpus=0, gpu_name=None, device="cpu", load=quiet)
    resources = resources_for(cpus=2, gpus=0, config=config.engine)
    same = predict(config, size, cpu, DATA, resources, load=quiet)
    loaded = predict(config, size, cpu, DATA, resources, load=busy)
    startup = cpu.ray_start_seconds + cpu.model_load_seconds
    assert loaded.wall_seconds - startup == pytest.approx(2**0.5 * (same.wall_seconds - startup), rel=0.01)  # damped
    assert loaded.load == busy and not same.notes
    assert any("CPU share 100% then, 50% now" in note for note in loaded.notes)
    assert loaded.wall_seconds_high / loaded.wall_seconds > same.wall_seconds_high / same.wall_seconds
    gpu = predict(config, size, _hardware(load=quiet), DATA, resources_for(9, 2, config.engine), load=busy)
    asr = {s.name: s.seconds for s in gpu.stages}["asr"]  # a GPU's ASR does not slow with the CPUs
    assert asr == pytest.approx(36000 * 0.5 * 0.25 * 0.5 / 2)
    assert differs(quiet, LoadReading(load=0.3, cores=2, cpu_share=0.87)) is None


def test_load_is_read_from_this_machine():
    reading = read_load()
    assert reading.cores > 0 and reading.load >= 0 and 0 < reading.cpu_share <= 1


def test_a_run_moves_the_profile_costs_by_the_audio_it_measured():
    """refine: the run's per-unit costs blend in by audio (the profile's older audio capped), busy
    seconds measured at another CPU share are converted to the profile's, and on a GPU profile no
    contention is taken out."""
    from pipelines.plan.learn import refine

    quiet, busy = LoadReading(load=0.0, cores=2, cpu_share=1.0), LoadReading(load=6.0, cores=2, cpu_share=0.25)
    profile = _hardware(measured_on_seconds=300.0, load=quiet, asr_seconds_per_speech_second=0.02,
                        asr_probe_segments=10, dnsmos_seconds_per_window=0.3, quality_seconds_per_input_second=0.005)
    summary = {"this_run": {"input_seconds": 900.0, "speech_seconds": 450.0, "segments": 120, "units": 3},
               "counts": {"units_processed": 3}, "resources": {"cpus": 9, "gpus": 2, "prep_workers": 7, "asr_actors": 2},
               "stage_seconds": {"decode": 30.0, "vad": 6.0, "quality": 54.0, "asr": 36.0, "write": 6.0},
               "startup_seconds": 15.0}
    plan = {"load": busy.model_dump(), "data": {"dnsmos_windows_per_input_second": 0.2}}
    learned = refine(profile, summary, plan)
    weight, share = 900 / 1200, 0.5  # 900 s new against 300 s old; sqrt of the shares 0.25 / 1.0
    assert learned.prep_seconds_per_input_second == pytest.approx(0.01 + weight * (90 * share / 900 - 0.01))
    assert learned.asr_seconds_per_speech_second == pytest.approx(0.02 + weight * (36 * share / 450 - 0.02))
    assert learned.dnsmos_seconds_per_window == pytest.approx(0.3 + weight * (54 * share / 900 / 0.2 - 0.3))
    assert learned.write_seconds_per_unit == pytest.approx(1.0 + weight * (2.0 - 1.0))
    assert (learned.learned_runs, learned.learned_seconds, learned.asr_probe_segments) == (1, 900.0, 130)
    assert learned.load == quiet and learned.measured_on_seconds == 300.0
    nothing = {**summary, "this_run": {"input_seconds": 0.0, "units": 0}, "counts": {"units_processed": 0}}
    assert refine(profile, nothing, plan) is None


def test_without_gpus_the_contention_the_estimator_adds_is_taken_out_of_a_runs_seconds(config):
    """The estimator stretches ASR by prep's busy time beside it x prep workers / cores; a run's busy
    seconds hold that stretch, so learning takes it out: pricing the learned costs again gives back
    the run's stage times, not more. Prep is not stretched, so nothing is taken out of it."""
    from pipelines.plan.learn import _own_busy

    resources = {"cpus": 2, "gpus": 0, "prep_workers": 1, "asr_actors": 1}
    stages = {"decode": 40.0, "quality": 60.0, "asr": 100.0, "write": 4.0}
    own = _own_busy(stages, resources, units=2, input_seconds=3000.0)  # 10 pieces of 5 min
    overlap = 0.9  # all but one piece's worth runs beside the other stage
    assert own["prep"] == pytest.approx(100.0)
    assert own["asr"] + overlap * (own["prep"] + own["write"]) / 2 == pytest.approx(100.0)
    alone = {"prep": 100.0, "asr": 100.0, "write": 4.0}
    assert _own_busy(stages, {**resources, "gpus": 1}, units=2, input_seconds=3000.0) == alone
    assert _own_busy(stages, resources, units=1, input_seconds=300.0) == alone  # one piece: nothing overlaps
