"""Shipped ASR cost profiles of the models users run, so a plan can price one before any download.

`voxmill plan --model large-v3-turbo` would otherwise have to fetch and load the model to calibrate
ASR. Instead the machine's other stage costs are measured with the bundled tiny.en as usual, and
ASR's cost per speech second comes from `model_profiles.json`: random-weight copies of each
architecture timed at the corpus's real decode lengths (`benchmarks/model_costs.py` on CPU,
`benchmarks/gpu_session.py` on a GPU). A figure that was never measured is absent, never guessed.

    python -m pipelines.plan.models merge RESULT.json   # a benchmark's output into the shipped file
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Literal, Optional

from pydantic import BaseModel, Field

from schemas.config import JobConfig
from schemas.plan import Calibration

SHIPPED = Path(__file__).with_name("model_profiles.json")
BUNDLED = "tiny.en"  # what an unset asr.model runs (pipelines.asr.whisper.default_model_path)


class UnmeasuredModel(ValueError):
    """The model has a shipped profile, but not for the device the plan asks for."""


class AsrCost(BaseModel):
    """One ASR actor (`cpus` threads of a CPU machine, or one GPU) on this model, as measured. Plans use
    a CPU figure as a ratio to tiny.en's, so it carries to actors with fewer threads."""

    seconds_per_speech_second: float = Field(gt=0)
    device: Literal["cpu", "cuda"]
    hardware: str  # the CPU model or GPU name it was measured on
    cpus: Optional[int] = None
    engine: str  # "ctranslate2 int8", "transformers float16", ...
    batch_size: int
    windows: int  # how many windows the figure rests on
    speech_seconds: float
    tokens: Optional[int] = None  # decode steps forced in total (None: CTC, no decode loop)
    load_average: Optional[float] = None  # the machine was shared: its load while measuring
    measured_at: str
    command: str


class ModelProfile(BaseModel):
    name: str
    family: Literal["whisper", "parakeet-ctc"]
    aliases: list[str] = Field(default_factory=list)  # Hub ids and faster-whisper names of the model
    dimensions: dict[str, int]  # the published shape the random-weight copy was built with
    cpu: Optional[AsrCost] = None
    gpu: Optional[AsrCost] = None

    def measured(self, gpu: bool) -> bool:
        return (self.gpu if gpu else self.cpu) is not None

    def cost(self, gpu: bool) -> AsrCost:
        found = self.gpu if gpu else self.cpu
        if found is None:
            where = "GPU" if gpu else "CPU"
            other = "CPU" if gpu else "GPU"
            has = f" (it has a {other} figure)" if (self.cpu if gpu else self.gpu) else ""
            raise UnmeasuredModel(
                f"{self.name}: its {where} ASR cost is not measured yet{has}; "
                + ("benchmarks/gpu_session.py measures it on a GPU machine, then "
                   "`python -m pipelines.plan.models merge` ships it" if gpu else
                   "benchmarks/model_costs.py measures it") + "; where the model is in the local cache, "
                "the plan calibrates it instead")
        return found


class ModelProfiles(BaseModel):
    method: str
    trust: str
    models: dict[str, ModelProfile]


def load(path: Optional[Path] = None) -> ModelProfiles:
    return ModelProfiles.model_validate_json((path or SHIPPED).read_bytes())


def shipped(name: Optional[str], path: Optional[Path] = None) -> Optional[ModelProfile]:
    """The profile `asr.model` names (its short name, or a Hub id / faster-whisper name of it)."""
    if not name:
        return None
    key = name.strip().lower()
    for profile in load(path or SHIPPED).models.values():
        if key == profile.name.lower() or key in (alias.lower() for alias in profile.aliases):
            return profile
    return None


def priced(calibration: Calibration, profile: ModelProfile, gpus: int,
           reference: Optional[ModelProfile] = None) -> Calibration:
    """This machine's stage costs (measured with the bundled tiny.en) with the profile's ASR cost.
    Where the base profile measured tiny.en on the same kind of device, the figure is a ratio to
    tiny.en on the profiled device, applied to that measured rate: machines differ, the engine's
    ratios between shapes travel (and a GPU figure timed in transformers prices the faster-whisper
    backend through faster-whisper's own tiny.en rate). Otherwise it is the figure as measured, on
    the device it names. Load time stays the bundled model's."""
    cost = profile.cost(gpus > 0)
    rate = cost.seconds_per_speech_second
    here = calibration.hardware.asr_seconds_per_speech_second
    same_kind = (calibration.hardware.gpus > 0) == (gpus > 0)
    anchor = reference.gpu if (reference and gpus) else reference.cpu if reference else None
    relative = bool(here and same_kind and anchor is not None)
    if relative:
        rate = here * rate / anchor.seconds_per_speech_second
    where = calibration.hardware.gpu_name if relative and gpus else cost.hardware
    hardware = calibration.hardware.model_copy(update={
        "name": f"{calibration.hardware.name}+{profile.name}",
        "asr_model": profile.name,
        "asr_seconds_per_speech_second": rate,
        "asr_probe_segments": None,  # no probe of this input: the profile's own spread is in the README
        "batch_size": cost.batch_size,
        "source": f"model profile ({cost.engine} on {cost.hardware}"
                  + (f", as a ratio to {anchor.hardware}'s tiny.en)" if relative else ")"),
        **({"gpus": gpus, "gpu_name": where, "device": "cuda"} if gpus else {}),
    })
    return calibration.model_copy(update={"hardware": hardware})


