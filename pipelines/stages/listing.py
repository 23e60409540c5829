"""Listing: every audio path under an input URL, each either a file to read or a named problem.

Nothing found under the input may vanish: a link that dangles or loops, a FIFO, a folder that
cannot be entered, a name that is not UTF-8 and a second path to an already listed file all come
back as entries with an `error`, so the job records them as rejects and counts them as inputs.
On local disks the walk follows symbolic links (files and folders), once per real folder, so a
link loop ends and a file reached twice is read once. Object stores have no links; fsspec lists them
(S3 page by page, in key order).

The listing streams: `write_listing` puts it in a Parquet file batch by batch (18 M entries never
sit in memory), in path order. Both walks yield in path order (a folder's names are sorted with
`/` after sub-folder names, as full paths sort); the few entries that come out of order (paths
through links, decided once the walk is done) make the file be sorted once at the end.
"""
from __future__ import annotations

import errno
import os
import stat
from array import array
from dataclasses import dataclass
from typing import Iterator, Optional

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io import storage
from schemas.tables import LISTING_SCHEMA

GLOB_CHARS = set("*?[")
BATCH = 1 << 16  # entries per listing batch (a Parquet row group)
S3_PROTOCOLS = ("s3", "s3a")
PAGE_KEYS = 1000  # keys per S3 listing request (the API's most)


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
    fs, entries = iter_input(input_url, extensions, exclude)
    return fs, sorted(_listed(entries, input_url), key=lambda e: e.path)


def iter_input(input_url: str, extensions: set[str], exclude: Optional[str] = None,
               ) -> tuple[fsspec.AbstractFileSystem, Iterator[Listed]]:
    """`list_input`'s entries as they are found (nearly all in path order), never all at once."""
    try:
        fs, path = storage.filesystem(input_url)
    except (OSError, ValueError) as err:
        raise InputError(storage.redact(f"cannot list input {input_url}: {err}")) from err
    skip = _excluded_prefix(fs, exclude)
    entries = (e for e in _entries(fs, path, input_url)
               if (e.folder or _is_audio(e.path, extensions)) and not (skip and e.path.startswith(skip)))
    return fs, entries


def _listed(entries: Iterator[Listed], input_url: str) -> Iterator[Listed]:
    """The entries, with a failure to list the input as an InputError naming it."""
    try:
        yield from entries
    except InputError:
        raise
    except (OSError, ValueError) as err:
        raise InputError(storage.redact(f"cannot list input {input_url}: {err}")) from err


def write_listing(input_url: str, extensions: set[str], exclude: Optional[str], url: str,
                  ) -> tuple[fsspec.AbstractFileSystem, int]:
    """List the input into a Parquet file at `url` (`LISTING_SCHEMA`, path order), a batch at a time;
    returns the input's filesystem and the number of entries."""
    fs, entries = iter_input(input_url, extensions, exclude)
    rows, ordered, last = 0, True, ""
    with storage.atomic_local_file(url, ".parquet") as scratch:
        with pq.ParquetWriter(str(scratch), LISTING_SCHEMA) as writer:
            for batch in _batches(_listed(entries, input_url)):
                paths = [e.path for e in batch]
                ordered = ordered and last <= paths[0] and paths == sorted(paths)
                last = paths[-1]
                rows += len(batch)
                writer.write_batch(pa.record_batch([pa.array(paths, pa.string()), pa.array([e.size for e in batch], pa.int64()),
                                                    pa.array([e.error for e in batch], pa.string()),
                                                    pa.array([e.folder for e in batch], pa.bool_())], schema=LISTING_SCHEMA))
        if not ordered:  # entries met through links came last: sort once (they are few only on local disks)
            table = pq.read_table(str(scratch)).sort_by("path")
            pq.write_table(table, str(scratch), row_group_size=BATCH)
    return fs, rows


