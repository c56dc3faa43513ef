"""Typed config from YAML. Unknown keys, wrong types and bad values are errors that name the key path.

Each section is a dataclass; `load_config` walks the type hints, so adding a field here is all it
takes to add a key. A field's `metadata` can carry `min`/`max`/`choices`/`check` for values.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Literal
from urllib.parse import urlsplit

import yaml

from birdwatch.errors import ConfigError
from birdwatch.redact import redact_url

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "srt", "udp", "tcp")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_DEVICE_INDEX = 1023  # V4L2 allows at most 1024 /dev/videoN nodes


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass
class ReconnectConfig:
    initial_s: float = field(default=1.0, metadata=_range(0.05, 3600))
    max_s: float = field(default=60.0, metadata=_range(0.1, 86400))


@dataclass
class MotionConfig:
    """Background subtraction on a downscaled grey frame; regions are mapped back to full size."""

    width: int = field(default=320, metadata=_range(64, 1920))  # analysis width in pixels
    threshold: float = field(default=24.0, metadata=_range(1, 255))  # MOG2 variance threshold
    min_area: float = field(default=0.002, metadata=_range(0.0, 1.0))  # fraction of the frame
    max_regions: int = field(default=8, metadata=_range(1, 64))
    padding: float = field(default=0.2, metadata=_range(0.0, 2.0))  # grow each box by this fraction
    warmup_frames: int = field(default=10, metadata=_range(0, 10000))
    history: int = field(default=300, metadata=_range(10, 100000))


@dataclass
class CameraConfig:
    name: str = field(metadata={"check": "camera_name"})
    url: str | int = field(metadata={"check": "camera_url"})
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    loop: bool = False  # video files: start again at the end
    realtime: bool = True  # video files: read at the file's frame rate, as a camera would
    stall_timeout_s: float | None = field(default=None, metadata=_range(0.5, 3600))  # None: 10 frame intervals, >= 5 s
    open_timeout_s: float = field(default=10.0, metadata=_range(0.5, 600))
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)


@dataclass
class ModelConfig:
    name: str = "hgnet_v2_b2_danube-delta"  # a birder pretrained name, fetched by `birdwatch models pull`
    file: str | None = None  # a local birder .pt file; overrides `name`
    network: str | None = None  # birder network of `file` when its file name does not start with it
    models_dir: str = "models"
    device: str = field(default="auto", metadata={"check": "device"})
    top_k: int = field(default=3, metadata=_range(1, 50))
    batch_size: int = field(default=8, metadata=_range(1, 512))  # crops per forward pass; 32-64 suit a GPU
    verify_sha256: bool = True  # check a pretrained file against birder's published hash


@dataclass
class EngineConfig:
    """How inference runs. `birdwatch bench --tune` measures the choices on this machine."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 where the hardware has it
    channels_last: bool | None = None  # None: on (faster for birder's convnets on CPU and GPU)
    compile: bool = False  # torch.compile the classifier (slow start, faster steady state on GPU)
    workers: int = field(default=0, metadata=_range(0, 64))  # classify workers; 0: auto (CPU: one per core, up to 4)
    threads: int = field(default=0, metadata=_range(0, 256))  # torch CPU threads per worker; 0: cores / workers
    max_wait_ms: float = field(default=20.0, metadata=_range(0, 5000))  # a partial batch waits at most this
    queue_per_camera: int = field(default=4, metadata=_range(1, 256))  # frames waiting for the classifier


@dataclass
class MqttTlsConfig:
    """TLS to the broker. Present (even empty, `tls: {}`) means TLS on, verified against the system CAs."""

    ca_file: str | None = field(default=None, metadata={"check": "readable_file"})  # CA that signed the broker
    cert_file: str | None = field(default=None, metadata={"check": "readable_file"})  # client certificate (PEM)
    key_file: str | None = field(default=None, metadata={"check": "readable_file"})  # its private key (PEM)
    insecure: bool = False  # skip the host name check (the certificate chain is still verified)


@dataclass
class DetectorConfig:
    """The detection head on the classifier's backbone (`localiser: detector` or `detector+motion`)."""

    file: str | None = None  # head.pt from `birdwatch detector train`
    score_threshold: float = field(default=0.4, metadata=_range(0.0, 1.0))  # boxes scoring less are dropped
    nms_iou: float = field(default=0.5, metadata=_range(0.05, 1.0))  # overlap above which the weaker box goes
    max_detections: int = field(default=20, metadata=_range(1, 300))  # per frame
    max_size: int | None = field(default=None, metadata=_range(64, 4096))  # frame's longer side; None: head's size
    region_size: int = field(default=320, metadata=_range(64, 2048))  # detector+motion: regions resized to this
    region_padding: float = field(default=1.0, metadata=_range(0.0, 4.0))  # grow motion boxes by this fraction
    max_regions: int = field(default=4, metadata=_range(1, 32))  # per frame; more are merged into one
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # backbone autocast; auto: fp16 on CUDA, else fp32
    channels_last: bool = False  # NHWC memory layout for the shared backbone


