"""The writer's queue: order, bounds, control items, and waking the writer (real threads)."""

from __future__ import annotations

import threading
import time

from afs_continuous._batch_queue import BatchQueue


def test_order_bound_and_control_items_end_a_batch() -> None:
    q = BatchQueue(3)
    assert all(q.put_nowait((i,)) for i in range(3))
    assert q.put_nowait((3,)) is False  # full: refused, nothing queued
    marker = object()
    q.put_control(marker)  # never refused
    q.put_control(None)
    assert q.qsize() == 5
    assert q.take(2) == [(0,), (1,)]
    assert q.take(10) == [(2,), marker]  # a control item ends the batch
    assert q.take(10) == [None]
    assert q.empty()


def test_wait_sleeps_until_a_put_and_lingers_until_a_control_item() -> None:
    q = BatchQueue(100)
    woke: list[float] = []

    def consumer() -> None:
        q.wait(30.0, 10)  # would linger 30 s after the first item unless a control item comes
        woke.append(time.monotonic())

    t = threading.Thread(target=consumer)
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and not woke  # nothing queued: it sleeps
    q.put_nowait(("record",))
    time.sleep(0.2)
    assert t.is_alive()  # lingering for the batch to fill
    start = time.monotonic()
    q.put_control("flush")
    t.join(5)
    assert woke and woke[0] - start < 5
    assert q.take(10) == [("record",), "flush"]


def test_wait_returns_at_once_when_the_batch_is_full() -> None:
    q = BatchQueue(100)
    for i in range(10):
        q.put_nowait((i,))
    start = time.monotonic()
    q.wait(30.0, 10)
    assert time.monotonic() - start < 5


def test_put_waits_for_space_then_gives_up() -> None:
    q = BatchQueue(1)
    assert q.put_nowait((0,))
    assert q.put((1,), 0.05) is False
    threading.Timer(0.2, lambda: q.take(1)).start()
    assert q.put((2,), 10.0) is True  # space came within the wait
    assert q.take(5) == [(2,)]
