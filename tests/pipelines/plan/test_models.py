"""Shipped model cost profiles: names resolve, benchmark output merges in, plans price a model
they never download, and a figure nobody measured is refused, never guessed."""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from benchmarks.model_costs import MODELS, WHISPER
from flows import cli
from pipelines.plan import models
from schemas.plan import Calibration, DataProfile, HardwareProfile

GPU_RESULT = {  # the shape benchmarks/gpu_session.py writes
    "kind": "gpu", "command": "python benchmarks/gpu_session.py --out OUT",
    "models": {"large-v3-turbo": {
        "seconds_per_speech_second": 0.002, "device": "cuda", "hardware": "NVIDIA H200", "engine": "transformers float16",
        "batch_size": 32, "windows": 64, "speech_seconds": 1300.0, "tokens": 3900, "measured_at": "2026-12-01T00:00:00",
    }},
}


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """The shipped profiles, copied so a test can merge into them."""
    path = tmp_path / "model_profiles.json"
    shutil.copy(models.SHIPPED, path)
    monkeypatch.setattr(models, "SHIPPED", path)
    return path


def test_every_benchmarked_model_is_shipped_with_its_published_shape():
    shipped = models.load()
    assert sorted(shipped.models) == sorted(MODELS)
    for name, (d_model, encoder, decoder, *_rest) in WHISPER.items():
        dims = shipped.models[name].dimensions
        assert (dims["d_model"], dims["encoder_layers"], dims["decoder_layers"]) == (d_model, encoder, decoder)
    assert shipped.models["large-v3-turbo"].gpu is None  # nothing measured it on a GPU yet


@pytest.mark.parametrize("name", ["large-v3-turbo", "turbo", "openai/whisper-large-v3-turbo", "LARGE-V3-TURBO"])
def test_hub_ids_and_faster_whisper_names_resolve(name):
    assert models.shipped(name).name == "large-v3-turbo"


@pytest.mark.parametrize("name", [None, "", "/models/my-finetune", "someone/whisper-large-v3-turbo-nl"])
def test_paths_and_unknown_models_have_no_profile(name):
    assert models.shipped(name) is None


def test_a_gpu_figure_nobody_measured_is_refused_with_what_to_run():
    profile = models.shipped("large-v3-turbo").model_copy(update={"gpu": None})
    with pytest.raises(models.UnmeasuredModel, match="GPU ASR cost is not measured yet.*gpu_session.py"):
        profile.cost(gpu=True)


def test_gpu_session_output_merges_and_prices_a_gpu_plan(shipped_copy):
    merged = models.merge(GPU_RESULT)
    shipped_copy.write_text(merged.model_dump_json(indent=2))
    profile = models.shipped("large-v3-turbo")
    assert profile.gpu.hardware == "NVIDIA H200" and profile.gpu.command.startswith("python benchmarks/gpu_session")
    calibration = models.priced(_calibration(asr=0.05), profile, gpus=8)
    hardware = calibration.hardware
    assert (hardware.gpus, hardware.device, hardware.gpu_name) == (8, "cuda", "NVIDIA H200")
    assert hardware.asr_seconds_per_speech_second == 0.002 and hardware.asr_model == "large-v3-turbo"
    with pytest.raises(ValueError, match="not a measurement to ship"):
        models.merge({**GPU_RESULT, "kind": "cpu-rehearsal"})
    with pytest.raises(KeyError, match="not a shipped model"):
        models.merge({"kind": "gpu", "models": {"whisper-huge": GPU_RESULT["models"]["large-v3-turbo"]}})


def test_a_gpu_profile_measured_with_tiny_en_prices_a_model_by_its_gpu_ratio(shipped_copy):
    """A GPU session times tiny.en too: a GPU profile calibrated with faster-whisper's tiny.en
    then scales by the model's ratio to it, on that profile's own GPU."""
    tiny = {**GPU_RESULT["models"]["large-v3-turbo"], "seconds_per_speech_second": 0.0005}
    shipped_copy.write_text(models.merge({**GPU_RESULT, "models": {**GPU_RESULT["models"], "tiny.en": tiny}})
                            .model_dump_json(indent=2))
    base = _calibration(asr=0.001)
    base = base.model_copy(update={"hardware": base.hardware.model_copy(update={"gpus": 1, "gpu_name": "H100"})})
    hardware = models.priced(base, models.shipped("turbo"), 2, models.shipped("tiny.en")).hardware
    assert hardware.asr_seconds_per_speech_second == pytest.approx(0.001 * 0.002 / 0.0005)
    assert (hardware.gpus, hardware.gpu_name) == (2, "H100")


