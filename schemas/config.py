"""The job config: one validated model, loaded from YAML or built from CLI flags.

Each nested section is the slice of config that exactly one stage receives, so a value
flows from here to the single place that uses it.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from schemas.metrics import METRICS, Registry

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "opus", "ogg", "m4a", "sph")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiscoverConfig(_Section):
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS
    reference_extensions: tuple[str, ...] = Field(
        ("normalized.txt", "txt", "lab"),
        description="a file of the audio's stem with one of these extensions beside it (the first found: LibriTTS "
                    "`.normalized.txt`, LibriSpeech-style `.txt`, MFA `.lab`) is its reference transcript; [] = none")
    reference_manifest: Optional[str] = Field(
        None, description="a table of the user's (JSON lines, CSV or Parquet; any fsspec URL) holding reference "
                          "transcripts: reference_path_column names the audio (relative to the manifest's folder, "
                          "or absolute), reference_text_column its text; wins over a file beside the audio")
    reference_path_column: str = "audio_filepath"
    reference_text_column: str = "text"


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
    pack_gap_seconds: float = Field(0.4, ge=0, description="silence between packed segments")
    pack_open_windows: int = Field(
        3, ge=1, description="a segment joins the first of the last N windows it fits in; 1 = strict input order"
    )
    pack_slack_seconds: float = Field(
        0.2, ge=0, description="a word aligned further than this from every segment is not guessed at"
    )
    word_timestamps: bool = Field(
        False, description="store each sample's words with start/end (seconds in the sample) and probability in "
                           "the index `words` column, KEY.json and the exports; costs one alignment pass per "
                           "segment decoded on its own")


class ShardConfig(_Section):
    format: str = Field(
        "webdataset", pattern=r"^[A-Za-z_][\w.-]*(:[A-Za-z_]\w*)?$",
        description="the output format: a name in pipelines/sinks/base.py SINKS (webdataset: tars of KEY.flac + "
                    "KEY.json), or 'package.module:Class' for a sink outside voxmill (see Sink)")
    audio_format: Literal["flac", "wav"] = "flac"
    max_bytes: int = Field(1_000_000_000, ge=1_000_000)
    max_samples: int = Field(100_000, ge=1)
    keep_rejected_audio: bool = Field(
        True, description="write the audio of segments the filters drop (empty transcript, quality) to "
                          "OUTPUT/rejected/shard-NNNNNN.tar, apart from the training shards, so `voxmill refilter` "
                          "can bring them back; false keeps only their rows in rejects/")


class _QualitySettings(_Section):
    """Per-segment scores and the filters on them (pipelines/metrics/, declared in schemas/metrics.py).

    Defaults were measured on the real clips (benchmarks/quality.py): they keep clean read speech
    (LibriSpeech, LJSpeech), the AMI headset, Common Voice and the 1961 JFK clip (also at 8 kHz 8-bit),
    and drop speech under white noise at 5 dB SNR (by the SNR estimate), hard clipping, near silence, exact copies and
    transcripts Whisper itself would call failed. They are floors: a TTS corpus from in-the-wild
    audio will want stricter ones (Emilia: DNSMOS >= 3.0). Any threshold set to null is off; the
    scores are written to the index and each sample's JSON either way, to filter again later.

    The threshold fields (`min_<metric>`, `max_<metric>`) come from the metrics' declarations
    (`quality_config_model`); the settings here are the ones that are no metric's threshold.
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
                    "onnx2torch: pip install voxmill[job,gpu]; ~430x one CPU core on an H100), else onnxruntime on the CPU")
    dnsmos_hop_seconds: float = Field(
        1.0, ge=0.1, le=9.01,
        description="hop of the reference windowing; 1.0 is the reference's, 9.01 = no overlap")
    drop_exact_duplicates: bool = Field(
        True, description="a segment whose stored audio is byte-identical to a kept one of the same unit is a reject")

    metrics: ClassVar[Registry] = METRICS  # the declarations the threshold fields came from

    @model_validator(mode="after")
    def _check_bounds(self) -> "_QualitySettings":
        """A metric's floor must be below its ceiling (loudness, speech rate)."""
        fields = type(self).model_fields
        for low in fields:
            high = "max_" + low.removeprefix("min_")
            if low.startswith("min_") and high in fields:
                lo, hi = getattr(self, low), getattr(self, high)
                if lo is not None and hi is not None and lo >= hi:
                    raise ValueError(f"quality.{low} must be below quality.{high}")
        return self