@dataclass
class MqttConfig:
    host: str | None = None  # no host: events are only logged
    port: int = field(default=1883, metadata=_range(1, 65535))
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    client_id: str | None = None  # None: birdwatch-<hostname>-<topic_prefix>, unique per instance
    topic_prefix: str = field(default="birdwatch", metadata={"check": "topic_prefix"})
    keepalive_s: int = field(default=30, metadata=_range(5, 3600))
    qos: Literal[0, 1, 2] = 1
    reconnect_max_s: float = field(default=60.0, metadata=_range(1, 3600))
    tls: MqttTlsConfig | None = None  # null: plain TCP

    def password_value(self) -> str | None:
        """The password from wherever the config says it lives; read at start-up, never logged."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"mqtt.password_env: environment variable {self.password_env} is not set; "
                    "export it or use mqtt.password_file"
                )
            return value
        if self.password_file:
            warn_if_exposed(self.password_file, "the MQTT password")
            try:
                return Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"mqtt.password_file: cannot read {self.password_file!r} ({exc.strerror}); "
                    "create it with the password on one line"
                ) from None
            except (UnicodeDecodeError, ValueError) as exc:
                raise ConfigError(f"mqtt.password_file: {self.password_file!r} is not text ({exc})") from None
        return self.password


@dataclass
class TrackingConfig:
    """Associating a camera's boxes across frames: one track per bird, a visit per confirmed track."""

    iou_threshold: float = field(default=0.2, metadata=_range(0.01, 1.0))  # least overlap with the predicted box
    min_hits: int = field(default=3, metadata=_range(1, 1000))  # crops before a track is a visit
    timeout_s: float = field(default=5.0, metadata=_range(0.1, 3600))  # no crop for this long: the visit ends
    max_tracks: int = field(default=16, metadata=_range(1, 1024))  # per camera; the stalest is dropped beyond


@dataclass
class EventsConfig:
    """Which visits are told, and how often a visit may speak."""

    min_score: float = field(default=0.5, metadata=_range(0.0, 1.0))  # voted score a visit needs to be told
    cooldown_s: float = field(default=30.0, metadata=_range(0.0, 86400))  # same camera+species again: quiet
    update_min_score_change: float = field(default=0.1, metadata=_range(0.0, 1.0))  # what counts as material
    update_min_interval_s: float = field(default=2.0, metadata=_range(0.0, 3600))  # between two updates
    heartbeat_s: float = field(default=0.0, metadata=_range(0.0, 86400))  # update at least this often; 0: never
    allow: list[str] = field(default_factory=list)  # species names; empty: every species
    block: list[str] = field(default_factory=list)  # species names never told


@dataclass
class SnapshotsConfig:
    enabled: bool = True
    dir: str = "snapshots"  # relative to the working directory (/var/lib/birdwatch under systemd)
    quality: int = field(default=90, metadata=_range(10, 100))  # JPEG quality
    full_frame: bool = True  # also keep the whole frame with the box drawn
    mqtt: bool = True  # publish the crop (raw JPEG) on <prefix>/<camera>/snapshot
    max_age_days: float = field(default=30.0, metadata=_range(0.0, 36500))  # 0: no age limit
    max_total_mb: float = field(default=1024.0, metadata=_range(0.0, 10_000_000))  # 0: no size limit
    max_files: int = field(default=20000, metadata=_range(0, 100_000_000))  # 0: no count limit


@dataclass
class HomeAssistantConfig:
    discovery: bool = True  # publish retained discovery configs on every connect
    discovery_prefix: str = field(default="homeassistant", metadata={"check": "topic_prefix"})


@dataclass
class StoreConfig:
    path: str = "birdwatch.db"  # SQLite: outbox and event history; relative to the working directory
    retention_days: float = field(default=365.0, metadata=_range(1.0, 36500))  # delivered events older go


@dataclass
class MetricsConfig:
    """Prometheus /metrics and /healthz over HTTP. Off by default; loopback only unless `bind` says otherwise."""

    enabled: bool = False
    bind: str = field(default="127.0.0.1", metadata={"check": "bind_address"})  # 0.0.0.0: every interface
    port: int = field(default=9464, metadata=_range(1, 65535))


