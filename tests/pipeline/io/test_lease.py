"""Tests for pipeline.io.lease: one holder at a time, stale leases taken over, a frozen holder fenced off."""

from __future__ import annotations

import json
import os
import threading
import time

from pipeline.io.lease import OWNER, LeaseTiming, acquire_lease, lease_owner, try_acquire

FAST = LeaseTiming(heartbeat_s=0.05, stale_s=0.5)


def _foreign(path, age_s: float = 0.0) -> None:
    """A lease held by another run, last refreshed `age_s` ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": "elsewhere-1-deadbeef", "since": 0}))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def test_one_holder_at_a_time(tmp_path):
    path = tmp_path / "v.lease"
    first = try_acquire(path, FAST)
    assert first is not None and first.held() and str(lease_owner(path)).startswith(OWNER)
    assert try_acquire(path, FAST) is None  # the same process asking again is refused too
    first.release()
    assert not path.exists()
    second = try_acquire(path, FAST)
    assert second is not None
    second.release()


def test_a_live_foreign_lease_is_respected_and_a_stale_one_taken_over(tmp_path):
    path = tmp_path / "v.lease"
    _foreign(path, age_s=0.1)
    assert try_acquire(path, FAST) is None
    _foreign(path, age_s=5.0)
    lease = try_acquire(path, FAST)
    assert lease is not None and str(lease_owner(path)).startswith(OWNER)
    lease.release()
    assert not list(tmp_path.iterdir())  # the stale lease moved away and removed, nothing left behind


def test_the_heartbeat_keeps_a_lease_fresh(tmp_path):
    path = tmp_path / "v.lease"
    lease = try_acquire(path, FAST)
    assert lease is not None
    stamp = time.time() - 10.0
    os.utime(path, (stamp, stamp))  # as if last refreshed long ago
    deadline = time.monotonic() + 30
    while path.stat().st_mtime <= stamp and time.monotonic() < deadline:
        time.sleep(FAST.heartbeat_s)
    assert path.stat().st_mtime > stamp  # the heartbeat refreshed it ...
    assert try_acquire(path, LeaseTiming(heartbeat_s=1, stale_s=5)) is None  # ... so nobody may take it over
    lease.release()


def test_a_holder_taken_over_knows_it(tmp_path):
    path = tmp_path / "v.lease"
    lease = try_acquire(path, FAST)
    assert lease is not None
    _foreign(path)  # another run took it over while this one was frozen
    assert not lease.held()
    lease.release()
    assert path.exists() and lease_owner(path) == "elsewhere-1-deadbeef"  # the new holder's lease is left alone


def _race(path, takers: int, timing: LeaseTiming = FAST) -> list:
    """Leases won by `takers` threads asking for `path` (a file or an s3:// URL) at the same moment."""
    barrier = threading.Barrier(takers)
    won: list = []

    def take() -> None:
        barrier.wait()
        lease = try_acquire(path, timing)
        if lease is not None:
            won.append(lease)

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_of_many_takers_of_a_stale_lease_exactly_one_wins(tmp_path):
    for attempt in range(20):
        path = tmp_path / f"v{attempt}.lease"
        _foreign(path, age_s=5.0)
        won = _race(path, 6)
        assert len(won) == 1, attempt
        won[0].release()


def test_acquire_waits_for_a_release(tmp_path):
    path = tmp_path / "v.lease"
    holder = try_acquire(path, FAST)
    assert holder is not None
    threading.Timer(0.3, holder.release).start()
    with acquire_lease(path, FAST, wait_s=5.0) as lease:
        assert lease is not None and lease.held()
    with acquire_lease(path, FAST, wait_s=0.0) as lease:
        assert lease is not None
        with acquire_lease(path, FAST, wait_s=0.2) as other:
            assert other is None


def test_a_lease_of_a_killed_process_on_this_machine_is_free_at_once(tmp_path):
    import signal
    import socket
    import subprocess

    path = tmp_path / "v.lease"
    child = subprocess.Popen(["sleep", "30"])
    path.write_text(json.dumps({"owner": f"{socket.gethostname()}-{child.pid}-abcdef12-12345678"}))
    assert try_acquire(path, LeaseTiming(heartbeat_s=1, stale_s=60)) is None  # alive: respected
    child.send_signal(signal.SIGKILL)
    child.wait()
    lease = try_acquire(path, LeaseTiming(heartbeat_s=1, stale_s=60))
    assert lease is not None  # its holder is gone: no minute of waiting
    lease.release()


# ---------------------------------------------------------------- S3: leases shared by machines


def _put(url: str, owner: str = "elsewhere-1-deadbeef") -> None:
    """Another machine's lease, written plainly (no condition), as its run last refreshed it."""
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, json.dumps({"owner": owner, "since": 0}).encode())


def test_s3_one_holder_at_a_time_across_processes(s3_bucket):
    url = f"{s3_bucket}/state/leases/demo/walk.lease"
    first = try_acquire(url, FAST)
    assert first is not None and first.held() and str(lease_owner(url)).startswith(OWNER)
    assert try_acquire(url, FAST) is None
    first.release()
    assert lease_owner(url) is None  # released: the object is gone
    second = try_acquire(url, FAST)
    assert second is not None
    second.release()


def test_s3_a_live_foreign_lease_is_respected_and_a_stale_one_taken_over(s3_bucket):
    url = f"{s3_bucket}/v.lease"
    timing = LeaseTiming(heartbeat_s=0.2, stale_s=1.5)
    _put(url)
    assert try_acquire(url, timing) is None  # fresh by the store's clock
    time.sleep(3.0)  # the store's clock has whole seconds: an age reads up to a second short
    lease = try_acquire(url, timing)
    assert lease is not None and lease.held() and str(lease_owner(url)).startswith(OWNER)
    lease.release()


def test_s3_the_heartbeat_keeps_a_lease_alive_past_its_stale_time(s3_bucket):
    url = f"{s3_bucket}/v.lease"
    lease = try_acquire(url, LeaseTiming(heartbeat_s=0.2, stale_s=1.5))
    assert lease is not None
    time.sleep(3.0)
    assert try_acquire(url, LeaseTiming(heartbeat_s=0.2, stale_s=1.5)) is None  # refreshed: not stale
    assert lease.held()
    lease.release()


def test_s3_a_holder_taken_over_knows_it_and_leaves_the_new_lease(s3_bucket):
    url = f"{s3_bucket}/v.lease"
    lease = try_acquire(url, FAST)
    assert lease is not None
    _put(url)  # another machine took it over while this run was frozen
    assert not lease.held()
    lease.release()
    assert lease_owner(url) == "elsewhere-1-deadbeef"


def test_s3_of_many_takers_of_a_stale_lease_exactly_one_wins(s3_bucket):
    timing = LeaseTiming(heartbeat_s=0.2, stale_s=1.0)
    urls = [f"{s3_bucket}/v{n}.lease" for n in range(4)]
    for url in urls:
        _put(url)
    time.sleep(2.5)
    for url in urls:
        won = _race(url, 6, timing)
        assert len(won) == 1, url
        won[0].release()


def test_s3_creating_races_have_one_winner(s3_bucket):
    won = _race(f"{s3_bucket}/fresh.lease", 6)
    assert len(won) == 1
    won[0].release()
