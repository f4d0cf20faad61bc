"""The daemon lease: one holder at a time, renewal, expiry of a dead holder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from afs_continuous import ManualClock, Store
from afs_continuous.lease import Lease, LeaseHeld


@pytest.fixture
def wall(clock) -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_one_holder_at_a_time(store_url, wall):
    store = Store(store_url)
    a = Lease(store, holder="host-a:1", ttl_s=60, clock=wall)
    b = Lease(store, holder="host-b:2", ttl_s=60, clock=wall)
    assert a.acquire() is not None
    assert b.acquire() is None
    with pytest.raises(LeaseHeld, match=r"another daemon \(host-a:1\) holds the store's lease"):
        b.acquire_or_raise()
    wall.advance(seconds=30)
    renewed = a.acquire()  # renewal by the holder
    assert renewed is not None and renewed.expires_at == wall() + timedelta(seconds=60)
    assert renewed.acquired_at < renewed.renewed_at


def test_an_expired_lease_is_taken_over(store_url, wall):
    store = Store(store_url)
    dead = Lease(store, holder="host-a:1", ttl_s=60, clock=wall)
    assert dead.acquire() is not None
    wall.advance(seconds=59)
    live = Lease(store, holder="host-b:2", ttl_s=60, clock=wall)
    assert live.acquire() is None
    wall.advance(seconds=2)  # the holder stopped renewing: expired
    info = live.acquire()
    assert info is not None and info.holder == "host-b:2"
    assert live.taken_over is not None and live.taken_over.holder == "host-a:1"
    assert dead.acquire() is None  # the old holder cannot come back while the new one is live


def test_release_lets_the_next_daemon_in_at_once(store_url, wall):
    store = Store(store_url)
    a = Lease(store, holder="a:1", ttl_s=600, clock=wall)
    b = Lease(store, holder="b:2", ttl_s=600, clock=wall)
    assert a.acquire() is not None
    a.release()
    assert a.current() is None
    assert b.acquire() is not None
    a.release()  # not the holder: changes nothing
    assert b.current().holder == "b:2"


def test_ttl_must_be_positive(store_url):
    with pytest.raises(ValueError, match="ttl_s must be > 0"):
        Lease(Store(store_url), ttl_s=0)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_holder_on_this_host_whose_process_is_gone_is_taken_over_at_once(store_url, wall):
    """Issue 11 item 7: no waiting for the expiry when the holder's process on this host no longer exists;
    a live holder, or one on another host, keeps its lease until it expires."""
    import os
    import socket

    store = Store(store_url)
    host = socket.gethostname()
    dead = Lease(store, holder=f"{host}:{_dead_pid()}:abcd", ttl_s=600, clock=wall)
    assert dead.acquire() is not None
    status = dead.status()
    assert status["holder"] == dead.holder and status["holder_alive"] is False and status["expired"] is False
    live = Lease(store, holder=f"{host}:{os.getpid()}:ef01", ttl_s=600, clock=wall)
    info = live.acquire()  # 600 s before expiry
    assert info is not None and info.holder == live.holder and live.taken_over.holder == dead.holder
    assert live.status()["holder_alive"] is True
    other = Lease(store, holder=f"{host}:{os.getpid()}:2345", ttl_s=600, clock=wall)
    assert other.acquire() is None  # the holder runs: no takeover
    live.release()
    remote = Lease(store, holder=f"not-{host}:1:aaaa", ttl_s=600, clock=wall)
    assert remote.acquire() is not None and remote.status()["holder_alive"] is None
    assert other.acquire() is None  # another host: cannot tell, wait for the expiry
    remote.release()
    assert remote.status() is None