def costs_for(config: JobConfig, gpus: Callable[[], int], measure: Callable[[JobConfig], Calibration],
              given: Optional[Calibration] = None) -> Calibration:
    """The stage costs: `given` (a saved profile) or `measure`'s. When `asr.model` has a shipped
    profile, they are measured with the bundled model (no download, no load of the named one) and
    ASR is priced by the profile for `gpus()` GPUs (the what-if's, else this machine's)."""
    profile = shipped(config.asr.model)
    count = gpus() if profile is not None else 0
    if profile is None or not profile.measured(count > 0):  # `voxmill run` calibrates the model it has
        return given or measure(config)
    bundled = config.model_copy(update={"asr": config.asr.model_copy(update={"model": None})})
    base = given or measure(bundled)
    return priced(base, profile, count, shipped(_measured_model(base)))


def _measured_model(calibration: Calibration) -> str:
    """The model the base profile's ASR rate was measured with ("bundled tiny.en" is tiny.en)."""
    name = calibration.hardware.asr_model
    return BUNDLED if name in ("", "bundled tiny.en") else name


def check_priced(name: Optional[str], gpus: Optional[int]) -> bool:
    """For `voxmill plan`: True when a shipped profile prices `name` on `gpus` GPUs (None: this
    machine's), so the model need not be loadable here. False for other models, and for one with a
    profile but no figure for that device that is in the local cache (calibrated as before); not
    cached, an UnmeasuredModel: a plan downloads nothing to find out."""
    profile = shipped(name)
    if profile is None:
        return False
    gpu = (gpus if gpus is not None else _gpus_here()) > 0
    if profile.measured(gpu):
        return True
    try:
        from faster_whisper.utils import download_model

        download_model(name, local_files_only=True)  # a lookup in the local cache, no fetch
        return False
    except Exception:  # noqa: BLE001 - not cached, or no faster-whisper
        profile.cost(gpu)  # raises, saying what is missing
        raise


def _gpus_here() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch, no driver: no GPU
        return 0


def merge(result: dict, path: Optional[Path] = None) -> ModelProfiles:
    """A benchmark's output (`kind`: cpu or gpu, `models`: name -> AsrCost fields) into the profiles."""
    if result.get("kind") not in ("cpu", "gpu"):  # a --cpu-rehearsal's figures price nothing
        raise ValueError(f"not a measurement to ship: kind {result.get('kind')!r} (cpu or gpu)")
    profiles = load(path)
    slot = result["kind"]
    for name, fields in result["models"].items():
        if name not in profiles.models:
            raise KeyError(f"{name} is not a shipped model ({', '.join(profiles.models)})")
        cost = AsrCost.model_validate({"device": "cuda" if slot == "gpu" else "cpu",
                                       "hardware": fields.get("cpu_model") or fields.get("gpu_name"),
                                       "command": result.get("command", ""), **fields})
        profiles.models[name] = profiles.models[name].model_copy(update={slot: cost})
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description="merge a benchmark's model costs into the shipped profiles")
    parser.add_argument("action", choices=["merge", "show"])
    parser.add_argument("result", nargs="?", type=Path)
    parser.add_argument("--into", type=Path, default=SHIPPED)
    args = parser.parse_args()
    if args.action == "merge":
        profiles = merge(json.loads(args.result.read_text()), args.into)
        args.into.write_text(profiles.model_dump_json(indent=2, exclude_none=True) + "\n")
    for profile in load(args.into).models.values():
        figures = {slot: getattr(profile, slot) for slot in ("cpu", "gpu")}
        print(profile.name, *(f"{slot} {c.seconds_per_speech_second:.4g} s/s" if c else f"{slot} unmeasured"
                              for slot, c in figures.items()))


if __name__ == "__main__":
    main()
