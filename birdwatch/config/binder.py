"""YAML into typed dataclasses. Unknown keys, wrong types and bad values are one-line errors naming the key path.

`bind` walks a dataclass's type hints (schema.py), so it knows no section by name. A field's `metadata`
may carry `min`/`max` (numbers), `check`, the name of one of the per-field checks at the end here, and
`path`: a path whose `~` is expanded here, once, so that no part of birdwatch reads it differently.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import stat
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import Literal
from typing import TypeVar
from urllib.parse import urlsplit

import yaml

from birdwatch.errors import ConfigError
from birdwatch.redact import redact_url

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "srt", "udp", "tcp")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_DEVICE_INDEX = 1023  # V4L2 allows at most 1024 /dev/videoN nodes

T = TypeVar("T")


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`: plain data only (mappings, lists, scalars); `source` names it in errors."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: invalid YAML: {_one_line(problem)}") from None
    except (ValueError, OverflowError) as exc:  # odd scalars, e.g. an integer of 5000 digits
        raise ConfigError(f"{source}: invalid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def bind(cls: type[T], data: Any, source: str) -> T:
    """An instance of the dataclass `cls` from parsed YAML, every value checked against its field."""
    try:
        built: T = _build(cls, data, "")
        return built
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no stubs
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
        if f.metadata.get("path"):
            built = expand_path(built)
        _check_value(f, built, key_path)
        kwargs[key] = built
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path + '.' if path else ''}{name}: required key is missing")
    return cls(**kwargs)


def expand_path(value: Any) -> Any:
    """`~` and `~user` at the start of a path, as a shell would; URLs, device indexes and None pass through."""
    if isinstance(value, str) and "://" not in value and value.startswith("~"):
        return os.path.expanduser(value)
    return value


def _check_value(f: dataclasses.Field[Any], value: Any, path: str) -> None:
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
    if "\0" not in value and _is_char_device(Path(value).expanduser()):
        return  # a udev name outside /dev (a symlink to /dev/videoN) is a camera too
    if "\0" in value or not Path(value).expanduser().is_file():
        raise ConfigError(f"{path}: video file {value!r} does not exist; give a camera URL, /dev/videoN or a file")


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False


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
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(
            f"{path}: {value!r} is not an IP address; e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    if address.is_multicast:  # Linux lets a TCP server bind one, but no client can ever connect to it
        raise ConfigError(
            f"{path}: {value!r} is a multicast address, which takes no connections; "
            "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )


def _check_http_url(value: str, path: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{path}: {redact_url(value)!r} is not an http(s):// URL; e.g. https://nas.local/birder")


def _check_sha256(value: str, path: str) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ConfigError(f"{path}: {value!r} is not a SHA-256 (64 hex digits); `sha256sum FILE` prints it")


_CHECKS: dict[str, Callable[[Any, str], None]] = {
    "camera_name": _check_camera_name,
    "camera_url": _check_camera_url,
    "device": _check_device,
    "topic_prefix": _check_topic_prefix,
    "readable_file": _check_readable_file,
    "bind_address": _check_bind_address,
    "http_url": _check_http_url,
    "sha256": _check_sha256,
}
