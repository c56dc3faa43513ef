"""The page's Site from a config: where the history and pictures are, the species to search, the password."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from birdwatch.config import Config
from birdwatch.config import warn_if_exposed
from birdwatch.errors import ConfigError
from birdwatch.web.app import Site
from birdwatch.web.auth import Guard
from birdwatch.web.live import LatestFrames

log = logging.getLogger(__name__)

PASSWORD_FILE = "web-password"  # beside the history, when the config names none
SESSION_KEY_FILE = "web-session-key"  # beside the history: signs sessions, so they outlive a restart


def site_for(
    config: Config,
    species: list[str],
    live: LatestFrames | None = None,
    counters: Callable[[], Mapping[str, Any]] | None = None,
) -> Site:
    cfg = config.web
    return Site(
        history=Path(config.store.path),
        snapshots=Path(config.snapshots.dir),
        species=species,
        cameras=[cam.name for cam in config.cameras],
        guard=Guard(page_password(config), public_view=cfg.public_view, secret=session_key(config)),
        review_below=cfg.review_below,
        location=config.location,
        live=live,
        counters=counters,
    )


def page_password(config: Config) -> str:
    """web.password_file's or web.password_env's; else one made once, kept beside the history (mode 600), so a
    fresh install takes corrections from whoever can read that file on this machine."""
    given = config.web.password_value()
    if given is not None:
        return given
    path = Path(config.store.path).parent / PASSWORD_FILE
    return _kept(path, lambda: secrets.token_urlsafe(12), "the page's password", "set web.password_file")


def session_key(config: Config) -> bytes:
    path = Path(config.store.path).parent / SESSION_KEY_FILE
    return bytes.fromhex(_kept(path, lambda: secrets.token_hex(32), "the page's session key", "check its folder"))


def _kept(path: Path, make: Callable[[], str], holds: str, otherwise: str) -> str:
    """A secret kept in `path` (mode 600): read, or made and written the first time. ConfigError if neither."""
    try:
        if path.is_file():
            warn_if_exposed(path, holds)
            value = path.read_text().strip()
            if value:
                return value
        value = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"web: {holds} cannot be kept at {path} ({why}); {otherwise}") from None
    log.info("%s is in %s", holds, path)
    return value
