"""Every path is an fsspec URL; this module alone knows how to commit a file atomically.

Local files are written under a hidden temporary name in the same folder, fsynced and renamed,
so a reader never sees a partial file (and readers that skip dot-files, such as Arrow datasets,
never see a scratch file a crash left behind). Object stores get a single upload that only
becomes visible once complete (S3 PUT / multipart-complete semantics); every S3 call is retried
with backoff, and a retried PUT of the same bytes to the same key cannot duplicate anything.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem, make_path_posix

SCRATCH_MARK = ".tmp-"  # in every scratch name; list_files never returns one
PROBE_PREFIX = "_probe-"
S3_PROTOCOLS = ("s3", "s3a")
S3_MAX_ATTEMPTS = 10  # per request; at a 20% failure rate a request fails 10 times in 1e7


class StorageError(OSError):
    """Storage failed after its retries; the message names the URL and the cause."""


class OutputError(StorageError):
    """The output cannot be written (missing bucket, no permission, disk full, read-only)."""


def filesystem(url: str, options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the protocol-less path for `url` (S3 with retries and backoff).

    `options` are fsspec storage options (endpoint, credentials, ...); on S3 they are merged over
    the retry settings, so a caller's own `config_kwargs` keep the retries unless they set some.
    """
    options = dict(options or {})
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol is None:  # a plain local path: never parsed as a URL chain (a name may hold "::")
        return fsspec.filesystem("file", **options), make_path_posix(url)
    if protocol in S3_PROTOCOLS:
        options = _with_retries(options)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def _with_retries(options: dict) -> dict:
    base = s3_options()["config_kwargs"]
    given = dict(options.get("config_kwargs") or {})
    retries = {**base["retries"], **given.get("retries", {})}
    return {**options, "config_kwargs": {**base, **given, "retries": retries}}


def s3_options() -> dict:
    """botocore's standard retry mode (jittered exponential backoff on 5xx, throttling and dropped
    connections) with more attempts than its default 3. AWS_MAX_ATTEMPTS / AWS_RETRY_MODE and
    fsspec's own s3 `config_kwargs` still win, so an operator can shorten or lengthen the budget."""
    configured = dict(fsspec.config.conf.get("s3", {}).get("config_kwargs", {}))
    retries = dict(configured.get("retries", {}))
    retries.setdefault("mode", os.environ.get("AWS_RETRY_MODE", "standard"))
    retries.setdefault("max_attempts", int(os.environ.get("AWS_MAX_ATTEMPTS", S3_MAX_ATTEMPTS)))
    return {"config_kwargs": {**configured, "retries": retries}}


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A full URL for a path `fs` returned (fsspec strips the protocol)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def scratch_path(path: str, suffix: str = "") -> Path:
    """A hidden sibling of `path`: same filesystem (so the rename is atomic), invisible to globs."""
    folder, name = os.path.split(path)
    return Path(folder or ".", f".{name}{SCRATCH_MARK}{uuid.uuid4().hex}{suffix}")


@contextlib.contextmanager
def atomic_local_file(url: str, suffix: str = "") -> Iterator[Path]:
    """Yield a local scratch path; on clean exit its content is committed whole at `url`.

    Any OSError while writing or committing becomes an OutputError naming `url`.
    """
    fs, path = filesystem(url)
    try:
        if is_local(fs):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            scratch = scratch_path(path, suffix)
        else:
            fd, name = tempfile.mkstemp(prefix="voxmill-", suffix=suffix)
            os.close(fd)
            scratch = Path(name)
    except OSError as err:
        raise _output_error(url, err) from err
    try:
        yield scratch
        _commit(fs, scratch, path)
    except OutputError:
        raise
    except OSError as err:
        raise _output_error(url, err) from err
    finally:
        scratch.unlink(missing_ok=True)


def _output_error(url: str, err: BaseException) -> OutputError:
    return OutputError(f"cannot write {url}: {type(err).__name__}: {err}")


