"""Real server processes for tests: a Mosquitto broker, a GStreamer RTSP server, an MQTT subscriber.

Nothing here skips: a missing binary or a process that dies raises with the tail of its log, so a
broken environment shows up as a failing test rather than as silently reduced coverage.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from http.server import SimpleHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from typing import NamedTuple
from typing import Self

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

HOST = "127.0.0.1"
SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-gi; the venv does not
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")


_live: set[_ServerProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A test that fails between start() and stop() must not leave a broker running after pytest.
    for server in list(_live):
        server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(lines[-n:]) or "(log is empty)"


class _ServerProcess:
    """A child process in its own process group, with stdout+stderr appended to a log file."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        # The port is fixed for the object's life so restart() comes back where clients expect it.
        self.port = port or free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where the current run's output starts in the log

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _wait_started(self, timeout: float) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)

    def fail(self, what: str) -> RuntimeError:
        where = f"{self.name} on {self.host}:{self.port}"
        return RuntimeError(f"{where}: {what}\n--- {self.log_path} ---\n{self.log_tail()}")

    def start(self, timeout: float = 10.0) -> Self:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")
        cmd = self._command()
        if shutil.which(cmd[0]) is None:
            raise RuntimeError(f"{self.name}: {cmd[0]} not found; install it (see .ci/run)")
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            # A new session makes the child a process-group leader, so stop() can signal the whole
            # group (GStreamer may spawn helpers) without touching the test runner.
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _live.add(self)
        try:
            self._wait_started(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def ensure_running(self) -> None:
        """Started again (on its port) if it was stopped or died."""
        if not self.running:
            self.start()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group and wait; SIGKILL it if it lingers. Idempotent."""
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is None:
            return
        # Signal the group only while its leader is unreaped, so the id cannot belong to anyone else.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, for tests of a crash rather than a clean shutdown (no LWT courtesy, no goodbye)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.stop()

    def restart(self, timeout: float = 10.0) -> Self:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _log_since_start(self) -> list[str]:
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace").splitlines()

    def _check_alive(self) -> None:
        if self.proc is None:
            raise self.fail("not started")
        if self.proc.poll() is not None:
            raise self.fail(f"exited with status {self.proc.returncode}")


class MosquittoBroker(_ServerProcess):
    """Mosquitto on 127.0.0.1:port, anonymous, no persistence, verbose log in workdir.

    `extra_config` lines go after the listener line, so listener options (cafile, certfile, keyfile,
    require_certificate) apply to it; a further `listener` line in them opens a second listener.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        binary: str = "/usr/sbin/mosquitto",
        *,
        allow_anonymous: bool = True,
        extra_config: Sequence[str] = (),
        persistent: bool = False,
    ) -> None:
        """persistent=True keeps sessions, subscriptions and queued messages across a restart (saved on
        SIGTERM), as a production broker does; the default broker forgets everything."""
        super().__init__(workdir, port)
        self.binary = binary
        self.config_path = self.workdir / "mosquitto.conf"
        persistence = (
            ["persistence true", f"persistence_location {self.workdir}/"] if persistent else ["persistence false"]
        )
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            *persistence,
            # Log to stderr, which start() sends to the log file: a file opened by mosquitto
            # itself would be opened after it drops root privileges and could be unwritable.
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # as root, mosquitto would otherwise switch to user "mosquitto"
        lines += extra_config
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def _wait_started(self, timeout: float) -> None:
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until a TCP connect succeeds; raise with the log tail if the process dies or time runs out.

        The connect alone could reach someone else's listener on the port (the free_port race, a
        broker that has not quite exited), so this run must also have logged that it is running.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if any(line.endswith(" running") for line in self._log_since_start()) and port_open(self.host, self.port):
                self._check_alive()
                return
            if time.monotonic() > deadline:
                raise self.fail(f"not accepting connections after {timeout:.0f} s")
            time.sleep(0.05)


def broker_with_users(workdir: Path, users: dict[str, str], acl: str | None = None) -> MosquittoBroker:
    """A mosquitto (not started) that refuses anonymous clients and knows `users` (name -> password),
    their passwords hashed by mosquitto_passwd, optionally with an ACL file's text."""
    passwd = shutil.which("mosquitto_passwd")
    assert passwd, "mosquitto_passwd not found; `make system-packages` installs mosquitto"
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / "passwords"
    password_file.touch()
    for user, password in users.items():
        subprocess.run([passwd, "-b", str(password_file), user, password], check=True, timeout=30)
    extra = [f"password_file {password_file}"]
    if acl is not None:
        (workdir / "acl").write_text(acl)
        extra.append(f"acl_file {workdir / 'acl'}")
    return MosquittoBroker(workdir, allow_anonymous=False, extra_config=extra)


