"""The `birdwatch run` process: signals, config reload, clean exit. Runs one Pipeline at a time.

SIGTERM/SIGINT stop it (capture first, then the queued work is drained, then `offline` is
published). SIGHUP reloads the config: the new one is checked in full first (the file, then what
only the weights, the password source and the metrics port can tell) while the running pipeline goes
on; one that fails is reported in the log and in systemd's STATUS=, and the running one kept. A
valid one replaces the running pipeline; should it still not start, the previous config is started
again. A reload never leaves the process up with nothing running, nor exits 0 or 2 (which systemd's
Restart=on-failure and RestartPreventExitStatus=2 would leave down).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from birdwatch.config import Config
from birdwatch.config import MetricsConfig
from birdwatch.config import load_config
from birdwatch.errors import BirdwatchError
from birdwatch.runtime import systemd
from birdwatch.runtime.metrics import MetricsServer
from birdwatch.runtime.pipeline import Pipeline
from birdwatch.web.live import LatestFrames
from birdwatch.web.server import WebServer
from birdwatch.web.site import site_for
from birdwatch.weights import PROGRESS_EVERY_S
from birdwatch.weights import FetchStopped
from birdwatch.weights import WhileFetching
from birdwatch.weights import weights_to_fetch

log = logging.getLogger(__name__)

# A reload feeds systemd's watchdog from a helper thread for this long at most (as long as the unit's
# TimeoutStartSec=): loading a model and initialising CUDA take a while; a reload that hangs does not.
RELOAD_MAX_S = 300.0
EXIT_RESTART = 1  # systemd's Restart=on-failure starts birdwatch again


def check_before_start(
    config: Config, *, while_fetching: WhileFetching | None = None, stop: threading.Event | None = None
) -> None:
    """What a start would find wrong beyond the file itself, found without building anything: the
    password source, the weights (fetched first where model.download allows, as a start would), and
    that events.allow/block name species of those weights. Raises a one-line BirdwatchError; a stop
    asked for during a fetch raises FetchStopped."""
    from birdwatch.classify.models import class_names_of
    from birdwatch.classify.models import classifier_weights
    from birdwatch.decide.species import check_species_lists

    config.mqtt.password_value()
    for source in weights_to_fetch(config):
        source.ensure(while_fetching=while_fetching, stop=stop)
    path, _, model_name = classifier_weights(config.model)
    check_species_lists(config.events, class_names_of(path), model_name)
    if config.localiser == "teacher":
        from birdwatch.locate.teacher import teacher_weights

        teacher_weights(config.teacher, config.model)


def _feed_watchdog(_path: Path, _done: int) -> None:
    """While a reload's weights download, the service is busy, not hung."""
    systemd.watchdog()


def _extend_start(path: Path, done: int) -> None:
    """While first-start weights download, keep systemd from timing out the start (no watchdog before READY),
    and say which file comes: the classifier's, or the teacher's after it."""
    systemd.busy(f"fetching {path}: {done / 1e6:.0f} MB so far", seconds=3 * PROGRESS_EVERY_S)


