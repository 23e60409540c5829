"""Job config keys by dotted path, for the CLI and the Prefect flow alike: `KEY=VALUE` settings parsed
against JobConfig, and pydantic's errors told as one line naming each key (with the keys or the
choices there), never a pydantic dump."""
from __future__ import annotations

from typing import Iterable, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from schemas.config import JobConfig


class ConfigError(ValueError):
    """A job config that cannot be; the message is one line naming each key."""


def config_field(key: str) -> FieldInfo:
    """The JobConfig field a dotted key names; a ConfigError naming the keys there when it names none."""
    model: type[BaseModel] = JobConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if part not in model.model_fields:
            where = ".".join(parts[:depth]) or "the job"
            raise ConfigError(f"{key}: no such key; {where} has {', '.join(model.model_fields)}")
        field = model.model_fields[part]
        section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
            else None
        last = depth == len(parts) - 1
        if section is not None and last:
            raise ConfigError(f"{key} is a section: set one of its keys ({', '.join(section.model_fields)})")
        if section is None and not last:
            raise ConfigError(f"{key}: no such key; {'.'.join(parts[:depth + 1])} is a value, not a section")
        model = section or model
    return field


def parse_settings(pairs: Iterable[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs (`--set`) as load_job_config overrides. A value is YAML (16000, 0.95, null,
    [en, de]), except that a text field keeps the text as typed (`asr.language=no` is Norwegian, not false)."""
    found: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. audio.sample_rate=16000")
        field = config_field(key)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot read {raw!r} as a value: {str(err).splitlines()[0]}") from err
        if isinstance(value, (bool, int, float)) and str in (*get_args(field.annotation), field.annotation):
            value = raw.strip()
        found[key] = value
    return found


def describe(err: ValidationError) -> str:
    """Every error of a JobConfig validation on one line: `asr.beam_size: Input should be ... (got 0); ...`."""
    return "; ".join(map(_describe_one, err.errors()))


def _describe_one(error: dict) -> str:
    key = ".".join(map(str, error["loc"]))
    kind, given = error["type"], error.get("input")
    if kind == "missing" and key in ("input", "output"):
        return f"--{key} is required (or {key}: in the job file)"
    if kind == "extra_forbidden":
        try:
            config_field(key)
        except ConfigError as unknown:
            return str(unknown)
    if kind == "literal_error":
        return f"{key}: {given!r} is not one of {error['ctx']['expected']}"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(given, (str, int, float, bool)) or given is None:
        message += f" (got {given!r})"
    return message if key and message.startswith(key + ".") else f"{key or 'job'}: {message}"
