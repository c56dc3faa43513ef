"""`birdwatch doctor`: a setup checked end to end, one line per check, with what to do when it fails.

Each check uses the code `birdwatch run` uses (the config loader, the weights lookup, a real
CameraReader, the broker settings and TLS context of the MQTT sink), so a pass here means the
service will get as far. Nothing is changed: no file is written but a probe that is removed again,
and the one MQTT message (`<prefix>/doctor`, not retained) tells nobody anything. No secret is
printed: every line goes through the same redaction as the log.
"""

from __future__ import annotations

import configparser
import grp
import os
import pwd
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request
from urllib.request import urlopen

import torch

from birdwatch.backends import EXTRA
from birdwatch.backends import Backend
from birdwatch.backends import candidates
from birdwatch.capture.reader import CameraReader
from birdwatch.capture.reader import CameraStatus
from birdwatch.capture.reader import source_kind
from birdwatch.classify.engine import WorkerPlan
from birdwatch.classify.models import class_names_of
from birdwatch.classify.models import classifier_weights
from birdwatch.classify.models import resolve_device
from birdwatch.config import CameraConfig
from birdwatch.config import Config
from birdwatch.config import load_config
from birdwatch.config.rules import is_loopback
from birdwatch.decide.species import check_species_lists
from birdwatch.deliver import repair
from birdwatch.deliver.broker import BrokerProbe
from birdwatch.deliver.broker import tls_failure_hint
from birdwatch.deliver.discovery import node_id
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.history import StoreError
from birdwatch.errors import BirdwatchError
from birdwatch.locate.teacher import teacher_weights
from birdwatch.precision import Precision
from birdwatch.redact import redact_text
from birdwatch.redact import redact_url
from birdwatch.types import Frame
from birdwatch.weights import WeightsSource

BROKER_TIMEOUT_S = 10.0
URL_TIMEOUT_S = 10.0
INSTALLED_UNITS = ("/etc/systemd/system/birdwatch.service", "/lib/systemd/system/birdwatch.service")
MB = 1e6


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    what: str  # the thing checked: "config", "camera feeder", "broker", ...
    detail: str  # what was found or measured
    fix: str = ""  # what to do about it, when it is not ok

    def line(self) -> str:
        text = f"{self.verdict:<4}  {self.what:<17} {self.detail}"
        return f"{text}; {self.fix}" if self.fix else text


def run_doctor(
    config_path: str, *, seconds: float = 3.0, unit: str | None = None, out: Callable[[str], None] = print
) -> int:
    """Print one line per check; 0 when none failed, 1 otherwise."""
    secrets: list[str] = []
    blocked: list[CameraReader] = []
    failed = 0
    for finding in diagnose(config_path, seconds=seconds, unit=unit, secrets=secrets, blocked=blocked):
        out(redact_text(finding.line(), secrets))
        failed += finding.verdict is Verdict.FAIL
    out("all checks passed" if not failed else f"{failed} check(s) failed")
    code = 1 if failed else 0
    if any(not reader.join(time.monotonic()) for reader in blocked):
        # A read still blocked in FFmpeg: tearing the interpreter down around it would abort the process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def diagnose(
    config_path: str, *, seconds: float, unit: str | None, secrets: list[str], blocked: list[CameraReader]
) -> Iterator[Finding]:
    """Every check in the order a start meets them. `secrets` is filled in as soon as the config is read;
    `blocked` gets the camera readers that did not stop in time."""
    try:
        config = load_config(config_path)
        password = config.mqtt.password_value()
    except BirdwatchError as exc:
        yield Finding(Verdict.FAIL, "config", str(exc), "fix it; `birdwatch check-config FILE` says the same")
        return
    secrets += [*config.secrets(), password or ""]
    yield Finding(Verdict.OK, "config", f"{config_path}: {len(config.cameras)} camera(s)")
    yield check_weights(config)
    if config.localiser == "teacher":
        yield check_teacher(config)
    yield check_inference(config)
    for camera in config.cameras:
        yield check_camera(camera, secrets, seconds, blocked)
    yield from check_broker(config, password)
    yield from check_folders(config)
    yield check_history(config)
    yield from check_video_group(config, unit)


# ---- weights and inference ----------------------------------------------------------------------


def check_weights(config: Config) -> Finding:
    model = config.model
    try:
        url = WeightsSource.of_model(model).pending()
        if url is not None:
            return _weights_to_fetch(url, model.models_dir if not model.file else str(Path(model.file).parent))
        path, _, name = classifier_weights(model)  # also checks the SHA-256 (published, or model.sha256)
        species = class_names_of(path)
        check_species_lists(config.events, species, name)
    except BirdwatchError as exc:
        return Finding(Verdict.FAIL, "weights", str(exc))
    checked = model.verify_sha256 and (not model.file or model.sha256)
    source = "model.sha256" if model.file else "birder's published hash"
    sha = f"SHA-256 matches {source}" if checked else "SHA-256 not checked (a file of your own without model.sha256)"
    size = path.stat().st_size / MB
    return Finding(Verdict.OK, "weights", f"{path} ({size:.0f} MB, {len(species)} species, {sha})")