class Service:
    def __init__(self, config_path: str, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self._wake = threading.Event()  # ends Pipeline.run for either request
        self.pipeline: Pipeline | None = None
        self.metrics: MetricsServer | None = None
        self._metrics_cfg: MetricsConfig | None = None  # what self.metrics serves
        self._left_behind: list[Pipeline] = []  # stopped at a reload with a camera read still blocked
        self.live = LatestFrames()  # the page's live pictures, kept across reloads
        self.web: WebServer | None = None

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
        """Exit code: 0 clean stop or all sources ended, 1 a broken stage, every source failed, or a
        reload after which nothing would start; the first start raises BirdwatchError (exit 2) for what
        the user must fix."""
        try:  # weights a first start fetches, fetched here, where a stop can end the download
            check_before_start(self.config, while_fetching=_extend_start, stop=self.stop_requested)
        except FetchStopped as exc:
            log.info("%s", exc)
            return 0
        running = Pipeline(self.config)
        running.live = self.live
        pipeline: Pipeline | None = running
        self.pipeline = running
        code = EXIT_RESTART
        try:
            running.start()
            self._start_metrics()
            self._start_web(running)
            systemd.ready(running.status_line())
            while True:
                code = running.run(self._wake)
                # Cleared before the flags are read: a signal from here on sets _wake again, so the
                # next pipeline's run() returns at once instead of waiting on a request already made.
                self._wake.clear()
                if self.stop_requested.is_set() or not self.reload_requested.is_set():
                    return code
                with systemd.keepalive(RELOAD_MAX_S):
                    pipeline = self._reload(running)
                if pipeline is None:
                    code = EXIT_RESTART
                    return code
                running = pipeline
                systemd.ready(running.status_line())
        finally:
            self._stop_web()
            self._stop_metrics()
            if pipeline is not None:
                self._stop(pipeline, code)
            self._exit_if_blocked(code)

    # -- reload --

    def _reload(self, running: Pipeline) -> Pipeline | None:
        """The pipeline that runs after a SIGHUP: a new one for a config that passes every check,
        `running` itself for one that does not. None only when neither config starts any more."""
        self.reload_requested.clear()
        try:
            new = load_config(self.config_path)
            check_before_start(new, while_fetching=_feed_watchdog, stop=self.stop_requested)
            if self.stop_requested.is_set():  # SIGTERM during the checks (a download, say): stop, do not switch
                return running
            self._switch_metrics(new.metrics)  # a taken port fails here, with the old pipeline still up
        except FetchStopped as exc:  # SIGTERM during a reload's download: no failure, the service stops
            log.info("%s", exc)
            return running
        except Exception as exc:  # a BirdwatchError says what to fix; anything else must not end the service
            why = str(exc) if isinstance(exc, BirdwatchError) else f"{type(exc).__name__}: {exc}"
            log.error("config reload failed, keeping the running config: %s", why)
            running.status_note = f"reload failed, kept the running config: {why}"
            return running
        self._stop_for_reload(running)
        try:
            pipeline = self._start_pipeline(new)
        except Exception as exc:  # whatever it is, the box must go on with the config that worked
            log.error("the reloaded config does not start (%s); starting the previous config again", exc)
            self._switch_metrics_back()
            try:
                pipeline = self._start_pipeline(self.config)
            except Exception as again:
                log.error("the previous config does not start again either (%s); exiting for a restart", again)
                systemd.status(f"reload failed, nothing runs; restarting: {exc}")
                return None
            pipeline.status_note = f"reload failed, running the previous config: {exc}"
            return pipeline
        self.config = new
        self._stop_web()
        self._start_web(pipeline)
        logging.getLogger().setLevel(new.log_level)
        log.info("config reloaded: %d camera(s)", len(new.cameras))
        return pipeline

    def _stop_for_reload(self, pipeline: Pipeline) -> None:
        self._left_behind = [p for p in self._left_behind if p.readers_blocked()]
        if not pipeline.stop():
            # Its thread ends when FFmpeg's own timeout fires; the new pipeline opens its own session.
            log.warning("a camera read of the previous config is still blocked in FFmpeg; going on without it")
            self._left_behind.append(pipeline)

    def _start_pipeline(self, config: Config) -> Pipeline:
        pipeline = self.pipeline = Pipeline(config)
        pipeline.live = self.live
        try:
            pipeline.start()
        except BaseException:
            pipeline.stop()  # gives back what was built
            raise
        return pipeline

    # -- metrics --

    def _snapshot(self) -> dict[str, object]:
        assert self.pipeline is not None
        return self.pipeline.counters()

    def _start_metrics(self) -> None:
        """A port already taken is a ConfigError (exit 2) at start, before READY."""
        self.metrics = MetricsServer.from_config(self.config.metrics, self._snapshot)
        self._metrics_cfg = self.config.metrics
        if self.metrics is not None:
            self.metrics.start()

    def _switch_metrics(self, cfg: MetricsConfig) -> None:
        """Serve metrics as `cfg` says, the new server listening before the old one is closed: a taken
        port is a ConfigError, and the running server is left as it was."""
        if cfg == self._metrics_cfg:
            return
        new = MetricsServer.from_config(cfg, self._snapshot)
        old = self.metrics
        same_port = old is not None and new is not None and cfg.port == old.requested_port
        if new is not None and not same_port:
            new.start()
        if old is not None:
            old.stop()
        if new is not None and same_port:  # another address, the same port: only once the old one let go
            try:
                new.start()
            except BirdwatchError:
                assert old is not None
                old.start()
                raise
        self.metrics, self._metrics_cfg = new, cfg

    def _switch_metrics_back(self) -> None:
        """The previous config runs again: so do its metrics settings (what they were, where they were)."""
        try:
            self._switch_metrics(self.config.metrics)
        except BirdwatchError as exc:
            log.error("metrics as the previous config had them cannot start again: %s", exc)

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    # -- the page --

    def _start_web(self, pipeline: Pipeline) -> None:
        """The page, if the config has it on: a guest of the service, whose problems are logged, never fatal."""
        if not self.config.web.enabled or pipeline.parts is None:
            return
        try:
            site = site_for(self.config, pipeline.parts.classifier.class_names, self.live, self._snapshot)
        except Exception as exc:  # whatever it is, the page is a guest: the service goes on without it
            log.error("the page is off: %s", exc if isinstance(exc, BirdwatchError) else f"{type(exc).__name__}: {exc}")
            return
        self.web = WebServer(site, self.config.web.bind, self.config.web.port)
        self.web.start()

    def _stop_web(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    # -- exit --

    @staticmethod
    def _stop(pipeline: Pipeline, code: int) -> None:
        if not pipeline.stop():
            log.warning("a camera read is still blocked in FFmpeg; exiting without waiting for it")
            Service._exit(code)

    def _exit_if_blocked(self, code: int) -> None:
        if any(p.readers_blocked() for p in self._left_behind):
            log.warning("a camera read of an earlier config is still blocked in FFmpeg; exiting without it")
            Service._exit(code)

    @staticmethod
    def _exit(code: int) -> None:
        # A camera read hung inside FFmpeg cannot be interrupted, and tearing the interpreter down
        # around it aborts the process. Everything else is stopped and flushed by now.
        logging.shutdown()
        os._exit(code)
