"""Leases: one run at a time works on a video (or publishes the corpus), whatever else runs on the data root.

On disk a lease is a small file created with O_CREAT|O_EXCL, so exactly one creator wins on a local or shared
POSIX file system. Its holder refreshes its mtime from a heartbeat thread; a lease not refreshed for `stale_s`
belongs to a run that died (or froze) and is taken over (takers queue on a side file, so one at a time judges and
removes it).

On an S3 data root a lease is an object under the bucket, so runs on different machines exclude each other: it
is created with a conditional write (If-None-Match: *), refreshed and taken over only while it is still the
version its writer last saw (If-Match: ETag), and judged stale by the store's own clock (its Date header minus
the object's LastModified), so clocks that disagree between machines do not matter. Stores without conditional
writes keep their leases in the local working directory: they protect runs on one machine only (README,
Guarantees).

A holder checks `held()` before its writes become visible, so a frozen run that wakes up after a takeover
writes nothing.
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
from typing import Protocol

from pipeline.io import objectstore

# One id per process; each lease's owner entry is this plus a suffix of its own.
OWNER = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LeaseLost(RuntimeError):
    """The lease went stale (a freeze longer than its stale time) and another run took it over."""


@dataclass(frozen=True)
class LeaseTiming:
    heartbeat_s: float = 5.0  # how often a holder refreshes its lease
    stale_s: float = 60.0  # a lease not refreshed for this long is taken over


class Lease:
    """A held lease at `location`; release it (or use `acquire_lease` as a context manager)."""

    def __init__(self, store: _LeaseStore, timing: LeaseTiming, token: str) -> None:
        self.path = store.location
        self.timing = timing
        self.token = token  # this lease's owner entry: the process's OWNER and a per-lease suffix
        self._store = store
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease-{Path(str(self.path)).stem}", daemon=True)
        self._beat.start()

    def held(self) -> bool:
        """Still ours: not taken over after a freeze longer than the stale time."""
        return self._store.held(self.token)

    def check(self) -> None:
        """Raise LeaseLost unless still held: call it before a write another run's work must not meet."""
        if not self.held():
            raise LeaseLost(f"lease {Path(str(self.path)).name} was taken over")

    def release(self) -> None:
        self._stop.set()
        self._beat.join()
        self._store.remove(self.token)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timing.heartbeat_s):
            with contextlib.suppress(OSError):  # a missed beat is retried; staleness takes many
                if not self._store.refresh(self.token):
                    return


def try_acquire(location: str | Path, timing: LeaseTiming) -> Lease | None:
    """The lease at `location` (a path, or an s3:// URL), or None while another live run holds it."""
    store = _store_for(location)
    for _ in range(2):  # a second try after taking over a stale lease
        token = f"{OWNER}-{uuid.uuid4().hex[:8]}"
        if store.create(token):
            return Lease(store, timing, token)
        taken = store.take_over_if_stale(token, timing)
        if taken is None:
            return None
        if taken:
            return Lease(store, timing, token)
    return None


@contextlib.contextmanager
def acquire_lease(location: str | Path, timing: LeaseTiming, *, wait_s: float = 0.0) -> Iterator[Lease | None]:
    """Hold the lease at `location` for the block; None when another live run keeps it for longer than `wait_s`."""
    deadline = time.monotonic() + wait_s
    lease = try_acquire(location, timing)
    while lease is None and time.monotonic() < deadline:
        time.sleep(min(1.0, timing.heartbeat_s))
        lease = try_acquire(location, timing)
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()


def lease_owner(location: str | Path) -> str | None:
    return _store_for(location).owner()


def _store_for(location: str | Path) -> _LeaseStore:
    if objectstore.supports_conditional_writes(str(location)):
        return _ObjectLease(str(location))
    return _FileLease(Path(location))


def _body(token: str) -> bytes:
    return json.dumps({"owner": token, "since": time.time()}).encode()


def _owner_in(data: bytes) -> str | None:
    try:
        return str(json.loads(data)["owner"])
    except (ValueError, KeyError, TypeError):
        return None


