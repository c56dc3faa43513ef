"""Weights files: where each part's file is, fetching it when it is missing, and checking it.

One room for every part that runs from a weights file: the classifier (`model.*`), the teacher
(`teacher.*`), and the detector head (`detector.file`, made here by `birdwatch detector train`).
A part's weights are a birder pretrained name, kept in `model.models_dir` as `<name>.pt` (birder's
own file name and format) and checked against birder's published SHA-256, or a file of one's own,
fetched from its `url` when it is missing and checked against its `sha256`.

Fetching uses birder's downloader, into a partial file beside the target (`<file>.<token>.partial`)
that the fetch holds a lock on (`<file>.<token>.lock`, `flock`) for as long as it downloads; checked,
then moved over the target in one step, so a failed fetch leaves the target as it was (`models pull
--force` replaces a file only with a checked download). A fetch that is interrupted (Ctrl-C, a stop)
removes its partial file on the way out; one killed outright leaves it, and its lock free: every
fetch and every start first removes the partial files whose lock nobody holds, however recent, and
never one a fetch still holds. `model.mirror` serves the pretrained files from elsewhere (a NAS for
a box without internet).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlsplit

from birdwatch.config import Config
from birdwatch.config import ModelConfig
from birdwatch.config import TeacherConfig
from birdwatch.errors import ModelError
from birdwatch.redact import redact_url

log = logging.getLogger(__name__)

# birder's downloader opens its URL without a timeout; a server that stops sending would hang the start.
DOWNLOAD_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 10.0
STOP_POLL_S = 0.25  # how soon an asked-for stop ends a fetch

CLASSIFIER = "image_classification"  # birder's Task values, without importing birder for them
DETECTOR = "object_detection"

# Called every PROGRESS_EVERY_S while a download runs, with the file being fetched and the bytes fetched so far.
WhileFetching = Callable[[Path, int], None]


class FetchStopped(ModelError):
    """A fetch ended because a stop was asked for; nothing of it was kept."""


@dataclass(frozen=True)
class WeightsSource:
    """Where one part's weights come from, as its config section says."""

    key: str  # the config section errors name: "model" or "teacher"
    task: str  # the birder task a pretrained name must be
    name: str  # a birder pretrained name, used when `file` is None
    file: str | None  # a file of one's own
    url: str | None  # where `file` is fetched from when it is missing
    sha256: str | None  # `file`'s SHA-256
    models_dir: str
    mirror: str | None  # serves the pretrained `<name>.pt` instead of birder's hub
    download: str  # auto: fetched when missing; never
    verify_sha256: bool = True

    @classmethod
    def of_model(cls, cfg: ModelConfig) -> WeightsSource:
        return cls(
            "model", CLASSIFIER, cfg.name, cfg.file, cfg.url, cfg.sha256, cfg.models_dir, cfg.mirror,
            cfg.download, cfg.verify_sha256,
        )  # fmt: skip

    @classmethod
    def of_teacher(cls, cfg: TeacherConfig, model: ModelConfig) -> WeightsSource:
        """The teacher is fetched and checked as the classifier is: into model.models_dir, from model.mirror."""
        return cls(
            "teacher", DETECTOR, cfg.name, cfg.file, cfg.url, cfg.sha256, model.models_dir, model.mirror,
            model.download, model.verify_sha256,
        )  # fmt: skip

    @property
    def path(self) -> Path:
        return Path(self.file) if self.file else pretrained_path(self.name, self.models_dir)

    @property
    def label(self) -> str:
        """What logs and events call these weights: the pretrained name or the file's stem."""
        return self.path.stem if self.file else self.name

    def metadata(self) -> dict[str, Any]:
        """birder's metadata of the pretrained name (networks, size, SHA-256); its task checked."""
        return pretrained_metadata(self.name, self.task, key=f"{self.key}.name")

    def pending(self, *, again: bool = False) -> str | None:
        """The URL a start fetches the weights from, or None when they are here (unless `again`: `models pull
        --force`) or will not be fetched (`model.download: never`, or a file without a url)."""
        if self.download == "never":
            return None
        wanted = again or not self.path.is_file()
        if self.file:
            return self.url if self.url and self.sha256 and wanted else None
        self.metadata()  # an unknown name is an error, not a download
        return pretrained_url(self.name, self.mirror) if wanted else None

    def ensure(
        self,
        *,
        while_fetching: WhileFetching | None = None,
        stop: threading.Event | None = None,
        progress: bool | None = None,
        force: bool = False,
    ) -> None:
        """Fetch the weights when they are missing (or, `force`, present) and may be fetched; `checked` reports a
        missing file."""
        prune_partials(self.path)  # at every start: what a killed fetch left
        url = self.pending(again=force)
        if url is None:
            return
        log.info("fetching %s from %s", self.path, redact_url(url))
        fetch(
            url,
            self.path,
            self.expected_sha256(),
            replace=force,
            progress=sys.stderr.isatty() if progress is None else progress,
            while_fetching=while_fetching,
            stop=stop,
        )

    def expected_sha256(self) -> str | None:
        if self.file:
            return self.sha256.lower() if self.sha256 else None
        return str(self.metadata()["formats"]["pt"]["sha256"])

    def checked(self) -> Path:
        """The weights file, there and (where a hash is known and `verify_sha256`) matching its SHA-256."""
        path = self.path
        if self.file:
            if not path.is_file():
                raise ModelError(f"{self.key}.file: weights file {str(path)!r} does not exist")
            if self.sha256 and self.verify_sha256 and not sha256_matches(path, self.sha256):
                raise ModelError(
                    f"{path} does not match {self.key}.sha256 (partial or replaced file); delete it to fetch it "
                    f"again from {self.key}.url, or correct {self.key}.sha256"
                )
            return path
        pt = self.metadata()["formats"]["pt"]
        pull_it = f"birdwatch models pull {self.name} --models-dir {self.models_dir}"
        if not path.is_file():
            raise ModelError(
                f"{self.key} weights {str(path)!r} not found; fetch them with "
                f"`{pull_it}` ({pt['file_size']:.0f} MB, needs internet once)"
            )
        if self.verify_sha256 and not sha256_matches(path, pt["sha256"]):
            raise ModelError(
                f"{path} does not match {self.name}'s published SHA-256 (partial or corrupt download); "
                f"run `{pull_it} --force`"
            )
        return path


