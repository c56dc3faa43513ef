"""Property: whatever a user writes into the config file, the loader gives a valid Config or one
single-line ConfigError; never a traceback (a traceback is what the CLI would print for anything else).

Inputs: arbitrary text, YAML-flavoured token soup (anchors, tags, merge keys, tabs), and arbitrary
values (huge ints, NaN/inf, dates, binary, deep nesting) both at the top level and placed at every
key path of the real schema, so each field's own checks see odd values too.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import types
import typing
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from birdwatch.config import Config
from birdwatch.config import parse_config
from birdwatch.config import to_redacted_dict
from birdwatch.errors import ConfigError

SOURCE = "fuzz.yaml"
# BIRDWATCH_FUZZ_EXAMPLES=5000 for a deeper run by hand; the default keeps this file at a few seconds.
EXAMPLES = int(os.environ.get("BIRDWATCH_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = {"cameras": [{"name": "feeder", "url": "rtsp://user:pw@cam.local/stream"}]}


def loads_cleanly(text: str) -> None:
    """The property itself. Anything but ConfigError propagates and fails the test with its traceback."""
    try:
        config = parse_config(text, source=SOURCE)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(SOURCE), message
        assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        assert len(message) < 1000, f"too long to read: {len(message)} chars"
        return
    assert isinstance(config, Config)
    # What check-config prints for a good config must be printable too.
    yaml.safe_dump(to_redacted_dict(config))


# ---- values --------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=20),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()) if hasattr(st, "timezones") else st.datetimes(),
    st.sampled_from(["", "tcp", "udp", "motion", "auto", "cpu", "cuda:0", "/dev/video0", "rtsp://a/b", "a\nb", "~"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers(), st.booleans(), st.none()), children, max_size=4),
    ),
    max_leaves=20,
)


def dump(value: Any) -> str:
    return yaml.safe_dump(value, allow_unicode=True)


def schema_paths(cls: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of the config schema, e.g. ('mqtt', 'tls', 'ca_file') or ('cameras', 0, 'motion', 'width')."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = (*prefix, f.name)
        out.append(path)
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            tp = inner[0] if inner else tp
        if dataclasses.is_dataclass(tp):
            out += schema_paths(tp, path)
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out += schema_paths(typing.get_args(tp)[0], (*path, 0))
    return out


PATHS = schema_paths(Config)


def place(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A valid config with `value` at `path` (intermediate mappings created as needed)."""
    data: Any = {"cameras": [dict(VALID["cameras"][0])]}
    node = data
    for key in path[:-1]:
        if isinstance(key, int):
            node = node[key]
        else:
            if not isinstance(node.get(key), dict | list):
                node[key] = {}
            node = node[key]
    node[path[-1]] = value
    return data


# ---- properties ----------------------------------------------------------------------------------


def test_schema_paths_reach_every_section() -> None:
    assert ("mqtt", "tls", "ca_file") in PATHS and ("cameras", 0, "motion", "width") in PATHS
    assert ("metrics", "port") in PATHS
    loads_cleanly(dump(VALID))
    assert parse_config(dump(VALID)).cameras[0].name == "feeder"


@pytest.mark.timeout(60)
@FUZZ
@given(st.text(max_size=200))
@example("cameras: [\n")
@example("\t")
@example("\x00")
@example("9" * 5000)
@example("cameras: " + "[" * 5000 + "]" * 5000)
@example("cameras: 2001-13-45")
@example("cameras: 9999-12-31T23:59:60")
@example("cameras: !!python/object/apply:os.system [echo]")
@example("a: &x [*x]")
@example("? [a, b]\n: c\n")
@example("cameras:\n  - {name: a, url: 'rtsp://u:p@h:99999/x'}\n")
@example("cameras:\n  - {name: a, url: 'http://[::1/x'}\n")
@example('cameras:\n  - {name: "a\\nb", url: rtsp://x/y}\n')
@example('"a\\nb": 1\n')
@example("x: !!float ''")
@example("cameras: !!int 0x")
@example("cameras: !!timestamp 2001-01-01 00:00:00+02:09:20")
@example("cameras:\n  - {name: a, url: 100000000000000000000000}\n")
def test_arbitrary_text(text: str) -> None:
    loads_cleanly(text)


