"""The ONNX export every non-torch backend starts from, made once per weights file and cached.

Each artefact in the cache (`<models_dir>/compiled/`) has a manifest beside it (`<file>.json`) that
holds the key it was made for and its own SHA-256. An artefact is used only when its manifest's key
is the one asked for and its bytes hash to what the manifest says; anything else (a new weights
file, another torch or backend version, another input shape, a file cut short by a power cut) is
made again, never trusted. Files are written to a temporary name and renamed, so a crash mid-export
leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import birder
import torch

from birdwatch import __version__
from birdwatch.backends import Graph
from birdwatch.weights import file_sha256
from birdwatch.weights import sha256_of

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the way a graph is exported changes
OPSET = 18
DIGEST_CHARS = 16  # of the key's SHA-256, in artefact file names
# Key fields in which a new artefact replaces an old one of the same name; the others (shape, precision,
# batch) tell apart artefacts that are all in use, by `detector` and `detector+motion` say.
REPLACED_BY = ("sources_sha256", "export_version", "opset", "torch", "birder", "birdwatch", "tensorrt", "onnx_sha256")
COMPILED_DIR = "compiled"


def cache_dir_for(models_dir: str | Path) -> Path:
    return Path(models_dir) / COMPILED_DIR


def onnx_key(graph: Graph) -> dict[str, Any]:
    return {
        "format": "onnx",
        "export_version": EXPORT_VERSION,
        "opset": OPSET,
        "torch": torch.__version__,
        "birder": birder.__version__,  # the exported graph is birder's code as much as the weights
        "birdwatch": __version__,
        "sources_sha256": [file_sha256(path) for path in graph.sources],
        "input": [3, *graph.input_hw],
        "dynamic_batch": graph.dynamic_batch,
        "outputs": list(graph.outputs),
        **graph.extra_key,
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def onnx_file(graph: Graph, cache_dir: Path) -> Path:
    """The graph's ONNX file, exported now unless a checked one is in the cache."""
    key = onnx_key(graph)
    path = cache_dir / artefact_name(graph.name, key, ".onnx")
    return cached(path, key, lambda tmp: export_onnx(graph, tmp), what=f"{graph.name} to ONNX")


def artefact_name(name: str, key: dict[str, Any], suffix: str) -> str:
    return f"{name}-{key_digest(key)[:DIGEST_CHARS]}{suffix}"


def cached(path: Path, key: dict[str, Any], make: Callable[[Path], None], *, what: str) -> Path:
    """`path` if its manifest matches `key` and its bytes are intact; else `make(tmp)` and record it.
    Making one removes the ones it replaces (same name, made from other weights or by other versions):
    an old export is 40-150 MB. One of the same weights and versions for another precision or shape stays."""
    problem = stale(path, key)
    if problem is None:
        return path
    if problem != "not made yet":
        log.warning("%s: the cached %s is %s; making it again", path.name, what, problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    log.info("making %s (once per weights file, kept in %s) ...", what, path.parent)
    started = time.monotonic()
    try:
        make(tmp)
        digest = sha256_of(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    seconds = time.monotonic() - started
    manifest = {"key": key, "sha256": digest, "bytes": path.stat().st_size, "seconds": round(seconds, 1)}
    write_atomic(manifest_path(path), json.dumps(manifest, indent=2, default=str))
    log.info("made %s in %.1f s: %s (%.1f MB)", what, seconds, path.name, path.stat().st_size / 1e6)
    _remove_replaced(path, key)
    return path


def _remove_replaced(path: Path, key: dict[str, Any]) -> None:
    """Siblings of `path` (same name, other key digest) made from other weights or by other versions."""
    stem = path.name[: -len(path.suffix) - DIGEST_CHARS - 1]
    sibling = re.compile(re.escape(stem) + f"-[0-9a-f]{{{DIGEST_CHARS}}}" + re.escape(path.suffix))
    for old in path.parent.iterdir():
        if old == path or not sibling.fullmatch(old.name):
            continue
        try:
            old_key = json.loads(manifest_path(old).read_text()).get("key", {})
        except (OSError, ValueError):
            old_key = {}  # no readable manifest: never trusted, so nothing to keep
        if any(old_key.get(field) != key.get(field) for field in REPLACED_BY):
            for gone in (old, manifest_path(old)):
                with contextlib.suppress(OSError):
                    gone.unlink()
            log.info("removed %s, made from weights the new one replaces", old.name)


def stale(path: Path, key: dict[str, Any]) -> str | None:
    """Why `path` cannot be used for `key`, or None when it can."""
    manifest_file = manifest_path(path)
    if not path.exists() or not manifest_file.exists():
        return "not made yet"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return "without a readable manifest"
    if json.loads(json.dumps(key, default=str)) != manifest.get("key"):
        return "for other weights or versions"
    if sha256_of(path) != manifest.get("sha256"):  # never the remembered hash: the file itself is checked
        return "damaged (its SHA-256 does not match its manifest)"
    return None


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def export_onnx(graph: Graph, dst: Path) -> None:
    """torch.onnx's TorchScript exporter: it traces birder's networks as they are, with a dynamic batch."""
    x = torch.zeros((2 if graph.dynamic_batch else 1, 3, *graph.input_hw), device=graph.device)
    dynamic = {name: {0: "batch"} for name in ("input", *graph.outputs)} if graph.dynamic_batch else None
    module = graph.module.eval()
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            module,
            (x,),
            str(dst),
            input_names=["input"],
            output_names=list(graph.outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The TorchScript exporter warns about every traced Python branch of birder's code; they are constant here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
