"""Models of what `voxmill plan` measures and predicts (saved as JSON: profiles, plans, history)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class InputSize(BaseModel):
    files: int
    bytes: int
    audio_seconds: float
    audio_seconds_low: float  # 95% interval; equal to audio_seconds when every header was read
    audio_seconds_high: float
    method: Literal["headers", "sampled"]
    headers_read: int
    unreadable_files: int = 0
    breakdown: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)


class LoadReading(BaseModel):
    """How busy the machine was: the share of its CPUs a job got beside everything else running."""

    load: float  # 1-minute load average
    cores: float  # CPUs this process may use (affinity, cgroup quota)
    cpu_share: float  # a busy thread's CPU time / wall time, measured: 1 on a quiet machine


class HardwareProfile(BaseModel):
    """Per-worker stage costs measured on one kind of machine, reusable for plans elsewhere."""

    name: str
    cpu_model: str
    cpus: int
    gpu_name: Optional[str] = None
    gpus: int = 0
    asr_model: str
    compute_type: str
    device: str
    batch_size: int
    prep_seconds_per_input_second: float  # decode + resample + VAD + encode + quality, per CPU worker
    quality_seconds_per_input_second: Optional[float] = None  # the quality scores' part of it (None: not measured)
    dnsmos_seconds_per_window: Optional[float] = None  # one 9.01 s DNSMOS window on one core: prices quality per input
    speakers_seconds_per_input_second: Optional[float] = None  # the speaker stage's part of prep (None: not measured)
    speaker_seconds_per_window: Optional[float] = None  # one 1.6 s speaker window on one core: prices the stage per input
    asr_seconds_per_segment: float  # one ASR actor (a GPU, or its threads of a CPU node), in the calibration run
    asr_seconds_per_speech_second: Optional[float] = None  # one ASR actor at full batches (the probe)
    asr_probe_segments: Optional[int] = None  # distinct segments the probe saw: how far to trust it
    asr_speed_beside_prep: Optional[float] = None  # CPU ASR on the cores busy prep workers leave it / alone (probe)
    write_seconds_per_unit: float  # shards + index + rejects + ledger: mostly per-commit overhead
    ray_start_seconds: float  # ray.init of a local instance (0 when attaching to a running one)
    model_load_seconds: float  # until every ASR actor has its model loaded and every prep worker its models
    measured_on_seconds: float
    measured_at: str
    source: str = "calibration"
    load: Optional[LoadReading] = None  # the machine's load while calibrating (None: not read)
    learned_runs: int = 0  # runs whose measured stage seconds refined these costs
    learned_seconds: float = 0.0  # input audio those runs processed


class DataProfile(BaseModel):
    """What VAD and ASR find in this input, from the calibration sample."""

    speech_fraction: float
    segments_per_speech_second: float
    kept_fraction: float  # samples / segments after ASR
    fallback_fraction: float = 0.0  # packed segments ASR had to decode again on their own
    dnsmos_windows_per_input_second: Optional[float] = None  # from the VAD segments' lengths (quality's cost)
    speaker_windows_per_input_second: Optional[float] = None  # 1.6 s speaker windows (the speaker stage's cost)
    output_bytes_per_output_second: float
    sample_seconds: float
    sample_files: int


class StagePlan(BaseModel):
    name: str
    workers: int
    audio_seconds_per_second: float  # of input audio, all workers together
    seconds: float
    utilisation: float


class Calibration(BaseModel):
    """What one calibration run measured: the machine's costs and the input's speech."""

    hardware: HardwareProfile
    data: DataProfile


class JobPlan(BaseModel):
    input: InputSize
    hardware: HardwareProfile
    data: DataProfile
    resources: dict[str, int]
    stages: list[StagePlan]
    bottleneck: str
    wall_seconds: float
    wall_seconds_low: float
    wall_seconds_high: float
    gpu_hours: float
    cpu_hours: float
    cost: float
    prices: dict[str, float]
    output_bytes: float
    shards: int
    correction: float = 1.0  # actual/predicted from history, applied to wall time
    history_runs: int = 0
    load: Optional[LoadReading] = None  # the machine's load when planned
    pending_files: Optional[int] = None  # files the run will process (None: all; a rerun skips done units)
    notes: list[str] = Field(default_factory=list)  # what the estimate rests on that a user must know
    deadline_seconds: Optional[float] = None
