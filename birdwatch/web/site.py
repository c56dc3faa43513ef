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
        guard=Guard(page_password(config), public_view=cfg.public_view),
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
    if path.is_file():
        warn_if_exposed(path, "the page's password")
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_urlsafe(12)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
    except OSError as exc:
        raise ConfigError(
            f"web: no password is set and one cannot be kept at {path} ({exc.strerror or exc}); set web.password_file"
        ) from None
    log.info("the page's password is in %s (set web.password_file to choose your own)", path)
    return value
