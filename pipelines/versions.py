"""Versions of the parts that decide what the output holds, recorded in every summary."""
import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("voxmill", "faster-whisper", "ctranslate2", "torch", "torchaudio", "ray", "pyarrow",
            "webdataset", "soundfile", "soxr", "av", "fsspec", "resemblyzer")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
