"""Listing: every audio path under an input URL, each either a file to read or a named problem.

Nothing found under the input may vanish: a link that dangles or loops, a FIFO, a folder that
cannot be entered, a name that is not UTF-8 and a second path to an already listed file all come
back as entries with an `error`, so the job records them as rejects and counts them as inputs.
On local disks the walk follows symbolic links (files and folders), once per real folder, so a
link loop ends and a file reached twice is read once. Object stores have no links; fsspec lists them.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Iterator, Optional

import fsspec

from pipelines.io import storage

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Listed:
    path: str  # protocol-less, as `fs` takes it (a display form when the name is not UTF-8)
    size: int
    error: Optional[str] = None  # why it cannot be read; None for a file to probe
    folder: bool = False  # a problem with a folder (unreadable, a link loop): kept whatever its name


class InputError(ValueError):
    """The input cannot be listed (missing, empty, unreadable): raised before any work starts."""


def list_input(input_url: str, extensions: set[str], exclude: Optional[str] = None,
               ) -> tuple[fsspec.AbstractFileSystem, list[Listed]]:
    """Sorted entries with an audio extension under the input (a folder, a file, or a glob).

    A path that exists is taken literally even when it holds `*`, `?` or `[`. Anything under
    `exclude` (the job's own output, when it sits inside its input) is left out, so a rerun never
    ingests what an earlier run wrote."""
    try:
        fs, path = storage.filesystem(input_url)
        entries = list(_entries(fs, path, input_url))
    except InputError:
        raise
    except (OSError, ValueError) as err:
        raise InputError(storage.redact(f"cannot list input {input_url}: {err}")) from err
    skip = _excluded_prefix(fs, exclude)
    found = [e for e in entries if (e.folder or _is_audio(e.path, extensions))
             and not (skip and e.path.startswith(skip))]
    return fs, sorted(found, key=lambda e: e.path)


def _entries(fs: fsspec.AbstractFileSystem, path: str, input_url: str) -> Iterator[Listed]:
    local = storage.is_local(fs)
    if fs.exists(path) or (local and os.path.lexists(path)):
        if local:
            yield from LocalWalk().walk([path])
        elif fs.isdir(path):
            yield from _remote(fs.find(path, detail=True))
        else:
            yield from _remote({path: fs.info(path)})
    elif GLOB_CHARS & set(path):
        matches = fs.glob(path, detail=not local)
        if local:  # a glob names files; folders it matches are not walked
            yield from LocalWalk().walk([m for m in sorted(matches) if not os.path.isdir(m)])
        else:
            yield from _remote(matches)
    else:
        raise InputError(f"input not found: {storage.redact(input_url)}")


def _remote(details: dict) -> Iterator[Listed]:
    for path, info in details.items():
        if info.get("type", "file") == "file":
            yield Listed(path, int(info.get("size") or 0))


def _is_audio(path: str, extensions: set[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[-1].lower() in extensions


def _excluded_prefix(fs: fsspec.AbstractFileSystem, exclude: Optional[str]) -> Optional[str]:
    if not exclude:
        return None
    try:
        out_fs, out_path = storage.filesystem(exclude)
    except (OSError, ValueError):
        return None
    if type(out_fs) is not type(fs):
        return None
    root = os.path.realpath(out_path) if storage.is_local(fs) else out_path
    return root.rstrip("/") + "/"


class LocalWalk:
    """A walk of local paths that follows links, with loop protection by (device, inode).

    Folders reached through a link are walked after every real folder, so a file is listed under
    its own path whenever the input holds it, and under a link's path only when it holds no other."""

    def __init__(self) -> None:
        self.folders: set[tuple[int, int]] = set()  # real folders already walked
        self.linked: list[str] = []  # folder links met, walked once the real tree is done
        self.files: dict[tuple[int, int], str] = {}  # real file -> the path it is read by
        self.keys: dict[str, tuple[int, int]] = {}  # path listed -> its real file

    def walk(self, paths: list[str]) -> Iterator[Listed]:
        """Entries under `paths`; a file reached by several paths is listed under the one without
        a link when there is one (else the first), and the other paths name it."""
        entries = [entry for path in paths for entry in self._visit(path, top=True)]
        while self.linked:
            entries += self._visit(self.linked.pop(0), top=True)
        for entry in entries:
            key = self.keys.get(entry.path)
            first = self.files.get(key) if key else None
            if first is not None and first != entry.path:
                yield Listed(entry.path, entry.size, "same file as another input path (a link): read once")
            else:
                yield entry

    def _visit(self, path: str, top: bool = False) -> Iterator[Listed]:
        try:
            info = os.stat(path)  # follows links
        except OSError as err:
            yield self._broken(path, err)
            return
        if stat.S_ISDIR(info.st_mode):
            if not top and os.path.islink(path):
                self.linked.append(path)
            else:
                yield from self._folder(path, info)
        elif stat.S_ISREG(info.st_mode):
            yield self._file(path, info)
        else:
            yield Listed(_shown(path), 0, f"not a regular file ({_kind(info.st_mode)})")

    def _folder(self, path: str, info: os.stat_result) -> Iterator[Listed]:
        key = (info.st_dev, info.st_ino)
        if key in self.folders:
            if os.path.islink(path):
                yield Listed(_shown(path), 0, "link to a folder already listed: read once", folder=True)
            return
        self.folders.add(key)
        try:
            with os.scandir(path) as scan:
                names = sorted(entry.name for entry in scan)
        except OSError as err:
            yield Listed(_shown(path), 0, f"folder cannot be read: {_cause(err)}", folder=True)
            return
        for name in names:
            yield from self._visit(os.path.join(path, name))

    def _file(self, path: str, info: os.stat_result) -> Listed:
        shown = _shown(path)
        if shown != path:
            return Listed(shown, info.st_size, "file name is not valid UTF-8: rename the file to read it")
        key = (info.st_dev, info.st_ino)
        self.keys[path] = key
        first = self.files.get(key)
        if first is None or (_via_link(first) and not _via_link(path)):
            self.files[key] = path
        if not os.access(path, os.R_OK):
            return Listed(path, info.st_size, "file cannot be read: permission denied")
        return Listed(path, info.st_size)

    @staticmethod
    def _broken(path: str, err: OSError) -> Listed:
        """A path `stat` fails on; one without an extension may have been a folder of audio."""
        maybe_folder = "." not in os.path.basename(path)
        if err.errno == errno.ELOOP:
            return Listed(_shown(path), 0, "link loop: the link points back at itself", maybe_folder)
        if os.path.islink(path) and err.errno == errno.ENOENT:
            return Listed(_shown(path), 0, "dangling link: its target does not exist", maybe_folder)
        return Listed(_shown(path), 0, f"cannot be read: {_cause(err)}", maybe_folder)


def _via_link(path: str) -> bool:
    return os.path.realpath(path) != os.path.abspath(path)


def _shown(path: str) -> str:
    """The path itself, or for a name that is not UTF-8 its bytes with the bad ones escaped."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _cause(err: OSError) -> str:
    return (err.strerror or type(err).__name__).lower()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"
