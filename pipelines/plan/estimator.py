"""The estimator: input size + measured stage costs -> wall time, resources and cost, before any work.

Stages run as a pipeline over the pieces of work units (parts of ~5 min, `units.PART_SECONDS`,
each transcribed as soon as it is prepared), so the wall time is start-up, plus the slowest stage
at its worker count, plus the fill (first piece through prep) and the tail (last piece through
ASR and write). Stage costs come from a calibration run of the real stages (`calibrate.py`);
past runs correct the result through `history.py`.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.executor.base import resources_for
from pipelines.plan.load import differs
from pipelines.records import Resources
from pipelines.stages.resources import ASR, PREP
from pipelines.state.units import FALLBACK_BYTES_PER_SECOND, PART_SECONDS, part_shares
from schemas.config import JobConfig
from schemas.plan import DataProfile, HardwareProfile, InputSize, JobPlan, LoadReading, StagePlan

QUICK_BOUND = "quick bound"  # a profile's source when no measurement of this machine exists
TRUSTED_SECONDS = 120.0  # audio a profile must be measured on (calibration + runs) to be trusted
UNTRUSTED_SPREAD = 0.5  # extra log-sd of an untrusted profile
QUICK_SPREAD = 0.8  # extra log-sd of a quick bound (costs of another machine)
SPEAKER_WINDOW_SECONDS = 0.003  # one speaker window on one core of a 2-core x86 server, for profiles without it
MAX_SLOWDOWN = 2.0  # the load rescaling is bounded to this factor either way
LOAD_DAMPING = 0.5  # exponent on the ratio of CPU shares: half its log (benchmarks/RESULTS.md, newcomer sequence)
BUSY_SPREAD = 0.25  # extra log-sd per unit of -log(CPU share now): 0 on a quiet machine, 0.5 at a share of 13%
MODEL_ERROR = 0.07  # relative sd of the pipeline model itself, before history narrows it
# Relative sd of the probe's ASR rate is PROBE_SPREAD / sqrt(segments probed): how often packed
# windows must be decoded again depends on a few hard segments, so a small sample is noisy.
# Fitted by benchmarks/probe_spread.py: 12 probes (4 seeds x 3 corpus shapes, 11 segments on
# average), rms error 28% against the runs' ASR rate.
PROBE_SPREAD = 0.9
BREAKDOWN_KEYS = ("container", "sample_rate", "channels", "duration")
BUCKET_EDGES = [0, 1, 10, 60, 600, 3600]
BUCKET_LABELS = ["<1s", "1-10s", "10-60s", "1-10min", "10-60min", ">1h", "unknown"]


def size_from_manifest(manifest: pa.Table | Iterable[pa.RecordBatch]) -> InputSize:
    """Exact sizing from every header, one record batch at a time (18 M rows in flat memory)."""
    batches = manifest.to_batches(max_chunksize=1 << 20) if isinstance(manifest, pa.Table) else manifest
    files = size_bytes = known = 0
    seconds = 0.0
    groups: dict[str, dict[str, list[float]]] = {name: {} for name in BREAKDOWN_KEYS}
    for batch in batches:
        duration = batch.column("duration")
        files += batch.num_rows
        size_bytes += int(pc.sum(batch.column("bytes")).as_py() or 0)
        known += batch.num_rows - duration.null_count
        seconds += float(pc.sum(duration).as_py() or 0.0)
        _add_breakdown(groups, batch)
    return InputSize(
        files=files, bytes=size_bytes, audio_seconds=seconds, audio_seconds_low=seconds,
        audio_seconds_high=seconds, method="headers", headers_read=files, unreadable_files=files - known,
        breakdown={name: {k: {"files": n, "hours": h / 3600} for k, (n, h) in g.items()} for name, g in groups.items()},
    )


def breakdown(manifest: pa.Table) -> dict[str, dict[str, dict[str, float]]]:
    """Files and hours by container, rate, channels and length bucket."""
    return size_from_manifest(manifest).breakdown


def _add_breakdown(groups: dict[str, dict[str, list[float]]], batch: pa.RecordBatch) -> None:
    """Group-bys on compact keys, merged into running [files, seconds] totals."""
    seconds = pc.fill_null(batch.column("duration"), 0.0)
    keys = {
        "container": pc.fill_null(batch.column("container"), "unknown"),
        "sample_rate": pc.fill_null(batch.column("sample_rate"), 0),
        "channels": pc.fill_null(batch.column("channels"), 0),
        "duration": _duration_bucket(batch.column("duration")),
    }
    for name, key in keys.items():
        grouped = pa.table({"key": key, "s": seconds}).group_by("key").aggregate([("s", "sum"), ("s", "count")])
        labels = grouped["key"].to_pylist()
        if name == "duration":
            labels = [BUCKET_LABELS[i] for i in labels]
        for label, total, count in zip(labels, grouped["s_sum"].to_pylist(), grouped["s_count"].to_pylist()):
            slot = groups[name].setdefault(str(label), [0, 0.0])
            slot[0] += count
            slot[1] += total


def _duration_bucket(durations: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Index into BUCKET_LABELS per file (the last label: no duration known)."""
    values = pc.fill_null(durations, -1.0).to_numpy()
    index = np.digitize(values, BUCKET_EDGES).astype(np.int8) - 1
    index[values < 0] = len(BUCKET_LABELS) - 1
    return pa.array(index)


