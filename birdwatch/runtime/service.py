"""The `birdwatch run` process: signals, config reload, clean exit. Runs one Pipeline at a time.

SIGTERM/SIGINT stop it (capture first, then the queued work is drained, then `offline` is
published). SIGHUP reloads the config: a config that does not load is reported and the running
one kept; a valid one replaces the running pipeline.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from birdwatch.config import Config
from birdwatch.config import load_config
from birdwatch.errors import BirdwatchError
from birdwatch.runtime import systemd
from birdwatch.runtime.metrics import MetricsServer
from birdwatch.runtime.metrics import summary_line
from birdwatch.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


class Service:
    def __init__(self, config_path: str, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self._wake = threading.Event()  # ends Pipeline.run for either request
        self.pipeline: Pipeline | None = None
        self.metrics: MetricsServer | None = None

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s received; stopping", signal.Signals(signum).name)
        systemd.stopping("draining the pipeline")
        self.stop_requested.set()
        self._wake.set()

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP received; reloading %s", self.config_path)
        systemd.reloading()
        self.reload_requested.set()
        self._wake.set()

    def run(self) -> int:
        """Exit code: 0 clean stop or all sources ended, 1 a broken stage or every source failed;
        the first start raises BirdwatchError (exit 2) for what the user must fix."""
        pipeline = self.pipeline = Pipeline(self.config)
        code = 1
        try:
            pipeline.start()
            self._start_metrics()
            systemd.ready(summary_line(pipeline.counters()))
            while True:
                code = pipeline.run(self._wake)
                if self.stop_requested.is_set() or not self.reload_requested.is_set():
                    return code
                new = self._load_new_config()
                if new is None:
                    systemd.ready(summary_line(pipeline.counters()))
                    continue  # keep the running pipeline as it is
                self._stop(pipeline, code)
                self.config = new
                pipeline = self.pipeline = Pipeline(new)
                try:
                    pipeline.start()
                except BirdwatchError as exc:
                    log.error("the reloaded config does not start: %s; fix it and restart birdwatch", exc)
                    return 2
                self._stop_metrics()
                self._start_metrics()
                systemd.ready(summary_line(pipeline.counters()))
                log.info("config reloaded: %d camera(s)", len(new.cameras))
        finally:
            self._stop_metrics()
            self._stop(pipeline, code)

    def _snapshot(self) -> dict[str, object]:
        assert self.pipeline is not None
        return self.pipeline.counters()

    def _start_metrics(self) -> None:
        """A port already taken is a ConfigError (exit 2) at start, before READY."""
        self.metrics = MetricsServer.from_config(self.config.metrics, self._snapshot)
        if self.metrics is not None:
            self.metrics.start()
            log.info("metrics on %s/metrics, health on %s/healthz", self.metrics.url, self.metrics.url)

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    @staticmethod
    def _stop(pipeline: Pipeline, code: int) -> None:
        if not pipeline.stop():
            # A camera read hung inside FFmpeg cannot be interrupted, and tearing the interpreter
            # down around it aborts the process. Everything else is stopped and flushed by now.
            log.warning("a camera read is still blocked in FFmpeg; exiting without waiting for it")
            logging.shutdown()
            os._exit(code)

    def _load_new_config(self) -> Config | None:
        self.reload_requested.clear()
        self._wake.clear()
        try:
            new = load_config(self.config_path)
            new.mqtt.password_value()
        except BirdwatchError as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            return None
        logging.getLogger().setLevel(new.log_level)
        return new
