"""The pipeline's counters: each has one owner thread that writes it; anyone may read.

The detect thread owns the detect stage's counters and each feed's `processed`/`regions`; the
decide thread owns the classify stage's counters (it is the one that receives every classified
batch, failed or not), `classified`, crops, events and latencies. `counters()` reads them from
the main thread or the metrics server for logs, `/metrics` and the benchmark.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from birdwatch.capture.reader import CameraReader
from birdwatch.config import CameraConfig
from birdwatch.deliver.history import StoreError
from birdwatch.deliver.outbox import Outbox
from birdwatch.runtime.batching import Batcher
from birdwatch.types import EventKind
from birdwatch.types import Frame
from birdwatch.types import VisitEvent

if TYPE_CHECKING:
    from birdwatch.decide.decider import Decider

_RECENT = 4096  # percentiles over the last few thousand samples: memory stays flat


def _recent() -> deque[float]:
    return deque(maxlen=_RECENT)


@dataclass
class Feed:
    """One camera as the pipeline runs it: its reader and what became of its frames."""

    cfg: CameraConfig
    reader: CameraReader
    processed: int = 0  # frames localised (detect thread)
    regions: int = 0  # boxes found in them (detect thread)
    classified: int = 0  # frames whose boxes went through the classifier (decide thread)

    @property
    def name(self) -> str:
        return self.cfg.name


@dataclass
class StageStats:
    """One stage's batches; written by the stage's owner thread only."""

    workers: int = 1
    batches: int = 0
    items: int = 0  # frames for detect, crops for classify: what a batch's size means to that model
    busy_s: float = 0.0  # summed over the stage's workers
    failures: int = 0
    wait_s: deque[float] = field(default_factory=_recent)  # queued -> taken, per item
    batch_s: deque[float] = field(default_factory=_recent)

    def record(self, items: int, started: float, done: float, waits: Iterable[float]) -> None:
        self.batches += 1
        self.items += items
        self.busy_s += done - started
        self.batch_s.append(done - started)
        self.wait_s.extend(waits)

    def view(self, queue: Batcher[Any], elapsed: float) -> dict[str, object]:
        return {
            "queue_depth": queue.depth(),
            "dropped": sum(queue.dropped.values()),
            "batches": self.batches,
            "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0,
            "ms_per_batch": round(1000 * self.busy_s / self.batches, 1) if self.batches else 0.0,
            "busy": round(self.busy_s / elapsed / self.workers, 3),  # of all the stage's workers' time
            "workers": self.workers,
            "failures": self.failures,
            "wait_ms": percentiles_ms(self.wait_s),
            "batch_ms": percentiles_ms(self.batch_s),
        }


@dataclass
class RunStats:
    """Crops, events and latencies; written by the decide thread only."""

    started: float = field(default_factory=time.monotonic)
    crops: int = 0
    events: int = 0
    read_to_decision_s: deque[float] = field(default_factory=_recent)
    read_to_event_s: deque[float] = field(default_factory=_recent)


def percentiles_ms(samples: deque[float]) -> dict[str, float | None]:
    values = list(samples)  # one C-level copy: safe against the owner appending meanwhile
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.asarray(values, float), [50, 95])
    return {"p50": round(1000 * float(p50), 1), "p95": round(1000 * float(p95), 1)}


def feed_view(feed: Feed, locate_queue: Batcher[Any], classify_queue: Batcher[Any]) -> dict[str, object]:
    st = feed.reader.stats
    name = feed.name
    return {
        "state": st.status,
        "frames_read": st.frames_read,
        "frames_processed": feed.processed,
        "frames_classified": feed.classified,
        "frames_dropped": locate_queue.dropped.get(name, 0) + classify_queue.dropped.get(name, 0),
        "reconnects": st.reconnects,
        "regions": feed.regions,
        "queue_depth": locate_queue.depth(name) + classify_queue.depth(name),
        "last_error": st.last_error,
    }


class FeedRates:
    """Frames read and processed per second per camera, between two stats lines."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._marks: dict[str, tuple[int, int]] = {}

    def due(self, interval_s: float) -> bool:
        return time.monotonic() - self._last >= interval_s

    def line(self, feeds: Iterable[Feed], snap: dict[str, Any]) -> str:
        cameras = snap["cameras"]
        now = time.monotonic()
        span = max(1e-9, now - self._last)
        self._last = now
        parts = []
        for feed in feeds:
            st = feed.reader.stats
            read0, done0 = self._marks.get(feed.name, (0, 0))
            self._marks[feed.name] = (st.frames_read, feed.processed)
            view = cameras[feed.name]
            parts.append(
                f"{feed.name} [{st.status}] read {(st.frames_read - read0) / span:.1f} fps, "
                f"processed {(feed.processed - done0) / span:.1f} fps, dropped {view['frames_dropped']}, "
                f"queued {view['queue_depth']}, reconnects {st.reconnects}"
            )
        return "; ".join(parts)