def check_teacher(config: Config) -> Finding:
    """The teacher's weights: here with the right SHA-256, or reachable for the first start to fetch."""
    teacher, model = config.teacher, config.model
    try:
        url = WeightsSource.of_teacher(teacher, model).pending()
        if url is not None:
            folder = model.models_dir if not teacher.file else str(Path(teacher.file).parent)
            return replace(_weights_to_fetch(url, folder), what="teacher")
        weights = teacher_weights(teacher, model)
    except BirdwatchError as exc:
        return Finding(Verdict.FAIL, "teacher", str(exc))
    size = weights.path.stat().st_size / MB
    return Finding(Verdict.OK, "teacher", f"{weights.path} ({size:.0f} MB, {weights.network} on {weights.backbone})")


def _weights_to_fetch(url: str, folder: str) -> Finding:
    """Missing weights are fetched by the first start: fine if their URL answers from here."""
    shown = redact_url(url)
    try:
        with urlopen(Request(url, method="HEAD"), timeout=URL_TIMEOUT_S):
            pass
    except HTTPError as exc:
        reason = f"HTTP {exc.code} {exc.reason}"
    except OSError as exc:
        reason = str(getattr(exc, "reason", None) or exc)
    else:
        return Finding(Verdict.OK, "weights", f"not here yet; the first start fetches them from {shown} (reachable)")
    return Finding(
        Verdict.FAIL,
        "weights",
        f"not here, and {shown} cannot be reached ({reason})",
        f"connect this box to the internet once, or fetch the file elsewhere and put it into {folder}",
    )


def check_inference(config: Config) -> Finding:
    try:
        device = resolve_device(config.model.device)
    except BirdwatchError as exc:
        return Finding(Verdict.FAIL, "inference", str(exc))
    engine = config.engine
    precision = Precision.resolve(device, engine.precision, engine.channels_last)
    plan = WorkerPlan.resolve(device, engine.workers, engine.threads)
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type
    layout = ", channels_last" if precision.channels_last else ""
    threads = f" x {plan.threads} thread(s)" if plan.threads else ""
    here = ", ".join(b.value for b in candidates(device))
    wanted = Backend(engine.backend)
    if wanted is not Backend.AUTO and wanted not in candidates(device):
        return Finding(
            Verdict.WARN,
            "inference",
            f"engine.backend {wanted} cannot run on {where} here (installed: {here}); torch will run instead",
            EXTRA.get(wanted, "choose one of the installed backends"),
        )
    return Finding(
        Verdict.OK,
        "inference",
        f"engine.backend {wanted} (installed: {here}) on {where}, torch {torch.__version__} {precision.dtype}{layout}, "
        f"{plan.workers} classify worker(s){threads}",
    )


# ---- cameras --------------------------------------------------------------------------------------


class _Sampler:
    """A FrameSink that keeps when each frame came and its size, not the frames."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.size: tuple[int, int] | None = None
        self.got = threading.Event()

    def put(self, frame: Frame) -> None:
        self.times.append(time.monotonic())
        self.size = (frame.image.shape[1], frame.image.shape[0])
        self.got.set()


_CAMERA_HINTS = {
    "rtsp": "check the URL (path, user and password in it) and that the camera has RTSP on; try rtsp_transport",
    "http": "check that the URL opens in a browser on this machine",
    "https": "check that the URL opens in a browser on this machine",
    "usb": "check the device is plugged in (ls /dev/v4l/by-id/) and this user may open it (the video group)",
    "file": "check that the file is a video OpenCV can read",
}


def check_camera(camera: CameraConfig, secrets: list[str], seconds: float, blocked: list[CameraReader]) -> Finding:
    """Read the camera with the service's own reader for `seconds`: its resolution and real frame rate."""
    what = f"camera {camera.name}"
    sampler = _Sampler()
    reader = CameraReader(camera, sampler, secrets)
    reader.start()
    try:
        error = _sample(reader, sampler, camera.open_timeout_s + seconds + 1.0, seconds)
    finally:
        reader.request_stop()
        if not reader.join(time.monotonic() + 2.0):
            blocked.append(reader)  # the other checks go on; the process exits without waiting for it
    shown = redact_url(camera.url)
    if not sampler.times:
        error = error or f"no frame within {camera.open_timeout_s:.0f} s"
        fix = _CAMERA_HINTS.get(reader.kind, "check the URL")
        return Finding(Verdict.FAIL, what, error if shown in error else f"{shown}: {error}", fix)
    assert sampler.size is not None
    width, height = sampler.size
    span = sampler.times[-1] - sampler.times[0]
    rate = f"{(len(sampler.times) - 1) / span:.1f} frames/s" if span > 0 else "1 frame"
    paced = "" if reader.kind != "file" or camera.realtime else " (realtime: false, as fast as it decodes)"
    return Finding(Verdict.OK, what, f"{shown}: {width}x{height}, {rate} over {span:.1f} s{paced}")


