"""Plug-in points resolve a config string to a class: a short name from their dict, or any
"package.module:Class" path. Imported on use, so a backend's heavy imports load only where it runs."""
from __future__ import annotations

import importlib


def load_class(setting: str, name: str, known: dict[str, str]) -> type:
    """The class `name` (the value of config key `setting`) stands for; ValueError saying why not."""
    target = known.get(name, name)
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{setting} {name!r}: not one of {', '.join(sorted(known))} "
                         "and not a 'package.module:Class' path")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{setting} {name!r}: cannot import {target} ({type(err).__name__}: {err})") from err
