"""Wiring: cameras -> localise -> classify -> decide -> publish, as stage threads over bounded
batch queues. The only module that knows every stage.

    readers ──► detect queue (1 frame per camera: newest wins) ──► detect worker: localise(frames)
            ──► classify queue (a few frames per camera, oldest dropped) ──► classify workers (1..N):
                classify(frames, detections) -> decide(sightings) -> publish(events)
                side by side                     in the order the    outbox (SQLite) -> MQTT
                                                 batches were taken: tracks, visits, snapshots

Several classify workers run whole batches side by side (on a CPU, one per core: see
engine.WorkerPlan); tracking needs each camera's frames in order, so their results are decided
one batch at a time, in the order the batches left the queue.

Capture never waits for the model: both queues drop the oldest frame of a camera when full, and
count it. Both take round-robin across cameras so none starves. The main thread only supervises:
stats, the end of file sources, and a worker that keeps failing (exit non-zero for systemd).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import TypeVar

import numpy as np
import torch

from birdwatch.capture.reader import CameraReader
from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.engine import Precision
from birdwatch.classify.engine import WorkerPlan
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.decide.visits import Visits
from birdwatch.decide.visits import check_species_lists
from birdwatch.deliver.mqtt import EventSink
from birdwatch.deliver.mqtt import LogSink
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.deliver.store import EventStore
from birdwatch.deliver.store import Outbox
from birdwatch.locate.localiser import DetectorLocaliser
from birdwatch.locate.localiser import MotionGatedLocaliser
from birdwatch.locate.localiser import build_localiser
from birdwatch.locate.motion import MotionDetector
from birdwatch.runtime import systemd
from birdwatch.runtime.batching import Batcher
from birdwatch.runtime.metrics import StatsReport
from birdwatch.runtime.metrics import summary_line
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Sighting
from birdwatch.types import VisitEvent
from birdwatch.types import local_day

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_CONSECUTIVE_FAILURES = 5  # a stage that fails this often in a row is broken, not unlucky
STAGE_HUNG_S = 30.0  # a stage thread silent this long is hung: the systemd watchdog ping is withheld
FLUSH_S = 5.0  # at stop, wait this long for the broker to acknowledge what is still in flight
PRUNE_EVERY_S = 3600.0  # event history and snapshot retention


@dataclass
class Camera:
    cfg: CameraConfig
    reader: CameraReader
    motion: MotionDetector
    processed: int = 0  # frames localised
    classified: int = 0  # frames whose crops went through the classifier
    regions: int = 0


@dataclass
class ClassifyJob:
    frame: Frame
    detections: Detections
    queued: float  # monotonic, when the detect stage handed it on


@dataclass
class StageStats:
    batches: int = 0
    items: int = 0
    busy_s: float = 0.0  # summed over the stage's workers
    workers: int = 1
    failures: int = 0
    consecutive_failures: int = 0
    # Recent samples only: percentiles of the last few thousand, memory stays flat.
    wait_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    batch_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    crops: int = 0
    events: int = 0
    read_to_decision_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    read_to_event_s: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


def percentiles_ms(samples: deque[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.fromiter(samples, float), [50, 95])
    return {"p50": round(1000 * float(p50), 1), "p95": round(1000 * float(p95), 1)}


class Pipeline:
    def __init__(self, config: Config, *, classifier: Classifier | None = None, sink: EventSink | None = None) -> None:
        self.config = config
        self._classifier = classifier
        self._sink = sink
        self.cameras: list[Camera] = []
        self.stats = RunStats()
        self.stages = {"detect": StageStats(), "classify": StageStats()}
        self.engine: ClassifierEngine | None = None
        self.visits: Visits | None = None
        self.store: EventStore | None = None
        self.outbox: Outbox | None = None
        self.snapshots = SnapshotWriter(config.snapshots) if config.snapshots.enabled else None
        # decide/tick/close touch the visits; the classify worker calls them, stop() too once it is done.
        self._visits_lock = threading.Lock()
        self._day = ""
        self._last_prune = time.monotonic()
        self.fatal: str | None = None
        engine_cfg = config.engine
        self.detect_queue: Batcher[Frame] = Batcher(
            max_batch=len(config.cameras), max_wait_s=engine_cfg.max_wait_ms / 1000, capacity_per_key=1
        )
        self.classify_queue: Batcher[ClassifyJob] = Batcher(
            max_batch=config.model.batch_size,
            max_wait_s=engine_cfg.max_wait_ms / 1000,
            capacity_per_key=engine_cfg.queue_per_camera,
            size_of=lambda job: len(job.detections),
        )
        self._workers: list[threading.Thread] = []
        # Each stage thread stamps this (by thread name) on every pass, work or idle, so a thread
        # stuck inside a model call shows up as a stale stamp and the watchdog ping stops.
        self._heartbeat: dict[str, float] = {}
        self._stats_lock = threading.Lock()
        # Classify batches are numbered as they leave the queue and decided in that order.
        self._take_lock = threading.Lock()
        self._order_lock = threading.Lock()
        self._taken = 0
        self._decided = 0
        self._ready: dict[int, tuple[list[Frame], list[Sighting] | None]] = {}  # classified, not yet decided
        self._deciding = False
        self.plan = WorkerPlan(1, None)
        self._threads_before: int | None = None
        self._watchdog = systemd.Watchdog()
        self._hung_reported = False
        self._stats_report = StatsReport()
        self.localiser: DetectorLocaliser | MotionGatedLocaliser | None = None  # None: motion regions only
        self._last_report = time.monotonic()
        self._report_marks: dict[str, tuple[int, int]] = {}

    # -- lifecycle --

    def start(self) -> None:
        """Everything a user can get wrong fails here, before any camera is opened: secrets, weights, the
        species lists, the database."""
        cfg = self.config
        if self._sink is None:
            mqtt = cfg.mqtt
            snapshots_on_mqtt = cfg.snapshots.enabled and cfg.snapshots.mqtt
            self._sink = (
                MqttSink(mqtt, mqtt.password_value(), cfg.homeassistant, snapshots_on_mqtt) if mqtt.host else LogSink()
            )
        engine_cfg = self.config.engine
        classifier = self._classifier or load_classifier(self.config.model)
        self.plan = WorkerPlan.resolve(classifier.device, engine_cfg.workers, engine_cfg.threads)
        self._threads_before = self.plan.apply()
        self.stages["classify"].workers = self.plan.workers
        check_species_lists(cfg.events, classifier.class_names, classifier.name)
        self.store = EventStore(cfg.store.path)
        precision = Precision.resolve(classifier.device, engine_cfg.precision, engine_cfg.channels_last)
        self.engine = ClassifierEngine(
            classifier,
            top_k=self.config.model.top_k,
            batch_size=self.config.model.batch_size,
            precision=precision,
            compile=engine_cfg.compile,
        )
        self.visits = Visits(cfg.tracking, cfg.events, classifier.name, top_k=self.engine.top_k)
        names = [cam.name for cam in cfg.cameras]
        self._day = local_day(time.time())
        for name in names:  # "last species" and "visits today" carry over a restart
            self.visits.seed(name, self.store.last_event(name), self._day, self.store.visits_on(name, self._day))
        self.store.prune(cfg.store.retention_days)
        self._sink.describe(names, classifier.name)
        for name in names:
            self._sink.publish_state(self.visits.state(name))
        self.outbox = Outbox(self.store, self._sink)
        pending = self.store.count_pending()
        if pending:
            log.info("%d event(s) from before this start not yet delivered; sending them first", pending)
        self.localiser = build_localiser(self.config, classifier)  # the head shares the classifier's backbone
        self._sink.start()
        self.outbox.pump()
        secrets = self.config.secrets()
        for cam_cfg in self.config.cameras:
            reader = CameraReader(cam_cfg, self.detect_queue.inlet(cam_cfg.name), secrets)
            self.cameras.append(Camera(cam_cfg, reader, MotionDetector(cam_cfg.motion)))
        self._workers = [threading.Thread(target=self._detect_worker, name="detect", daemon=True)] + [
            threading.Thread(target=self._classify_worker, name=f"classify-{i}", daemon=True)
            for i in range(self.plan.workers)
        ]
        for worker in self._workers:
            self._heartbeat[worker.name] = time.monotonic()
            worker.start()
        for cam in self.cameras:
            cam.reader.start()
        log.info(
            "birdwatch running: %d camera(s), model %s on %s (%s%s, batch %d, %d classify worker(s)%s)",
            len(self.cameras),
            classifier.name,
            classifier.device,
            precision.dtype,
            ", channels_last" if precision.channels_last else "",
            self.config.model.batch_size,
            self.plan.workers,
            f" x {self.plan.threads} thread(s)" if self.plan.threads else "",
        )

    def run(self, stop: threading.Event) -> int:
        """Supervise until `stop` is set, every source has ended (files without loop), or a stage is
        broken. Returns the exit code."""
        while not stop.wait(0.25):
            self._beat()
            if self.fatal:
                log.error("stopping: %s", self.fatal)
                return 1
            if self.cameras and all(cam.reader.done for cam in self.cameras):
                self.detect_queue.close()  # the workers drain what is queued, then end
                if not any(w.is_alive() for w in self._workers):
                    log.info("every source has ended")
                    ok = any(cam.reader.stats.state == "finished" for cam in self.cameras)
                    return 0 if ok else 1
            if time.monotonic() - self._last_report >= self.config.stats_interval_s:
                self.report()
        return 0

    def _beat(self) -> None:
        """Ping systemd's watchdog only while every stage thread is alive and making progress."""
        now = time.monotonic()
        stale = [
            (worker.name, now - self._heartbeat[worker.name])
            for worker in self._workers
            if worker.is_alive() and now - self._heartbeat[worker.name] > STAGE_HUNG_S
        ]
        if not stale:
            self._hung_reported = False
            self._watchdog.beat(now)
        elif not self._hung_reported:
            self._hung_reported = True
            name, silent = stale[0]
            log.error(
                "the %s stage (thread %s) has made no progress for %.0f s; withholding the watchdog so systemd "
                "restarts us",
                name.partition("-")[0],
                name,
                silent,
            )

    def stop(self, timeout: float = 8.0) -> bool:
        """Stop capture, drain the queued work through both stages, then the sink. False if a camera
        read is still blocked in native code (the caller then exits without waiting for it)."""
        if self.engine is None:
            if self.store is not None:
                self.store.close()
            if self._threads_before is not None:
                torch.set_num_threads(self._threads_before)
            return True  # start() failed before anything ran: nothing to stop or report
        deadline = time.monotonic() + timeout
        clean = all([cam.reader.stop(timeout=min(5.0, timeout / 2)) for cam in self.cameras])
        self.detect_queue.close()
        for worker in self._workers:
            worker.join(max(0.1, deadline - time.monotonic()))
        if any(w.is_alive() for w in self._workers):
            log.warning("a pipeline stage did not finish its batch in time; stopping without it")
        if self.visits is not None:
            with self._visits_lock:
                ended = self._with_snapshots(self.visits.close())  # birds still there: their visits end now
            self.publish(ended)
        # Waiting for acknowledgements only makes sense with a broker to give them.
        if self.outbox is not None and not self.outbox.flush(FLUSH_S if self.sink.online else 0.0):
            assert self.store is not None
            log.warning(
                "%d event(s) not acknowledged by the broker yet; they are kept and sent at the next start",
                self.store.count_pending(),
            )
        if self._sink is not None:
            self._sink.stop()
        if self.store is not None:
            self.store.close()
        self.report(final=True)
        if self._threads_before is not None:  # in-process users (tests, bench) get their setting back
            torch.set_num_threads(self._threads_before)
        return clean

    @property
    def sink(self) -> EventSink:
        assert self._sink is not None
        return self._sink

    # -- stage threads --

    def _detect_worker(self) -> None:
        try:
            while True:
                frames = self.detect_queue.get_batch(timeout=0.5)
                self._heartbeat["detect"] = time.monotonic()
                if not frames:
                    if self.detect_queue.closed and self.detect_queue.depth() == 0:
                        return
                    continue
                started = time.monotonic()
                detections = self._guard("detect", frames, self.localise, frames)
                done = time.monotonic()
                self._account("detect", len(frames), started, done, [started - f.mono for f in frames])
                for frame, found in zip(frames, detections or [], strict=False):
                    if len(found):
                        self.classify_queue.put(frame.camera, ClassifyJob(frame, found, done))
        finally:
            self.classify_queue.close()

    def _classify_worker(self) -> None:
        me = threading.current_thread().name
        while True:
            with self._take_lock:
                jobs = self.classify_queue.get_batch(timeout=0.5)
                ticket = self._taken
                self._taken += bool(jobs)
            self._heartbeat[me] = time.monotonic()
            if not jobs:
                self._tick_logged()  # frames without motion never come this far: visits of birds that left end here
                if self.classify_queue.closed and self.classify_queue.depth() == 0:
                    return
                continue
            frames = [job.frame for job in jobs]
            started = time.monotonic()
            sightings = self._guard("classify", frames, self._classify_jobs, jobs)  # side by side
            classified = time.monotonic()
            crops = sum(len(job.detections) for job in jobs)
            self._account("classify", crops, started, classified, [started - job.queued for job in jobs])
            self._decide_in_order(ticket, frames, sightings)

    def _classify_jobs(self, jobs: list[ClassifyJob]) -> list[Sighting]:
        return self.classify([job.frame for job in jobs], [job.detections for job in jobs])

    def _decide_in_order(self, ticket: int, frames: list[Frame], sightings: list[Sighting] | None) -> None:
        """Hand batch `ticket` over for deciding, which happens strictly in ticket order. Whichever worker
        completes the next ticket decides it and every later one already waiting, while the others go
        back to classifying. A batch whose classification failed (None) still takes its turn."""
        with self._order_lock:
            self._ready[ticket] = (frames, sightings)
            if self._deciding:
                return  # the worker deciding now will come to this one
            self._deciding = True
        while True:
            with self._order_lock:
                item = self._ready.pop(self._decided, None)
                if item is None:
                    self._deciding = False
                    return
            frames, sightings = item
            self._tick_logged()
            if sightings is not None:
                events = self._guard("classify", frames, self._decide_and_publish, (sightings, frames)) or []
                done = time.monotonic()
                self.stats.read_to_decision_s.extend(done - f.mono for f in frames)
                for event in events:
                    if event.kind == "new":  # the moment a visit is told; updates and ends follow later by design
                        self.stats.read_to_event_s.append(done - self._frame_mono(event, frames))
            with self._order_lock:
                self._decided += 1

    def _decide_and_publish(self, work: tuple[list[Sighting], list[Frame]]) -> list[VisitEvent]:
        sightings, frames = work
        return self.publish(self.decide(sightings, frames))

    def _tick_logged(self) -> None:
        try:
            self.tick()
        except Exception as exc:  # a full disk, say: logged, and the next tick tries again
            log.exception("visit bookkeeping failed: %s", exc)

    def _guard(self, stage: str, frames: list[Frame], work: Callable[[T], list], arg: T) -> list | None:
        """Run one batch; a failure is logged with its frames and skipped, and repeated failures stop the
        service (exit 1, systemd restarts it) instead of spinning on a broken model."""
        stats = self.stages[stage]
        try:
            result = work(arg)
        except Exception as exc:  # the boundary of a worker thread: anything else would kill it silently
            stats.failures += 1
            stats.consecutive_failures += 1
            which = ", ".join(f"{f.camera}#{f.seq}" for f in frames[:8])
            log.exception("%s stage failed on frames %s: %s", stage, which, exc)
            if stats.consecutive_failures >= MAX_CONSECUTIVE_FAILURES and self.fatal is None:
                self.fatal = f"the {stage} stage failed {stats.consecutive_failures} times in a row (last: {exc})"
            return None
        stats.consecutive_failures = 0
        return result

    def _account(self, stage: str, items: int, started: float, done: float, waits: list[float]) -> None:
        """items: frames for detect, crops for classify (what a batch's size means to that model)."""
        stats = self.stages[stage]
        with self._stats_lock:  # several classify workers
            stats.batches += 1
            stats.items += items
            stats.busy_s += done - started
            stats.batch_s.append(done - started)
            stats.wait_s.extend(waits)

    @staticmethod
    def _frame_mono(event: VisitEvent, frames: list[Frame]) -> float:
        """Read time of the newest frame of the event's camera in the batch: the one that confirmed it."""
        monos = [f.mono for f in frames if f.camera == event.camera]
        return max(monos) if monos else min(f.mono for f in frames)

    # -- the stages --

    def process(self, frames: list[Frame]) -> list[VisitEvent]:
        """All four stages for some frames, in the calling thread (tests, benchmarks)."""
        detections = self.localise(frames)
        sightings = self.classify(frames, detections)
        events = self.decide(sightings, frames)
        return self.publish(events)

    def localise(self, frames: list[Frame]) -> list[Detections]:
        """Where to look in each frame: motion regions, detector boxes, or detector boxes where motion is."""
        by_name = {cam.cfg.name: cam for cam in self.cameras}
        if self.localiser is not None and not self.localiser.needs_motion:
            out = self.localiser([frame.image for frame in frames])
        else:
            out = []
            for frame in frames:
                found = by_name[frame.camera].motion(frame.image)
                out.append(found)
            if self.localiser is not None:
                out = self.localiser([frame.image for frame in frames], out)
        for frame, found in zip(frames, out, strict=True):
            cam = by_name[frame.camera]
            cam.processed += 1
            cam.regions += len(found)
        return out

    def classify(self, frames: list[Frame], detections: list[Detections]) -> list[Sighting]:
        """Species for every box of every frame, in one batch."""
        assert self.engine is not None
        boxes = [d.int_boxes() for d in detections]
        n_crops = sum(len(b) for b in boxes)
        if n_crops == 0:
            return []
        top_ks = self.engine.classify(frames, boxes)
        self.stats.crops += n_crops
        by_name = {cam.cfg.name: cam for cam in self.cameras}
        for frame, frame_boxes in zip(frames, boxes, strict=True):
            if frame_boxes and frame.camera in by_name:
                by_name[frame.camera].classified += 1
        return [
            Sighting(frame.camera, frame.seq, frame.ts, frame.mono, box, top_k, float(score))
            for frame, det, frame_boxes, frame_top in zip(frames, detections, boxes, top_ks, strict=True)
            for box, score, top_k in zip(frame_boxes, det.scores, frame_top, strict=True)
        ]

    def decide(self, sightings: list[Sighting], frames: list[Frame]) -> list[VisitEvent]:
        """Tracks and visits: which crops are which bird, and what is worth telling; writes snapshots."""
        assert self.visits is not None
        with self._visits_lock:
            return self._with_snapshots(self.visits.observe(frames, sightings))

    def tick(self, now: float | None = None) -> list[VisitEvent]:
        """Time passing: visits of birds that left end, heartbeats, midnight, retention. Cheap; the
        classify worker calls it after every batch and whenever it waited for one in vain."""
        assert self.visits is not None and self.store is not None and self.outbox is not None
        with self._visits_lock:
            events = self._with_snapshots(self.visits.tick(now))
        self.publish(events)
        day = local_day(time.time())
        if day != self._day:  # "visits today" falls back to 0 at midnight
            self._day = day
            with self._visits_lock:
                states = [self.visits.state(cam.name) for cam in self.config.cameras]
            for state in states:
                self.sink.publish_state(state)
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self.store.prune(self.config.store.retention_days)
            if self.snapshots is not None:
                self.snapshots.prune_if_due()
        self.outbox.pump()  # what the publisher could not take before (its queue was full)
        return events

    def _with_snapshots(self, events: list[VisitEvent]) -> list[VisitEvent]:
        """Write the pictures of events that carry a better one, and record where they went."""
        out = []
        for event in events:
            if event.image is not None and self.snapshots is not None:
                snap = self.snapshots.save(event, event.image)
                if snap is not None:
                    event = dataclasses.replace(
                        event,
                        snapshot=str(snap.crop_path),
                        snapshot_frame=str(snap.frame_path) if snap.frame_path else None,
                    )
            out.append(dataclasses.replace(event, image=None) if event.image is not None else event)
        return out

    def publish(self, events: list[VisitEvent]) -> list[VisitEvent]:
        """Each event into the outbox (SQLite first, then MQTT); then the states of their cameras."""
        assert self.outbox is not None and self.visits is not None
        for event in events:
            log.info(
                "%s on %s: %s (%.2f) visit %s, %d frame(s)",
                event.kind,
                event.camera,
                event.species,
                event.score,
                event.visit_id[:8],
                event.frames,
            )
            self.outbox.submit(event)
        with self._visits_lock:
            states = [self.visits.state(camera) for camera in dict.fromkeys(e.camera for e in events)]
        for state in states:
            self.sink.publish_state(state)
        self.stats.events += len(events)
        return events

    # -- stats --

    def snapshot(self) -> dict[str, object]:
        """Counters for logs, the benchmark and metrics."""
        elapsed = max(1e-9, time.monotonic() - self.stats.started)
        cameras = {}
        for cam in self.cameras:
            st = cam.reader.stats
            name = cam.cfg.name
            cameras[name] = {
                "state": st.state,
                "frames_read": st.frames_read,
                "frames_processed": cam.processed,
                "frames_classified": cam.classified,
                "frames_dropped": self.detect_queue.dropped.get(name, 0) + self.classify_queue.dropped.get(name, 0),
                "reconnects": st.reconnects,
                "regions": cam.regions,
                "queue_depth": self.detect_queue.depth(name) + self.classify_queue.depth(name),
                "last_error": st.last_error,
            }
        stages = {}
        for name, queue in (("detect", self.detect_queue), ("classify", self.classify_queue)):
            st = self.stages[name]
            stages[name] = {
                "queue_depth": queue.depth(),
                "dropped": sum(queue.dropped.values()),
                "batches": st.batches,
                "mean_batch": round(st.items / st.batches, 2) if st.batches else 0.0,
                "ms_per_batch": round(1000 * st.busy_s / st.batches, 1) if st.batches else 0.0,
                "busy": round(st.busy_s / elapsed / st.workers, 3),  # of all the stage's workers' time
                "workers": st.workers,
                "failures": st.failures,
                "wait_ms": percentiles_ms(st.wait_s),
                "batch_ms": percentiles_ms(st.batch_s),
            }
        classify = self.stages["classify"]
        sink = self._sink
        connected = getattr(sink, "connected", None)
        return {
            "elapsed_s": round(elapsed, 2),
            "cameras": cameras,
            "stages": stages,
            "queues": {name: stage["queue_depth"] for name, stage in stages.items()},
            "batches": classify.batches,
            "infer_s": round(classify.busy_s, 3),
            # Acknowledged by the broker (or logged, without one), and still waiting in the outbox.
            "events_published": self.outbox.sent if self.outbox is not None else self.stats.events,
            "events_pending": self.store.count_pending() if self.store is not None and not self.store.closed else None,
            "mqtt_connected": connected.is_set() if isinstance(connected, threading.Event) else None,
            "crops": self.stats.crops,
            "crops_per_s": round(self.stats.crops / elapsed, 2),
            "events": self.stats.events,
            "ms_per_batch": stages["classify"]["ms_per_batch"],
            "latency_ms": {
                "read_to_decision": percentiles_ms(self.stats.read_to_decision_s),
                "read_to_event": percentiles_ms(self.stats.read_to_event_s),
            },
        }

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        span = max(1e-9, now - self._last_report)
        snap = self.snapshot()
        parts = []
        for cam in self.cameras:
            st = cam.reader.stats
            read0, done0 = self._report_marks.get(cam.cfg.name, (0, 0))
            self._report_marks[cam.cfg.name] = (st.frames_read, cam.processed)
            c = snap["cameras"][cam.cfg.name]  # type: ignore[index]
            parts.append(
                f"{cam.cfg.name} [{st.state}] read {(st.frames_read - read0) / span:.1f} fps, "
                f"processed {(cam.processed - done0) / span:.1f} fps, dropped {c['frames_dropped']}, "
                f"queued {c['queue_depth']}, reconnects {st.reconnects}"
            )
        self._last_report = now
        systemd.status(summary_line(snap))
        if self._sink is not None and not final:
            self._sink.publish_stats(self._stats_report.json(snap))
        latency = snap["latency_ms"]["read_to_decision"]  # type: ignore[index]
        log.info(
            "%s %s | crops %d (%.1f/s), classify %.0f ms per batch, read-to-decision p50 %s ms p95 %s ms, events %d",
            "final stats:" if final else "stats:",
            "; ".join(parts),
            snap["crops"],
            snap["crops_per_s"],
            snap["ms_per_batch"],
            latency["p50"],
            latency["p95"],
            snap["events"],
        )
