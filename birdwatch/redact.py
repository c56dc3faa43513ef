"""Keep credentials out of logs, events and printed config."""

from __future__ import annotations

import re
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(:(?P<pw>[^/@\s]*))?@")


def redact_url(url: str | int) -> str:
    """rtsp://user:secret@host/x -> rtsp://user:***@host/x; device indexes and paths pass through."""
    if not isinstance(url, str) or "://" not in url:
        return str(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(lambda m: f"{m['scheme']}***@", url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if parts.password is not None else f"{user}@{host}"
    query = re.sub(r"(?i)(password|passwd|pwd|token|key)=[^&]*", r"\1=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: list[str]) -> str:
    """Replace every known secret (and URL userinfo) in a free-form message, e.g. an OpenCV error."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["pw"] is not None else m[0], text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
