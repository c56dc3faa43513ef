"""Rules that span several keys, or need more than one value to judge: one small function per rule.

Each takes the bound Config and raises a one-line ConfigError naming the key path; `check_rules` runs
`RULES` in order when a config is loaded, so `birdwatch check-config` and a reload see every mistake
that needs no model and no network. Checks of one value alone are per-field checks in binder.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path

from birdwatch.config.schema import TEACHER_CPU_FPS
from birdwatch.config.schema import Config
from birdwatch.config.tls import tls_context
from birdwatch.errors import ConfigError


def cameras_not_empty(config: Config) -> None:
    """At least one camera is configured."""
    if not config.cameras:
        raise ConfigError("cameras: the list is empty; add at least one camera")


def camera_names_unique(config: Config) -> None:
    """No two cameras share a name (it is part of their MQTT topics)."""
    seen: dict[str, int] = {}
    for i, cam in enumerate(config.cameras):
        if cam.name in seen:
            raise ConfigError(f"cameras[{i}].name: {cam.name!r} is already used by cameras[{seen[cam.name]}]")
        seen[cam.name] = i


def reconnect_max_not_below_initial(config: Config) -> None:
    """Each camera's reconnect.max_s is at least its reconnect.initial_s."""
    for i, cam in enumerate(config.cameras):
        if cam.reconnect.max_s < cam.reconnect.initial_s:
            raise ConfigError(
                f"cameras[{i}].reconnect.max_s: {cam.reconnect.max_s} is below initial_s {cam.reconnect.initial_s}"
            )


def localiser_has_detector_file(config: Config) -> None:
    """A detector localiser has a detector.file, and the file exists."""
    if config.localiser in ("motion", "teacher"):
        return
    if not config.detector.file:
        raise ConfigError(
            f"localiser: {config.localiser!r} needs detector.file, a head trained with "
            "`birdwatch detector train`; or use localiser: motion"
        )
    if not Path(config.detector.file).expanduser().is_file():
        raise ConfigError(
            f"detector.file: {config.detector.file!r} does not exist; train a head with "
            "`birdwatch detector train` (it writes head.pt)"
        )


def url_goes_with_file_and_sha256(config: Config) -> None:
    """model.url and teacher.url fetch their section's `file` on first start, checked against its `sha256`."""
    for key, section in (("model", config.model), ("teacher", config.teacher)):
        if section.url and not section.file:
            raise ConfigError(f"{key}.url: set {key}.file too (where the fetched weights are kept)")
        if section.url and not section.sha256:
            raise ConfigError(f"{key}.url: set {key}.sha256 too, so that a wrong or partial download is refused")
        if section.sha256 and not section.file:
            raise ConfigError(f"{key}.sha256: the hash of {key}.file; set {key}.file, or remove {key}.sha256")


def teacher_file_exists(config: Config) -> None:
    """A teacher.file without a teacher.url to fetch it from is there."""
    teacher = config.teacher
    if teacher.file and not teacher.url and not Path(teacher.file).expanduser().is_file():
        raise ConfigError(
            f"teacher.file: {teacher.file!r} does not exist; remove it to use the pretrained teacher.name, "
            "or give teacher.url and teacher.sha256 to fetch it"
        )


def teacher_passes_within_track_timeout(config: Config) -> None:
    """With localiser teacher, two teacher passes of a camera are closer than tracking.timeout_s."""
    if config.localiser != "teacher":
        return
    fps = config.teacher.max_fps
    if not fps and config.model.device == "cpu":
        fps = TEACHER_CPU_FPS  # auto, on a CPU; on a GPU auto sets no limit
    if not fps:
        return
    if 1.0 / fps >= config.tracking.timeout_s:
        raise ConfigError(
            f"tracking.timeout_s: {config.tracking.timeout_s} s would end every visit between two teacher passes "
            f"(teacher.max_fps {fps:g}: one every {1 / fps:g} s); raise tracking.timeout_s or teacher.max_fps"
        )


def model_device_available(config: Config) -> None:
    """A CUDA or MPS model.device is one that torch sees on this machine."""
    problem = device_problem(config.model.device)
    if problem:
        raise ConfigError(problem)


def one_password_source(config: Config) -> None:
    """At most one of mqtt.password, mqtt.password_file and mqtt.password_env is given."""
    given = _password_keys(config)
    if len(given) > 1:
        raise ConfigError(f"mqtt: give only one of {', '.join('mqtt.' + k for k in given)}")


def password_needs_username(config: Config) -> None:
    """An MQTT password comes with mqtt.username."""
    if _password_keys(config) and not config.mqtt.username:
        raise ConfigError("mqtt.username: required when a password is given")


def events_qos_at_least_once(config: Config) -> None:
    """mqtt.qos is 1 or 2: at QoS 0 an event would count as sent once written to the socket (at most once)."""
    if config.mqtt.qos == 0:
        raise ConfigError(
            "mqtt.qos: 0 would mark each event sent as soon as it is written to the socket, so an event lost "
            "in a dropped connection or a broker restart is never sent again; use 1 (at least once, the "
            "default) or 2"
        )


def gstreamer_decoder_needs_opencv_with_gstreamer(config: Config) -> None:
    """cameras[].decoder gstreamer or jetson only with an OpenCV that has GStreamer."""
    wanting = [c.name for c in config.cameras if c.decoder != "ffmpeg"]
    files = [c.name for c in config.cameras if c.decoder != "ffmpeg" and _is_file_url(c.url)]
    if files:
        raise ConfigError(
            f"cameras ({', '.join(files)}): decoder gstreamer/jetson is for cameras (it keeps only the newest "
            "frame); a video file is read with decoder: ffmpeg"
        )
    if wanting and not opencv_has_gstreamer():
        raise ConfigError(
            f"cameras ({', '.join(wanting)}): decoder gstreamer/jetson needs OpenCV built with GStreamer, and this "
            "one is not (the pip wheels are not); on a Jetson install JetPack's python3-opencv and build the venv "
            "with `make .venv/.installed TORCH_SPEC= VENV_FLAGS=--system-site-packages`, or use decoder: ffmpeg"
        )


