"""Leases: one run at a time works on a video (or publishes the corpus), whatever else runs on the data root.

A lease is a small file created with O_CREAT|O_EXCL, so exactly one creator wins on a local or shared POSIX file
system. Its holder refreshes its mtime from a heartbeat thread; a lease not refreshed for `stale_s` belongs to a
run that died (or froze) and is taken over (takers queue on a side file, so one at a time judges and removes it).
A holder checks `held()` before its writes become visible, so a frozen run that wakes up after a takeover
writes nothing.

Object-store data roots keep their leases in the local working directory: they protect runs on one machine, not
runs on several machines against one bucket (see README, Guarantees).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# One id per process; each lease's owner entry is this plus a suffix of its own.
OWNER = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LeaseLost(RuntimeError):
    """The lease went stale (a freeze longer than its stale time) and another run took it over."""


@dataclass(frozen=True)
class LeaseTiming:
    heartbeat_s: float = 5.0  # how often a holder refreshes its lease
    stale_s: float = 60.0  # a lease not refreshed for this long is taken over


class Lease:
    """A held lease on `path`; release it (or use `acquire_lease` as a context manager)."""

    def __init__(self, path: Path, timing: LeaseTiming, token: str) -> None:
        self.path = path
        self.timing = timing
        self.token = token  # this lease's owner entry: the process's OWNER and a per-lease suffix
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{path.stem}", daemon=True)
        self._beat.start()

    def held(self) -> bool:
        """Still ours: not taken over after a freeze longer than the stale time."""
        return lease_owner(self.path) == self.token

    def check(self) -> None:
        """Raise LeaseLost unless still held: call it before a write another run's work must not meet."""
        if not self.held():
            raise LeaseLost(f"lease {self.path.name} was taken over")

    def release(self) -> None:
        self._stop.set()
        self._beat.join()
        if self.held():
            self.path.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timing.heartbeat_s):
            if not self.held():
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)


def try_acquire(path: Path, timing: LeaseTiming) -> Lease | None:
    """The lease on `path`, or None while another live run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # a second try after taking over a stale lease
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _take_over_if_stale(path, timing):
                return None
            continue
        token = f"{OWNER}-{uuid.uuid4().hex[:8]}"
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"owner": token, "since": time.time()}, handle)
        except OSError:
            path.unlink(missing_ok=True)  # an empty lease (a full disk) would read as busy until stale
            raise
        return Lease(path, timing, token)
    return None


@contextlib.contextmanager
def acquire_lease(path: Path, timing: LeaseTiming, *, wait_s: float = 0.0) -> Iterator[Lease | None]:
    """Hold the lease on `path` for the block; None when another live run keeps it for longer than `wait_s`."""
    deadline = time.monotonic() + wait_s
    lease = try_acquire(path, timing)
    while lease is None and time.monotonic() < deadline:
        time.sleep(min(1.0, timing.heartbeat_s))
        lease = try_acquire(path, timing)
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()


def lease_owner(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _take_over_if_stale(path: Path, timing: LeaseTiming) -> bool:
    """Remove a stale lease; True when `path` may be free to create now.

    Takers serialise on a side file made with O_EXCL, so a lease is judged stale and removed by one taker at a
    time, and never after another taker has replaced it. A side file left by a taker that died is itself stale.
    """
    gate = path.with_name(f"{path.name}.takeover")
    try:
        fd = os.open(gate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - gate.stat().st_mtime > timing.stale_s:
                gate.unlink(missing_ok=True)
        return False
    os.close(fd)
    try:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        if age < timing.stale_s and not _holder_died_here(path):
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        gate.unlink(missing_ok=True)


def _holder_died_here(path: Path) -> bool:
    """The lease's holder ran on this machine and its process is gone (killed): no need to wait for staleness.

    A reused pid reads as alive, which only means waiting for the stale time as for a holder elsewhere.
    """
    parts = (lease_owner(path) or "").split("-")  # hostname-pid-process-lease (a hostname may hold dashes)
    if len(parts) < 4 or "-".join(parts[:-3]) != socket.gethostname():
        return False
    try:
        os.kill(int(parts[-3]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
