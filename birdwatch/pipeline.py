"""Wiring: cameras -> motion regions -> batched classification -> event rules -> MQTT.

The only module that knows every stage. One inference loop takes the newest frame of every camera
that has one, so a camera with a fast stream cannot starve a slow one, and classifies the crops of
all of them in one forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from dataclasses import field

from birdwatch.capture import CameraReader
from birdwatch.capture import LatestFrameSlot
from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.detector.localiser import DetectorLocaliser
from birdwatch.detector.localiser import MotionGatedLocaliser
from birdwatch.detector.localiser import build_localiser
from birdwatch.engine import ClassifierEngine
from birdwatch.events import Throttle
from birdwatch.models import Classifier
from birdwatch.models import load_classifier
from birdwatch.motion import MotionDetector
from birdwatch.mqtt import EventSink
from birdwatch.mqtt import LogSink
from birdwatch.mqtt import MqttSink
from birdwatch.types import Detections
from birdwatch.types import Event
from birdwatch.types import Frame
from birdwatch.types import Sighting

log = logging.getLogger(__name__)


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
        self.localiser: DetectorLocaliser | MotionGatedLocaliser | None = None  # None: motion regions only
        self.throttle = Throttle(config.events)
        self._last_report = time.monotonic()
        self._report_marks: dict[str, tuple[int, int]] = {}

    # -- lifecycle --

    def start(self) -> None:
        """Everything a user can get wrong fails here, before any camera is opened: secrets, then weights."""
        if self._sink is None:
            mqtt = self.config.mqtt
            self._sink = MqttSink(mqtt, mqtt.password_value()) if mqtt.host else LogSink()
        classifier = self._classifier or load_classifier(self.config.model)
        self.engine = ClassifierEngine(
            classifier, top_k=self.config.model.top_k, batch_size=self.config.model.batch_size
        )
        self.localiser = build_localiser(self.config, classifier)  # the head shares the classifier's backbone
        self._sink.start()
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
            return  # start() failed before anything ran: nothing to stop or report
        for cam in self.cameras:
            cam.reader.stop()
        if self._sink is not None:
            self._sink.stop()
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
            elif all(cam.reader.done for cam in self.cameras):
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

    def process(self, frames: list[Frame]) -> list[Event]:
        """One step for the newest frames of several cameras: where -> what -> which events -> out."""
        detections = self.localise(frames)
        sightings = self.classify(frames, detections)
        events = self.decide(sightings, frames)
        self.publish(events)
        return events

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

    def decide(self, sightings: list[Sighting], frames: list[Frame]) -> list[Event]:
        """Which sightings are worth telling (frames are there for snapshots)."""
        assert self.engine is not None
        return self.throttle.admit(sightings, self.engine.classifier.name)

    def publish(self, events: list[Event]) -> None:
        for event in events:
            log.info("%s on %s: %s (%.2f) at %s", event.kind, event.camera, event.species, event.score, list(event.box))
            self.sink.publish(event)
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
