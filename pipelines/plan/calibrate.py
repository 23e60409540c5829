"""Calibrate: run the real stages on a small stratified sample and measure what they cost here.

ASR cost follows speech, not file length: packed segments share 30 s Whisper windows, and the
windows that fail to split are decoded again segment by segment. So calibration measures ASR
seconds per second of speech with a probe that packs as a run does, and, separately, how much
speech and how many segments this input holds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import re
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pyarrow as pa

from pipelines.asr.base import build_backend
from pipelines.executor.base import open_executor, resources_for, run_units
from pipelines.metrics.cost import DNSMOS_COST, priced
from pipelines.plan.estimator import QUICK_BOUND, _duration_bucket
from pipelines.plan.load import read_load
from pipelines.records import SourceFile
from pipelines.sinks.base import TRAINING, open_sink
from pipelines.stages.audio import ASR_RATE
from pipelines.stages.prepare import Preparer
from pipelines.stages.speakers import speaker_window_seconds, speaker_windows
from pipelines.state.units import EXCERPT_CONTEXT, WorkUnit
from schemas.config import AsrConfig, JobConfig
from schemas.plan import Calibration, DataProfile, HardwareProfile, LoadReading

PRESAMPLE_ROWS = 5000
MIN_PIECE = 20.0  # seconds: shorter excerpts would cut most utterances short
PREP_STAGES = ("decode", "resample", "vad", "speakers", "encode", "quality", "journal")  # what a prep task times


def sample_budget(config: JobConfig, input_seconds: float) -> float:
    return max(5.0, min(config.plan.calibration_seconds, config.plan.calibration_fraction * input_seconds))


def stratified_sample(manifest: pa.Table, budget_seconds: float, excerpt_seconds: float,
                      seed: int = 0) -> list[SourceFile]:
    """Excerpts from files spread over (container, rate, channels, length) strata, in proportion to
    each stratum's hours, totalling about `budget_seconds`."""
    rng = np.random.default_rng(seed)
    readable = manifest.filter(pa.compute.is_valid(manifest.column("duration")))
    if readable.num_rows == 0:
        return []
    if readable.num_rows > PRESAMPLE_ROWS:
        readable = readable.take(np.sort(rng.choice(readable.num_rows, PRESAMPLE_ROWS, replace=False)))
    rows = readable.to_pylist()
    buckets = _duration_bucket(readable.column("duration")).to_pylist()
    strata: dict[tuple, list[dict]] = {}
    for row, bucket in zip(rows, buckets):
        strata.setdefault((row["container"], row["sample_rate"], row["channels"], bucket), []).append(row)
    hours = {key: sum(r["duration"] for r in members) for key, members in strata.items()}
    total = sum(hours.values())
    picked: list[SourceFile] = []
    remaining = budget_seconds
    for key in sorted(strata, key=hours.__getitem__, reverse=True):
        if remaining <= 0:
            break
        members = strata[key]
        share = min(remaining, max(budget_seconds * hours[key] / total, MIN_PIECE))
        chosen = _excerpts(members, share, excerpt_seconds, rng)
        remaining -= sum(c.duration for c in chosen)
        picked.extend(chosen)
    return picked


def _excerpts(members: list[dict], budget: float, excerpt_seconds: float, rng) -> list[SourceFile]:
    """Whole files where they fit (cutting short files would make VAD see shorter utterances);
    a piece at a random offset from longer ones."""
    chosen: list[SourceFile] = []
    for i in rng.permutation(len(members)):
        if budget <= 0:
            break
        row = members[i]
        piece = min(excerpt_seconds, max(budget, MIN_PIECE))
        if row["duration"] <= piece:
            chosen.append(SourceFile(row["id"], row["uri"], row["duration"]))
            budget -= row["duration"]
            continue
        offset = float(rng.uniform(0, row["duration"] - piece))
        chosen.append(SourceFile(row["id"], row["uri"], piece, None, offset=offset, limit=piece))
        budget -= piece
    return chosen


