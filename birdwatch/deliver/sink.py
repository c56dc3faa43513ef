"""Where events go: the one protocol every sink speaks (the outbox and the decide stage call it), and the
log sink, for a box without a broker. The MQTT sink is deliver/mqtt.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from birdwatch.types import CameraState

log = logging.getLogger(__name__)


class EventSink(Protocol):
    @property
    def online(self) -> bool: ...  # can events be delivered now
    @property
    def problem(self) -> str | None: ...  # why delivery cannot go on by itself (for the watchdog), or None
    def describe(self, cameras: list[str], model: str) -> None: ...
    def start(self) -> None: ...
    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool: ...
    def publish_correction(self, camera: str, payload: str, on_sent: Callable[[], None]) -> bool: ...
    def publish_state(self, state: CameraState) -> None: ...
    def publish_history(self, problem: str | None) -> None: ...  # why the history refuses writes, or None
    def publish_stats(self, payload: str) -> None: ...
    def stop(self, timeout: float = 3.0) -> None: ...


class LogSink:
    """No broker configured: events are only logged (the pipeline logs each) and kept in the history."""

    @property
    def online(self) -> bool:
        return True

    @property
    def problem(self) -> str | None:
        return None

    def describe(self, cameras: list[str], model: str) -> None:
        pass

    def start(self) -> None:
        log.info("no MQTT broker configured (mqtt.host); events are logged and kept in the history only")

    def publish_event(
        self, camera: str, payload: str, on_sent: Callable[[], None], snapshot: bytes | None = None
    ) -> bool:
        on_sent()  # delivered as far as it goes: nothing would ever send it later
        return True

    def publish_correction(self, camera: str, payload: str, on_sent: Callable[[], None]) -> bool:
        log.info("correction on %s: %s", camera, payload)
        on_sent()
        return True

    def publish_state(self, state: CameraState) -> None:
        pass

    def publish_history(self, problem: str | None) -> None:
        pass  # the history says it in the log

    def publish_stats(self, payload: str) -> None:
        pass

    def stop(self, timeout: float = 3.0) -> None:
        pass
