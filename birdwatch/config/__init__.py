"""Typed config from YAML. Unknown keys, wrong types, bad values and broken cross-key rules are one-line
errors that name the key path, all found when the file loads.

The parts: schema.py (the sections as dataclasses), binder.py (YAML into them, per-field checks),
rules.py (rules that span keys), tls.py (the MQTT TLS context), secrets.py (passwords and redaction).
This module loads a file through them in that order and re-exports what the rest of birdwatch uses.
"""

from __future__ import annotations

from pathlib import Path

from birdwatch.config.binder import URL_SCHEMES
from birdwatch.config.binder import bind
from birdwatch.config.binder import parse_yaml
from birdwatch.config.rules import RULES
from birdwatch.config.rules import check_rules
from birdwatch.config.schema import CameraConfig
from birdwatch.config.schema import Config
from birdwatch.config.schema import DetectorConfig
from birdwatch.config.schema import EngineConfig
from birdwatch.config.schema import EventsConfig
from birdwatch.config.schema import HomeAssistantConfig
from birdwatch.config.schema import LocationConfig
from birdwatch.config.schema import MemoryConfig
from birdwatch.config.schema import MetricsConfig
from birdwatch.config.schema import ModelConfig
from birdwatch.config.schema import MotionConfig
from birdwatch.config.schema import MqttConfig
from birdwatch.config.schema import MqttTlsConfig
from birdwatch.config.schema import ReconnectConfig
from birdwatch.config.schema import RecordConfig
from birdwatch.config.schema import SnapshotsConfig
from birdwatch.config.schema import StoreConfig
from birdwatch.config.schema import TeacherConfig
from birdwatch.config.schema import TrackingConfig
from birdwatch.config.schema import WebConfig
from birdwatch.config.secrets import to_redacted_dict
from birdwatch.config.secrets import url_has_password
from birdwatch.config.secrets import warn_if_exposed
from birdwatch.config.secrets import warn_if_files_exposed
from birdwatch.errors import ConfigError

__all__ = [
    "RULES",
    "URL_SCHEMES",
    "CameraConfig",
    "Config",
    "DetectorConfig",
    "EngineConfig",
    "EventsConfig",
    "HomeAssistantConfig",
    "LocationConfig",
    "MemoryConfig",
    "MetricsConfig",
    "ModelConfig",
    "MotionConfig",
    "MqttConfig",
    "MqttTlsConfig",
    "ReconnectConfig",
    "RecordConfig",
    "SnapshotsConfig",
    "StoreConfig",
    "TeacherConfig",
    "TrackingConfig",
    "WebConfig",
    "check_rules",
    "load_config",
    "parse_config",
    "to_redacted_dict",
    "url_has_password",
    "warn_if_exposed",
]


def load_config(path: str | Path) -> Config:
    """The config in the file `path`, checked; warns when a file holding a secret is readable by others."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a text file ({exc})") from None
    config = parse_config(text, source=str(path))
    warn_if_files_exposed(config, path)
    return config


def parse_config(text: str, source: str = "config") -> Config:
    """The config in the YAML `text`: bound to the schema, each value and every rule checked."""
    data = parse_yaml(text, source)
    if data is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least a `cameras:` list")
    config = bind(Config, data, source)
    check_rules(config, source)
    return config