@dataclass
class Config:
    cameras: list[CameraConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    localiser: Literal["motion", "detector", "detector+motion"] = "motion"
    engine: EngineConfig = field(default_factory=EngineConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    stats_interval_s: float = field(default=60.0, metadata=_range(1, 86400))

    def secrets(self) -> list[str]:
        """Strings that must never reach a log line."""
        out = [self.mqtt.password or ""]
        return [s for s in out if s]

    def inline_secrets(self) -> list[str]:
        """Key paths whose value in the file itself is a secret (so the file must not be readable by others)."""
        out = ["mqtt.password"] if self.mqtt.password else []
        out += [f"cameras[{i}].url" for i, cam in enumerate(self.cameras) if url_has_password(cam.url)]
        return out


# ---- loading -------------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a text file ({exc})") from None
    config = parse_config(text, source=str(path))
    holds = config.inline_secrets()
    if holds:
        warn_if_exposed(path, ", ".join(holds))
    if config.mqtt.tls and config.mqtt.tls.key_file:
        warn_if_exposed(config.mqtt.tls.key_file, "the MQTT client key")
    return config


_warned_exposed: set[tuple[str, int]] = set()


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


def url_has_password(url: str | int) -> bool:
    return isinstance(url, str) and redact_url(url) != url


def parse_config(text: str, source: str = "config") -> Config:
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: invalid YAML: {_one_line(problem)}") from None
    except (ValueError, OverflowError) as exc:  # odd scalars, e.g. an integer of 5000 digits
        raise ConfigError(f"{source}: invalid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least a `cameras:` list")
    try:
        config = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_config(config, source)
    return config


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader whose bad scalars fail as YAML errors with a position. PyYAML's own constructors
    raise ValueError, IndexError or AttributeError for values its resolver accepted or a tag forced
    (`!!float ''`, a timestamp with a +02:09:20 offset)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            shown = f" {node.value!r}"[:60] if isinstance(node, yaml.ScalarNode) else ""
            problem = f"invalid {kind}{shown} ({_one_line(str(exc), 80)}); quote it if it is text"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _key_name(key: Any) -> str:
    """A mapping key as it may appear in a key path: plain names as they are, anything odd quoted."""
    if isinstance(key, str) and key.isprintable() and key and len(key) <= 64:
        return key
    shown = repr(key)
    return shown if len(shown) <= 64 else shown[:61] + "..."


def _describe(value: Any) -> str:
    try:
        shown = repr(redact_url(value)) if isinstance(value, str) else repr(value)
    except (ValueError, RecursionError):  # an int past Python's digit limit, a value nested too deeply
        shown = f"<{type(value).__name__}>"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        return "a list of mappings" if dataclasses.is_dataclass(item) else f"a list of {_type_name(item)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _build(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if sections and isinstance(value, dict):
            return _build(sections[0], value, path)  # an optional section: its own errors are the useful ones
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_build(item_tp, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # not NaN
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float
                raise ConfigError(f"{path}: {_describe(value)} is too large") from None
    elif tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")


def _build_dataclass(cls: Any, value: Any, path: str) -> Any:
    where = path or "top level"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_describe(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        name = _key_name(key)
        key_path = f"{path}.{name}" if path else name
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(fields)
            raise ConfigError(f"{key_path}: unknown key; {hint}")
        f = fields[key]
        built = _build(hints[key], item, key_path)
        _check_value(f, built, key_path)
        kwargs[key] = built
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path + '.' if path else ''}{name}: required key is missing")
    return cls(**kwargs)


def _check_value(f: dataclasses.Field, value: Any, path: str) -> None:
    if value is None:
        return
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if isinstance(value, int | float) and not isinstance(value, bool):
        shown = _describe(value).rsplit(" (", 1)[0]
        if lo is not None and value < lo:
            raise ConfigError(f"{path}: {shown} is too small; expected at least {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{path}: {shown} is too large; expected at most {hi}")
    check = f.metadata.get("check")
    if check:
        _CHECKS[check](value, path)


def _check_camera_name(value: str, path: str) -> None:
    if not _NAME.fullmatch(value):
        raise ConfigError(
            f"{path}: {value!r} is not a valid camera name; use 1-64 letters, digits, '_' or '-' "
            "(it becomes part of MQTT topics)"
        )


def _check_camera_url(value: str | int, path: str) -> None:
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{path}: device index {value} is negative; use 0 for /dev/video0")
        if value > _MAX_DEVICE_INDEX:
            raise ConfigError(f"{path}: device index {_describe(value)} is too large; use N for /dev/videoN")
        return
    if not value.strip():
        raise ConfigError(f"{path}: empty; expected rtsp://, http(s)://, /dev/videoN, a device index or a file")
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise ConfigError(
                f"{path}: unsupported scheme {scheme!r} in {redact_url(value)!r}; expected one of "
                + ", ".join(f"{s}://" for s in URL_SCHEMES)
            )
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (parsing it is the check)
        except ValueError as exc:
            raise ConfigError(f"{path}: {redact_url(value)!r} is not a valid URL ({exc})") from None
        if not parts.hostname and scheme not in ("udp", "tcp", "srt"):  # those may listen: udp://@:1234
            raise ConfigError(f"{path}: {redact_url(value)!r} has no host; e.g. rtsp://192.168.1.20:554/stream1")
        return
    if value.startswith("/dev/"):
        return  # a V4L2 device may appear later (USB hot-plug); capture retries
    if "\0" in value or not Path(value).expanduser().is_file():
        raise ConfigError(f"{path}: video file {value!r} does not exist; give a camera URL, /dev/videoN or a file")


def _check_device(value: str, path: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        raise ConfigError(f"{path}: {value!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")


def _check_topic_prefix(value: str, path: str) -> None:
    if not value or any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
        raise ConfigError(f"{path}: {value!r} is not a usable MQTT topic prefix; e.g. 'birdwatch' or 'home/birds'")


def _check_readable_file(value: str, path: str) -> None:
    if "\0" in value or not value.strip():
        raise ConfigError(f"{path}: {value!r} is not a file name")
    file = Path(value).expanduser()
    if not file.is_file():
        raise ConfigError(f"{path}: file {value!r} does not exist; give the path of a PEM file")
    if not os.access(file, os.R_OK):
        raise ConfigError(f"{path}: {value!r} is not readable by this user; check its owner and mode")


def _check_bind_address(value: str, path: str) -> None:
    if value == "localhost":
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(
            f"{path}: {value!r} is not an IP address; e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None


_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "camera_name": _check_camera_name,
    "camera_url": _check_camera_url,
    "device": _check_device,
    "topic_prefix": _check_topic_prefix,
    "readable_file": _check_readable_file,
    "bind_address": _check_bind_address,
}


def _check_config(config: Config, source: str) -> None:
    """Rules that span several keys."""
    if not config.cameras:
        raise ConfigError(f"{source}: cameras: the list is empty; add at least one camera")
    seen: dict[str, int] = {}
    for i, cam in enumerate(config.cameras):
        if cam.name in seen:
            raise ConfigError(f"{source}: cameras[{i}].name: {cam.name!r} is already used by cameras[{seen[cam.name]}]")
        seen[cam.name] = i
        if cam.reconnect.max_s < cam.reconnect.initial_s:
            raise ConfigError(
                f"{source}: cameras[{i}].reconnect.max_s: {cam.reconnect.max_s} is below initial_s "
                f"{cam.reconnect.initial_s}"
            )
    if config.localiser != "motion":
        if not config.detector.file:
            raise ConfigError(
                f"{source}: localiser: {config.localiser!r} needs detector.file, a head trained with "
                "`birdwatch detector train`; or use localiser: motion"
            )
        if not Path(config.detector.file).expanduser().is_file():
            raise ConfigError(
                f"{source}: detector.file: {config.detector.file!r} does not exist; train a head with "
                "`birdwatch detector train` (it writes head.pt)"
            )
    mqtt = config.mqtt
    given = [k for k in ("password", "password_file", "password_env") if getattr(mqtt, k)]
    if len(given) > 1:
        raise ConfigError(f"{source}: mqtt: give only one of {', '.join('mqtt.' + k for k in given)}")
    if given and not mqtt.username:
        raise ConfigError(f"{source}: mqtt.username: required when a password is given")
    tls = mqtt.tls
    if tls is not None and bool(tls.cert_file) != bool(tls.key_file):
        have, missing = ("cert_file", "key_file") if tls.cert_file else ("key_file", "cert_file")
        raise ConfigError(
            f"{source}: mqtt.tls.{missing}: required with mqtt.tls.{have} (a client certificate needs its key)"
        )
    events = config.events
    for key in ("allow", "block"):
        names = getattr(events, key)
        for i, name in enumerate(names):
            if not name.strip():
                raise ConfigError(f"{source}: events.{key}[{i}]: empty species name")
    both = sorted(set(events.allow) & set(events.block))
    if both:
        raise ConfigError(f"{source}: events: {both[0]!r} is in both events.allow and events.block; keep one")


def to_redacted_dict(config: Config) -> dict[str, Any]:
    """The config as check-config prints it: secrets and URL passwords hidden."""
    data = dataclasses.asdict(config)
    for cam in data["cameras"]:
        cam["url"] = redact_url(cam["url"])
    if data["mqtt"]["password"]:
        data["mqtt"]["password"] = "***"
    return data