def weights_to_fetch(config: Config) -> list[WeightsSource]:
    """What a start of `config` fetches when missing: the classifier, and the teacher `localiser: teacher` runs.
    (`birdwatch learn` and `detector label` fetch the teacher themselves; `models pull --config --teacher` too.)"""
    sources = [WeightsSource.of_model(config.model)]
    if config.localiser == "teacher":
        sources.append(WeightsSource.of_teacher(config.teacher, config.model))
    return sources


def pretrained_metadata(name: str, task: str | None = CLASSIFIER, *, key: str = "model.name") -> dict[str, Any]:
    """birder's metadata of a pretrained name (its networks, file size, SHA-256); of `task`, unless None."""
    from birder.model_registry import registry

    file_key = key.replace(".name", ".file")
    if not registry.pretrained_exists(name):
        raise ModelError(
            f"{key}: {name!r} is not a birder pretrained model; `birdwatch models list` shows them, "
            f"or set {file_key} to a local birder .pt file"
        )
    meta: dict[str, Any] = dict(registry.get_pretrained_metadata(name))
    if task is not None and meta["task"] != task:
        wanted = "a classifier" if task == CLASSIFIER else "a detector"
        raise ModelError(f"{key}: {name!r} is a {meta['task']} model, not {wanted}")
    return meta


def pretrained_names(task: str) -> list[str]:
    from birder.model_registry import Task
    from birder.model_registry import registry

    return list(registry.list_pretrained_models(task=Task(task)))


def pretrained_path(name: str, models_dir: str | Path) -> Path:
    return Path(models_dir) / f"{name}.pt"


def pretrained_url(name: str, mirror: str | None = None) -> str:
    """Where birder publishes `<name>.pt`, or the same file name under `mirror`."""
    if mirror:
        return f"{mirror.rstrip('/')}/{name}.pt"
    from birder.common.lib import get_pretrained_model_url

    return str(get_pretrained_model_url(name, "pt")[1])


