"""The pipeline's health as systemd's watchdog sees it: a ping only while every stage thread is alive and
making progress and the sink can deliver. A dead thread makes no progress either, though it never goes
stale; a sink whose delivery thread or network loop is gone for good needs a restart too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from birdwatch.runtime import systemd

log = logging.getLogger("birdwatch.runtime.pipeline")  # the name these lines have always had in the journal

STAGE_HUNG_S = 30.0  # a stage thread silent this long is hung: the systemd watchdog ping is withheld
SINK_PROBLEM_S = 60.0  # the sink's delivery thread or network loop gone this long: the ping is withheld too


class Health:
    def __init__(self) -> None:
        self.heartbeat: dict[str, float] = {}  # thread name -> monotonic time of its last pass
        self._watchdog = systemd.Watchdog()
        self._hung_reported = False
        self._sink_problem_since: float | None = None
        self._sink_problem_reported = False

    def dead_stage(self, threads: Sequence[threading.Thread]) -> str | None:
        """Why a stage thread has ended while it should run (an exception it did not catch), or None."""
        dead = next((t for t in threads if not t.is_alive()), None)
        if dead is None:
            return None
        return f"the {dead.name.partition('-')[0]} stage (thread {dead.name}) has died"

    def beat(self, threads: Sequence[threading.Thread], *, dead: str | None, sink_problem: str | None) -> None:
        """Ping the watchdog, unless a stage is dead or hung or delivery is stuck."""
        now = time.monotonic()
        if dead:
            return  # the pipeline stops on it; until then, no ping
        if self._delivery_stuck(now, sink_problem):
            return
        stale = [
            (thread.name, now - self.heartbeat[thread.name])
            for thread in threads
            if thread.is_alive() and now - self.heartbeat[thread.name] > STAGE_HUNG_S
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

    def _delivery_stuck(self, now: float, problem: str | None) -> bool:
        """True once the sink has said for SINK_PROBLEM_S that delivery cannot go on by itself (its
        thread or network loop ended and did not come back): then systemd's restart is the cure."""
        if problem is None:
            self._sink_problem_since = None
            return False
        if self._sink_problem_since is None:
            self._sink_problem_since = now
        if now - self._sink_problem_since < SINK_PROBLEM_S:
            return False
        if not self._sink_problem_reported:
            self._sink_problem_reported = True
            log.error("%s for %.0f s; withholding the watchdog so systemd restarts us", problem, SINK_PROBLEM_S)
        return True
