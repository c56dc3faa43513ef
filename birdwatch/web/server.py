"""Serving the page: uvicorn on a socket bound here, in a thread of its own (inside `birdwatch run`) or in the
main thread (`birdwatch web`).

Inside the service the page is a guest: a port someone else holds, or a page that crashes, is one ERROR line
and another try later; the pipeline goes on either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading

import uvicorn

from birdwatch.errors import ConfigError
from birdwatch.web.app import Site
from birdwatch.web.app import create_app

log = logging.getLogger(__name__)

RETRY_S = 30.0  # a taken port, or a page that stopped: tried again this often


def bind(address: str, port: int) -> socket.socket:
    """A listening socket, or ConfigError naming web.port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"web.port: cannot listen on {address}:{port} ({exc.strerror or exc}); another program (or birdwatch) "
            "holds it: choose another web.port, or web.enabled: false"
        ) from None
    sock.set_inheritable(False)
    return sock


def _uvicorn(site: Site) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(site),
        log_config=None,  # the service's logging stays as it is
        access_log=False,
        lifespan="off",
        proxy_headers=False,  # a client's address is the peer's: a header cannot make it "this machine"
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


def serve_forever(site: Site, sock: socket.socket) -> None:
    """`birdwatch web`: until SIGINT or SIGTERM, then a clean exit (uvicorn's own handling would end the process
    by the signal again, which reads as a failure)."""
    server = _uvicorn(site)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),), name="web", daemon=True)
    thread.start()
    while thread.is_alive() and not stop.wait(0.5):
        pass
    server.should_exit = True
    thread.join(5.0)


class WebServer:
    """The page inside `birdwatch run`: started after the pipeline, stopped before it."""

    def __init__(self, site: Site, address: str, port: int, retry_s: float = RETRY_S) -> None:
        self.site = site
        self.retry_s = retry_s
        self.address = address
        self.requested_port = port
        self.port: int | None = None  # where it listens, once it does
        self._stop = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="web", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def _supervise(self) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                sock = bind(self.address, self.requested_port)
            except ConfigError as exc:
                if not warned:
                    log.error("the page is off: %s; tried again every %.0f s", exc, self.retry_s)
                    warned = True
                self._stop.wait(self.retry_s)
                continue
            self.port = sock.getsockname()[1]
            log.info("the page: http://%s:%d/", self.address, self.port)
            self._serve(sock)
            self._stop.wait(1.0)  # a server that returned by itself is not restarted in a spin

    def _serve(self, sock: socket.socket) -> None:
        server = self._server = _uvicorn(self.site)
        if self._stop.is_set():  # stop() came between the bind and here: serve nothing
            server.should_exit = True
        crashed = False
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except Exception as exc:  # whatever broke the page, the pipeline goes on; the page comes back
            log.error("the page stopped (%s: %s); starting it again in %.0f s", type(exc).__name__, exc, self.retry_s)
            crashed = True
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            self.port = None
        if crashed:
            self.restarts += 1
            self._stop.wait(self.retry_s)