def test_cpu_figures_travel_as_ratios_to_the_tiny_en_calibrated_here(shipped_copy):
    cpu = {"kind": "cpu", "command": "python benchmarks/model_costs.py", "models": {
        name: {**GPU_RESULT["models"]["large-v3-turbo"], "device": "cpu", "hardware": "test cpu",
               "engine": "ctranslate2 int8", "seconds_per_speech_second": rate}
        for name, rate in (("tiny.en", 0.1), ("large-v3-turbo", 1.5))}}
    shipped_copy.write_text(models.merge(cpu).model_dump_json(indent=2))
    seen = []

    def measure(config):
        seen.append(config.asr.model)
        return _calibration(asr=0.04)  # this machine's tiny.en is 2.5x faster than the profiled CPU's

    from schemas.config import load_job_config

    config = load_job_config("/in", "/out", overrides={"asr.model": "large-v3-turbo"})
    calibration = models.costs_for(config, lambda: 0, measure)
    assert seen == [None]  # measured with the bundled model: large-v3-turbo was never loaded
    assert calibration.hardware.asr_seconds_per_speech_second == pytest.approx(0.04 * 1.5 / 0.1)
    assert calibration.hardware.gpus == 0
    models.costs_for(config, lambda: 8, measure)  # no GPU figure: `voxmill run` calibrates the model itself
    assert seen == [None, "large-v3-turbo"]
    with pytest.raises(models.UnmeasuredModel):  # `voxmill plan` says so first, and loads nothing
        models.check_priced("large-v3-turbo", 8)
    assert models.check_priced("large-v3-turbo", 0) and not models.check_priced("/models/mine", 8)


def test_voxmill_plan_prices_a_model_it_never_downloads(clips, tmp_path, monkeypatch):
    """`voxmill plan --model large-v3-turbo`: on CPU from the shipped profile; `--gpus 8` is refused
    (no GPU measured it) until a GPU session's figures are merged, then answered."""
    import faster_whisper.utils

    def no_download(*args, **kwargs):
        raise AssertionError("the plan tried to fetch a model")

    monkeypatch.setattr(faster_whisper.utils, "download_model", no_download)
    path = tmp_path / "model_profiles.json"
    shutil.copy(models.SHIPPED, path)
    monkeypatch.setattr(models, "SHIPPED", path)
    source = tmp_path / "in"  # two short clips: the plan's own sizing and VAD are not under test
    source.mkdir()
    for name in ("LJ002-0020.wav", "LJ002-0035.wav"):
        shutil.copy(clips / name, source / name)
    args = ["plan", "--input", str(source), "--model", "large-v3-turbo", "--json",
            "--set", f"plan.profiles_dir={tmp_path / 'profiles'}", "--set", f"plan.history_path={tmp_path / 'h.jsonl'}"]
    on_gpus = CliRunner().invoke(cli.app, [*args, "--gpus", "8"])
    assert on_gpus.exit_code == 2 and "GPU ASR cost is not measured yet" in on_gpus.output
    path.write_text(models.merge(GPU_RESULT).model_dump_json(indent=2))
    on_gpus = CliRunner().invoke(cli.app, [*args, "--gpus", "8"])
    assert on_gpus.exit_code == 0, on_gpus.output
    plan = json.loads(on_gpus.stdout)
    assert plan["resources"]["gpus"] == 8 and plan["hardware"]["asr_model"] == "large-v3-turbo"
    assert plan["hardware"]["asr_seconds_per_speech_second"] == 0.002
    if models.shipped("tiny.en").cpu is not None:  # the CPU half, once model_costs.py has shipped it
        on_cpu = CliRunner().invoke(cli.app, [*args, "--gpus", "0"])
        assert on_cpu.exit_code == 0, on_cpu.output
        assert json.loads(on_cpu.stdout)["hardware"]["asr_model"] == "large-v3-turbo"


def _calibration(asr: float) -> Calibration:
    hardware = HardwareProfile(
        name="here", cpu_model="test", cpus=2, asr_model="bundled tiny.en", compute_type="int8", device="cpu",
        batch_size=16, prep_seconds_per_input_second=0.01, asr_seconds_per_segment=0.5,
        asr_seconds_per_speech_second=asr, write_seconds_per_unit=1.0, ray_start_seconds=5.0,
        model_load_seconds=1.0, measured_on_seconds=60.0, measured_at="2026-11-29")
    data = DataProfile(speech_fraction=0.5, segments_per_speech_second=0.25, kept_fraction=1.0,
                       output_bytes_per_output_second=30000.0, sample_seconds=60.0, sample_files=8)
    return Calibration(hardware=hardware, data=data)