def sha256_matches(path: Path, expected: str) -> bool:
    return file_sha256(path) == expected.lower()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, remembered per path, size and mtime: a start hashes each file several times
    (its check, the export cache's key, a head's classifier), and a 148 MB file takes a second to hash."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(path)
    return _SHA_CACHE[key]


def sha256_of(path: Path) -> str:
    """SHA-256 of a file read now, never remembered: for a file that must be checked as it is on disk."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pull(
    name: str,
    models_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    mirror: str | None = None,
    while_fetching: WhileFetching | None = None,
) -> Path:
    """Fetch pretrained weights (a classifier or a detector) into `models_dir`, checked against birder's
    published SHA-256."""
    meta = pretrained_metadata(name, task=None)
    dst = pretrained_path(name, models_dir)
    pt = meta["formats"]["pt"]
    log.info("fetching %s (%.0f MB) into %s", name, pt["file_size"], dst)
    url = pretrained_url(name, mirror)
    fetch(url, dst, pt["sha256"], replace=force, progress=progress, while_fetching=while_fetching)
    return dst


def fetch(
    url: str,
    dst: Path,
    sha256: str | None,
    *,
    replace: bool = False,
    progress: bool = True,
    while_fetching: WhileFetching | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Download `url` to `dst`: birder's downloader writes this fetch's partial file and checks its SHA-256, then
    it is moved over `dst` in one step. A failed or stopped fetch leaves nothing of its own behind, and `dst` as
    it was. An existing `dst` is kept when it matches (refused when not), unless `replace`."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {dst.parent} ({exc.strerror}); check its owner and mode") from None
    prune_partials(dst)
    if dst.exists() and not replace:
        if sha256 is None or sha256_matches(dst, sha256):
            return
        raise ModelError(f"{dst} exists but does not match its SHA-256; run with --force to replace it")
    try:
        _download_in_background(url, dst, sha256, progress, while_fetching, stop)
    except RuntimeError as exc:
        if "invalid hash" not in str(exc):  # birder's words for a SHA-256 mismatch
            raise
        raise ModelError(
            f"the file from {redact_url(url)} does not match the expected SHA-256 ({exc}); nothing was kept. "
            f"Is {urlsplit(url).hostname} serving the right file?"
        ) from None
    except HTTPError as exc:
        raise ModelError(
            f"cannot download {dst.name} from {redact_url(url)}: HTTP {exc.code} {exc.reason}; "
            f"check the address, or put {dst.name} into {dst.parent} by hand"
        ) from None
    except OSError as exc:  # URLError, timeouts, a full disk
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise ModelError(
            f"cannot download {dst.name} from {redact_url(url)}: {reason}; check the internet connection, "
            f"or fetch that file on another machine and put it into {dst.parent}"
        ) from None


def _download_in_background(
    url: str,
    dst: Path,
    sha256: str | None,
    progress: bool,
    while_fetching: WhileFetching | None,
    stop: threading.Event | None,
) -> None:
    """birder's download_file, in a thread, so that the caller can report progress (to the log, to
    systemd, whose start timeout a large download could outlast) and give up on a stop meanwhile.

    birder's loop cannot be cancelled: on any way out before it ends (Ctrl-C, a stop, an error here) this
    fetch's partial files are removed at once and its lock let go; the thread, a daemon, writes on into
    the unlinked file, and neither its own move nor the one into `dst` happens."""
    from birder.common import cli as birder_cli

    failure: list[BaseException] = []
    finished = threading.Event()  # not Thread.is_alive(): a join interrupted by Ctrl-C marks the thread stopped
    abandoned = threading.Event()  # the caller gave up: what the thread still downloads is not kept

    with _fetch_lock(dst) as partial:

        def work() -> None:
            try:
                # Into this fetch's partial (birder writes `<partial>.<uuid>.partial` and moves it there once
                # checked), then over `dst` in one step: an old file stays until a checked one replaces it.
                birder_cli.download_file(url, partial, sha256, progress_bar=progress)
                if abandoned.is_set():
                    partial.unlink(missing_ok=True)
                else:
                    os.replace(partial, dst)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            finally:
                finished.set()

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # only sockets opened without their own timeout: urlopen's
        try:
            threading.Thread(target=work, name="fetch-weights", daemon=True).start()
            next_report = time.monotonic() + PROGRESS_EVERY_S
            while not finished.wait(STOP_POLL_S):
                if stop is not None and stop.is_set():
                    raise FetchStopped(f"fetching {dst.name} stopped before it finished; nothing was kept")
                if time.monotonic() >= next_report:
                    next_report += PROGRESS_EVERY_S
                    done = partial_bytes(partial)
                    if not progress:  # no bar (a service, a pipe): the log tells how far it got
                        log.info("fetching %s: %.1f MB so far", dst.name, done / 1e6)
                    if while_fetching:
                        while_fetching(dst, done)
        finally:
            socket.setdefaulttimeout(previous)
            if not finished.is_set():
                abandoned.set()
                for part in _files_of(partial):
                    part.unlink(missing_ok=True)
    if failure:
        raise failure[0]


@contextlib.contextmanager
def _fetch_lock(dst: Path) -> Iterator[Path]:
    """This fetch's lock on `<dst>.<token>.lock`, held (flock) until the block ends; yields the partial file
    `<dst>.<token>.partial` to download into. prune_partials tells a live fetch's partial by the lock held."""
    while True:
        token = uuid.uuid4().hex
        lock = _lock_path(dst, token)
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits out a prune that found it free a moment ago, and removed it
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:
        yield dst.with_name(f"{dst.name}.{token}.partial")
    finally:
        lock.unlink(missing_ok=True)  # while held: no prune can take it for a killed fetch's
        os.close(fd)


