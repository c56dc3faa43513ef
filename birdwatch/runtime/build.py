"""Building every part of a pipeline from a config, before any thread or camera starts.

Everything a user can get wrong fails here, as a BirdwatchError with one line to act on: secrets,
weights, the species lists, the detector head, the database. What was opened before the failure
is closed again, so a failed build leaves nothing behind (a reload keeps the running pipeline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.engine import WorkerPlan
from birdwatch.classify.models import PROGRESS_EVERY_S
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import Config
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.decide.visits import Visits
from birdwatch.decide.visits import check_species_lists
from birdwatch.deliver.mqtt import EventSink
from birdwatch.deliver.mqtt import LogSink
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.deliver.store import EventStore
from birdwatch.deliver.store import Outbox
from birdwatch.locate.localiser import build_localiser
from birdwatch.locate.locator import Locator
from birdwatch.precision import Precision
from birdwatch.runtime import systemd
from birdwatch.runtime.decider import Decider


@dataclass
class Parts:
    classifier: Classifier
    plan: WorkerPlan
    threads_before: int  # torch's CPU thread count before the plan set its own
    engine: ClassifierEngine
    locator: Locator
    store: EventStore
    outbox: Outbox
    sink: EventSink
    decider: Decider

    def release(self) -> None:
        """Give back what the parts hold outside Python: the database and torch's thread setting."""
        self.store.close()
        torch.set_num_threads(self.threads_before)  # in-process users (tests, bench) get their setting back


def build(config: Config, classifier: Classifier | None = None, sink: EventSink | None = None) -> Parts:
    sink = sink or _sink(config)
    classifier = classifier or load_classifier(config.model, while_fetching=_tell_systemd_fetching(config))
    check_species_lists(config.events, classifier.class_names, classifier.name)
    engine_cfg = config.engine
    plan = WorkerPlan.resolve(classifier.device, engine_cfg.workers, engine_cfg.threads)
    threads_before = plan.apply()
    with contextlib.ExitStack() as undo:
        undo.callback(torch.set_num_threads, threads_before)
        store = EventStore(config.store.path)
        undo.callback(store.close)
        engine = ClassifierEngine(
            classifier,
            top_k=config.model.top_k,
            batch_size=config.model.batch_size,
            precision=Precision.resolve(classifier.device, engine_cfg.precision, engine_cfg.channels_last),
            compile=engine_cfg.compile,
        )
        locator = Locator(config.cameras, build_localiser(config, classifier))  # the head shares the backbone
        visits = Visits(config.tracking, config.events, classifier.name, top_k=engine.top_k)
        outbox = Outbox(store, sink)
        snapshots = SnapshotWriter(config.snapshots) if config.snapshots.enabled else None
        decider = Decider(config, visits, store, outbox, sink, snapshots)
        undo.pop_all()  # built: from here the pipeline owns them
    return Parts(classifier, plan, threads_before, engine, locator, store, outbox, sink, decider)


def _tell_systemd_fetching(config: Config) -> Callable[[int], None]:
    """While first-start weights download, keep systemd from timing out the start."""
    name = config.model.file or config.model.name

    def report(done: int) -> None:
        systemd.busy(f"fetching {name}: {done / 1e6:.0f} MB so far", seconds=3 * PROGRESS_EVERY_S)

    return report


def _sink(config: Config) -> EventSink:
    mqtt = config.mqtt
    if not mqtt.host:
        return LogSink()
    snapshots_on_mqtt = config.snapshots.enabled and config.snapshots.mqtt
    return MqttSink(mqtt, mqtt.password_value(), config.homeassistant, snapshots_on_mqtt)
