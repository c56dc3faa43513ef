"""Wiring: cameras -> motion regions -> batched classification -> tracks and visits -> outbox -> MQTT.

The only module that knows every stage. One inference loop takes the newest frame of every camera
that has one, so a camera with a fast stream cannot starve a slow one, and classifies the crops of
all of them in one forward pass.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from dataclasses import field

from birdwatch.capture import CameraReader
from birdwatch.capture import LatestFrameSlot
from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.engine import ClassifierEngine
from birdwatch.models import Classifier
from birdwatch.models import load_classifier
from birdwatch.motion import MotionDetector
from birdwatch.mqtt import EventSink
from birdwatch.mqtt import LogSink
from birdwatch.mqtt import MqttSink
from birdwatch.snapshots import SnapshotWriter
from birdwatch.store import EventStore
from birdwatch.store import Outbox
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import Sighting
from birdwatch.types import VisitEvent
from birdwatch.types import local_day
from birdwatch.visits import Visits
from birdwatch.visits import check_species_lists

log = logging.getLogger(__name__)

_FLUSH_S = 5.0  # at stop, wait this long for the broker to acknowledge what is still in flight
_PRUNE_EVERY_S = 3600.0  # event history retention


@dataclass
class Camera:
    cfg: CameraConfig
    slot: LatestFrameSlot
    reader: CameraReader
    motion: MotionDetector
    processed: int = 0
    regions: int = 0


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    batches: int = 0
    crops: int = 0
    events: int = 0
    infer_s: float = 0.0


class Pipeline:
    def __init__(self, config: Config, *, classifier: Classifier | None = None, sink: EventSink | None = None) -> None:
        self.config = config
        self._classifier = classifier
        self._sink = sink
        self._wake = threading.Condition()
        self.cameras: list[Camera] = []
        self.stats = RunStats()
        self.engine: ClassifierEngine | None = None
        self.visits: Visits | None = None
        self.store: EventStore | None = None
        self.outbox: Outbox | None = None
        self.snapshots = SnapshotWriter(config.snapshots) if config.snapshots.enabled else None
        self._day = ""
        self._last_prune = time.monotonic()
        self._last_report = time.monotonic()
        self._report_marks: dict[str, tuple[int, int]] = {}

    # -- lifecycle --

    def start(self) -> None:
        """Everything a user can get wrong fails here, before any camera is opened: secrets, then weights."""
        cfg = self.config
        if self._sink is None:
            mqtt = cfg.mqtt
            self._sink = (
                MqttSink(mqtt, mqtt.password_value(), cfg.homeassistant, cfg.snapshots.enabled and cfg.snapshots.mqtt)
                if mqtt.host
                else LogSink()
            )
        classifier = self._classifier or load_classifier(cfg.model)
        check_species_lists(cfg.events, classifier.class_names, classifier.name)
        self.store = EventStore(cfg.store.path)
        self.engine = ClassifierEngine(classifier, top_k=cfg.model.top_k, batch_size=cfg.model.batch_size)
        self.visits = Visits(cfg.tracking, cfg.events, classifier.name, top_k=self.engine.top_k)
        names = [cam.name for cam in cfg.cameras]
        self._day = local_day(time.time())
        for name in names:
            self.visits.seed(name, self.store.last_event(name), self._day, self.store.visits_on(name, self._day))
        self.store.prune(cfg.store.retention_days)
        self._sink.describe(names, classifier.name)
        for name in names:
            self._sink.publish_state(self.visits.state(name))
        self.outbox = Outbox(self.store, self._sink)
        pending = self.store.count_pending()
        if pending:
            log.info("%d event(s) from before this start not yet delivered; sending them first", pending)
        self._sink.start()
        self.outbox.pump()
        secrets = self.config.secrets()
        for cam_cfg in self.config.cameras:
            slot = LatestFrameSlot(self._wake)
            reader = CameraReader(cam_cfg, slot, secrets)
            self.cameras.append(Camera(cam_cfg, slot, reader, MotionDetector(cam_cfg.motion)))
        for cam in self.cameras:
            cam.reader.start()
        log.info(
            "birdwatch running: %d camera(s), model %s on %s",
            len(self.cameras),
            classifier.name,
            classifier.device,
        )

    def stop(self) -> None:
        if self.engine is None:
            if self.store is not None:
                self.store.close()
            return  # start() failed before anything ran: nothing to stop or report
        for cam in self.cameras:
            cam.reader.stop()
        if self.visits is not None:
            self.publish(self._with_snapshots(self.visits.close()))  # birds still there: their visits end now
        if self.outbox is not None and not self.outbox.flush(_FLUSH_S):
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

    @property
    def sink(self) -> EventSink:
        assert self._sink is not None
        return self._sink

    def run(self, stop: threading.Event) -> int:
        """Process until `stop` is set or every source has ended (files without loop). Returns an exit code."""
        while not stop.is_set():
            frames = self.take_frames(timeout=0.5)
            if frames:
                self.process(frames)
            self.tick()
            if not frames and all(cam.reader.done for cam in self.cameras):
                ok = any(cam.reader.stats.state == "finished" for cam in self.cameras)
                log.info("every source has ended")
                return 0 if ok else 1
            if time.monotonic() - self._last_report >= self.config.stats_interval_s:
                self.report()
        return 0

    # -- one step --

    def take_frames(self, timeout: float) -> list[Frame]:
        """The newest frame of each camera that has one; waits up to `timeout` for the first."""
        deadline = time.monotonic() + timeout
        while True:
            frames = [f for cam in self.cameras if (f := cam.slot.take()) is not None]
            remaining = deadline - time.monotonic()
            if frames or remaining <= 0:
                return frames
            with self._wake:
                self._wake.wait(min(remaining, 0.1))

    def process(self, frames: list[Frame]) -> list[VisitEvent]:
        """One step for the newest frames of several cameras: where -> what -> which events -> out."""
        detections = self.localise(frames)
        sightings = self.classify(frames, detections)
        events = self.decide(sightings, frames)
        self.publish(events)
        return events

    def localise(self, frames: list[Frame]) -> list[Detections]:
        """Where to look in each frame."""
        by_name = {cam.cfg.name: cam for cam in self.cameras}
        out = []
        for frame in frames:
            cam = by_name[frame.camera]
            cam.processed += 1
            found = cam.motion(frame.image)
            cam.regions += len(found)
            out.append(found)
        return out

    def classify(self, frames: list[Frame], detections: list[Detections]) -> list[Sighting]:
        """Species for every box of every frame, in one batch."""
        assert self.engine is not None
        boxes = [d.int_boxes() for d in detections]
        n_crops = sum(len(b) for b in boxes)
        if n_crops == 0:
            return []
        started = time.perf_counter()
        top_ks = self.engine.classify(frames, boxes)
        self.stats.infer_s += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.crops += n_crops
        return [
            Sighting(frame.camera, frame.seq, frame.ts, frame.mono, box, top_k, float(score))
            for frame, det, frame_boxes, frame_top in zip(frames, detections, boxes, top_ks, strict=True)
            for box, score, top_k in zip(frame_boxes, det.scores, frame_top, strict=True)
        ]

    def decide(self, sightings: list[Sighting], frames: list[Frame]) -> list[VisitEvent]:
        """Tracks and visits: which crops are which bird, and what is worth telling; writes snapshots."""
        assert self.visits is not None
        return self._with_snapshots(self.visits.observe(frames, sightings))

    def tick(self, now: float | None = None) -> list[VisitEvent]:
        """Time passing without frames: visits of birds that left end, heartbeats, midnight, retention.

        Call it from the run loop every iteration (cheap): a camera that goes quiet or dead sends
        no frames, and its visits must end all the same.
        """
        assert self.visits is not None and self.store is not None and self.outbox is not None
        events = self._with_snapshots(self.visits.tick(now))
        self.publish(events)
        day = local_day(time.time())
        if day != self._day:  # "visits today" falls back to 0 at midnight
            self._day = day
            for cam in self.config.cameras:
                self.sink.publish_state(self.visits.state(cam.name))
        if time.monotonic() - self._last_prune >= _PRUNE_EVERY_S:
            self._last_prune = time.monotonic()
            self.store.prune(self.config.store.retention_days)
            if self.snapshots is not None:
                self.snapshots.prune_if_due()
        self.outbox.pump()  # what the publisher could not take before (queue full)
        return events

    def _with_snapshots(self, events: list[VisitEvent]) -> list[VisitEvent]:
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

    def publish(self, events: list[VisitEvent]) -> None:
        """Each event into the outbox (SQLite, then MQTT); then the cameras' states."""
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
        for camera in dict.fromkeys(e.camera for e in events):
            self.sink.publish_state(self.visits.state(camera))
        self.stats.events += len(events)

    # -- stats --

    def snapshot(self) -> dict[str, object]:
        """Counters for logs, the benchmark and metrics."""
        elapsed = max(1e-9, time.monotonic() - self.stats.started)
        cameras = {}
        for cam in self.cameras:
            st = cam.reader.stats
            cameras[cam.cfg.name] = {
                "state": st.state,
                "frames_read": st.frames_read,
                "frames_processed": cam.processed,
                "frames_dropped": cam.slot.dropped,
                "reconnects": st.reconnects,
                "regions": cam.regions,
                "last_error": st.last_error,
            }
        return {
            "elapsed_s": round(elapsed, 2),
            "cameras": cameras,
            "crops": self.stats.crops,
            "crops_per_s": round(self.stats.crops / elapsed, 2),
            "events": self.stats.events,
            "ms_per_batch": round(1000 * self.stats.infer_s / max(1, self.stats.batches), 1),
        }

    def report(self, final: bool = False) -> None:
        now = time.monotonic()
        span = max(1e-9, now - self._last_report)
        parts = []
        for cam in self.cameras:
            st = cam.reader.stats
            read0, done0 = self._report_marks.get(cam.cfg.name, (0, 0))
            self._report_marks[cam.cfg.name] = (st.frames_read, cam.processed)
            parts.append(
                f"{cam.cfg.name} [{st.state}] read {(st.frames_read - read0) / span:.1f} fps, "
                f"processed {(cam.processed - done0) / span:.1f} fps, dropped {cam.slot.dropped}, "
                f"reconnects {st.reconnects}"
            )
        self._last_report = now
        snap = self.snapshot()
        summary = "; ".join(parts)
        log.info(
            "%s %s | crops %d (%.1f/s), %.0f ms per batch, events %d",
            "final stats:" if final else "stats:",
            summary,
            snap["crops"],
            snap["crops_per_s"],
            snap["ms_per_batch"],
            snap["events"],
        )