def size_from_sample(sizes: np.ndarray, extensions: np.ndarray, sample: pa.Table,
                     sample_positions: np.ndarray) -> InputSize:
    """Ratio estimate (seconds per byte, per container) from a random sample of headers, with a 95% interval."""
    durations = pc.fill_null(sample.column("duration"), 0.0).to_numpy()
    sample_bytes = sizes[sample_positions].astype(float)
    total, variance = 0.0, 0.0
    for ext in np.unique(extensions):
        in_stratum = extensions == ext
        picked = extensions[sample_positions] == ext
        population, n = int(in_stratum.sum()), int(picked.sum())
        bytes_all = float(sizes[in_stratum].sum())
        if n == 0:
            total += bytes_all / FALLBACK_BYTES_PER_SECOND
            variance += (0.5 * bytes_all / FALLBACK_BYTES_PER_SECOND) ** 2
            continue
        ratio = durations[picked].sum() / max(sample_bytes[picked].sum(), 1.0)
        total += ratio * bytes_all
        residuals = durations[picked] - ratio * sample_bytes[picked]
        spread = residuals.var(ddof=1) if n > 1 else (0.5 * durations[picked].mean()) ** 2
        variance += population**2 * (1 - n / population) * spread / n
    half = 1.96 * math.sqrt(variance)
    return InputSize(
        files=len(sizes), bytes=int(sizes.sum()), audio_seconds=total,
        audio_seconds_low=max(0.0, total - half), audio_seconds_high=total + half,
        method="sampled", headers_read=sample.num_rows,
        unreadable_files=int(sample.num_rows - pc.sum(pc.is_valid(sample.column("duration"))).as_py()),
        breakdown=breakdown(sample),
    )


def predict(config: JobConfig, size: InputSize, hardware: HardwareProfile, data: DataProfile,
            resources: Resources, ray_running: bool = False, discover_seconds: float = 0.0,
            correction: float = 1.0, history_error: Optional[float] = None, history_runs: int = 0,
            load: Optional[LoadReading] = None) -> JobPlan:
    """The pipeline model. `correction` (actual/predicted of past runs) scales the wall time; `load`
    (the machine now) rescales costs measured at another share of the CPUs."""
    units = _unit_count(config, size)
    slowdown = load_slowdown(hardware.load, load)
    hardware = _priced_for(config, _at_share(hardware, slowdown), data)
    work = _stage_work(size.audio_seconds, units, hardware, data)
    one_piece = _stage_work(size.audio_seconds / pieces(size.audio_seconds, units), 1, hardware, data)
    # a unit of fewer parts than actors splits each part's ASR between them (`units.part_shares`)
    one_piece["asr"] /= part_shares(size.audio_seconds / units, resources.asr_actors)
    # while prep runs, ASR has all but the last piece to do (that one is the tail)
    prep_beside_asr = max(0.0, work["prep"] + work["write"] - one_piece["prep"]) / resources.prep_workers
    seconds = {
        "prep": work["prep"] / resources.prep_workers,
        "asr": work["asr"] / resources.asr_actors + prep_beside_asr * asr_loss_beside_prep(hardware, vars(resources)),
        "write": work["write"] / resources.prep_workers,
    }
    bottleneck = max(seconds, key=seconds.get)
    startup = (0.0 if ray_running else hardware.ray_start_seconds) + hardware.model_load_seconds
    raw = startup + discover_seconds + seconds[bottleneck] + _fill_and_tail(bottleneck, one_piece)
    wall = raw * correction
    sigma = _log_spread(size, history_error, _probe_error(hardware, seconds, bottleneck),
                        _unknowns(hardware, slowdown, load))
    output_seconds = size.audio_seconds * data.speech_fraction * data.kept_fraction
    output_bytes = output_seconds * data.output_bytes_per_output_second
    gpu_hours, cpu_hours = wall * resources.gpus / 3600, wall * resources.cpus / 3600
    prices = {"gpu_hour": config.plan.gpu_hour_price, "cpu_hour": config.plan.cpu_hour_price}
    return JobPlan(
        input=size, hardware=hardware, data=data, resources=vars(resources),
        stages=[_stage(name, resources, seconds, size.audio_seconds, seconds[bottleneck]) for name in seconds],
        bottleneck=bottleneck,
        wall_seconds=wall, wall_seconds_low=wall * math.exp(-1.96 * sigma),
        wall_seconds_high=wall * math.exp(1.96 * sigma),
        gpu_hours=gpu_hours, cpu_hours=cpu_hours,
        cost=gpu_hours * prices["gpu_hour"] + cpu_hours * prices["cpu_hour"], prices=prices,
        output_bytes=output_bytes,
        shards=max(units, math.ceil(output_bytes / config.shards.max_bytes)),
        correction=correction, history_runs=history_runs, load=load,
        notes=_notes(hardware, slowdown, load) + _speaker_notes(config, hardware),
    )


