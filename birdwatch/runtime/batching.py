"""Bounded, fair batch queues between pipeline stages.

Each camera has its own bounded queue. Producers never block: when a camera's queue is full its
oldest item is dropped and counted, so a slow model costs old frames, never capture lag. A consumer
takes a batch when `max_batch` worth of work is waiting or the oldest item has waited `max_wait_s`,
and takes round-robin across cameras so that a busy camera cannot starve a quiet one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Queued(Generic[T]):
    item: T
    since: float  # monotonic time it was queued
    size: int


class Batcher(Generic[T]):
    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        capacity_per_key: int,
        size_of: Callable[[T], int] = lambda _item: 1,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.capacity = capacity_per_key
        self._size_of = size_of
        self._queues: dict[str, deque[_Queued[T]]] = {}
        self._order: list[str] = []  # round-robin order of keys
        self._next = 0
        self._cond = threading.Condition()
        self._closed = False
        self.dropped: dict[str, int] = {}

    # -- producer side --

    def put(self, key: str, item: T) -> None:
        with self._cond:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
                self._order.append(key)
                self.dropped.setdefault(key, 0)
            if len(queue) >= self.capacity:
                queue.popleft()
                self.dropped[key] += 1
            queue.append(_Queued(item, time.monotonic(), max(1, self._size_of(item))))
            self._cond.notify_all()

    def inlet(self, key: str) -> _Inlet[T]:
        """Something with `put(item)` for one key, e.g. for a camera reader."""
        return _Inlet(self, key)

    def close(self) -> None:
        """No more items; a consumer still gets what is queued, then empty batches."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- consumer side --

    @property
    def closed(self) -> bool:
        return self._closed

    def depth(self, key: str | None = None) -> int:
        with self._cond:
            if key is not None:
                return len(self._queues.get(key, ()))
            return sum(len(q) for q in self._queues.values())

    def get_batch(self, timeout: float) -> list[T]:
        """Up to `max_batch` worth of items; [] after `timeout` with nothing queued (or when closed and empty)."""
        return self.take(timeout, lambda batch: batch) or []

    def take(self, timeout: float, then: Callable[[list[T]], R]) -> R | None:
        """A batch as `get_batch` forms it, handed to `then` while the queue's lock is still held, so what
        `then` records (say, a place in the next stage's queue) is in the order batches are taken; `then`
        must not block. None after `timeout` with nothing queued (or when closed and empty)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                waiting = [q for q in self._queues.values() if q]
                if waiting:
                    work = sum(entry.size for q in waiting for entry in q)
                    oldest = min(q[0].since for q in waiting)
                    due = oldest + self.max_wait_s
                    now = time.monotonic()
                    if work >= self.max_batch or now >= due or self._closed:
                        return then(self._take())
                    self._cond.wait(min(due, deadline) - now if deadline > now else due - now)
                    continue
                if self._closed or time.monotonic() >= deadline:
                    return None
                self._cond.wait(deadline - time.monotonic())

    def _take(self) -> list[T]:
        """One item per key per round until the batch is full (the last item may overfill it: a
        frame's crops stay together); the next batch starts one key later, so no camera is always
        served last. Called with the lock held."""
        batch: list[T] = []
        size = 0
        keys = self._order
        start = self._next
        while size < self.max_batch:
            took = False
            for offset in range(len(keys)):
                queue = self._queues[keys[(start + offset) % len(keys)]]
                if queue:
                    entry = queue.popleft()
                    batch.append(entry.item)
                    size += entry.size
                    took = True
                    if size >= self.max_batch:
                        break
            if not took:
                break
        self._next = (start + 1) % len(keys)
        return batch


@dataclass
class _Inlet(Generic[T]):
    batcher: Batcher[T]
    key: str

    def put(self, item: T) -> None:
        self.batcher.put(self.key, item)

    @property
    def dropped(self) -> int:
        return self.batcher.dropped.get(self.key, 0)