def _is_file_url(url: str | int) -> bool:
    return (
        isinstance(url, str) and "://" not in url and not url.startswith("/dev/") and Path(url).expanduser().is_file()
    )


def opencv_has_gstreamer() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def tls_cert_needs_key(config: Config) -> None:
    """mqtt.tls.cert_file and mqtt.tls.key_file are given together."""
    tls = config.mqtt.tls
    if tls is not None and bool(tls.cert_file) != bool(tls.key_file):
        have, missing = ("cert_file", "key_file") if tls.cert_file else ("key_file", "cert_file")
        raise ConfigError(f"mqtt.tls.{missing}: required with mqtt.tls.{have} (a client certificate needs its key)")


def tls_files_usable(config: Config) -> None:
    """The mqtt.tls PEM files load: a CA certificate, a client certificate with its own unencrypted key."""
    if config.mqtt.tls is not None:
        tls_context(config.mqtt.tls)  # what the MQTT sink builds at start; binder.py checked the files exist


def species_names_not_empty(config: Config) -> None:
    """No species name in events.allow or events.block is blank."""
    for key in ("allow", "block"):
        for i, name in enumerate(getattr(config.events, key)):
            if not name.strip():
                raise ConfigError(f"events.{key}[{i}]: empty species name")


def species_not_both_allowed_and_blocked(config: Config) -> None:
    """No species is in both events.allow and events.block."""
    both = sorted(set(config.events.allow) & set(config.events.block))
    if both:
        raise ConfigError(f"events: {both[0]!r} is in both events.allow and events.block; keep one")


def metrics_port_not_broker_port(config: Config) -> None:
    """metrics.port is not mqtt.port when the broker is on this machine (one of the two could not listen)."""
    metrics, mqtt = config.metrics, config.mqtt
    if not (metrics.enabled and mqtt.host and metrics.port == mqtt.port):
        return
    if is_loopback(mqtt.host) or mqtt.host == metrics.bind:
        raise ConfigError(
            f"metrics.port: {metrics.port} is also mqtt.port of the broker on this machine ({mqtt.host}); "
            "choose another metrics.port, e.g. 9464"
        )


def web_one_password_source(config: Config) -> None:
    """At most one of web.password_file and web.password_env."""
    if config.web.password_file and config.web.password_env:
        raise ConfigError("web: give only one of web.password_file and web.password_env")


def web_beyond_loopback_needs_password(config: Config) -> None:
    """A page others can reach takes corrections only with a password: one must be set to bind beyond loopback."""
    web = config.web
    if web.enabled and not is_loopback(web.bind) and not (web.password_file or web.password_env):
        raise ConfigError(
            f"web.bind: {web.bind} lets other machines reach the page, which then needs a password; "
            "set web.password_file (the password on one line, mode 600) or web.password_env, or bind 127.0.0.1"
        )


def web_port_free_of_metrics(config: Config) -> None:
    """The page and /metrics cannot share a port."""
    if config.web.enabled and config.metrics.enabled and config.web.port == config.metrics.port:
        raise ConfigError(f"web.port: {config.web.port} is also metrics.port; choose another, e.g. 8765")


RULES: tuple[Callable[[Config], None], ...] = (
    cameras_not_empty,
    camera_names_unique,
    reconnect_max_not_below_initial,
    localiser_has_detector_file,
    url_goes_with_file_and_sha256,
    teacher_file_exists,
    teacher_passes_within_track_timeout,
    model_device_available,
    one_password_source,
    password_needs_username,
    events_qos_at_least_once,
    gstreamer_decoder_needs_opencv_with_gstreamer,
    tls_cert_needs_key,
    tls_files_usable,  # after tls_cert_needs_key: a certificate without its key cannot load
    species_names_not_empty,
    species_not_both_allowed_and_blocked,
    metrics_port_not_broker_port,
    web_one_password_source,
    web_beyond_loopback_needs_password,
    web_port_free_of_metrics,
)


def check_rules(config: Config, source: str) -> None:
    """Run every rule in order; the first broken one is the error, prefixed with `source` (the file)."""
    for rule in RULES:
        try:
            rule(config)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def device_problem(spec: str) -> str | None:
    """Why the torch device `spec` (auto, cpu, cuda, cuda:N, mps) cannot be used here, or None if it can."""
    cuda = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if cuda is None and spec != "mps":
        return None  # auto and cpu always work; binder.py rejected anything else
    import torch  # only for a GPU device: the import takes seconds

    if cuda is None:
        if not torch.backends.mps.is_available():
            return f"model.device: {spec!r} asked for, but MPS is not available; use 'auto' or 'cpu'"
        return None
    if not torch.cuda.is_available():
        return f"model.device: {spec!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'"
    count = torch.cuda.device_count()
    if cuda.group(1) is not None and int(cuda.group(1)) >= count:
        return (
            f"model.device: {spec!r} asked for, but torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
            "use one of those, 'cuda' or 'auto'"
        )
    return None


def _password_keys(config: Config) -> list[str]:
    return [k for k in ("password", "password_file", "password_env") if getattr(config.mqtt, k)]


def is_loopback(host: str) -> bool:
    """This machine by name or address (a host name elsewhere is not looked up: False)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: where it points is not known until it is looked up