STAGE_ORDER = ("prep", "asr", "write")


def _priced_for(config: JobConfig, hardware: HardwareProfile, data: DataProfile) -> HardwareProfile:
    """The profile's prep cost for this config and input. Quality scoring (DNSMOS mostly) and the
    speaker stage are parts of every prep task whose cost follows windows: DNSMOS windows of the
    input's segments, and 1.6 s speaker windows of its speech. A profile that knows a window's
    seconds prices this input's windows per second; a part this config turns off comes out."""
    quality = hardware.quality_seconds_per_input_second or 0.0
    speakers = hardware.speakers_seconds_per_input_second or 0.0
    base = max(0.0, hardware.prep_seconds_per_input_second - quality - speakers)
    quality = _windows_priced(config.quality.enabled, quality, hardware.dnsmos_seconds_per_window,
                              data.dnsmos_windows_per_input_second)
    speaker_windows = data.speaker_windows_per_input_second
    if speaker_windows is None:  # a data profile from before the stage: its speech at the configured hop
        speaker_windows = data.speech_fraction / config.speakers.hop_seconds
    speakers = _windows_priced(config.speakers.enabled, speakers,
                               hardware.speaker_seconds_per_window or SPEAKER_WINDOW_SECONDS, speaker_windows)
    return hardware.model_copy(update={"prep_seconds_per_input_second": base + quality + speakers,
                                       "quality_seconds_per_input_second": quality,
                                       "speakers_seconds_per_input_second": speakers})


def _windows_priced(enabled: bool, measured: float, per_window: Optional[float], windows: Optional[float]) -> float:
    """A windowed part of prep, per input second: per window x this input's windows, else the
    profile's measured share; nothing when the config turns it off."""
    if not enabled:
        return 0.0
    if per_window and windows is not None:
        return per_window * windows
    return measured


def _stage_work(input_seconds: float, units: int, hardware: HardwareProfile, data: DataProfile) -> dict[str, float]:
    """Busy worker-seconds per stage for `input_seconds` of audio in `units` work units."""
    speech = input_seconds * data.speech_fraction
    return {
        "prep": input_seconds * hardware.prep_seconds_per_input_second,
        "asr": speech * _asr_seconds_per_speech_second(hardware, data),
        "write": units * hardware.write_seconds_per_unit,
    }


def _asr_seconds_per_speech_second(hardware: HardwareProfile, data: DataProfile) -> float:
    """ASR follows speech at full batches (segments share windows); profiles from before the
    probe existed priced it per segment."""
    if hardware.asr_seconds_per_speech_second is None:
        return data.segments_per_speech_second * hardware.asr_seconds_per_segment
    return hardware.asr_seconds_per_speech_second


def pieces(audio_seconds: float, units: int) -> float:
    """What flows through the stages: each unit's parts of up to PART_SECONDS of audio. A unit of
    301 s is cut 300 + 1, so the first piece is a whole part: the count is not rounded up."""
    return max(float(units), audio_seconds / PART_SECONDS, 1.0)