class _LeaseStore(Protocol):
    """Where one lease lives: the operations a lease needs, atomic where the store allows."""

    location: str | Path

    def create(self, token: str) -> bool:
        """Make the lease ours if there is none; False when there is one."""

    def take_over_if_stale(self, token: str, timing: LeaseTiming) -> bool | None:
        """Replace a stale lease (or one whose holder died on this machine) with ours: True when it is ours now,
        False when it may be free to create, None when a live run holds it."""

    def refresh(self, token: str) -> bool:
        """The heartbeat: False once the lease is no longer ours."""

    def held(self, token: str) -> bool: ...

    def owner(self) -> str | None: ...

    def remove(self, token: str) -> None:
        """Give the lease up if it is still ours."""


class _FileLease:
    """A lease file: O_EXCL to create, its mtime as the heartbeat."""

    def __init__(self, path: Path) -> None:
        self.location: str | Path = path
        self.path = path

    def create(self, token: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_body(token))
        except OSError:
            self.path.unlink(missing_ok=True)  # an empty lease (a full disk) would read as busy until stale
            raise
        return True

    def take_over_if_stale(self, token: str, timing: LeaseTiming) -> bool | None:
        return False if _take_over_if_stale(self.path, timing) else None

    def refresh(self, token: str) -> bool:
        if not self.held(token):
            return False
        os.utime(self.path)
        return True

    def held(self, token: str) -> bool:
        return self.owner() == token

    def owner(self) -> str | None:
        try:
            return _owner_in(self.path.read_bytes())
        except OSError:
            return None

    def remove(self, token: str) -> None:
        if self.held(token):
            self.path.unlink(missing_ok=True)


class _ObjectLease:
    """A lease object on a store with conditional writes; its ETag says which version its holder last wrote."""

    def __init__(self, url: str) -> None:
        self.location: str | Path = url
        self.url = url
        self._etag: str | None = None
        self._lock = threading.Lock()  # the heartbeat's replace and `held` agree on the current ETag

    def create(self, token: str) -> bool:
        self._etag = objectstore.create_exclusive(self.url, _body(token))
        return self._etag is not None

    def take_over_if_stale(self, token: str, timing: LeaseTiming) -> bool | None:
        current = objectstore.read_version(self.url)
        if current is None:
            return False  # released meanwhile: try to create it
        if current.age_s < timing.stale_s and not _died_here(_owner_in(current.body)):
            return None
        # Only the version judged stale is replaced: of several takers, or a holder waking up, one wins.
        self._etag = objectstore.replace_if(self.url, _body(token), current.etag)
        return True if self._etag is not None else None

    def refresh(self, token: str) -> bool:
        with self._lock:
            if self._etag is None:
                return False
            self._etag = objectstore.replace_if(self.url, _body(token), self._etag)
            return self._etag is not None

    def held(self, token: str) -> bool:
        with self._lock:
            current = objectstore.read_version(self.url)
            return current is not None and current.etag == self._etag and _owner_in(current.body) == token

    def owner(self) -> str | None:
        current = objectstore.read_version(self.url)
        return None if current is None else _owner_in(current.body)

    def remove(self, token: str) -> None:
        # S3 has no delete-if-unchanged everywhere: a takeover between this check and the delete needs a holder
        # frozen for the whole stale time in between, which the fencing (`held` before writes) covers anyway.
        if self.held(token):
            objectstore.remove(self.url)
        self._etag = None


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
        if age < timing.stale_s and not _died_here(lease_owner(path)):
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        gate.unlink(missing_ok=True)


def _died_here(owner: str | None) -> bool:
    """The lease's holder ran on this machine and its process is gone (killed): no need to wait for staleness.

    A reused pid reads as alive, which only means waiting for the stale time as for a holder elsewhere.
    """
    parts = (owner or "").split("-")  # hostname-pid-process-lease (a hostname may hold dashes)
    if len(parts) < 4 or "-".join(parts[:-3]) != socket.gethostname():
        return False
    try:
        os.kill(int(parts[-3]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