def _lock_path(dst: Path, token: str) -> Path:
    return dst.with_name(f"{dst.name}.{token}.lock")


def partial_bytes(partial: Path) -> int:
    """Bytes a fetch has downloaded so far into `partial` (birder writes `<partial>.<uuid>.partial` beside it)."""
    done = 0
    for part in _files_of(partial):
        with contextlib.suppress(FileNotFoundError):  # moved into place (or removed) since the glob
            done += part.stat().st_size
    return done


def _files_of(partial: Path) -> list[Path]:
    """One fetch's partial files: `partial`, once birder has moved its download there, and birder's own."""
    return [partial, *partial.parent.glob(f"{partial.name}.*.partial")]


def prune_partials(dst: Path) -> list[Path]:
    """Remove the partial files of `dst` whose fetch no longer holds its lock (one killed outright, however
    recently), and their lock files; never those of a fetch still running, in this process or another."""
    removed = []
    for token, parts in _fetches(dst).items():
        try:
            if _remove_if_free(_lock_path(dst, token), parts):
                removed += parts
        except OSError as exc:  # another user's (a killed `sudo models pull`): never a reason not to start
            where = parts[0] if parts else _lock_path(dst, token)
            log.warning("cannot remove %s, left by an interrupted fetch (%s); remove it by hand", where, exc.strerror)
    if removed:
        log.info("removed %d partial download(s) of %s left by an interrupted fetch", len(removed), dst.name)
    return removed


def _remove_if_free(lock: Path, parts: list[Path]) -> bool:
    """Remove one fetch's partial files, then its lock file, unless the fetch holds the lock. A partial without a
    lock file is an older birdwatch's: a fetch takes its lock before it writes."""
    with contextlib.ExitStack() as held:
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
            held.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a fetch still downloading
        for part in [*parts, lock]:  # the lock last, while held: a fetch taking it waits, then finds it gone
            part.unlink(missing_ok=True)
    return True


def _fetches(dst: Path) -> dict[str, list[Path]]:
    """The partial files beside `dst` by the fetch that wrote them (its token); a lock file alone is a fetch too."""
    if not dst.parent.is_dir():
        return {}
    found: dict[str, list[Path]] = {}
    for lock in dst.parent.glob(f"{dst.name}.*.lock"):
        found.setdefault(lock.name[len(dst.name) + 1 : -len(".lock")], [])
    for part in dst.parent.glob(f"{dst.name}.*.partial"):
        found.setdefault(part.name[len(dst.name) + 1 :].split(".", 1)[0], []).append(part)
    return {token: sorted(parts) for token, parts in found.items() if token and "." not in token}