def quality_config_model(registry: Registry = METRICS, name: str = "QualityConfig") -> type[_QualitySettings]:
    """The `quality:` section: the settings above, then each declared threshold as an optional float
    field (`min_<metric>` / `max_<metric>`, with its default, range and description), then `languages`."""
    fields: dict = {
        field: (Optional[float], Field(t.default, ge=t.ge, le=t.le, description=t.description or None))
        for field, t in registry.thresholds()
    }
    fields["languages"] = (Optional[list[str]],
                           Field(None, description="keep only these detected languages; null = any"))
    model = create_model(name, __base__=_QualitySettings, __module__=__name__, __doc__=_QualitySettings.__doc__,
                         **fields)
    model.metrics = registry
    return model


QualityConfig = quality_config_model()


class SpeakersConfig(_Section):
    """Who speaks in each segment (pipelines/stages/speakers.py): a GE2E speaker embedding per segment,
    the segments of each recording clustered into speakers, and segments split where the speaker changes."""

    enabled: bool = Field(False, description="label speakers and split segments at speaker changes (one voice per "
                                             "sample); needs the Resemblyzer weights (scripts/setup.sh installs them)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = the prep worker's GPU when it has one")
    hop_seconds: float = Field(0.4, gt=0, le=1.6, description="1.6 s embedding windows start this far apart")
    same_speaker_similarity: float = Field(
        0.7, gt=0, lt=1, description="windows whose average cosine similarity is above this are one speaker")
    min_turn_seconds: float = Field(1.0, ge=0, description="a shorter speaker turn joins its neighbour")
    min_speaker_seconds: float = Field(
        3.0, ge=0, description="a voice heard for less than this in a recording (a cough, a laugh, crosstalk) is not "
                               "counted as a speaker: its windows join the nearest speaker")


class EngineConfig(_Section):
    unit_minutes: float = Field(30.0, gt=0, description="audio per work unit (resume granularity)")
    unit_max_files: int = Field(2000, ge=1)
    compact_min_units: int = Field(
        256, ge=1, description="at the end of a run, compact the ledger, index and rejects (one file per 1024 "
                               "units, not one per unit) once this many finished units are not compacted yet")
    excerpt_minutes: float = Field(
        10.0, ge=1, description="files over 1.5x this are cut into excerpts of it: bounded memory per task"
    )
    journal_prepared: bool = Field(
        True, description="keep each prepared unit (segment audio, 16 kHz ASR input, scores) next to the output "
                          "until it commits, so a rerun after a crash prepares no unit twice; costs transient "
                          "writes of about 3x the unit's shard bytes")
    prep_workers: Optional[int] = Field(None, ge=1, description="unset = CPUs left after ASR")
    asr_actors: Optional[int] = Field(
        None, ge=1, description="unset = one per GPU; without GPUs, one per core of each node, at most 8 a node, "
                                "their threads sharing its cores")
    executor: str = Field(
        "ray", pattern=r"^[A-Za-z_][\w.-]*(:[A-Za-z_]\w*)?$",
        description="what runs the work units: a name in pipelines/executor/base.py EXECUTORS (ray: a local Ray "
                    "or the cluster at ray_address), or 'package.module:Class' for one outside voxmill (see Executor)")
    ray_address: Optional[str] = Field(None, description="unset = RAY_ADDRESS or local ray.init()")
    lease_seconds: float = Field(
        120.0, ge=5, description="one run writes an output at a time: its lease lasts this long past the last "
                                 "heartbeat (every quarter of it), so after a kill -9 the next run waits at most this")
    lease_wait_seconds: float = Field(
        0.0, ge=0, description="when another run holds the output: wait up to this long for it (CLI --wait), "
                               "then refuse; 0 = refuse at once")
    progress_seconds: float = Field(
        30.0, gt=0, description="a progress line (hours done/total, x realtime, ETA) every this many seconds, where "
                                "no bar can be drawn: stderr no terminal (RayJob, kubectl logs, nohup), Prefect's run log")


class PlanConfig(_Section):
    calibration_seconds: float = Field(180.0, gt=0, description="audio the calibration run reads at most")
    calibration_fraction: float = Field(0.02, gt=0, le=1, description="...and at most this share of the input")
    calibrate_above_seconds: float = Field(
        900.0, ge=0, description="a smaller input is not worth a calibration (Ray start, model load, probe: about "
                                 "a minute on a CPU): its plan uses this machine's saved profile or a quick bound")
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
    speakers: SpeakersConfig = SpeakersConfig()
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