def new_event_read_times(events: list[VisitEvent], frames: list[Frame]) -> list[float]:
    """Read times of the frames that confirmed each `new` event: the newest frame of its camera in the
    batch. Updates and ends follow later by design, so only `new` measures read-to-event latency."""
    out = []
    for event in events:
        if event.kind is EventKind.NEW:
            monos = [f.mono for f in frames if f.camera == event.camera]
            out.append(max(monos) if monos else min(f.mono for f in frames))
    return out


def counters(
    stats: RunStats,
    stages: dict[str, StageStats],
    queues: Mapping[str, Batcher[Any]],
    feeds: Iterable[Feed],
    outbox: Outbox | None,
    decider: Decider | None = None,
) -> dict[str, Any]:
    """Everything counted so far, as one dict: logs, `/metrics`, the stats payload and the bench read it."""
    elapsed = max(1e-9, time.monotonic() - stats.started)
    views = {name: stages[name].view(queue, elapsed) for name, queue in queues.items()}
    classify = stages["classify"]
    connected = getattr(outbox.publisher, "connected", None) if outbox is not None else None
    snap = {
        "elapsed_s": round(elapsed, 2),
        "cameras": {feed.name: feed_view(feed, queues["locate"], queues["classify"]) for feed in feeds},
        "stages": views,
        "queues": {name: view["queue_depth"] for name, view in views.items()},
        "batches": classify.batches,
        "infer_s": round(classify.busy_s, 3),
        # Acknowledged by the broker (or logged, without one), and still waiting in the outbox.
        "events_published": outbox.sent if outbox is not None else stats.events,
        "events_pending": _pending(outbox),
        # `online`, not the event alone: it also asks whether paho's network loop still runs.
        "mqtt_connected": (
            bool(outbox.publisher.online) if outbox is not None and isinstance(connected, threading.Event) else None
        ),
        "crops": stats.crops,
        "crops_per_s": round(stats.crops / elapsed, 2),
        "events": stats.events,
        "ms_per_batch": views["classify"]["ms_per_batch"],
        "latency_ms": {
            "read_to_decision": percentiles_ms(stats.read_to_decision_s),
            "read_to_event": percentiles_ms(stats.read_to_event_s),
        },
    }
    if decider is not None:
        snap.update(decide_counters(decider))
    if outbox is not None:
        snap.update(delivery_counters(outbox))
    return snap


def _pending(outbox: Outbox | None) -> int | None:
    if outbox is None or outbox.store.closed:
        return None
    try:
        return outbox.store.count_pending()
    except StoreError:  # the history refuses: history_writable says so
        return None


def delivery_counters(outbox: Outbox) -> dict[str, int]:
    """What delivery met and got over: acks SQLite could not record yet, paho callbacks that raised,
    network loops started again. A sink without them (the log sink, a test's) counts 0."""
    sink = outbox.publisher
    return {
        "history_writable": int(outbox.store.writable),
        "events_unsaved": outbox.held,  # told, waiting for the history to take them
        "event_save_failures": outbox.store_failures,
        "events_lost": outbox.dropped,
        "events_unmarked": outbox.unmarked,
        "event_mark_failures": outbox.mark_failures,
        "mqtt_callback_errors": int(getattr(sink, "callback_errors", 0)),
        "mqtt_loop_restarts": int(getattr(sink, "loop_restarts", 0)),
    }


def decide_counters(decider: Decider) -> dict[str, int]:
    """The decide thread's own: merged tracks, frames kept, snapshots the disk refused.
    Read from other threads: plain ints and a length, each read once."""
    frames, frame_bytes = decider.visits.frames_held()
    return {
        "snapshots_failed": decider.snapshots.failed if decider.snapshots is not None else 0,
        "visits_merged": decider.visits.merged,
        "tracks_not_birds": decider.visits.not_birds,
        "frames_held": frames,
        "frames_held_bytes": frame_bytes,
        "memory_visits": sum(decider.memory.sizes().values()) if decider.memory is not None else 0,
        "memory_reranked": decider.memory.reranked if decider.memory is not None else 0,
    }


def stats_line(snap: dict[str, Any], cameras: str) -> str:
    latency = snap["latency_ms"]["read_to_decision"]
    return (
        f"{cameras} | crops {snap['crops']} ({snap['crops_per_s']:.1f}/s), classify {snap['ms_per_batch']:.0f} ms per "
        f"batch, read-to-decision p50 {latency['p50']} ms p95 {latency['p95']} ms, events {snap['events']}"
    )
