"""Building every part of a pipeline from a config, before any thread or camera starts.

Everything a user can get wrong fails here, as a BirdwatchError with one line to act on: secrets,
weights, the species lists, the detector head, the database. What was opened before the failure
is closed again, so a failed build leaves nothing behind (a reload keeps the running pipeline).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from dataclasses import replace

import torch

from birdwatch.backends import RunOptions
from birdwatch.backends import open_runner
from birdwatch.backends.export import cache_dir_for
from birdwatch.capture.recorder import Recorder
from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.engine import WorkerPlan
from birdwatch.classify.engine import classifier_graph
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import Config
from birdwatch.decide.decider import Decider
from birdwatch.decide.memory import FeederMemory
from birdwatch.decide.snapshots import SnapshotWriter
from birdwatch.decide.species import check_species_lists
from birdwatch.decide.visits import Visits
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.mqtt import MqttSink
from birdwatch.deliver.outbox import Outbox
from birdwatch.deliver.sink import EventSink
from birdwatch.deliver.sink import LogSink
from birdwatch.errors import BirdwatchError
from birdwatch.locate.localiser import build_localiser
from birdwatch.locate.locator import Locator
from birdwatch.precision import Precision
from birdwatch.runtime import systemd
from birdwatch.types import Part
from birdwatch.weights import file_sha256

PREPARE_MAX_S = 900.0  # exports, auto's timing and engine builds of a first start


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
    recorder: Recorder | None = None

    def release(self) -> None:
        """Give back what the parts hold outside Python: the database, the recording and torch's thread setting."""
        self.store.close()
        if self.recorder is not None:
            self.recorder.close()
        torch.set_num_threads(self.threads_before)  # in-process users (tests, bench) get their setting back


def build(config: Config, classifier: Classifier | None = None, sink: EventSink | None = None) -> Parts:
    sink = sink or _sink(config)
    classifier = classifier or load_classifier(config.model)  # the service fetched missing weights before
    check_species_lists(config.events, classifier.class_names, classifier.name)
    engine_cfg = config.engine
    plan = WorkerPlan.resolve(classifier.device, engine_cfg.workers, engine_cfg.threads)
    threads_before = plan.apply()
    with contextlib.ExitStack() as undo:
        undo.callback(torch.set_num_threads, threads_before)
        store = EventStore(config.store.path, retry_s=config.store.retry_s)
        undo.callback(store.close)
        options = run_options(config, classifier, plan)
        # A first start exports the networks and times the backends (a TensorRT build takes minutes on a
        # Jetson): the start timeout is pushed out. A reload feeds the watchdog meanwhile (Service._reload).
        if engine_cfg.backend != "torch":
            systemd.extend_start("preparing the inference backend (export and timing on a first start)", PREPARE_MAX_S)
        runner = open_runner(
            classifier_graph(classifier), engine_cfg.backend, cache_dir_for(config.model.models_dir), options
        )
        # The head shares the backbone; the locate stage is one caller.
        localiser = build_localiser(config, classifier, replace(options, callers=1))
        engine = ClassifierEngine(
            classifier,
            top_k=config.model.top_k,
            batch_size=config.model.batch_size,
            precision=options.precision,
            runner=runner,
        )
        recorder = Recorder.from_config(config.record) if config.record.enabled else None
        if recorder is not None:
            undo.callback(recorder.close)
        locator = Locator(config.cameras, localiser, on_motion=recorder.offer_all if recorder else None)
        embedder = embedder_of(classifier)
        visits = Visits(config.tracking, config.events, classifier.name, top_k=engine.top_k, embedder=embedder)
        outbox = Outbox(store, sink)
        snapshots = SnapshotWriter(config.snapshots) if config.snapshots.enabled else None
        memory = FeederMemory(config.memory, embedder, store)
        decider = Decider(config, visits, store, outbox, sink, snapshots, memory)
        undo.pop_all()  # built: from here the pipeline owns them
    return Parts(classifier, plan, threads_before, engine, locator, store, outbox, sink, decider, recorder)


def embedder_of(classifier: Classifier) -> str:
    """`Embedding.model` of these weights: embeddings of a retrained file of the same name are not comparable."""
    return f"{classifier.name}@{file_sha256(classifier.path)[:12]}"


def run_options(config: Config, classifier: Classifier, plan: WorkerPlan) -> RunOptions:
    """How the backends run the networks: the engine's precision and the worker plan (set by `plan.apply()`)."""
    engine_cfg = config.engine
    return RunOptions(
        Precision.resolve(classifier.device, engine_cfg.precision, engine_cfg.channels_last),
        threads=plan.threads or torch.get_num_threads(),
        callers=plan.workers,
        batch_size=config.model.batch_size,
        compile=engine_cfg.compile,
    )


def prepare_backends(config: Config) -> list[Part]:
    """`birdwatch models export`: the exports (and auto's timing) a start of this config would make, made now,
    with what runs each part. The same options as `build`, so the start finds them in the cache."""
    classifier = load_classifier(config.model)
    plan = WorkerPlan.resolve(classifier.device, config.engine.workers, config.engine.threads)
    threads_before = plan.apply()
    try:
        options = run_options(config, classifier, plan)
        cache_dir = cache_dir_for(config.model.models_dir)
        runner = open_runner(classifier_graph(classifier), config.engine.backend, cache_dir, options)
        made = [Part("classifier", runner.backend.value, runner.precision)]
        localiser = build_localiser(config, classifier, replace(options, callers=1))
        made += localiser.runs()
        wanted = config.engine.backend
        exported = [part for part in made if part.name != "teacher"]  # the teacher runs on torch by design
        fell_back = [part.name for part in exported if wanted not in ("auto", part.backend)]
        if fell_back:  # asked for by name, ahead of time: falling back is a failure to report, not to hide
            raise BirdwatchError(
                f"engine.backend {wanted} could not run the {' and the '.join(fell_back)} here "
                "(the warning above says why); install it, or use backend auto or torch"
            )
        return made
    finally:
        torch.set_num_threads(threads_before)


def _sink(config: Config) -> EventSink:
    mqtt = config.mqtt
    if not mqtt.host:
        return LogSink()
    snapshots_on_mqtt = config.snapshots.enabled and config.snapshots.mqtt
    return MqttSink(mqtt, mqtt.password_value(), config.homeassistant, snapshots_on_mqtt)
