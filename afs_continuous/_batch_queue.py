"""The bounded queue between ``UsageLogger.log()`` and its writer thread (private).

Built for a hot path inside request handlers: a put is a ``deque.append`` and a length check
(no lock, no condition variable), and the writer is woken only when it sleeps on an empty queue.
Once it has an item, the writer lets the batch gather for a moment (``linger``) without touching
anything ``log()`` uses, so a service thread never waits for the writer and the writer wakes up
once per batch, not once per record. A ``queue.Queue`` costs a lock round-trip per put and wakes
a waiting consumer on every item; inside a busy asyncio worker those wake-ups (and the GIL
hand-offs they force) cost more than the record itself (``benchmarks/bench_service.py``).

Items are tuples (records and feedback events). Anything else is a control item (a flush marker,
``None`` to stop): it is queued even when the queue is full, ends the writer's wait at once, and
ends the batch it is taken in, so that everything queued before it is committed first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

__all__ = ["BatchQueue"]


class BatchQueue:
    """A FIFO of at most about ``maxsize`` tuples (concurrent puts may pass the bound by a few) for one consumer."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._idle = False  # the consumer sleeps on an empty queue: the next put wakes it
        self._ready = threading.Event()
        self._space = threading.Condition()
        self._space_waiters = 0
        self._control = 0  # control items queued and not yet taken
        self._lock = threading.Lock()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: tuple[Any, ...]) -> bool:
        """Queue a record or event; False (nothing queued) when the queue is full."""
        items = self._items
        if len(items) >= self.maxsize:
            return False
        items.append(item)
        if self._idle:
            self._idle = False
            self._ready.set()
        return True

    def put(self, item: tuple[Any, ...], timeout_s: float) -> bool:
        """Queue a record or event, waiting up to ``timeout_s`` seconds for space; False if none came."""
        deadline = time.monotonic() + timeout_s
        while not self.put_nowait(item):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._space:
                self._space_waiters += 1
                try:
                    if len(self._items) >= self.maxsize:
                        self._space.wait(remaining)
                finally:
                    self._space_waiters -= 1
        return True

    def put_control(self, item: Any) -> None:
        """Queue a control item (never refused) and end the consumer's wait now."""
        with self._lock:
            self._control += 1
        self._items.append(item)
        self._idle = False
        self._ready.set()

    def wait(self, linger_s: float, batch_size: int) -> None:
        """Consumer: block until something is queued, then let a batch gather for up to ``linger_s``
        seconds, unless a control item is queued or ``batch_size`` items are there already."""
        items = self._items
        while not items:
            self._idle = True
            if items:  # a put between the check and the flag: it may not have seen the flag
                break
            self._ready.wait()
            self._ready.clear()
        self._idle = False
        if linger_s > 0 and not self._control and len(items) < batch_size:
            self._ready.wait(linger_s)  # only put_control sets it now (a flush or close)
            self._ready.clear()

    def take(self, batch_size: int) -> list[Any]:
        """Consumer: up to ``batch_size`` items in order, ending after the first control item."""
        items = self._items
        out: list[Any] = []
        while items and len(out) < batch_size:
            item = items.popleft()
            out.append(item)
            if type(item) is not tuple:
                with self._lock:
                    self._control -= 1
                break
        if self._space_waiters:
            with self._space:
                self._space.notify_all()
        return out