def _sample(reader: CameraReader, sampler: _Sampler, timeout: float, seconds: float) -> str:
    """Wait for `seconds` of frames, the source's end, or its first failure; the reader's error, if any."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = reader.stats.status
        if sampler.times and sampler.times[-1] - sampler.times[0] >= seconds:
            return ""
        if status in (CameraStatus.FINISHED, CameraStatus.FAILED):
            return reader.stats.last_error
        if not sampler.times and status is CameraStatus.BACKOFF:
            return reader.stats.last_error  # the first open failed: that is the answer
        sampler.got.wait(0.1)
        sampler.got.clear()
    return reader.stats.last_error


# ---- broker and Home Assistant --------------------------------------------------------------------


def check_broker(config: Config, password: str | None) -> Iterator[Finding]:
    cfg = config.mqtt
    if not cfg.host:
        yield Finding(Verdict.SKIP, "broker", "no mqtt.host: events go to the log and the history only")
        return
    where = f"{cfg.host}:{cfg.port}" + (" (TLS)" if cfg.tls is not None else "")
    try:
        probe = BrokerProbe(config.mqtt, password)
    except BirdwatchError as exc:  # a TLS file that does not load
        yield Finding(Verdict.FAIL, "broker", str(exc))
        return
    try:
        yield from _connected(probe, config, where)
    finally:
        probe.client.loop_stop()
        probe.client.disconnect()


def _connected(probe: BrokerProbe, config: Config, where: str) -> Iterator[Finding]:
    cfg = config.mqtt
    failure = _connect(probe, cfg.host or "", cfg.port)
    if failure is not None:
        yield Finding(Verdict.FAIL, "broker", f"{where}: {failure[0]}", failure[1])
        return
    prefix = cfg.topic_prefix
    probe.client.publish(f"{prefix}/doctor", "birdwatch doctor: may this client publish here?", qos=1)
    if not probe.puback.wait(BROKER_TIMEOUT_S):
        yield Finding(Verdict.FAIL, "broker", f"{where}: no acknowledgement of a publish within 10 s")
        return
    user = f" as {cfg.username}" if cfg.username else " (anonymous)"
    if probe.publish_reason is not None and probe.publish_reason.is_failure:
        yield Finding(
            Verdict.FAIL,
            "broker",
            f"{where}{user}: publishing under {prefix}/ refused ({probe.publish_reason})",
            f"allow this user to write {prefix}/# in the broker's ACL, or change mqtt.topic_prefix",
        )
        return
    yield Finding(Verdict.OK, "broker", f"{where}{user}: connected, may publish under {prefix}/")
    if cfg.password_value() and cfg.tls is None and not is_loopback(cfg.host or ""):
        yield Finding(Verdict.WARN, "broker", "the password goes over the network unencrypted", "set mqtt.tls")
    yield _discovery_seen(probe, config)


def _connect(probe: BrokerProbe, host: str, port: int) -> tuple[str, str] | None:
    """None once connected; else (what happened, what to do)."""
    try:
        probe.client.connect(host, port, keepalive=30)
    except OSError as exc:
        hint = tls_failure_hint(exc)
        if hint:
            return hint, "see the TLS section of configs/example.yaml"
        return f"cannot connect ({exc.strerror or exc})", "is the broker running there? check mqtt.host and mqtt.port"
    probe.client.loop_start()
    if not probe.connack.wait(BROKER_TIMEOUT_S):
        return "no answer to CONNECT within 10 s", "is mqtt.port an MQTT listener (TLS needs mqtt.tls)?"
    reason = probe.connect_reason
    if reason is not None and reason.is_failure:
        return f"refused the connection ({reason})", "check mqtt.username and the password (password_file/_env)"
    return None


def _discovery_seen(probe: BrokerProbe, config: Config) -> Finding:
    ha = config.homeassistant
    if not ha.discovery:
        return Finding(Verdict.SKIP, "home assistant", "homeassistant.discovery is off")
    prefix = ha.discovery_prefix
    probe.client.subscribe(f"{prefix}/#", qos=0)
    probe.wait_retained(BROKER_TIMEOUT_S)
    ours = {node_id(config.mqtt.topic_prefix, cam.name) for cam in config.cameras}
    others = [t for t in probe.retained if len(t.split("/")) < 3 or t.split("/")[2] not in ours]
    mine = len(probe.retained) - len(others)
    if others:
        return Finding(Verdict.OK, "home assistant", f"{len(others)} retained topic(s) under {prefix}/ from others")
    if mine:
        return Finding(
            Verdict.OK, "home assistant", f"only birdwatch's own {mine} discovery config(s) under {prefix}/ so far"
        )
    return Finding(
        Verdict.WARN,
        "home assistant",
        f"nothing retained under {prefix}/",
        "if Home Assistant's MQTT integration uses this broker with another discovery prefix, "
        "set homeassistant.discovery_prefix",
    )


# ---- folders ----------------------------------------------------------------------------------------


def check_folders(config: Config) -> Iterator[Finding]:
    store = Path(config.store.path).expanduser()
    folders = [
        ("model.models_dir", Path(config.model.models_dir), 200.0),
        ("store.path", store.parent, 50.0),
    ]
    if config.snapshots.enabled:
        folders.append(("snapshots.dir", Path(config.snapshots.dir), config.snapshots.max_total_mb or 1024.0))
    if config.record.enabled:
        folders.append(("record.dir", Path(config.record.dir), config.record.budget_mb))
    for key, folder, need_mb in folders:
        yield _check_folder(key, folder, need_mb, shown=str(store) if key == "store.path" else str(folder))


def check_history(config: Config) -> Finding:
    """The history file itself: a folder that takes writes says nothing about a file a power cut damaged."""
    path = Path(config.store.path).expanduser()
    if not path.exists():
        return Finding(Verdict.OK, "history", f"{path}: not there yet (birdwatch run creates it)")
    damaged = repair.damage(path)
    if damaged is not None:
        return Finding(
            Verdict.FAIL,
            "history",
            f"{path} is damaged ({damaged})",
            "restart birdwatch: it moves the file aside (kept as "
            f"{path.name}.damaged-<time>) and copies the events it can still read into a fresh history",
        )
    try:
        store = EventStore(path, readonly=True)
    except StoreError as exc:
        return Finding(Verdict.FAIL, "history", str(exc), "check its owner and permissions, and the disk (dmesg)")
    try:
        pending = store.count_pending()
    finally:
        store.close()
    return Finding(Verdict.OK, "history", f"{path}: passes SQLite's quick_check; {pending} event(s) not yet delivered")


def _check_folder(key: str, folder: Path, need_mb: float, shown: str) -> Finding:
    existing = folder.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    user = pwd.getpwuid(os.geteuid()).pw_name
    try:  # a real write, not os.access: root, read-only mounts and immutable folders all answer honestly
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".birdwatch-doctor-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Finding(
            Verdict.FAIL,
            key,
            f"{shown}: {existing} is not writable by {user} ({exc.strerror})",
            f"give {user} write access there (the service writes as its own user), or set {key} elsewhere",
        )
    free_mb = shutil.disk_usage(existing).free / MB
    where = shown if existing == folder.expanduser().absolute() else f"{shown} (to be created in {existing})"
    if free_mb < need_mb:
        return Finding(
            Verdict.WARN, key, f"{where}: writable, only {free_mb:.0f} MB free", f"it may need {need_mb:.0f} MB"
        )
    return Finding(Verdict.OK, key, f"{where}: writable, {free_mb / 1000:.1f} GB free")


# ---- USB cameras and the service user ---------------------------------------------------------------


def check_video_group(config: Config, unit: str | None) -> Iterator[Finding]:
    usb = [cam for cam in config.cameras if source_kind(cam.url) == "usb"]
    if not usb:
        return
    unit_path = Path(unit) if unit else next((Path(p) for p in INSTALLED_UNITS if Path(p).is_file()), None)
    if unit_path is None:
        yield Finding(Verdict.SKIP, "video group", "birdwatch.service is not installed; checked as this user above")
        return
    service = _unit_service_section(unit_path)
    user = service.get("User", "root")
    if "video" in service.get("SupplementaryGroups", "").split():
        yield Finding(Verdict.OK, "video group", f"{unit_path} gives {user} the video group (SupplementaryGroups=)")
        return
    if _in_group(user, "video"):
        yield Finding(Verdict.OK, "video group", f"{user} (User= of {unit_path}) is in the video group")
        return
    yield Finding(
        Verdict.FAIL,
        "video group",
        f"{user} (User= of {unit_path}) is not in the video group, so it cannot open USB cameras",
        f"sudo usermod -aG video {user}, or SupplementaryGroups=video in the unit",
    )


def _unit_service_section(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive in units
    parser.read_string(path.read_text(errors="replace"))
    return dict(parser["Service"]) if parser.has_section("Service") else {}


def _in_group(user: str, group: str) -> bool:
    try:
        entry = grp.getgrnam(group)
        account = pwd.getpwnam(user)
    except KeyError:
        return False
    return user in entry.gr_mem or account.pw_gid == entry.gr_gid
