"""`birdwatch web`: the page over a history alone, on a second machine or after the fact.

It upgrades (or repairs) the history as `birdwatch run` would, then serves it; corrections made here are kept
in the history and told on MQTT by the service that runs over it next.
"""

from __future__ import annotations

import logging
from pathlib import Path

from birdwatch.config import Config
from birdwatch.config import load_config
from birdwatch.config.rules import is_loopback
from birdwatch.deliver.history import EventStore
from birdwatch.errors import BirdwatchError
from birdwatch.errors import ConfigError
from birdwatch.web import book
from birdwatch.web.server import bind as listen
from birdwatch.web.server import serve_forever
from birdwatch.web.site import site_for

log = logging.getLogger(__name__)


def serve_history(config_path: str, bind: str | None = None, port: int | None = None) -> int:
    config = load_config(config_path)
    path = Path(config.store.path)
    if not path.is_file():
        raise BirdwatchError(
            f"no event history at {path} (birdwatch run creates it; store.path in the config names it)"
        )
    EventStore(path).close()  # a history from an older birdwatch is upgraded, a damaged one repaired, as by `run`
    address, port = bind or config.web.bind, port or config.web.port
    if not is_loopback(address) and not (config.web.password_file or config.web.password_env):
        raise ConfigError(
            f"--bind {address} lets other machines reach the page, which then needs a password: "
            "set web.password_file or web.password_env"
        )
    site = site_for(config, species_of(config, path))
    sock = listen(address, port)
    log.info("the page over %s: http://%s:%d/ (Ctrl-C stops it)", path, address, sock.getsockname()[1])
    serve_forever(site, sock)
    return 0


def species_of(config: Config, history: Path) -> list[str]:
    """The model's species, read from its weights file when it is here; else those the history has seen."""
    try:
        from birdwatch.classify.models import class_names_of  # torch: only for this, once at start
        from birdwatch.classify.models import classifier_weights

        return class_names_of(classifier_weights(config.model)[0])
    except Exception as exc:  # no weights on this machine: the names the history knows still serve
        log.warning("the model's species are not readable here (%s); searching the history's own names", exc)
    with book.connect(history) as db:
        return sorted({str(name) for (name,) in db.execute("SELECT DISTINCT species FROM visits")})
