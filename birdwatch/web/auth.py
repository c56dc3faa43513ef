"""Who may do what on the page: viewing is open from this machine; a change needs the password.

- A session is a signed cookie (HMAC with a key derived from the password), so it survives a restart and a
  new password ends every session. It is HttpOnly and SameSite=Strict.
- Every change (a POST) carries a CSRF token tied to its session, in a form field or the X-CSRF-Token header,
  and an Origin, if the browser sends one, that is this page's. A script may instead send the password as a
  bearer token (`Authorization: Bearer ...`): no cookie, nothing to forge.
- Wrong passwords are counted per client address: after `MAX_FAILURES` within `FAILURE_WINDOW_S`, logins
  from it are refused for a while, doubling each time.
- The password is never logged, rendered or sent back.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "birdwatch_session"
SESSION_S = 30 * 86400
MAX_FAILURES = 5
FAILURE_WINDOW_S = 900.0
LOCKOUT_S = 60.0  # after MAX_FAILURES; doubled with each further failure, up to LOCKOUT_MAX_S
LOCKOUT_MAX_S = 3600.0
CSRF_HEADER = "x-csrf-token"


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


@dataclass(frozen=True)
class Session:
    who: str
    token: str  # the cookie's value

    @property
    def csrf(self) -> str:
        return hashlib.sha256(b"csrf:" + self.token.encode()).hexdigest()[:32]


class Guard:
    def __init__(self, password: str | None, *, public_view: bool = False) -> None:
        self._password = password
        self._key = hashlib.sha256(b"birdwatch-session:" + password.encode()).digest() if password else b""
        self.public_view = public_view
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    @property
    def has_password(self) -> bool:
        return self._password is not None

    # -- sessions --

    def session(self, request: Request) -> Session | None:
        """The signed-in session of this request, or None."""
        token = request.cookies.get(COOKIE, "")
        parts = token.split(".")
        if not self._key or len(parts) != 4:
            return None
        expires, who, nonce, mac = parts
        if not hmac.compare_digest(mac, self._sign(f"{expires}.{who}.{nonce}")):
            return None
        if not expires.isdigit() or int(expires) < time.time():
            return None
        return Session(bytes.fromhex(who).decode(errors="replace") if _is_hex(who) else "?", token)

    def new_session(self, who: str) -> Session:
        expires = str(int(time.time() + SESSION_S))
        body = f"{expires}.{who.encode()[:64].hex()}.{secrets.token_hex(8)}"
        return Session(who, f"{body}.{self._sign(body)}")

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    # -- who may do what --

    def can_view(self, request: Request) -> bool:
        return self.public_view or is_local(request) or self.session(request) is not None or self.bearer_ok(request)

    def writer(self, request: Request) -> str | None:
        """Who makes this change, if they may: a session with its CSRF token, or the bearer token. Else None."""
        if self.bearer_ok(request):
            return "api"
        session = self.session(request)
        if session is None or not same_origin(request):
            return None
        given = request.headers.get(CSRF_HEADER, "")
        return session.who if given and hmac.compare_digest(given, session.csrf) else None

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return (
            self._password is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), self._password.encode())
        )

    # -- logging in --

    def locked_for(self, client: str) -> float:
        """Seconds until this address may try a password again (0: now)."""
        with self._lock:
            record = self._failures.get(client)
            return max(0.0, record.locked_until - time.monotonic()) if record else 0.0

    def check_password(self, client: str, given: str) -> bool:
        """Whether `given` is the password; a wrong one counts against `client`. Call locked_for first."""
        ok = self._password is not None and hmac.compare_digest(given.encode(), self._password.encode())
        with self._lock:
            now = time.monotonic()
            if ok:
                self._failures.pop(client, None)
                return True
            record = self._failures.setdefault(client, _Failures())
            record.times = [t for t in record.times if now - t < FAILURE_WINDOW_S] + [now]
            over = len(record.times) - MAX_FAILURES
            if over >= 0:
                record.locked_until = now + min(LOCKOUT_MAX_S, LOCKOUT_S * 2**over)
            if len(self._failures) > 10_000:  # a flood of addresses: forget the stalest, never grow unbounded
                for stale in sorted(self._failures, key=lambda c: self._failures[c].times[-1])[:5000]:
                    del self._failures[stale]
        return False


def is_local(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(request: Request) -> bool:
    """A browser's POST names where its page came from: it must be this page (no Origin: not a browser's)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def client_of(request: Request) -> str:
    return request.client.host if request.client else "?"


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