def _commit(fs: fsspec.AbstractFileSystem, scratch: Path, path: str) -> None:
    if is_local(fs):
        with open(scratch, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(scratch, path)
        _fsync_dir(os.path.dirname(path) or ".")
    else:
        fs.put_file(str(scratch), path)


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (a power cut must not undo a committed file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(url: str, data: bytes) -> None:
    with atomic_local_file(url) as scratch:
        scratch.write_bytes(data)


def write_json(url: str, obj: object) -> None:
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(url: str, missing: object = ...) -> object:
    """The parsed file; `missing` instead when given and the file does not exist."""
    fs, path = filesystem(url)
    try:
        return json.loads(fs.cat_file(path))  # one GET (no existence check first: on S3 that is 1-2 more)
    except FileNotFoundError:
        if missing is ...:
            raise
        return missing
    except OSError as err:
        raise StorageError(f"cannot read {url}: {type(err).__name__}: {err}") from err


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def list_files(url: str, suffix: str = "", prefix: str = "") -> list[str]:
    """Full URLs of committed files directly under `url` (scratch files excluded)."""
    fs, path = filesystem(url)
    return [to_url(fs, p) for p in list_paths(fs, path, suffix, prefix)]


def list_paths(fs: fsspec.AbstractFileSystem, path: str, suffix: str = "", prefix: str = "") -> list[str]:
    """`list_files` on a filesystem already open: sorted protocol-less paths, for `fs` itself."""
    try:
        fs.invalidate_cache(path)  # what is there now, written by any process (s3fs caches listings)
        names = fs.ls(path, detail=False)  # no exists() first: on S3 that is a HEAD and a LIST more
    except FileNotFoundError:
        return []
    except OSError as err:
        raise StorageError(f"cannot list {to_url(fs, path)}: {type(err).__name__}: {err}") from err
    return sorted(p for p in names if p.endswith(suffix) and p.rsplit("/", 1)[-1].startswith(prefix)
                  and SCRATCH_MARK not in p)


def remove_leftovers(url: str, folders: tuple[str, ...]) -> int:
    """Delete what a killed writer left under `url`: write probes, and on local disks the scratch
    files in `url` and `folders` (object stores keep scratch in the local temp dir). Committed
    files are never touched. Returns how many were removed."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    local = is_local(fs)
    found: list[str] = []
    for folder in ("", *(folders if local else ())):
        base = f"{root}/{folder}".rstrip("/")
        try:
            names = fs.ls(base, detail=False)
        except FileNotFoundError:
            continue
        found += [p for p in names if _is_leftover(p.rsplit("/", 1)[-1], local)]
    for path in found:
        fs.rm(path)
    return len(found)


def _is_leftover(name: str, local: bool) -> bool:
    return name.startswith(PROBE_PREFIX) or (local and name.startswith(".") and SCRATCH_MARK in name)


def ensure_writable(url: str) -> None:
    """Write and delete a probe under `url`, so a bad bucket or credential fails up front.
    A local folder made only for the probe goes again: a check leaves nothing behind."""
    probe = join(url, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    try:
        root_fs, root = filesystem(url)
        made_here = root_fs.protocol == ("file", "local") and not root_fs.exists(root)
        write_bytes(probe, b"ok")
        fs, path = filesystem(probe)
        fs.rm(path)
        if made_here:
            root_fs.rmdir(root)
    except Exception as err:  # noqa: BLE001 - every backend raises its own type
        cause = err.__cause__ if isinstance(err, OutputError) and err.__cause__ else err
        raise OutputError(f"cannot write to output {url}: {type(cause).__name__}: {cause}") from err


_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:'\"]*):(?P<secret>[^/\s'\"]+)@")
_SECRET_PARAMS = re.compile(r"(?P<key>[?&](?:password|secret|token|key|sig|signature|access_token|"
                            r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)=)(?P<value>[^&\s'\"]+)",
                            re.IGNORECASE)


def redact(text: object) -> str:
    """`text` (a URL, or a message holding URLs) with credentials masked: `s3://user:pw@host/x`
    becomes `s3://user:***@host/x`, and secret query parameters (`?token=...`, presigned
    `X-Amz-Signature=...`) become `***`. Every URL voxmill prints goes through here."""
    text = _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))
    return _SECRET_PARAMS.sub(lambda m: f"{m['key']}***", text)