class RtspServer(_ServerProcess):
    """tests/support/rtsp_server.py under the system python, serving `frames_dir` in a loop."""

    name = "rtsp-server"

    def __init__(
        self,
        frames_dir: Path,
        workdir: Path,
        port: int | None = None,
        mount: str = "/feeder",
        fps: int = 10,
        python: str = SYSTEM_PYTHON,
    ) -> None:
        super().__init__(workdir, port)
        self.frames_dir, self.mount, self.fps, self.python = Path(frames_dir), mount, fps, python

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.mount}"

    def _command(self) -> list[str]:
        return [
            self.python,
            "-u",
            str(RTSP_SCRIPT),
            *("--port", str(self.port), "--mount", self.mount, "--frames", str(self.frames_dir)),
            *("--fps", str(self.fps)),
        ]

    def _wait_started(self, timeout: float) -> None:
        # READY goes to the same log as stderr; only lines written after this start() count.
        ready = f"READY {self.url}"
        deadline = time.monotonic() + timeout
        while True:
            if ready in self._log_since_start():
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise self.fail(f"no READY line after {timeout:.0f} s")
            time.sleep(0.05)


class WeightsServer:
    """A model hub stand-in: serves the files of `root` over HTTP on 127.0.0.1 (in a thread), remembers
    which paths were asked for, and sends at most `bytes_per_s` when set (a slow line)."""

    def __init__(self, root: Path, bytes_per_s: float | None = None) -> None:
        self.root = root
        self.requested: list[str] = []
        self.bytes_per_s = bytes_per_s
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requested.append(self.path)
                super().do_GET()

            def copyfile(self, source: Any, outputfile: Any) -> None:
                if server.bytes_per_s is None:
                    super().copyfile(source, outputfile)
                    return
                chunk = 64 * 1024
                while data := source.read(chunk):
                    outputfile.write(data)
                    time.sleep(chunk / server.bytes_per_s)  # the line's speed, not a wait for anything

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((HOST, 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="weights-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.httpd.server_address[1]}"

    def publish(self, source: Path, name: str) -> str:
        """Serve `source` as `/name`; returns its SHA-256."""
        shutil.copy(source, self.root / name)
        return hashlib.sha256((self.root / name).read_bytes()).hexdigest()

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Received(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttCollector:
    """A paho-mqtt (callback API v2) subscriber that records every message it gets.

    `start()` returns once the broker has acknowledged the subscription, so anything published
    after it is seen. It re-subscribes on reconnect, so it survives a broker restart.
    """

    def __init__(
        self, host: str, port: int, topic: str = "#", qos: int = 1, client_id: str = "", clean_session: bool = True
    ) -> None:
        """clean_session=False (with a fixed client_id) asks the broker to keep the subscription and
        queue QoS 1 messages while this subscriber is away, as a subscriber that must miss nothing does."""
        self.host, self.port, self.topic, self.qos = host, port, topic, qos
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"collector-{id(self):x}", clean_session=clean_session
        )
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # quick to come back after a restart
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        client.subscribe(self.topic, self.qos)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, rcs: list[ReasonCode], props: Properties | None
    ) -> None:
        if any(rc.is_failure for rc in rcs):
            return  # leaves _subscribed unset: start() reports it
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos)))
            self._cond.notify_all()

    def start(self, timeout: float = 5.0) -> Self:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise AssertionError(f"no SUBACK for {self.topic!r} from {self.host}:{self.port} within {timeout} s")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(
        self, predicate: Callable[[Received], bool] = lambda m: True, timeout: float = 5.0, count: int = 1
    ) -> list[Received]:
        """Wait until at least `count` messages match; return all matches, or raise with what was seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = [m for m in self._messages if predicate(m)]
                if len(matches) >= count:
                    return matches
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(
                        f"  {m.topic} qos={m.qos} r={m.retain} {m.payload[:200]!r}" for m in self._messages
                    )
                    raise AssertionError(
                        f"{len(matches)}/{count} matching messages on {self.topic!r} after {timeout} s; "
                        f"saw {len(self._messages)}:\n{seen or '  (nothing)'}"
                    )
                self._cond.wait(left)


__all__ = [
    "HOST",
    "MosquittoBroker",
    "MqttCollector",
    "Received",
    "RtspServer",
    "free_port",
    "port_open",
]
