"""Secrets in the config: where the MQTT password comes from, which strings must never be logged, files
holding a secret that others can read, and the config as check-config prints it (secrets hidden)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from birdwatch.errors import ConfigError
from birdwatch.redact import redact_url

if TYPE_CHECKING:
    from birdwatch.config.schema import Config
    from birdwatch.config.schema import MqttConfig
    from birdwatch.config.schema import WebConfig

log = logging.getLogger("birdwatch.config")  # the name these warnings have always had in the journal

_warned_exposed: set[tuple[str, int]] = set()


def password_value(mqtt: MqttConfig) -> str | None:
    """The MQTT password from mqtt.password_env, mqtt.password_file or mqtt.password (rules.py allows one)."""
    if mqtt.password_env:
        value = os.environ.get(mqtt.password_env)
        if value is None:
            raise ConfigError(
                f"mqtt.password_env: environment variable {mqtt.password_env} is not set; "
                "export it or use mqtt.password_file"
            )
        return value
    if mqtt.password_file:
        return read_secret_file(mqtt.password_file, "mqtt.password_file", "the MQTT password")
    return mqtt.password


def web_password_value(web: WebConfig) -> str | None:
    """The page's password from web.password_env or web.password_file (rules.py allows one), or None."""
    if web.password_env:
        value = os.environ.get(web.password_env, "").strip()
        if not value:
            raise ConfigError(
                f"web.password_env: environment variable {web.password_env} is not set or empty; "
                "export it or use web.password_file"
            )
        return value
    if web.password_file:
        value = read_secret_file(web.password_file, "web.password_file", "the page's password")
        if not value:
            raise ConfigError(f"web.password_file: {web.password_file!r} is empty; put the password on one line")
        return value
    return None


def read_secret_file(path: str, key: str, holds: str) -> str:
    """A password file's one line (warning if others can read it), or ConfigError naming `key`."""
    warn_if_exposed(path, holds)
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot read {path!r} ({exc.strerror}); create it with the password on one line"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{key}: {path!r} is not text ({exc})") from None


def secrets(config: Config) -> list[str]:
    """Strings that must never reach a log line."""
    out = [config.mqtt.password or ""]
    return [s for s in out if s]


def inline_secrets(config: Config) -> list[str]:
    """Key paths whose value in the file itself is a secret (so the file must not be readable by others)."""
    out = ["mqtt.password"] if config.mqtt.password else []
    out += [key for key, url in urls(dataclasses.asdict(config)) if url_has_password(url)]
    return out


def urls(data: Any, key: str = "") -> list[tuple[str, str]]:
    """(key path, value) of every URL in the config as a dict: camera URLs, model.url, model.mirror, teacher.url
    and whatever URL a key added later holds, without a list of them to keep up to date."""
    if isinstance(data, dict):
        return [found for k, v in data.items() for found in urls(v, f"{key}.{k}" if key else str(k))]
    if isinstance(data, list):
        return [found for i, v in enumerate(data) for found in urls(v, f"{key}[{i}]")]
    return [(key, data)] if isinstance(data, str) and "://" in data else []


def _redacted(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _redacted(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_redacted(v) for v in data]
    return redact_url(data) if isinstance(data, str) else data


def url_has_password(url: str | int) -> bool:
    return isinstance(url, str) and redact_url(url) != url


def warn_if_files_exposed(config: Config, path: str | Path) -> None:
    """The config file itself when it holds a secret, and the MQTT client key: each warns if others can read it."""
    holds = inline_secrets(config)
    if holds:
        warn_if_exposed(path, ", ".join(holds))
    if config.mqtt.tls and config.mqtt.tls.key_file:
        warn_if_exposed(config.mqtt.tls.key_file, "the MQTT client key")


def warn_if_exposed(path: str | Path, holds: str) -> bool:
    """Warn (one line, once per file and mode) when a file holding a secret can be read by its group or
    by others. True if it warned. The service reads its files as the `birdwatch` user, which should own
    them with mode 600."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # a missing file is reported where it is read
    if not mode & 0o044 or (str(path), mode) in _warned_exposed:
        return False
    _warned_exposed.add((str(path), mode))
    who = " and ".join(w for bit, w in ((0o040, "its group"), (0o004, "others")) if mode & bit)
    log.warning(
        "%s holds %s and can be read by %s (mode %04o); restrict it: chmod 600 %s",
        path,
        holds,
        who,
        mode & 0o7777,
        path,
    )
    return True


def to_redacted_dict(config: Config) -> dict[str, Any]:
    """The config as check-config prints it: secrets and URL passwords hidden."""
    data: dict[str, Any] = _redacted(dataclasses.asdict(config))  # one redaction for every URL it holds
    if data["mqtt"]["password"]:
        data["mqtt"]["password"] = "***"
    return data
