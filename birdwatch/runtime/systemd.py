"""systemd's notify protocol (sd_notify) without libsystemd: one datagram to `$NOTIFY_SOCKET`.

The unit is `Type=notify` with `WatchdogSec=`: `ready()` once cameras and the model are up,
`watchdog()` from the main loop (never from a helper thread, or a hung pipeline would still look
alive; `keepalive()` is the one bounded exception, for a reload), `status()` with a one-line summary,
`stopping()` on SIGTERM. Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op that returns
False, so the same code runs from a shell.
A failed send is logged at debug level and never raised: telling systemd is not worth a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

_MAX_STATUS = 200  # systemctl status shows one line; keep the datagram small


def _address() -> str | None:
    """The notify socket path; '@' starts an abstract-namespace name (a leading NUL byte on Linux)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if not path.startswith("/"):
        return None  # vsock and other forms are for VMs; birdwatch runs on the host
    return path


def notify(*assignments: str) -> bool:
    """Send `KEY=VALUE` lines to systemd. True when a datagram went out, False when not under systemd."""
    address = _address()
    if address is None:
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the main loop on a busy systemd: a lost STATUS is harmless, a stuck loop is not.
            sock.sendto(message, socket.MSG_DONTWAIT, address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_STATUS else line[: _MAX_STATUS - 3] + "..."


def ready(status_text: str | None = None) -> bool:
    """Start-up is complete: systemd marks the unit active and starts the watchdog clock."""
    lines = ["READY=1"]
    if status_text:
        lines.append(f"STATUS={_one_line(status_text)}")
    return notify(*lines)


def status(text: str) -> bool:
    """The line `systemctl status birdwatch` shows under the unit, e.g. cameras up and events sent."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status_text: str | None = None) -> bool:
    """Shutdown has begun; systemd waits up to TimeoutStopSec= for the exit."""
    lines = ["STOPPING=1"]
    if status_text:
        lines.append(f"STATUS={_one_line(status_text)}")
    return notify(*lines)


def reloading() -> bool:
    """A config reload has begun (send `ready()` when it is done). MONOTONIC_USEC is what systemd 253+'s
    Type=notify-reload expects with it; older versions ignore the extra field."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog() -> bool:
    """Ping systemd's watchdog: 'the main loop is still turning'."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between pings: half of `WatchdogSec=` ($WATCHDOG_USEC), as sd_watchdog_enabled(3) advises.

    None when no watchdog is set, or when $WATCHDOG_PID names another process (the variables were
    inherited by a child, which must not ping on its parent's behalf).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2e6


class Watchdog:
    """Rate-limits pings so the main loop can call `beat()` every iteration.

    `beat()` sends WATCHDOG=1 when half of WatchdogSec= has passed since the last ping; it costs a
    clock read otherwise. Disabled (beat() does nothing) when systemd set no watchdog.
    """

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = watchdog_interval() if interval_s is None else interval_s
        self._last = float("-inf")
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def beat(self, now: float | None = None) -> bool:
        if self.interval_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last < self.interval_s:
            return False
        self._last = now
        sent = watchdog()
        self.pings += sent
        return sent


def busy(status_text: str, seconds: float) -> bool:
    """Long, known work in progress (weights fetched on the first start): push the start timeout out
    by `seconds` (EXTEND_TIMEOUT_USEC) and feed the watchdog, since the process is busy, not hung."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", "WATCHDOG=1", f"STATUS={_one_line(status_text)}")


def extend_start(status_text: str, seconds: float) -> bool:
    """Known long work in a start that is not stalled (an export on a first start): push the start timeout
    out by `seconds`. No watchdog ping: before READY there is no watchdog to feed (a reload feeds it
    through `keepalive`)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", f"STATUS={_one_line(status_text)}")


@contextlib.contextmanager
def keepalive(max_s: float) -> Iterator[None]:
    """Feed the watchdog from a helper thread while the main thread does long, known work outside its
    loop (a reload: draining the old pipeline, SHA-256 of the weights, loading a model, CUDA init).
    Only for `max_s`: a reload that hangs longer is still killed and restarted by systemd."""
    interval = watchdog_interval()
    if interval is None:
        yield
        return
    done = threading.Event()

    def feed() -> None:
        until = time.monotonic() + max_s
        while time.monotonic() < until:
            watchdog()
            if done.wait(min(interval / 2, max(0.0, until - time.monotonic()))):
                return

    thread = threading.Thread(target=feed, name="watchdog-keepalive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(1.0)