def asr_loss_beside_prep(hardware: HardwareProfile, resources: dict) -> float:
    """The share of their speed a node's CPU ASR actors lose while prep is busy. Their threads take
    every core of the node; the prep workers hold a core each, so while they are busy ASR has the
    rest: over prep's busy time beside it (not its fill or tail) ASR is stretched by that time x
    this share. With threads to spare, the probe measures an actor's speed on the cores left
    (`asr_speed_beside_prep`: CTranslate2 does not scale linearly, so losing half the cores costs
    it ~30%, not 50%). One-thread actors (the default: an actor per core) have none to spare: the
    cores are time-shared between their threads and the prep workers. The prep workers keep their
    speed: scoring ran as fast beside ASR as alone in the accuracy runs (benchmarks/RESULTS.md).
    With GPUs, nothing."""
    if resources.get("gpus"):
        return 0.0
    if hardware.asr_speed_beside_prep is not None:
        return max(0.0, 1.0 - hardware.asr_speed_beside_prep)
    prep, cpus = resources["prep_workers"], max(1, resources["cpus"])
    threads = max(cpus, resources["asr_actors"])  # the actors' threads split the cores
    return prep / (prep + threads)


def _fill_and_tail(bottleneck: str, one_piece: dict[str, float]) -> float:
    """Before the bottleneck sees its first piece, that piece passes the stages ahead of it; after the
    bottleneck's last piece, that piece passes the stages behind it."""
    return sum(one_piece[name] for name in STAGE_ORDER if name != bottleneck)


def _unit_count(config: JobConfig, size: InputSize) -> int:
    by_audio = math.ceil(size.audio_seconds / (config.engine.unit_minutes * 60)) if size.audio_seconds else 0
    return max(1, by_audio, math.ceil(size.files / config.engine.unit_max_files))


def _log_spread(size: InputSize, history_error: Optional[float], probe_error: float = 0.0,
                unknown: float = 0.0) -> float:
    """The sd of log(actual / predicted): input size, model and probe errors, and what the profile
    does not know (too little audio measured, a machine busier or quieter than at calibration);
    past runs on this profile replace the model and probe errors with what they measured. The
    interval is log-normal: it widens with what is unknown and never reaches zero."""
    size_error = 0.0
    if size.audio_seconds:
        size_error = math.log1p((size.audio_seconds_high - size.audio_seconds) / size.audio_seconds) / 1.96
    model_error = history_error if history_error is not None else math.hypot(MODEL_ERROR, probe_error)
    return math.sqrt(size_error**2 + model_error**2 + unknown**2)


def trusted(hardware: HardwareProfile) -> bool:
    """A profile is trusted once calibration and the runs it learned from measured enough audio."""
    return hardware.source != QUICK_BOUND and hardware.measured_on_seconds + hardware.learned_seconds >= TRUSTED_SECONDS


def _unknowns(hardware: HardwareProfile, slowdown: float, load: Optional[LoadReading]) -> float:
    """Extra log-sd for an untrusted profile or a quick bound; for a changed load (its rescaling is
    itself a guess: half the change is counted as unknown); and for a busy machine, whose share of
    the CPUs over a run's minutes the share read now foretells only roughly."""
    unknown = QUICK_SPREAD if hardware.source == QUICK_BOUND else 0.0 if trusted(hardware) else UNTRUSTED_SPREAD
    busy = -BUSY_SPREAD * math.log(load.cpu_share) if load is not None else 0.0
    return math.sqrt(unknown**2 + (0.5 * math.log(slowdown)) ** 2 + busy**2)


def load_slowdown(measured: Optional[LoadReading], now: Optional[LoadReading]) -> float:
    """How much slower CPU work runs now than when the costs were measured: the ratio of the CPU
    shares, damped (its square root) and bounded: a share read in a fraction of a second is one
    moment of a run's minutes, and bursts of other work come and go."""
    if measured is None or now is None:
        return 1.0
    return min(max((measured.cpu_share / now.cpu_share) ** LOAD_DAMPING, 1 / MAX_SLOWDOWN), MAX_SLOWDOWN)


def _at_share(hardware: HardwareProfile, slowdown: float) -> HardwareProfile:
    """CPU costs (prep, scoring, CPU ASR) at the share of the machine the run will get."""
    if slowdown == 1.0:
        return hardware
    cpu = ["prep_seconds_per_input_second", "quality_seconds_per_input_second", "dnsmos_seconds_per_window",
           "speakers_seconds_per_input_second", "speaker_seconds_per_window"]
    if not hardware.gpus:
        cpu += ["asr_seconds_per_segment", "asr_seconds_per_speech_second"]
    return hardware.model_copy(update={k: getattr(hardware, k) * slowdown for k in cpu
                                       if getattr(hardware, k) is not None})


