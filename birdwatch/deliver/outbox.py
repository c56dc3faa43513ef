"""The outbox: every event is stored in the history before it is handed to a sink, and marked sent when
the sink says it was delivered (MQTT: the broker's PUBACK). When the history refuses it (a damaged, full or
read-only disk), the event is delivered anyway, from memory, and stored once the history takes writes again,
its delivery already recorded: told once, stored once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from birdwatch.deliver.history import EventStore
from birdwatch.deliver.history import StoreError
from birdwatch.deliver.sink import EventSink
from birdwatch.types import VisitEvent

log = logging.getLogger(__name__)

MAX_HELD = 10_000  # events the history refused, kept in memory (a few MB); beyond, the oldest are dropped


@dataclass
class Held:
    """An event the history has not taken yet."""

    event: VisitEvent
    handed: bool = False  # to the publisher, from memory
    sent_ts: float | None = None  # when the publisher said it was delivered


class Outbox:
    """Store first, then publish; acknowledged events are marked sent.

    Events are handed to the publisher strictly in outbox order, at most `max_in_flight` unacknowledged
    at a time (the rest wait in SQLite, not in memory, however long the broker is away). A handed event
    stays with the publisher (paho keeps QoS 1 messages across reconnects) until acknowledged, so it is
    handed once per process; a new process hands every unsent row again, oldest first.

    Every event goes through `held` (memory, in order) into the history. While the history refuses writes,
    held events are handed straight from memory (after what the history still has unsent, when it can be
    read); each is stored when the history is back, with its delivery time if it was acknowledged by then.

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
        self._held: deque[Held] = deque()  # not in the history yet, oldest first
        self._held_ids: dict[str, Held] = {}
        self._handed_seq = 0  # every row up to here was handed in this process
        self._repairs_seen = 0  # the history's repairs: a repaired one numbers its rows anew
        self._from_memory: set[str] = set()  # handed from memory: not again when read back from the history
        self._dropping = False  # said so in the log already
        self.sent = 0
        self.mark_failures = 0
        self.store_failures = 0  # writes the history refused (each retry counts)
        self.dropped = 0  # held events given up: beyond MAX_HELD, or still held at stop

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._in_flight)

    @property
    def unmarked(self) -> int:
        """Acknowledged by the broker, not yet marked sent in SQLite (its write failed; tried again)."""
        with self._cond:
            return len(self._unmarked)

    @property
    def held(self) -> int:
        """Events the history has not taken yet (it refuses writes; they are delivered meanwhile)."""
        with self._cond:
            return len(self._held)

    def submit(self, event: VisitEvent) -> None:
        with self._cond:
            self._held.append(held := Held(event))
            self._held_ids[event.id] = held
            extra = len(self._held) - MAX_HELD
            for _ in range(max(0, extra)):
                self._held_ids.pop(self._held.popleft().event.id, None)
        if extra > 0:
            self.dropped += extra
            if not self._dropping:  # once per spell: counted in events_lost
                self._dropping = True
                log.error(
                    "the history has refused events for too long: beyond %d held, the oldest are dropped", MAX_HELD
                )
        self.pump()

    def pump(self) -> int:
        """Store what is held, then hand over what is pending, in order; returns how many were handed."""
        with self._pumping:
            self._store_held()
            self._mark_unmarked()
            return self._pump()

    def _store_held(self) -> None:
        """Into the history, oldest first, until it refuses one."""
        while True:
            with self._cond:
                if not self._held:
                    return
                held = self._held[0]
                sent_ts = held.sent_ts
            try:
                self.store.add(held.event, sent_ts)
            except sqlite3.IntegrityError:  # its id is stored already: a write that went through after all
                log.warning("event %s was stored already", held.event.id[:8])
                if sent_ts is not None:
                    self._mark(held.event.id, sent_ts)
            except Exception:  # StoreError mostly: the history said why, once
                self.store_failures += 1
                return  # held (and delivered) meanwhile; tried again at the next pump
            with self._cond:
                self._held.popleft()
                self._held_ids.pop(held.event.id, None)
                acked_since = held.sent_ts if held.sent_ts != sent_ts else None
                if held.sent_ts is not None:  # stored as delivered, or marked below: never read back as pending
                    self._from_memory.discard(held.event.id)
                if len(self._held) < MAX_HELD // 2:
                    self._dropping = False
            if acked_since is not None:  # acknowledged while it was being stored
                self._mark(held.event.id, acked_since)

    def _pump(self) -> int:
        handed, refused = self._pump_stored()
        return handed if refused else handed + self._pump_held()  # after a refusal nothing newer may overtake

    def _pump_stored(self) -> tuple[int, bool]:
        """Pending rows of the history, in order: (how many were handed, whether the publisher refused one)."""
        if self.store.repairs != self._repairs_seen:  # its rows are numbered anew: read them all again
            self._repairs_seen, self._handed_seq = self.store.repairs, 0
        handed = 0
        while (room := self._room()) > 0:
            try:
                rows = self.store.pending(after_seq=self._handed_seq, limit=room)
            except StoreError:
                return handed, False  # it cannot be read now: what memory holds goes out meanwhile
            if not rows:
                return handed, False
            for row in rows:
                with self._cond:
                    done = row.id in self._in_flight or row.id in self._unmarked or row.id in self._from_memory
                    self._from_memory.discard(row.id)  # read back once: the mark moves past it
                if not done:
                    if not self._hand(row.id, row.camera, row.payload, _read(row.snapshot)):
                        return handed, True
                    handed += 1
                self._handed_seq = row.seq
        return handed, False

    def _pump_held(self) -> int:
        """What the history refused, from memory, in order."""
        handed = 0
        while self._room() > 0:
            with self._cond:
                held = next((h for h in self._held if not h.handed), None)
            if held is None:
                return handed
            event = held.event
            payload = event.to_json()
            if not self._hand(event.id, event.camera, payload, _read(event.snapshot)):
                return handed
            held.handed = True
            with self._cond:
                self._from_memory.add(event.id)
            handed += 1
        return handed

    def _room(self) -> int:
        with self._cond:
            return self.max_in_flight - len(self._in_flight)

    def _hand(self, event_id: str, camera: str, payload: str, snapshot: bytes | None) -> bool:
        with self._cond:
            self._in_flight.add(event_id)
        try:
            taken = self.publisher.publish_event(camera, payload, self._on_sent(event_id), snapshot)
        except BaseException:
            with self._cond:
                self._in_flight.discard(event_id)
            raise
        if not taken:  # refused (publisher queue full): the rest stays pending, in order
            with self._cond:
                self._in_flight.discard(event_id)
        return taken

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
        with self._cond:
            undelivered = sum(1 for held in self._held if held.sent_ts is None)
        try:
            return undelivered == 0 and self.store.count_pending() == 0
        except StoreError:
            return undelivered == 0

    def unsent(self) -> int:
        """Events not acknowledged yet: pending in the history (sent at the next start) and held in memory."""
        with self._cond:
            undelivered = sum(1 for held in self._held if held.sent_ts is None)
        try:
            return undelivered + self.store.count_pending()
        except StoreError:
            return undelivered

    def close(self) -> None:
        """At stop, after the publisher's last acknowledgement: a last try to store what is held; what the
        history never took ends with this process, and the log says what that means."""
        with self._pumping:
            self._store_held()
        with self._cond:
            told = sum(1 for held in self._held if held.sent_ts is not None)
            untold = len(self._held) - told
            self._held.clear()
            self._held_ids.clear()
        self.dropped += told + untold
        if told:
            log.warning(
                "%d delivered event(s) are not in the history %s: it refused writes to the end (%s)",
                told,
                self.store.path,
                self.store.problem,
            )
        if untold:
            log.error(
                "%d event(s) were neither delivered nor stored (the history %s refused them: %s) and are lost",
                untold,
                self.store.path,
                self.store.problem,
            )

    def _on_sent(self, event_id: str) -> Callable[[], None]:
        def sent() -> None:  # the publisher's delivery thread (LogSink: the caller's)
            when = time.time()
            with self._cond:
                held = self._held_ids.get(event_id)
                if held is not None:
                    held.sent_ts = when  # stored with it, when the history takes it
            if held is None:
                self._mark(event_id, when)
            with self._cond:
                self._in_flight.discard(event_id)
                self.sent += 1
                self._cond.notify_all()

        return sent

    def _mark(self, event_id: str, when: float) -> None:
        try:
            self.store.mark_sent(event_id, when)
        except Exception as exc:  # sqlite3.Error or the history refusing (a full disk, a lock): keep it
            self._keep_unmarked(event_id, when, exc)

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