def _batches(entries: Iterator[Listed]) -> Iterator[list[Listed]]:
    batch: list[Listed] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def read_listing(url: str, columns: Optional[list[str]] = None) -> Iterator[pa.RecordBatch]:
    """The listing `write_listing` wrote, batch by batch."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as fh:
        yield from pq.ParquetFile(fh).iter_batches(batch_size=BATCH, columns=columns)


def _entries(fs: fsspec.AbstractFileSystem, path: str, input_url: str) -> Iterator[Listed]:
    local = storage.is_local(fs)
    if fs.exists(path) or (local and os.path.lexists(path)):
        if local:
            yield from LocalWalk().walk([path])
        elif fs.isdir(path):
            yield from _s3_pages(fs, path) if fs.protocol[0] in S3_PROTOCOLS else _remote(fs.find(path, detail=True))
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


def _s3_pages(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[Listed]:
    """Every object under an S3 prefix, a page (`PAGE_KEYS`) at a time, in key order; `fs.find`
    would hold the whole listing (about 0.8 KB a file) before returning any of it."""
    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else ""
    page: dict = {"NextContinuationToken": None}
    while "NextContinuationToken" in page:
        token = {"ContinuationToken": page["NextContinuationToken"]} if page["NextContinuationToken"] else {}
        page = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=PAGE_KEYS, **token)
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):  # a folder marker, not a file
                yield Listed(f"{bucket}/{item['Key']}", int(item.get("Size") or 0))
        if not page.get("IsTruncated"):
            break


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
    its own path whenever the input holds it, and under a link's path only when it holds no other.
    A plain file (its own path, one hard link) is yielded at once and only its (device, inode) is
    kept, 16 bytes; paths through links and hard-linked files wait for the end of the walk, where
    the one path each file is read by is chosen."""

    def __init__(self) -> None:
        self.folders: set[tuple[int, int]] = set()  # real folders already walked
        self.linked: list[str] = []  # folder links met, walked once the real tree is done
        self.devices, self.inodes = array("Q"), array("Q")  # plain files yielded so far
        self.held: list[tuple[Listed, tuple[int, int], bool]] = []  # (entry, real file, through a link)

    def walk(self, paths: list[str]) -> Iterator[Listed]:
        """Entries under `paths`; a file reached by several paths is listed under the one without
        a link when there is one (else the first), and the other paths name it."""
        for path in paths:
            yield from self._visit(path, top=True)
        while self.linked:
            yield from self._visit(self.linked.pop(0), top=True, via=True)
        yield from self._decide()

    def _decide(self) -> Iterator[Listed]:
        plain = self._plain({key for _, key, _ in self.held})
        chosen: dict[tuple[int, int], tuple[str, bool]] = {}
        for entry, key, via in self.held:
            first = chosen.get(key)
            if first is None or (first[1] and not via):
                chosen[key] = (entry.path, via)
        for entry, key, _ in self.held:
            if key in plain or chosen[key][0] != entry.path:
                yield Listed(entry.path, entry.size, "same file as another input path (a link): read once")
            else:
                yield entry
        self.held = []

    def _plain(self, keys: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of `keys` a plain file already listed has."""
        if not keys:
            return set()
        inodes = np.frombuffer(self.inodes, np.uint64)
        hits = np.flatnonzero(np.isin(inodes, np.array([ino for _, ino in keys], np.uint64)))
        devices = np.frombuffer(self.devices, np.uint64)
        return {(int(devices[i]), int(inodes[i])) for i in hits} & keys

    def _visit(self, path: str, top: bool = False, via: bool = False) -> Iterator[Listed]:
        try:
            info = os.stat(path)  # follows links
        except OSError as err:
            yield self._broken(path, err)
            return
        if stat.S_ISDIR(info.st_mode):
            if not top and os.path.islink(path):
                self.linked.append(path)
            else:
                yield from self._folder(path, info, via)
        elif stat.S_ISREG(info.st_mode):
            yield from self._file(path, info, via or os.path.islink(path))
        else:
            yield Listed(_shown(path), 0, f"not a regular file ({_kind(info.st_mode)})")

    def _folder(self, path: str, info: os.stat_result, via: bool) -> Iterator[Listed]:
        key = (info.st_dev, info.st_ino)
        if key in self.folders:
            if os.path.islink(path):
                yield Listed(_shown(path), 0, "link to a folder already listed: read once", folder=True)
            return
        self.folders.add(key)
        try:
            with os.scandir(path) as scan:  # a sub-folder's paths sort as its name + "/"
                names = sorted(e.name + "/" if _real_folder(e) else e.name for e in scan)
        except OSError as err:
            yield Listed(_shown(path), 0, f"folder cannot be read: {_cause(err)}", folder=True)
            return
        for name in names:
            yield from self._visit(os.path.join(path, name.rstrip("/")), via=via)

    def _file(self, path: str, info: os.stat_result, via: bool) -> Iterator[Listed]:
        shown = _shown(path)
        if shown != path:
            yield Listed(shown, info.st_size, "file name is not valid UTF-8: rename the file to read it")
            return
        entry = (Listed(path, info.st_size) if os.access(path, os.R_OK)
                 else Listed(path, info.st_size, "file cannot be read: permission denied"))
        if via or info.st_nlink > 1:
            self.held.append((entry, (info.st_dev, info.st_ino), via))
            return
        self.devices.append(info.st_dev)
        self.inodes.append(info.st_ino)
        yield entry

    @staticmethod
    def _broken(path: str, err: OSError) -> Listed:
        """A path `stat` fails on; one without an extension may have been a folder of audio."""
        maybe_folder = "." not in os.path.basename(path)
        if err.errno == errno.ELOOP:
            return Listed(_shown(path), 0, "link loop: the link points back at itself", maybe_folder)
        if os.path.islink(path) and err.errno == errno.ENOENT:
            return Listed(_shown(path), 0, "dangling link: its target does not exist", maybe_folder)
        return Listed(_shown(path), 0, f"cannot be read: {_cause(err)}", maybe_folder)


def _real_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


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