def _notes(hardware: HardwareProfile, slowdown: float, load: Optional[LoadReading]) -> list[str]:
    notes = []
    if hardware.source == QUICK_BOUND:
        notes.append("quick bound: the job is too small to calibrate for; no profile of this machine yet "
                     "(the run will measure one)")
    elif not trusted(hardware):
        notes.append(f"untrusted profile: measured on {hardware.measured_on_seconds + hardware.learned_seconds:.0f} s "
                     f"of audio (under {TRUSTED_SECONDS:.0f} s); the interval is wide until runs refine it")
    if differs(hardware.load, load) is not None:
        notes.append(f"machine load differs from calibration: CPU share "
                     f"{hardware.load.cpu_share:.0%} then, {load.cpu_share:.0%} now; "
                     f"CPU costs scaled x{slowdown:.2f}")
    return notes


def _speaker_notes(config: JobConfig, hardware: HardwareProfile) -> list[str]:
    if config.speakers.enabled and not hardware.speaker_seconds_per_window:
        return [f"speakers priced at {SPEAKER_WINDOW_SECONDS * 1000:.0f} ms per window (a 2-core x86 server's): "
                "this profile was measured without the stage (`voxmill plan --recalibrate` measures it)"]
    return []


def _probe_error(hardware: HardwareProfile, seconds: dict[str, float], bottleneck: str) -> float:
    """The probe's relative sd, when the wall time rests on ASR (the bottleneck)."""
    if not hardware.asr_probe_segments or bottleneck != "asr":
        return 0.0
    return PROBE_SPREAD / math.sqrt(hardware.asr_probe_segments)


def _stage(name: str, resources: Resources, seconds: dict[str, float], audio: float, steady: float) -> StagePlan:
    workers = resources.asr_actors if name == "asr" else resources.prep_workers
    return StagePlan(
        name=name, workers=workers, seconds=seconds[name],
        audio_seconds_per_second=audio / seconds[name] if seconds[name] else math.inf,
        utilisation=seconds[name] / steady if steady else 0.0,
    )


def resources_for_profile(config: JobConfig, hardware: HardwareProfile, cpus: Optional[int],
                          gpus: Optional[int]) -> Resources:
    """What-if resources: default to the profiled machine; CPU-only clusters scale by whole nodes."""
    gpus = hardware.gpus if gpus is None else gpus
    cpus = hardware.cpus if cpus is None else cpus
    nodes = 1 if gpus else max(1, cpus // max(1, hardware.cpus))
    return resources_for(cpus, gpus, config.engine, nodes)


def fit_deadline(config: JobConfig, size: InputSize, hardware: HardwareProfile, data: DataProfile,
                 deadline_seconds: float, max_gpus: int = 4096, **kwargs) -> Optional[JobPlan]:
    """The smallest resources that finish by the deadline: fewest GPUs (or nodes), then fewest CPUs."""
    uses_gpu = hardware.gpus > 0 or hardware.device == "cuda"

    def plan_with(count: int) -> Optional[JobPlan]:
        if uses_gpu:
            return _fewest_cpus(config, size, hardware, data, count, deadline_seconds, **kwargs)
        plan = predict(config, size, hardware, data,
                       resources_for_profile(config, hardware, count * hardware.cpus, 0), **kwargs)
        return plan if plan.wall_seconds <= deadline_seconds else None

    previous = 0
    for count in _counts(max_gpus):
        best = plan_with(count)
        if best is not None:
            while previous + 1 < count:  # the grid coarsens past 16: bisect the last step
                middle = (previous + count) // 2
                found = plan_with(middle)
                if found is not None:
                    best, count = found, middle
                else:
                    previous = middle
            return best.model_copy(update={"deadline_seconds": deadline_seconds})
        previous = count
    return None


def _fewest_cpus(config, size, hardware, data, gpus: int, deadline: float, **kwargs) -> Optional[JobPlan]:
    low = math.ceil(gpus * ASR.cpus + PREP.cpus)  # an ASR actor per GPU and one prep task, by their declared cores
    high = low + 4095
    plan_at = lambda cpus: predict(config, size, hardware, data, resources_for(cpus, gpus, config.engine), **kwargs)  # noqa: E731
    if plan_at(high).wall_seconds > deadline:
        return None
    while low < high:
        middle = (low + high) // 2
        if plan_at(middle).wall_seconds <= deadline:
            high = middle
        else:
            low = middle + 1
    return plan_at(low)


def _counts(limit: int):
    count = 1
    while count <= limit:
        yield count
        count = count + 1 if count < 16 else count + max(1, count // 8)
