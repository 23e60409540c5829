"""One writer per output: a lease under `_ledger/`, taken by conditional create, kept by a heartbeat.

Two runs on one output would redo the same units and collide on journal files, and a Prefect
concurrency limit cannot see a CLI backfill. So a run first creates `_ledger/lease-NNNNNN.json`,
a name that can be created only once (S3's `If-None-Match: *`, a hard link on local disks):
- the highest number is the current lease; it is held while its heartbeat (`expires_at`) is fresh;
- a run that ends marks it released; a run killed with `kill -9` stops beating and it expires;
- the next run takes over by creating the next number, so of two runs racing for a released or
  expired lease exactly one wins, on any store that supports conditional create.
A holder that finds a higher number than its own has lost the lease (it was thought dead) and stops.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

from pipelines.io import storage

log = logging.getLogger("voxmill")

PREFIX = "lease-"
WAIT_POLL_SECONDS = 5.0


class LeaseHeld(RuntimeError):
    """Another run holds the output; the message says who and until when."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeat stopped for longer than the lease lasts)."""


class OutputLease:
    """`with OutputLease(output, seconds):` holds the output for the block, or raises LeaseHeld."""

    def __init__(self, output: str, seconds: float = 120.0, wait_seconds: float = 0.0):
        self.folder = storage.join(output, "_ledger")
        self.seconds = seconds
        self.wait_seconds = wait_seconds
        self.token = uuid.uuid4().hex
        self.number: Optional[int] = None
        self.started_at = datetime.now(timezone.utc).isoformat()
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None
        self.lost = False

    def __enter__(self) -> "OutputLease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            held = self._try_take()
            if held is None:
                break
            if time.monotonic() >= deadline:
                raise LeaseHeld(held)
            time.sleep(min(WAIT_POLL_SECONDS, self.seconds / 4, max(0.1, deadline - time.monotonic())))
        self._beat = threading.Thread(target=self._heartbeat, name="voxmill-lease", daemon=True)
        self._beat.start()

    def release(self) -> None:
        """Stop beating and mark the lease released, so the next run starts without waiting."""
        if self.number is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if not self.lost:
            try:
                storage.write_json(self._url(self.number), self._record(released=True))
            except OSError as err:  # it expires by itself; a failing store must not hide the job's result
                log.warning("could not release the lease on %s: %s", self.folder, err)
        self.number = None

    def check(self) -> None:
        """Raise LeaseLost once another run has taken the output over."""
        if self.lost:
            raise LeaseLost(f"another run took over {self.folder}: this run stops (its work so far is kept)")

    # --------------------------------------------------------------------------------- internals

    def _try_take(self) -> Optional[str]:
        """Take the next lease number; None on success, else who holds the output."""
        current, record = self._current()
        if record is not None and _held(record):
            return (f"another voxmill run holds {self.folder.rsplit('/', 1)[0]} (host {record.get('host')}, "
                    f"pid {record.get('pid')}, since {record.get('started_at')}); wait for it, or rerun with --wait")
        number = current + 1
        if not _create(self._url(number), self._record()):
            return self._try_take()  # another run took this number first: report it (or take the next)
        self.number = number
        self._forget_older(number)
        return None

    def _current(self) -> tuple[int, Optional[dict]]:
        names = storage.list_files(self.folder, ".json", prefix=PREFIX)
        if not names:
            return 0, None
        newest = max(names)
        number = int(newest.rsplit("/", 1)[-1][len(PREFIX):-len(".json")])
        return number, _read(newest)

    def _record(self, released: bool = False) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _started(os.getpid()),
                "started_at": self.started_at, "expires_at": time.time() + self.seconds, "released": released}

    def _url(self, number: int) -> str:
        return storage.join(self.folder, f"{PREFIX}{number:06d}.json")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                if self._current()[0] != self.number:
                    self.lost = True
                    log.error("the lease on %s was taken over by another run", self.folder)
                    return
                storage.write_json(self._url(self.number), self._record())
            except OSError as err:  # a store hiccup: the next beat tries again, well before expiry
                log.warning("lease heartbeat on %s failed: %s", self.folder, err)

    def _forget_older(self, number: int) -> None:
        for url in storage.list_files(self.folder, ".json", prefix=PREFIX):
            if url != self._url(number):
                fs, path = storage.filesystem(url)
                fs.rm(path)


def _held(record: dict) -> bool:
    """Whether a lease record still holds its output: not released, not expired, and, when its
    holder ran on this machine, that process still alive (a rerun right after `kill -9` or a crash
    on a full disk need not wait for the expiry; holders elsewhere are judged by the heartbeat)."""
    if record.get("released") or record.get("expires_at", 0) <= time.time():
        return False
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return True
    return _alive(int(record["pid"]), record.get("pid_start"))


def _alive(pid: int, started: Optional[int]) -> bool:
    """Process `pid` runs, and is the one that started at `started` (a pid can be reused)."""
    now = _started(pid)
    if now is not None:
        return started is None or now == started
    if os.path.isdir("/proc"):
        return False
    try:  # no /proc: liveness alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _started(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (Linux's /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _read(url: str) -> dict:
    """The lease record; one torn by a kill mid-write reads as expired (it never beat)."""
    for attempt in range(2):
        try:
            return dict(storage.read_json(url))
        except FileNotFoundError:
            return {"released": True}
        except (ValueError, TypeError):
            if attempt == 0:
                time.sleep(1.0)  # a writer may be mid-way through it
    return {"expires_at": 0}


def _create(url: str, record: dict) -> bool:
    """Create `url` holding `record` only if it does not exist yet; False if it does."""
    data = json.dumps(record, sort_keys=True).encode()
    fs, path = storage.filesystem(url)
    try:
        if storage.is_local(fs):
            return _create_local(path, data)
        # s3fs sends If-None-Match: *, exact; fsspec's default for other stores checks, then
        # writes, so two runs racing within the same instant could both pass there
        fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False
    except OSError as err:
        raise storage.OutputError(f"cannot take the lease {url}: {type(err).__name__}: {err}") from err


def _create_local(path: str, data: bytes) -> bool:
    """Write a scratch file whole, then hard-link it to `path`: a reader never sees it half
    written, and `link` fails when the name exists, which makes the create exclusive."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scratch = storage.scratch_path(path)
    try:
        scratch.write_bytes(data)
        os.link(scratch, path)
        return True
    except FileExistsError:
        return False
    finally:
        scratch.unlink(missing_ok=True)

