"""Every run refines the profile it was planned with: its measured stage seconds become costs.

Calibration measures a few minutes at most; a run measures all of its audio, on long units, with
the contention a run really has. So after each run the saved profile's per-unit costs move toward
what the run measured (weighted by audio), and the plans after it rest on more than a sample.

The run's busy seconds are converted to the profile's terms first: without GPUs the ASR actor and
the prep workers share the cores while both are busy, and the estimator adds that slowdown itself
(`estimator.asr_loss_beside_prep`), so it is taken out here; and a run on a busier (or quieter) machine
than the profile's is rescaled to the profile's CPU share, as the estimator scales the other way.
"""
from __future__ import annotations

import logging
from typing import Optional

from pipelines.plan.calibrate import PREP_STAGES
from pipelines.plan.estimator import QUICK_BOUND, asr_loss_beside_prep, load_slowdown, pieces
from pipelines.plan.planning import ProfileError, load_profile, profile_path, save_profile
from schemas.config import JobConfig
from schemas.plan import Calibration, HardwareProfile, JobPlan, LoadReading

log = logging.getLogger("voxmill.plan")

MEMORY_SECONDS = 3600.0  # audio a profile's old costs count for at most: newer runs keep moving it
LEARNED = "learned from runs"  # the source of a profile that began as a quick bound
MIN_LEARN_SECONDS = 1.0  # a run that processed less audio teaches nothing


def refine(hardware: HardwareProfile, summary: dict, plan: dict) -> Optional[HardwareProfile]:
    """The profile with this run's costs blended in, or None when the run measured nothing."""
    run = summary.get("this_run", {})
    input_s, speech_s = run.get("input_seconds", 0.0), run.get("speech_seconds", 0.0)
    units = run.get("units", summary["counts"].get("units_processed", 0))
    if input_s < MIN_LEARN_SECONDS or not units:
        return None
    busy = _own_busy(summary["stage_seconds"], summary["resources"], units, input_s,
                     asr_loss_beside_prep(hardware, summary["resources"]))
    run_load = plan.get("load")
    share = 1 / load_slowdown(hardware.load, LoadReading.model_validate(run_load)) if run_load else 1.0
    prep = busy["prep"] * share / input_s
    quality = summary["stage_seconds"].get("quality", 0.0) * share / input_s
    speakers = summary["stage_seconds"].get("speakers", 0.0) * share / input_s
    asr = busy["asr"] * share / max(speech_s, 1e-9) if speech_s > 0 else None
    old = min(hardware.measured_on_seconds + hardware.learned_seconds, MEMORY_SECONDS)
    weight = input_s / (old + input_s)
    blend = lambda mine, theirs: theirs if mine is None else mine + weight * (theirs - mine)  # noqa: E731
    update = {
        "prep_seconds_per_input_second": blend(hardware.prep_seconds_per_input_second, prep),
        "quality_seconds_per_input_second": blend(hardware.quality_seconds_per_input_second, quality),
        "write_seconds_per_unit": blend(hardware.write_seconds_per_unit, busy["write"] / units),
        "learned_runs": hardware.learned_runs + 1,
        "learned_seconds": hardware.learned_seconds + input_s,
    }
    data = plan.get("data") or {}
    windows = data.get("dnsmos_windows_per_input_second")
    if windows and quality:  # quality priced per DNSMOS window: it follows the input's segments
        update["dnsmos_seconds_per_window"] = blend(hardware.dnsmos_seconds_per_window, quality / windows)
    windows = data.get("speaker_windows_per_input_second")
    if windows and speakers:  # the speaker stage priced per 1.6 s window: it follows the speech
        update["speakers_seconds_per_input_second"] = blend(hardware.speakers_seconds_per_input_second, speakers)
        update["speaker_seconds_per_window"] = blend(hardware.speaker_seconds_per_window, speakers / windows)
    if asr is not None:
        update["asr_seconds_per_speech_second"] = blend(hardware.asr_seconds_per_speech_second, asr)
        update["asr_probe_segments"] = (hardware.asr_probe_segments or 0) + run.get("segments", 0)
    update.update(_startup(hardware, summary, fresh=old == 0))
    return hardware.model_copy(update=update)