def calibrate(config: JobConfig, sample: list[SourceFile]) -> Calibration:
    """Run the real engine (`engine.executor`, its workers, shard writes to a scratch folder) on `sample`."""
    with tempfile.TemporaryDirectory(prefix="voxmill-calibrate-") as scratch:
        job = config.model_copy(update={"output": scratch})
        load = read_load()  # before this calibration's own work adds to it
        executor = open_executor(job)
        start_clock = time.perf_counter()
        already_running = executor.running() is not None
        resources = executor.start()
        ray_start = 0.0 if already_running else time.perf_counter() - start_clock
        units = _units(sample, 2 * resources.prep_workers + 1)
        result = run_units(executor, units)
        if result.failures:
            raise RuntimeError(f"calibration failed: {result.failures[0]['error']}")
        shard_bytes = sum(Path(scratch, name).stat().st_size for name in open_sink(job.shards, scratch).files(TRAINING))
    reports = result.reports
    stage = lambda name: sum(r["stage_seconds"].get(name, 0.0) for r in reports)  # noqa: E731
    total = lambda name: sum(r[name] for r in reports)  # noqa: E731
    input_s, segments, samples = total("input_seconds"), total("segments"), total("samples")
    output_s, speech_s = total("output_seconds"), total("speech_seconds")
    threads = max(1, resources.cpus // resources.asr_actors)
    beside = None if resources.gpus else max(1, threads * (resources.cpus - resources.prep_workers) // resources.cpus)
    probe = asr_probe(config, sample, threads, beside)
    per_window = dnsmos_window_seconds(config)
    quality_rate = probe.dnsmos_windows * per_window if per_window else 0.0
    per_speaker_window = speaker_window_seconds(config.speakers) if config.speakers.enabled else None
    speakers_rate = probe.speaker_windows * per_speaker_window if per_speaker_window else 0.0
    windowed = ("quality", "speakers")  # priced per window below, not by the calibration run's own seconds
    prep_rate = (sum(stage(s) for s in PREP_STAGES if s not in windowed) / max(input_s, 1e-9)
                 + quality_rate + speakers_rate)
    hardware = HardwareProfile(
        name=machine_key(config, resources.gpus), cpu_model=cpu_model(), cpus=resources.cpus,
        gpu_name=gpu_name() if resources.gpus else None, gpus=resources.gpus,
        asr_model=config.asr.model or "bundled tiny.en", compute_type=config.asr.compute_type,
        device="cuda" if resources.gpus else "cpu", batch_size=config.asr.batch_size,
        prep_seconds_per_input_second=prep_rate, quality_seconds_per_input_second=quality_rate,
        dnsmos_seconds_per_window=per_window,
        speakers_seconds_per_input_second=speakers_rate if per_speaker_window else None,
        speaker_seconds_per_window=per_speaker_window,
        asr_seconds_per_segment=stage("asr") / max(segments, 1),
        asr_seconds_per_speech_second=probe.rate, asr_probe_segments=probe.segments,
        asr_speed_beside_prep=probe.speed_beside_prep,
        write_seconds_per_unit=stage("write") / max(len(reports), 1),
        ray_start_seconds=ray_start, model_load_seconds=result.startup_seconds,
        measured_on_seconds=input_s, measured_at=datetime.now(timezone.utc).isoformat(), load=load,
    )
    data = DataProfile(
        speech_fraction=total("speech_seconds") / max(input_s, 1e-9),
        segments_per_speech_second=segments / max(speech_s, 1e-9),
        kept_fraction=samples / max(segments, 1),
        fallback_fraction=probe.redecoded, dnsmos_windows_per_input_second=probe.dnsmos_windows,
        speaker_windows_per_input_second=probe.speaker_windows,
        output_bytes_per_output_second=shard_bytes / max(output_s, 1e-9),
        sample_seconds=input_s, sample_files=len(sample),
    )
    return Calibration(hardware=hardware, data=data)


class Probe(NamedTuple):
    rate: float  # ASR seconds per second of speech, full batches
    redecoded: float  # share of segments decoded again alone
    segments: int  # distinct segments probed: how far to trust `rate` (see `estimator.PROBE_SPREAD`)
    dnsmos_windows: float  # per input second: quality's cost follows them
    speaker_windows: float  # per input second: the speaker stage's cost follows them
    speed_beside_prep: Optional[float] = None  # on `beside` threads / on all: ASR while prep workers are busy


def asr_probe(config: JobConfig, sample: list[SourceFile], threads: int, beside: Optional[int] = None) -> Probe:
    """ASR seconds per second of speech with full batches of packed windows, as long units run
    them (calibration units are too small to fill a batch), and the share of segments decoded
    again alone; and how many DNSMOS and speaker windows those segments hold per input second.

    Two things make the probe see what a run sees: excerpts are decoded with context, so no
    segment holds a word clipped at a random cut (the alignment cannot place those, and each
    one costs a solo re-decode a run never pays); and segments keep their input order, so a
    window's neighbours come from the same recording, as in a unit. The sequence is repeated
    until it fills `batch_size` windows, each repeat starting at another segment: identical repeats
    would pack identical windows, and a segment that fails to split would meet the same failing
    neighbours again in the second packing round, which a run's varied neighbours seldom do
    (the probe priced 31% of segments decoded again where the run had 6%). With `beside` (CPU only: the threads' worth of cores busy
    prep workers leave the ASR actor), the same batches are timed again on that many threads: how
    much of its speed ASR keeps while prep runs beside it (CTranslate2 does not scale linearly)."""
    preparer = Preparer(_unscored(config))
    preparer.setup()
    audios, prepared = preparer(0, [_with_context(piece) for piece in sample])
    speech = sum(len(a) for a in audios) / ASR_RATE
    if not audios:
        return Probe(0.0, 0.0, 0, 0.0, 0.0)
    input_s = max(prepared.input_seconds, 1e-9)
    per_window = max(config.asr.pack_seconds, speech / len(audios))
    repeats = max(1, math.ceil(config.asr.batch_size * per_window / speech))
    transcriber = build_backend(config.asr, threads)
    transcriber.setup()
    batches = _rotations(audios, repeats)
    seconds = _timed(transcriber, batches)
    speed = None
    if beside is not None and beside < threads:
        fewer = build_backend(config.asr, beside)
        fewer.setup()
        speed = seconds / _timed(fewer, batches)
    return Probe(seconds / (speech * repeats), transcriber.counts["fallback"] / (len(audios) * repeats), len(audios),
                 dnsmos_windows(config, audios) / input_s, speaker_windows(config.speakers, audios) / input_s, speed)


def _rotations(audios: list[np.ndarray], repeats: int) -> list[np.ndarray]:
    """`repeats` copies of the sequence, each rotated to start at another segment."""
    step = max(1, len(audios) // repeats)
    return [audios[(r * step + i) % len(audios)] for r in range(repeats) for i in range(len(audios))]


def _timed(transcriber, audios: list[np.ndarray]) -> float:
    started = time.perf_counter()
    transcriber(audios)
    return time.perf_counter() - started


def dnsmos_windows(config: JobConfig, audios: list[np.ndarray]) -> int:
    """DNSMOS windows in these segments: the cost model of the metrics that declare it (metrics.cost)."""
    model = priced(config.quality, DNSMOS_COST)
    return model.units(config.quality, audios) if model else 0


def dnsmos_window_seconds(config: JobConfig) -> Optional[float]:
    """Seconds one DNSMOS window costs on one core, at full batches, alone: a constant of the
    machine. The plan multiplies it by the input's windows per second (`dnsmos_windows`), so a
    saved profile prices inputs of other segment lengths right. (The calibration run's own
    scoring time is not used: it shares the cores with an ASR actor far busier on calibration's
    small units than in a run, and came out 50% dear. In a run, scoring ran as fast beside ASR
    as alone: see `estimator.asr_loss_beside_prep`.)"""
    model = priced(config.quality, DNSMOS_COST)
    return model.unit_seconds(config.quality) if model else None


def _unscored(config: JobConfig) -> JobConfig:
    """The config without quality scoring and speakers: the probe and the speech measure need the
    VAD segments only (the speaker stage only splits them), and DNSMOS would cost the plan more
    than decode and VAD do."""
    return config.model_copy(update={"quality": config.quality.model_copy(update={"enabled": False}),
                                     "speakers": config.speakers.model_copy(update={"enabled": False})})


def _with_context(piece: SourceFile) -> SourceFile:
    """An excerpt that keeps whole the utterances starting inside it (see `SourceFile.owns`)."""
    if piece.limit is None:
        return piece
    return dataclasses.replace(piece, context=EXCERPT_CONTEXT)


def measure_data(config: JobConfig, sample: list[SourceFile], kept_fraction: float,
                 fallback: float = 0.0) -> DataProfile:
    """The input's speech without ASR (in-process decode + VAD), for plans on a saved hardware profile."""
    preparer = Preparer(_unscored(config))
    preparer.setup()
    audios, prepared = preparer(0, sample)
    speech = sum(s.end - s.start for s in prepared.segments)
    encoded = sum(len(s.audio) for s in prepared.segments)
    return DataProfile(
        speech_fraction=speech / max(prepared.input_seconds, 1e-9),
        segments_per_speech_second=len(prepared.segments) / max(speech, 1e-9),
        kept_fraction=kept_fraction,
        fallback_fraction=fallback,
        dnsmos_windows_per_input_second=dnsmos_windows(config, audios) / max(prepared.input_seconds, 1e-9),
        speaker_windows_per_input_second=speaker_windows(config.speakers, audios) / max(prepared.input_seconds, 1e-9),
        output_bytes_per_output_second=encoded / max(speech, 1e-9) * 1.01,  # + tar headers
        sample_seconds=prepared.input_seconds, sample_files=len(sample),
    )


def _units(sample: list[SourceFile], count: int) -> list[WorkUnit]:
    """Split the sample into a few units so prep and ASR overlap as in a real run."""
    groups = [sample[i::count] for i in range(min(count, len(sample)))]
    return [WorkUnit(i, files) for i, files in enumerate(groups)]


def machine_key(config: JobConfig, gpus: int) -> str:
    parts = [gpu_name() if gpus else cpu_model(), config.asr.model or "tiny.en", config.asr.compute_type,
             f"{gpus}gpu" if gpus else f"{_cpu_count()}cpu"]
    if not gpus:  # a CPU actor's speed is its threads': costs measured with other threads are another machine's
        cpus = _cpu_count()
        parts.append(f"{max(1, cpus // resources_for(cpus, 0, config.engine).asr_actors)}t")
    if config.asr.backend != AsrConfig().backend:  # another backend's costs are its own (the default's keys stay)
        parts.insert(1, config.asr.backend)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(parts)).strip("-").lower()[:80]
    return f"{slug}-{hashlib.sha1('|'.join(parts).encode()).hexdigest()[:6]}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> Optional[str]:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no CUDA runtime: no GPU name
        return None


def _cpu_count() -> int:
    return os.cpu_count() or 1


# Costs of the bundled tiny.en (int8, batch 16) on one core of a 2-core x86 server (AMD EPYC), per
# stage, ASR per one-thread actor: the profile four runs taught on a quiet machine (load ~1, CPU
# share 100%), the newcomer sequence of benchmarks/estimator_accuracy.py (990 s of audio; ASR again
# after the actors became one a core, at d3245f2); with a GPU, ASR at about 20x that.
# Only a bound: the interval of a plan on it is wide (estimator.QUICK_SPREAD), and the plan scales
# these to the CPU share it reads.
QUICK_COSTS = dict(prep_seconds_per_input_second=0.033, quality_seconds_per_input_second=0.030,
                   dnsmos_seconds_per_window=0.165,
                   asr_seconds_per_speech_second=0.028, write_seconds_per_unit=0.03,
                   ray_start_seconds=1.9, model_load_seconds=3.5)
QUIET = LoadReading(load=0.0, cores=2.0, cpu_share=1.0)  # the machine QUICK_COSTS were measured on


def quick_bound(config: JobConfig, gpus: int) -> HardwareProfile:
    """A profile of this machine without measuring it: for a job too small to calibrate for. The
    run it plans measures the real costs and saves them (`learn.py`). Its costs are a quiet
    machine's, so the plan scales them to the load it reads."""
    costs = dict(QUICK_COSTS)
    if gpus:
        costs["asr_seconds_per_speech_second"] /= 20
    return HardwareProfile(
        name=machine_key(config, gpus), cpu_model=cpu_model(), cpus=_cpu_count(), gpus=gpus,
        gpu_name=gpu_name() if gpus else None, asr_model=config.asr.model or "bundled tiny.en",
        compute_type=config.asr.compute_type, device="cuda" if gpus else "cpu", batch_size=config.asr.batch_size,
        asr_seconds_per_segment=0.5, measured_on_seconds=0.0, measured_at=datetime.now(timezone.utc).isoformat(),
        source=QUICK_BOUND, load=QUIET, **costs)


WEIGHTED = ("prep_seconds_per_input_second", "quality_seconds_per_input_second", "dnsmos_seconds_per_window",
            "asr_speed_beside_prep",
            "speakers_seconds_per_input_second", "speaker_seconds_per_window",
            "asr_seconds_per_segment", "asr_seconds_per_speech_second", "write_seconds_per_unit",
            "ray_start_seconds", "model_load_seconds")


def top_up(saved: HardwareProfile, fresh: HardwareProfile) -> HardwareProfile:
    """A profile measured on too little audio, topped up by a fresh calibration: costs weighted by
    the audio each measured (the saved one's runs included); the load is the fresh one's."""
    old = saved.measured_on_seconds + saved.learned_seconds
    weight = fresh.measured_on_seconds / max(old + fresh.measured_on_seconds, 1e-9)
    update = {}
    for name in WEIGHTED:
        mine, theirs = getattr(saved, name), getattr(fresh, name)
        update[name] = theirs if mine is None or theirs is None else mine + weight * (theirs - mine)
    return fresh.model_copy(update={
        **update, "measured_on_seconds": saved.measured_on_seconds + fresh.measured_on_seconds,
        "learned_runs": saved.learned_runs, "learned_seconds": saved.learned_seconds,
        "asr_probe_segments": (saved.asr_probe_segments or 0) + (fresh.asr_probe_segments or 0) or None})
