"""Keep credentials out of logs, events and printed config."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(:(?P<pw>[^/@\s]*))?@")
# A credential in a query string or path parameter, as camera CGIs and signed stream URLs carry them:
# http://cam/videostream.cgi?user=admin&pwd=..., rtsp://nvr/live?password=..., ...?token=... The name
# must be whole (`monkey=` is no key); the user name is left, as it is in user:***@.
_SECRET_PARAM = re.compile(
    r"(?i)(?P<lead>[?&;](?:pass|passwd|password|passcode|pwd|psw|pw|token|access_token|auth|auth_token|"
    r"authkey|key|api_key|apikey|secret|sig|signature|credential|credentials)=)[^&;#\s'\"]+"
)


def redact_url(url: str | int) -> str:
    """rtsp://user:secret@host/x -> rtsp://user:***@host/x and http://cam/a.cgi?user=u&pwd=secret ->
    http://cam/a.cgi?user=u&pwd=***; device indexes and paths pass through."""
    if not isinstance(url, str) or "://" not in url:
        return str(url)
    return _redact_params(_redact_userinfo(url))


def _redact_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # e.g. an unclosed IPv6 bracket or a port out of range
        return _USERINFO.sub(lambda m: f"{m['scheme']}***@", url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if parts.password is not None else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _redact_params(text: str) -> str:
    return _SECRET_PARAM.sub(lambda m: f"{m['lead']}***", text)


def redact_text(text: str, secrets: list[str]) -> str:
    """Replace every known secret (and URL userinfo and query-string credentials) in a free-form message,
    e.g. an OpenCV error."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["pw"] is not None else m[0], text)
    text = _redact_params(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """A handler filter that rewrites each record's message (and traceback) with secrets and URL
    passwords replaced by ***: a last line of defence for messages that carry a URL or a password
    from a library, an exception, or code that forgot to redact."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first: no partial leftovers

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a record with mismatched args: leave it to the formatter's own error
            return True
        clean = redact_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), self.secrets)
        return True


def install_log_redaction(secrets: Iterable[str], logger: logging.Logger | None = None) -> SecretFilter:
    """Attach a SecretFilter to every handler of `logger` (default: the root logger, where records from
    every module end up); call it after logging is configured."""
    secret_filter = SecretFilter(secrets)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(secret_filter)
    return secret_filter
