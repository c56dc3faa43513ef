"""The stage threads and their supervision: cameras -> locate -> classify -> decide -> deliver.

    readers ──► locate queue (1 frame per camera: newest wins) ──► locate thread
            ──► classify queue (a few frames per camera, oldest dropped) ──► classify workers (1..N)
            ──► decide queue (batches in the order they were formed, each a future) ──► decide thread:
                tracks, visits, snapshots, outbox (SQLite, then MQTT), camera states

Several classify workers run whole batches side by side (on a CPU, one per core: see engine.WorkerPlan) and only
classify. One decide thread takes their results in the order the batches left the classify queue and alone owns
everything after: tracking needs each camera's frames in order, and a camera's events must reach the outbox in the
order they happened.

Capture never waits for the model: both batch queues drop the oldest frame of a camera when full, and count it.
Both take round-robin across cameras so none starves. The main thread only supervises: stats, the end of file
sources, a stage that keeps failing or hangs."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from birdwatch.capture.reader import CameraReader
from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.engine import WorkerPlan
from birdwatch.classify.models import Classifier
from birdwatch.config import Config
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.outbox import Outbox
from birdwatch.deliver.sink import EventSink
from birdwatch.locate.localiser import Localiser
from birdwatch.runtime import systemd
from birdwatch.runtime.batching import Batcher
from birdwatch.runtime.build import Parts
from birdwatch.runtime.build import build
from birdwatch.runtime.health import Health
from birdwatch.runtime.metrics import StatsReport
from birdwatch.runtime.metrics import summary_line
from birdwatch.runtime.stages import Batch
from birdwatch.runtime.stages import ClassifyJob
from birdwatch.runtime.stages import Guard
from birdwatch.runtime.stages import spread
from birdwatch.runtime.stats import Feed
from birdwatch.runtime.stats import FeedRates
from birdwatch.runtime.stats import RunStats
from birdwatch.runtime.stats import StageStats
from birdwatch.runtime.stats import counters
from birdwatch.runtime.stats import new_event_read_times
from birdwatch.runtime.stats import stats_line
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import VisitEvent
from birdwatch.web.live import LatestFrames

log = logging.getLogger(__name__)

FLUSH_S = 5.0  # at stop, wait at most this long for the broker to acknowledge what is still in flight
# All of stop() before the sink's `offline` (up to 3 s) fits in this, inside the unit's TimeoutStopSec=15, however many
# cameras are stalled: they are asked to stop together; a read blocked in FFmpeg is not waited for past READERS_STOP_S.
STOP_BUDGET_S = 11.0
SINK_STOP_S = 3.0  # the sink's `offline`, and its delivery thread handing on the last acknowledgements
READERS_STOP_S = 2.0
PROCESS_TIMEOUT_S = 120.0  # `process` waits this long for the decide thread
TICK_S = 0.25  # how often the decide thread lets time pass (visits of birds that left end, heartbeats)


class Pipeline:
    def __init__(self, config: Config, *, classifier: Classifier | None = None, sink: EventSink | None = None) -> None:
        self.config = config
        self._given = (classifier, sink)
        self.parts: Parts | None = None
        self.feeds: list[Feed] = []
        self.stats = RunStats()
        self.stages = {"locate": StageStats(), "classify": StageStats()}
        self._guards = {
            "locate": Guard("locate", self.stages["locate"]),
            "classify": Guard("classify", self.stages["classify"]),
            "decide": Guard("decide", self.stages["classify"]),  # its failures count as the classify stage's
        }
        engine_cfg = config.engine
        self.locate_queue: Batcher[Frame] = Batcher(
            max_batch=len(config.cameras), max_wait_s=engine_cfg.max_wait_ms / 1000, capacity_per_key=1
        )
        self.classify_queue: Batcher[ClassifyJob] = Batcher(
            max_batch=config.model.batch_size,
            max_wait_s=engine_cfg.max_wait_ms / 1000,
            capacity_per_key=engine_cfg.queue_per_camera,
            size_of=lambda job: len(job.found),
        )
        # Batches enter it as they leave the classify queue (one step, under that queue's lock), so they
        # are decided in the order they were formed, whichever worker finishes first. Unbounded as a
        # queue; the slots bound how many batches are taken and not yet decided.
        self._to_decide: queue.Queue[Batch] = queue.Queue()
        self._slots = threading.Semaphore(2)  # sized in start(), by the worker count
        self._abandon = threading.Event()  # stop(): a hung classify batch is not waited for
        self._ticked = 0.0  # monotonic, the decide thread's last tick
        self._locate_thread: threading.Thread | None = None
        self._classify_threads: list[threading.Thread] = []
        self._decide_thread: threading.Thread | None = None
        self._health = Health()  # a stage thread stuck in a model call leaves its heartbeat stale: no ping
        self._heartbeat = self._health.heartbeat  # stamped by each stage thread on every pass, work or idle
        self._stats_report = StatsReport()
        self._rates = FeedRates()
        self.status_note = ""  # put before the summary in systemd's STATUS=, e.g. why a reload failed
        self.live = LatestFrames()  # the page's *Now* (references only, never waited on); the service gives its own

    # -- parts, for callers that look inside (tests, the bench) --

    @property
    def engine(self) -> ClassifierEngine | None:
        return self.parts.engine if self.parts else None

    @property
    def store(self) -> EventStore | None:
        return self.parts.store if self.parts else None

    @property
    def outbox(self) -> Outbox | None:
        return self.parts.outbox if self.parts else None

    @property
    def sink(self) -> EventSink:
        assert self.parts is not None
        return self.parts.sink

    @property
    def localiser(self) -> Localiser | None:  # None before start
        return self.parts.locator.localiser if self.parts else None

    @property
    def plan(self) -> WorkerPlan | None:
        return self.parts.plan if self.parts else None

    @property
    def _threads(self) -> list[threading.Thread]:
        threads = [self._locate_thread, *self._classify_threads, self._decide_thread]
        return [t for t in threads if t is not None]

    # -- lifecycle --

    def start(self) -> None:
        """Build every part (what a user can get wrong fails here, before any camera is opened), then
        start the stage threads and the cameras."""
        parts = self.parts = build(self.config, *self._given)
        self.stages["classify"].workers = parts.plan.workers
        self._slots = threading.Semaphore(2 * parts.plan.workers + 2)
        names = [cam.name for cam in self.config.cameras]
        parts.sink.describe(names, parts.classifier.name)
        parts.decider.begin()
        pending = parts.outbox.unsent()
        if pending:
            log.info("%d event(s) from before this start not yet delivered; sending them first", pending)
        # Hand the backlog over before the connection is made: paho sends what it queued offline only
        # after the broker's CONNACK, so a row handed while that is arriving would overtake older ones.
        parts.outbox.pump()
        parts.sink.start()
        secrets = self.config.secrets()
        self.feeds = [
            Feed(cam, CameraReader(cam, self.locate_queue.inlet(cam.name), secrets)) for cam in self.config.cameras
        ]
        self._locate_thread = threading.Thread(target=self._locate_loop, name="locate", daemon=True)
        self._classify_threads = [
            threading.Thread(target=self._classify_loop, name=f"classify-{i}", daemon=True)
            for i in range(parts.plan.workers)
        ]
        self._decide_thread = threading.Thread(target=self._decide_loop, name="decide", daemon=True)
        for thread in self._threads:
            self._heartbeat[thread.name] = time.monotonic()
            thread.start()
        for feed in self.feeds:
            feed.reader.start()
        runner = parts.engine.runner
        log.info(
            "birdwatch running: %d camera(s), model %s on %s (%s, %s, batch %d, %d classify worker(s)%s)",
            len(self.feeds),
            parts.classifier.name,
            parts.classifier.device,
            runner.backend,
            runner.precision,
            self.config.model.batch_size,
            parts.plan.workers,
            f" x {parts.plan.threads} thread(s)" if parts.plan.threads else "",
        )

    def run(self, stop: threading.Event) -> int:
        """Supervise until `stop` is set, every source has ended (files without loop), or a stage is
        broken. Returns the exit code."""
        while not stop.wait(0.25):
            self._beat()
            fatal = next((g.fatal for g in self._guards.values() if g.fatal), None) or self._dead_stage()
            if fatal:
                log.error("stopping: %s", fatal)
                return 1
            if self.feeds and all(feed.reader.done for feed in self.feeds):
                self.locate_queue.close()  # the stages drain what is queued, then end
                if not any(t.is_alive() for t in self._threads):
                    log.info("every source has ended")
                    return 0 if any(feed.reader.stats.status == "finished" for feed in self.feeds) else 1
            if self._rates.due(self.config.stats_interval_s):
                self.report()
        return 0

    def _dead_stage(self) -> str | None:
        # Once the sources have ended and the queue is closed, the stages end by design.
        return None if self.locate_queue.closed else self._health.dead_stage(self._threads)

    def _beat(self) -> None:
        problem = getattr(self.parts.sink, "problem", None) if self.parts is not None else None
        self._health.beat(self._threads, dead=self._dead_stage(), sink_problem=problem)

    def stop(self, timeout: float = 8.0) -> bool:
        """Stop capture, drain the queued work through the stages (the decide thread ends the visits of
        birds still there), then the sink. The stages get `timeout`, all of it STOP_BUDGET_S. False if
        a camera read is still blocked in native code (the caller then exits without waiting for it)."""
        parts = self.parts
        if parts is None:
            return True  # start() failed before anything ran: build() gave back what it had opened
        if self._decide_thread is None or self._decide_thread.ident is None:  # start() failed before the threads ran
            parts.sink.stop(0.5)  # it may have been started: its client must not live on beside the next one's
            parts.release()
            return True
        began = time.monotonic()
        deadline = began + timeout
        for feed in self.feeds:  # every camera at once: stalled ones do not add up
            feed.reader.request_stop()
        self.locate_queue.close()  # a reader's last frame may still come: the stages take what is queued
        feeding = [t for t in self._threads if t is not self._decide_thread and t.ident is not None]
        for thread in feeding:
            thread.join(max(0.1, deadline - time.monotonic()))
        if any(t.is_alive() for t in feeding):
            log.warning("a pipeline stage did not finish its batch in time; stopping without it")
            self._abandon.set()
        self._decide_thread.join(max(1.0, deadline - time.monotonic()))
        if self._decide_thread.is_alive():
            log.warning("the decide stage did not finish in time; the visits still open are not ended")
        # Waiting for acknowledgements only makes sense with a broker to give them.
        flush_s = min(FLUSH_S, max(0.0, began + STOP_BUDGET_S - time.monotonic())) if parts.sink.online else 0.0
        if not parts.outbox.flush(flush_s):
            log.warning(
                "%d event(s) not acknowledged by the broker yet; those in the history are sent at the next start",
                parts.outbox.unsent(),
            )
        parts.sink.stop(min(SINK_STOP_S, max(0.5, began + STOP_BUDGET_S + SINK_STOP_S - time.monotonic())))
        parts.outbox.close()  # after the sink's last acknowledgement
        # Most readers ended long ago; one blocked in FFmpeg is given what is left of READERS_STOP_S.
        readers_by = began + READERS_STOP_S
        clean = all([feed.reader.join(readers_by) for feed in self.feeds])
        self.report(final=True)
        parts.release()
        return clean

    def readers_blocked(self) -> bool:
        """A camera read of this (stopped) pipeline is still blocked in FFmpeg: the process must not
        tear the interpreter down around it (it would abort), so it exits with os._exit."""
        return not all(feed.reader.join(time.monotonic()) for feed in self.feeds)

    # -- stage threads --

    def _locate_loop(self) -> None:
        try:
            while True:
                frames = self.locate_queue.get_batch(timeout=0.5)
                self._heartbeat["locate"] = time.monotonic()
                if not frames:
                    if self.locate_queue.closed and self.locate_queue.depth() == 0:
                        return
                    continue
                started = time.monotonic()
                found = self._guards["locate"].call(frames, self.locate, frames)
                done = time.monotonic()
                self.stages["locate"].record(len(frames), started, done, [started - f.mono for f in frames])
                for frame, boxes in zip(frames, found or [], strict=False):
                    if len(boxes):
                        self.classify_queue.put(frame.camera, ClassifyJob(frame, boxes, done))
        finally:
            self.classify_queue.close()

    def _classify_loop(self) -> None:
        me = threading.current_thread().name
        while True:
            self._heartbeat[me] = time.monotonic()
            if not self._slots.acquire(timeout=0.5):
                continue  # the decide thread is behind: back-pressure, the classify queue drops old frames
            batch = self.classify_queue.take(0.5, self._queue_for_decision)
            if batch is None:
                self._slots.release()
                if self.classify_queue.closed and self.classify_queue.depth() == 0:
                    return
                continue
            batch.run(self.classify)

    def _queue_for_decision(self, jobs: list[ClassifyJob]) -> Batch:
        batch = Batch(jobs)
        self._to_decide.put_nowait(batch)
        return batch

    def _decide_loop(self) -> None:
        try:
            while True:
                self._heartbeat["decide"] = time.monotonic()
                try:
                    batch = self._to_decide.get(timeout=TICK_S)
                except queue.Empty:
                    self._tick()  # frames without motion never come this far: visits of birds that left end here
                    if self._classifying_over() and self._to_decide.empty():  # empty again: nothing can come now
                        return
                    continue
                if time.monotonic() - self._ticked >= TICK_S:  # not per batch: the classify workers share the GIL
                    self._tick()
                try:
                    self._decide_batch(batch)
                finally:
                    self._slots.release()
        finally:
            self._close_visits()

    def _classifying_over(self) -> bool:
        """Nothing more can reach the decide queue (checked when it is empty)."""
        if self._abandon.is_set():
            return True
        return bool(self._classify_threads) and not any(t.is_alive() for t in self._classify_threads)

    def _decide_batch(self, batch: Batch) -> None:
        found = self._classified(batch)
        if batch.result.done():  # classified, or failed: either way the model's time
            waits = [batch.started - job.queued for job in batch.jobs]
            self.stages["classify"].record(batch.crops, batch.started, batch.finished, waits)
        if found is None:
            return
        frames = batch.frames
        events = self._guards["decide"].call(frames, lambda _: self.decide(frames, found), None)
        done = time.monotonic()
        self.stats.crops += batch.crops
        by_name = {feed.name: feed for feed in self.feeds}
        for frame, boxes in zip(frames, found, strict=True):
            if len(boxes) and frame.camera in by_name:
                by_name[frame.camera].classified += 1
        self.stats.read_to_decision_s.extend(done - f.mono for f in frames)
        if events is None:
            batch.decided.set_result([])
            return
        self.stats.events += len(events)
        self.stats.read_to_event_s.extend(done - mono for mono in new_event_read_times(events, frames))
        batch.decided.set_result(events)

    def _classified(self, batch: Batch) -> list[Detections] | None:
        """Wait for the batch's classification, in turn; None (counted, logged) if it failed or was abandoned."""
        while True:
            try:
                found = batch.result.result(timeout=0.25)
            except TimeoutError:
                self._heartbeat["decide"] = time.monotonic()  # waiting on a worker is not being stuck
                if self._abandon.is_set():
                    batch.decided.set_exception(TimeoutError("classification abandoned at stop"))
                    return None
                continue
            except Exception as exc:
                self._guards["classify"].failed(batch.frames, exc)
                batch.decided.set_exception(exc)
                return None
            self._guards["classify"].succeeded()
            return found

    def _tick(self) -> None:
        assert self.parts is not None
        self._ticked = time.monotonic()
        try:
            self.stats.events += len(self.parts.decider.tick())
        except Exception as exc:  # a full disk, say: logged, and the next tick tries again
            log.exception("visit bookkeeping failed: %s", exc)

    def _close_visits(self) -> None:
        assert self.parts is not None
        try:
            self.stats.events += len(self.parts.decider.close())
        except Exception as exc:
            log.exception("ending the open visits failed: %s", exc)

    # -- the stages --

    def process(self, frames: list[Frame]) -> list[VisitEvent]:
        """Every stage for some frames, in order (tests, benchmarks): locate and classify in the calling
        thread, decide on the decide thread, which owns the visits. Returns the events told."""
        found = self.locate(frames)
        now = time.monotonic()
        batch = Batch([ClassifyJob(frame, boxes, now) for frame, boxes in zip(frames, found, strict=True)])
        batch.run(self.classify)
        if not self._slots.acquire(timeout=PROCESS_TIMEOUT_S):
            raise TimeoutError("the decide thread took no batch for too long")
        self._to_decide.put(batch)
        return batch.decided.result(timeout=PROCESS_TIMEOUT_S)

    def locate(self, frames: list[Frame]) -> list[Detections]:
        """Where to look in each frame: motion regions, detector boxes, or detector boxes where motion is."""
        assert self.parts is not None
        out = self.parts.locator(frames)
        by_name = {feed.name: feed for feed in self.feeds}
        for frame, found in zip(frames, out, strict=True):
            self.live.put_frame(frame)
            if frame.camera in by_name:
                by_name[frame.camera].processed += 1
                by_name[frame.camera].regions += len(found)
        return out

    def classify(self, frames: list[Frame], found: list[Detections]) -> list[Detections]:
        """Species for every box of every frame, in one batch; a box the localiser calls not a bird (a cat)
        is not classified: it can never be a visit."""
        assert self.parts is not None
        birds = [~d.not_birds() for d in found]
        boxes = [
            [box for box, bird in zip(self.parts.locator.crop_boxes(f, d), keep, strict=True) if bird]
            for f, d, keep in zip(frames, found, birds, strict=True)
        ]
        if not any(boxes):
            return [d.with_species([()] * len(d)) for d in found]
        named = self.parts.engine.classify(frames, boxes)
        return [d.with_species(*spread(n, keep)) for d, n, keep in zip(found, named, birds, strict=True)]

    def decide(self, frames: list[Frame], found: list[Detections]) -> list[VisitEvent]:
        """Tracks and visits: which boxes are which bird, and what is worth telling; on the decide thread."""
        assert self.parts is not None
        named = self.parts.decider.recall(frames, found)  # the feeder memory's names: the live picture shows them
        for frame, boxes in zip(frames, named, strict=True):
            if len(boxes):
                self.live.put_boxes(frame, boxes)
        return self.parts.decider.decide(frames, named)

    # -- stats --

    def counters(self) -> dict[str, object]:
        """Counters for logs, the benchmark and metrics."""
        queues: dict[str, Batcher[Any]] = {"locate": self.locate_queue, "classify": self.classify_queue}
        outbox, decider = (self.parts.outbox, self.parts.decider) if self.parts else (None, None)
        return counters(self.stats, self.stages, queues, self.feeds, outbox, decider)

    def status_line(self, snap: dict[str, object] | None = None) -> str:
        summary = summary_line(self.counters() if snap is None else snap)
        return f"{self.status_note}; {summary}" if self.status_note else summary

    def report(self, final: bool = False) -> None:
        snap = self.counters()
        systemd.status(self.status_line(snap))
        if self.parts is not None and not final:
            self.parts.sink.publish_stats(self._stats_report.json(snap))
        log.info("%s %s", "final stats:" if final else "stats:", stats_line(snap, self._rates.line(self.feeds, snap)))