def _own_busy(stage_seconds: dict, resources: dict, units: int, input_seconds: float,
              loss: Optional[float] = None) -> dict[str, float]:
    """Worker-seconds each stage would have taken alone. The estimator stretches ASR by prep's busy
    time beside it (all but one piece's worth) x the share of speed ASR loses beside prep (`loss`,
    `estimator.asr_loss_beside_prep`) and leaves prep as it is: measured ASR = own + k x prep's,
    solved for own."""
    prep = sum(stage_seconds.get(name, 0.0) for name in PREP_STAGES)
    asr, write = stage_seconds.get("asr", 0.0), stage_seconds.get("write", 0.0)
    count = pieces(input_seconds, units)
    if resources.get("gpus") or count <= 1:
        return {"prep": prep, "asr": asr, "write": write}
    overlap = (count - 1) / count
    workers, actors = max(1, resources["prep_workers"]), max(1, resources["asr_actors"])
    if loss is None:
        loss = workers / max(1, resources["cpus"])
    k_asr = overlap * actors * loss / workers  # ASR's extra busy seconds per prep (+ write) second
    own_asr = max(asr - k_asr * (prep + write), 0.25 * asr)  # the model is coarse: never strip most of a stage
    return {"prep": prep, "asr": own_asr, "write": write}


def _startup(hardware: HardwareProfile, summary: dict, fresh: bool) -> dict:
    """Ray start and model load, from the run's start-up (half old, half new: it varies by run;
    all new when the profile measured none, `fresh`)."""
    measured = summary.get("startup_seconds")
    if measured is None:
        return {}
    if fresh:
        ray = measured * hardware.ray_start_seconds / max(hardware.ray_start_seconds + hardware.model_load_seconds, 1e-9)
        return {"ray_start_seconds": ray, "model_load_seconds": measured - ray}
    if hardware.ray_start_seconds > 0:  # calibrated with a Ray of its own, as a CLI run starts one
        total = hardware.ray_start_seconds + hardware.model_load_seconds
        scale = 0.5 + 0.5 * measured / max(total, 1e-9)
        return {"ray_start_seconds": hardware.ray_start_seconds * scale,
                "model_load_seconds": hardware.model_load_seconds * scale}
    return {"model_load_seconds": 0.5 * (hardware.model_load_seconds + measured)}


def learn_from_run(config: JobConfig, plan: dict, summary: dict) -> Optional[Calibration]:
    """Refine and save the profile this run was planned with; a run planned on a quick bound
    saves this machine's first profile. Returns what was saved (None: nothing learned)."""
    planned = JobPlan.model_validate(plan)
    path = profile_path(config, planned.hardware.name)
    try:
        saved = load_profile(config, str(path)) if path.exists() else None
    except ProfileError as err:
        log.warning("%s; not learning from this run", err)
        return None
    if saved is None and planned.hardware.source != QUICK_BOUND:
        return None  # a profile from elsewhere (--profile PATH): not this machine's to change
    # a quick bound's costs are replaced whole: the profile is this run's, at this run's load
    base = saved or Calibration(hardware=planned.hardware.model_copy(update={"load": planned.load}),
                                data=planned.data)
    hardware = refine(base.hardware, summary, plan)
    if hardware is None:
        return None
    if hardware.source == QUICK_BOUND:
        hardware = hardware.model_copy(update={"source": LEARNED})
    calibration = base.model_copy(update={"hardware": hardware})
    try:
        save_profile(config, calibration)
    except OSError as err:  # a read-only profiles folder: the run's output stands, the plan learns nothing
        log.warning("profile %s not saved (%s): the next plan will not learn from this run", hardware.name, err)
        return None
    log.info("profile %s learned from this run (%d runs, %.0f s of audio)", hardware.name,
             hardware.learned_runs, hardware.learned_seconds)
    return calibration
