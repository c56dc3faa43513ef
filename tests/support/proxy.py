"""A TCP forwarder on a loopback port that a test can cut and restore: a network outage between
birdwatch and its broker while the broker (and every other client on it) stays up. A broker restart
would also drop the test's own subscriber, which then races the sink to come back."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType
from typing import Self

from tests.support.servers import HOST
from tests.support.servers import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.host, self.port = HOST, free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._accepting: threading.Thread | None = None

    def start(self) -> Self:
        """Listen (again); while cut, connecting is refused, as to a broker that is down."""
        listener = socket.create_server((self.host, self.port), reuse_port=False)
        listener.settimeout(0.2)
        with self._lock:
            self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True)
        self._accepting.start()
        return self

    def cut(self) -> None:
        """Drop every connection and stop listening."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
        if listener is not None:
            listener.close()
        if self._accepting is not None:
            self._accepting.join(5)
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    restore = start

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), name="proxy-pump", daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        """Both directions of one connection until either side closes (or cut() closes both)."""
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as selector:
            for sock in (a, b):  # blocking sockets: recv after select returns at once, sendall sends it all
                selector.register(sock, selectors.EVENT_READ)
            while True:
                try:
                    ready = selector.select(timeout=0.5)
                except (OSError, ValueError):  # closed under us by cut()
                    return
                for key, _ in ready:
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("closed")
                        peer[sock].sendall(data)
                    except (OSError, ConnectionError):
                        for s in (a, b):
                            s.close()
                        return
