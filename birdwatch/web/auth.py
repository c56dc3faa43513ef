"""Who may do what on the page: viewing is open from this machine; a change needs the password.

- A session is a signed cookie (HMAC with a key derived from the password), so it survives a restart and a
  new password ends every session. It is HttpOnly and SameSite=Strict.
- Every change (a POST) carries a CSRF token tied to its session, in a form field or the X-CSRF-Token header,
  and an Origin, if the browser sends one, that is this page's. A script may instead send the password as a
  bearer token (`Authorization: Bearer ...`): no cookie, nothing to forge.
- Wrong passwords, at the login form or as a bearer token, are counted per client address (an IPv6 client per
  /64): after `MAX_FAILURES` within `FAILURE_WINDOW_S`, its tries are refused for a while, doubling each time.
- The password is never logged, rendered or sent back; the session key is a secret kept beside the history
  mixed with the password, so a captured cookie tells nothing about the password.
- A request a proxy forwarded (X-Forwarded-For, Forwarded) is never "this machine": behind a reverse proxy on
  the box, viewing needs the password like any other remote view. Proxy headers are not trusted for addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
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
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


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
    def __init__(self, password: str | None, *, public_view: bool = False, secret: bytes | None = None) -> None:
        self._password = password
        secret = secret or secrets.token_bytes(32)  # none kept: sessions last as long as this process
        self._key = hmac.new(secret, password.encode(), hashlib.sha256).digest() if password else b""
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
        if not _HEX64.fullmatch(mac) or not hmac.compare_digest(mac, self._sign(f"{expires}.{who}.{nonce}")):
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

    def writer(self, request: Request, given: str | None = None) -> str | None:
        """Who makes this change, if they may: the bearer token, or a session with its CSRF token (`given`, from a
        form field, else the X-CSRF-Token header). Else None."""
        if self.bearer_ok(request):
            return "api"
        session = self.session(request)
        if session is None or not same_origin(request):
            return None
        given = request.headers.get(CSRF_HEADER, "") if given is None else given
        return session.who if _HEX32.fullmatch(given) and hmac.compare_digest(given, session.csrf) else None

    def bearer_ok(self, request: Request) -> bool:
        """The password as `Authorization: Bearer ...`; a wrong one counts against the address as a login does."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or self._password is None:
            return False
        client = client_of(request)
        return self.locked_for(client) == 0 and self.check_password(client, token.strip())

    # -- logging in --

    def locked_for(self, client: str) -> float:
        """Seconds until this address may try a password again (0: now)."""
        with self._lock:
            record = self._failures.get(_address_key(client))
            return max(0.0, record.locked_until - time.monotonic()) if record else 0.0

    def check_password(self, client: str, given: str) -> bool:
        """Whether `given` is the password; a wrong one counts against `client`. Call locked_for first."""
        ok = self._password is not None and hmac.compare_digest(given.encode(), self._password.encode())
        client = _address_key(client)
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
    """From this machine itself, not relayed by a proxy on it."""
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
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


def _address_key(client: str) -> str:
    """Whom failures are counted against: the address, or for IPv6 its /64 (one host holds a whole /64)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
