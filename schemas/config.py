"""The job config: one validated model, loaded from YAML or built from CLI flags.

Each nested section is the slice of config that exactly one stage receives, so a value
flows from here to the single place that uses it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "opus", "ogg", "m4a", "sph")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiscoverConfig(_Section):
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS


class AudioConfig(_Section):
    sample_rate: int = Field(24000, ge=8000, le=192000, description="output rate of the shards")
    peak_normalize: Optional[float] = Field(
        None, gt=0, le=1.0, description="scale each segment so its peak is this; off when unset"
    )
    resampler: Literal["auto", "soxr", "torch"] = "auto"


class VadConfig(_Section):
    min_seconds: float = Field(1.0, ge=0)
    max_seconds: float = Field(20.0, gt=1, le=30, description="Whisper reads at most 30 s")
    pad_ms: int = Field(200, ge=0)
    merge_gap_seconds: float = Field(0.3, ge=0, description="gaps shorter than this are bridged")
    min_silence_ms: int = Field(500, ge=0)
    threshold: float = Field(0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _check_bounds(self) -> "VadConfig":
        if self.min_seconds >= self.max_seconds:
            raise ValueError("vad.min_seconds must be below vad.max_seconds")
        return self


class AsrConfig(_Section):
    backend: str = Field(
        "faster-whisper", pattern=r"^[A-Za-z_][\w.-]*(:[A-Za-z_]\w*)?$",
        description="the ASR backend: a name in pipelines/asr/base.py BACKENDS, or 'package.module:Class' "
                    "for one outside voxmill (see AsrBackend)")
    model: Optional[str] = Field(
        None, description="faster-whisper model name or path; unset = bundled tiny.en"
    )
    language: Optional[str] = Field(None, description="unset = auto-detect (multilingual models)")
    beam_size: int = Field(1, ge=1, le=16)
    compute_type: str = Field("auto", description="auto = int8 on CPU (1.7x float32 here), float16 on CUDA")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1, le=256)
    cpu_threads: int = Field(0, ge=0, description="0 = CTranslate2 default")
    pack_seconds: float = Field(
        29.0, ge=0, le=30, description="share one Whisper window among segments up to this long; 0 = off"
    )
    pack_gap_seconds: float = Field(1.0, ge=0, description="silence between packed segments")
    pack_slack_seconds: float = Field(
        0.2, ge=0, description="a word aligned further than this from every segment is not guessed at"
    )


class ShardConfig(_Section):
    audio_format: Literal["flac", "wav"] = "flac"
    max_bytes: int = Field(1_000_000_000, ge=1_000_000)
    max_samples: int = Field(100_000, ge=1)
    keep_rejected_audio: bool = Field(
        True, description="write the audio of segments the filters drop (empty transcript, quality) to "
                          "OUTPUT/rejected/shard-NNNNNN.tar, apart from the training shards, so `voxmill refilter` "
                          "can bring them back; false keeps only their rows in rejects/")


class QualityConfig(_Section):
    """Per-segment scores and the filters on them (pipelines/metrics/quality.py).

    Defaults were measured on the real clips (benchmarks/quality.py): they keep clean read speech
    (LibriSpeech, LJSpeech), the AMI headset, Common Voice and the 1961 JFK clip (also at 8 kHz 8-bit),
    and drop speech under white noise at 5 dB SNR (by the SNR estimate), hard clipping, near silence, exact copies and
    transcripts Whisper itself would call failed. They are floors: a TTS corpus from in-the-wild
    audio will want stricter ones (Emilia: DNSMOS >= 3.0). Any threshold set to null is off; the
    scores are written to the index and each sample's JSON either way, to filter again later.
    """

    enabled: bool = Field(True, description="score every segment and apply the filters; false = neither")
    dnsmos_windows: Literal["cover", "reference"] = Field(
        "cover",
        description="DNSMOS reads 9.01 s windows. cover: the fewest that cover each segment (one for a segment "
                    "under 9.01 s), ~3x cheaper on VAD segments; reference: Microsoft's dnsmos_local.py windowing "
                    "(short segments doubled, a window every dnsmos_hop_seconds)")
    dnsmos_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto: the GPU when the prep task sees one (the DNSMOS graph runs in torch, converted by "
                    "onnx2torch: pip install voxmill[gpu]; ~430x one CPU core on an H100), else onnxruntime on the CPU")
    dnsmos_hop_seconds: float = Field(
        1.0, ge=0.1, le=9.01,
        description="hop of the reference windowing; 1.0 is the reference's, 9.01 = no overlap")
    min_dnsmos_ovrl: Optional[float] = Field(
        2.0, ge=1, le=5,
        description="DNSMOS P.835 overall MOS (1-5): a floor for clearly degraded audio. LJSpeech scores 2.72-2.98, "
                    "JFK (1961) 2.45-2.65, JFK at 8 kHz 8-bit 2.16, LibriSpeech under white noise at 0 dB SNR 1.60. "
                    "Emilia keeps >= 3.0 (in-the-wild audio after source separation): that drops LJSpeech")
    drop_exact_duplicates: bool = Field(
        True, description="a segment whose stored audio is byte-identical to a kept one of the same unit is a reject")
    min_dnsmos_sig: Optional[float] = Field(None, ge=1, le=5, description="DNSMOS P.835 speech-signal MOS (1-5)")
    min_dnsmos_bak: Optional[float] = Field(None, ge=1, le=5, description="DNSMOS P.835 background-noise MOS (1-5)")
    min_snr_db: Optional[float] = Field(
        15.0, description="blind SNR estimate, dB (loud vs quiet 25 ms frames); clean clips 29-58, "
                          "white noise at 5 dB SNR reads 12")
    max_clipping: Optional[float] = Field(
        0.001, ge=0, le=1, description="share of samples on the segment's peak plateau; clean speech 0, "
                                       "a copy clipped at 30% of its peak 0.0015")
    min_loudness_lufs: Optional[float] = Field(
        -45.0, description="integrated loudness (BS.1770, LUFS) of the 16 kHz segment; clean clips -33 to -13")
    max_loudness_lufs: Optional[float] = Field(-5.0, description="louder = distorted or clipped level")
    min_chars_per_second: Optional[float] = Field(
        2.0, ge=0, description="letters and digits of the normalised transcript per second (English read "
                               "speech 9-15; numbers as digits go down to 4): below = words missing")
    max_chars_per_second: Optional[float] = Field(30.0, ge=0, description="above = hallucinated or misaligned text")
    min_avg_logprob: Optional[float] = Field(
        -1.0, le=0, description="Whisper's mean token log-prob; Whisper itself retries a decode below -1")
    max_no_speech_prob: Optional[float] = Field(
        0.6, ge=0, le=1,
        description="Whisper's no-speech rule: a segment is dropped as no speech when its no_speech_prob is above "
                    "this AND its avg_logprob is below min_avg_logprob (Whisper's own pair, 0.6 and -1; with "
                    "min_avg_logprob null, the probability alone). A segment that shared a packed ASR window has "
                    "no no_speech_prob of its own (null: the window's value is one number for all its segments)")
    min_language_prob: Optional[float] = Field(
        None, ge=0, le=1, description="language-ID confidence (multilingual models); Emilia keeps >= 0.8")
    languages: Optional[list[str]] = Field(None, description="keep only these detected languages; null = any")

    @model_validator(mode="after")
    def _check_bounds(self) -> "QualityConfig":
        for low, high in (("min_loudness_lufs", "max_loudness_lufs"), ("min_chars_per_second", "max_chars_per_second")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo >= hi:
                raise ValueError(f"quality.{low} must be below quality.{high}")
        return self


class EngineConfig(_Section):
    unit_minutes: float = Field(30.0, gt=0, description="audio per work unit (resume granularity)")
    unit_max_files: int = Field(2000, ge=1)
    excerpt_minutes: float = Field(
        10.0, ge=1, description="files over 1.5x this are cut into excerpts of it: bounded memory per task"
    )
    journal_prepared: bool = Field(
        True, description="keep each prepared unit (segment audio, 16 kHz ASR input, scores) next to the output "
                          "until it commits, so a rerun after a crash prepares no unit twice; costs transient "
                          "writes of about 3x the unit's shard bytes")
    prep_workers: Optional[int] = Field(None, ge=1, description="unset = CPUs left after ASR")
    asr_actors: Optional[int] = Field(None, ge=1, description="unset = one per GPU, else 1")
    ray_address: Optional[str] = Field(None, description="unset = RAY_ADDRESS or local ray.init()")
    lease_seconds: float = Field(
        120.0, ge=5, description="one run writes an output at a time: its lease lasts this long past the last "
                                 "heartbeat (every quarter of it), so after a kill -9 the next run waits at most this")
    lease_wait_seconds: float = Field(
        0.0, ge=0, description="when another run holds the output: wait up to this long for it (CLI --wait), "
                               "then refuse; 0 = refuse at once")


class PlanConfig(_Section):
    calibration_seconds: float = Field(180.0, gt=0, description="audio the calibration run reads at most")
    calibration_fraction: float = Field(0.02, gt=0, le=1, description="...and at most this share of the input")
    excerpt_seconds: float = Field(60.0, gt=1, description="longest piece taken from one file")
    header_sample_above: int = Field(50_000, ge=100, description="more files than this: sample headers")
    header_sample_size: int = Field(2_000, ge=100)
    profile: Optional[str] = Field(None, description="hardware profile name or JSON path; unset = calibrate here")
    profiles_dir: str = Field("~/.cache/voxmill/profiles")
    history_path: str = Field("~/.cache/voxmill/history.jsonl")
    gpu_hour_price: float = Field(2.5, ge=0)
    cpu_hour_price: float = Field(0.05, ge=0)
    max_wall_hours: Optional[float] = Field(None, gt=0, description="refuse to start a longer job")
    max_cost: Optional[float] = Field(None, gt=0, description="refuse to start a costlier job")


class JobConfig(_Section):
    """Everything one job needs; `input` and `output` are fsspec URLs."""

    input: str
    output: str
    discover: DiscoverConfig = DiscoverConfig()
    audio: AudioConfig = AudioConfig()
    vad: VadConfig = VadConfig()
    asr: AsrConfig = AsrConfig()
    shards: ShardConfig = ShardConfig()
    quality: QualityConfig = QualityConfig()
    engine: EngineConfig = EngineConfig()
    plan: PlanConfig = PlanConfig()


def load_job_config(
    input: Optional[str] = None,
    output: Optional[str] = None,
    config_path: Optional[str] = None,
    overrides: Optional[dict[str, object]] = None,
) -> JobConfig:
    """One way to build a JobConfig for the CLI and the flow: YAML file, then flags on top.

    `overrides` uses dotted keys (`{"audio.sample_rate": 16000}`); None values are ignored.
    """
    data: dict = {}
    if config_path:
        path = Path(config_path).expanduser()
        if path.is_dir():
            raise ValueError(f"{config_path} is a folder; --config takes a YAML job file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as err:
            raise ValueError(f"{config_path}: no such job file") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"{config_path}: not a text (YAML) file") from err
        except yaml.YAMLError as err:  # the problem and its line/column, on one line
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"{config_path}: invalid YAML{at}: {problem}") from err
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_path}: a job file must be a YAML mapping")
        data = loaded
    for dotted, value in {"input": input, "output": output, **(overrides or {})}.items():
        if value is None:
            continue
        *sections, leaf = dotted.split(".")
        target = data
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return JobConfig.model_validate(data)
