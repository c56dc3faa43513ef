"""The outbox: every event is stored in the history before it is handed to a sink, and marked sent when
the sink says it was delivered (MQTT: the broker's PUBACK).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from birdwatch.deliver.history import EventStore
from birdwatch.deliver.sink import EventSink
from birdwatch.types import VisitEvent

log = logging.getLogger(__name__)


class Outbox:
    """Store first, then publish; acknowledged events are marked sent.

    Events are handed to the publisher strictly in outbox order, at most `max_in_flight` unacknowledged
    at a time (the rest wait in SQLite, not in memory, however long the broker is away). A handed event
    stays with the publisher (paho keeps QoS 1 messages across reconnects) until acknowledged, so it is
    handed once per process; a new process hands every unsent row again, oldest first.

    `on_sent` runs on the publisher's delivery thread. If marking the row fails there (a full disk, a
    lock held too long), the event is still acknowledged: it is not handed again, and marking it is
    tried again at the next pump; should the process end first, the next one sends it again (at least
    once).
    """

    def __init__(self, store: EventStore, publisher: EventSink, max_in_flight: int = 100) -> None:
        self.store = store
        self.publisher = publisher
        self.max_in_flight = max_in_flight
        self._cond = threading.Condition()
        self._pumping = threading.Lock()  # one hand-over at a time, so the order holds across threads
        self._in_flight: set[str] = set()
        self._unmarked: dict[str, float] = {}  # acknowledged, not yet marked sent: event id -> when acked
        self._handed_seq = 0  # every row up to here was handed in this process
        self.sent = 0
        self.mark_failures = 0

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._in_flight)

    @property
    def unmarked(self) -> int:
        """Acknowledged by the broker, not yet marked sent in SQLite (its write failed; tried again)."""
        with self._cond:
            return len(self._unmarked)

    def submit(self, event: VisitEvent) -> None:
        self.store.add(event)
        self.pump()

    def pump(self) -> int:
        """Hand over what is pending, in order; returns how many were handed."""
        self._mark_unmarked()
        with self._pumping:
            return self._pump()

    def _pump(self) -> int:
        handed = 0
        while True:
            with self._cond:
                room = self.max_in_flight - len(self._in_flight)
            if room <= 0:
                return handed
            rows = self.store.pending(after_seq=self._handed_seq, limit=room)
            if not rows:
                return handed
            for row in rows:
                with self._cond:
                    self._in_flight.add(row.id)
                try:
                    taken = self.publisher.publish_event(
                        row.camera, row.payload, self._on_sent(row.id), _read(row.snapshot)
                    )
                except BaseException:
                    with self._cond:
                        self._in_flight.discard(row.id)
                    raise
                if not taken:
                    with self._cond:
                        self._in_flight.discard(row.id)
                    return handed  # refused (publisher queue full): the rest stays pending, in order
                self._handed_seq = row.seq
                handed += 1

    def flush(self, timeout: float) -> bool:
        """Hand over everything (as acknowledgements make room) and wait for the acknowledgements; True
        if nothing is left unsent."""
        deadline = time.monotonic() + timeout
        while True:
            handed = self.pump()
            with self._cond:
                if not self._in_flight and not handed:
                    break  # nothing out, nothing more taken
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._in_flight:
                    self._cond.wait(left)  # woken by each acknowledgement
        self._mark_unmarked()
        return self.store.count_pending() == 0

    def _on_sent(self, event_id: str) -> Callable[[], None]:
        def sent() -> None:  # the publisher's delivery thread (LogSink: the caller's)
            when = time.time()
            try:
                self.store.mark_sent(event_id, when)
            except Exception as exc:  # sqlite3.Error mostly (a full disk, a lock held too long): keep it
                self._keep_unmarked(event_id, when, exc)
            with self._cond:
                self._in_flight.discard(event_id)
                self.sent += 1
                self._cond.notify_all()

        return sent

    def _keep_unmarked(self, event_id: str, when: float, exc: Exception) -> None:
        self.mark_failures += 1
        with self._cond:
            first = not self._unmarked
            self._unmarked[event_id] = when
        if first:
            log.warning(
                "event history: the broker has event %s but marking it sent failed (%s); trying again, it is not "
                "published again meanwhile",
                event_id[:8],
                exc,
            )

    def _mark_unmarked(self) -> None:
        """Mark what the broker acknowledged while SQLite refused the write; quietly, until it works."""
        with self._cond:
            todo = dict(self._unmarked)
        if not todo:
            return
        done = 0
        for event_id, when in todo.items():
            try:
                self.store.mark_sent(event_id, when)
            except Exception:
                break  # still failing: next pump
            with self._cond:
                self._unmarked.pop(event_id, None)
            done += 1
        if done:
            log.info("event history: %d acknowledged event(s) marked sent after all", done)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:  # removed by retention meanwhile: the event goes out without its picture
        return None