YAML_TOKENS = [
    "cameras", "mqtt", "model", "tls", "metrics", "name", "url", "port", ":", ": ", "-", "- ", "\n", "  ", "\t",
    "[", "]", "{", "}", ",", "&a ", "*a", "<<: ", "? ", "!!binary ", "!!float ", "!!int ", "!!timestamp ",
    "!!set ", "!!omap ", "!!python/name:os.system ", "!custom ", "'", '"', "|", ">", "#", "---", "...",
    ".nan", ".inf", "-.inf", "0x1F", "0o17", "1e400", "1_000", "2024-02-30", "2001-12-14t21:59:43.10-05:00",
    "~", "null", "yes", "on", "=", "%YAML 1.1", "\\x00", "\\ud800", "rtsp://u:p@h/x",
]  # fmt: skip


@pytest.mark.timeout(60)
@FUZZ
@given(st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=4)), max_size=40).map("".join))
def test_yaml_token_soup(text: str) -> None:
    loads_cleanly(text)


@pytest.mark.timeout(60)
@FUZZ
@given(values)
def test_arbitrary_document(value: Any) -> None:
    loads_cleanly(dump(value))


@pytest.mark.timeout(60)
@FUZZ
@given(st.sampled_from(PATHS), values)
def test_arbitrary_value_at_every_key_path(path: tuple[Any, ...], value: Any) -> None:
    loads_cleanly(dump(place(path, value)))


@pytest.mark.timeout(60)
@FUZZ
@given(st.sampled_from(PATHS), st.text(max_size=30), values)
def test_unknown_keys_anywhere(path: tuple[Any, ...], key: str, value: Any) -> None:
    loads_cleanly(dump(place((*path[:-1], key), value)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("depth", [50, 500, 5000])
def test_deep_nesting(depth: int) -> None:
    loads_cleanly("cameras: " + "[" * depth + "]" * depth)
    loads_cleanly("cameras: " + "{a: " * depth + "1" + "}" * depth)
    nested: Any = 1
    for _ in range(min(depth, 100)):  # the dumper itself recurses; 100 is far past any real config
        nested = [nested]
    loads_cleanly(dump(place(("mqtt", "port"), nested)))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("mqtt", "port"), 10**400, "mqtt.port: 1000000000000000000000000000000000000000000000000000000"),
        (("events", "min_score"), 10**400, "events.min_score: 10000000000000"),
        (("events", "min_score"), math.inf, "events.min_score: inf is too large; expected at most 1.0"),
        (
            ("cameras", 0, "url"),
            10**30,
            "cameras[0].url: device index 1000000000000000000000000000000 (int) is too large",
        ),
        (("cameras", 0, "name"), "feeder\n", "cameras[0].name: 'feeder\\n' is not a valid camera name"),
        (
            ("model", "device"),
            datetime.date(2024, 1, 1),
            "model.device: expected a string, got datetime.date(2024, 1, 1)",
        ),
        (("mqtt", "host"), b"\x00\xff", "mqtt.host: expected a string or null, got b'\\x00\\xff' (bytes)"),
        (("cameras", 0, "url"), "rtsp://u:pw@h:99999/x", "cameras[0].url: 'rtsp://***@h:99999/x' is not a valid URL"),
        (("cameras", 0, "url"), "rtsp:///stream", "cameras[0].url: 'rtsp:///stream' has no host"),
        (("mqtt", "tls"), "yes", "mqtt.tls: expected a mapping or null, got 'yes' (str)"),
        (("metrics", "bind"), "example.com", "metrics.bind: 'example.com' is not an IP address"),
    ],
)
def test_odd_values_found_by_fuzzing_get_clear_errors(path: tuple[Any, ...], value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(dump(place(path, value)), source=SOURCE)
    assert expected in str(info.value) and "\n" not in str(info.value)
