"""`engine.backend: auto`: every backend installed for the device is timed on the graph, the fastest runs.

The timing is short (about a second per backend, after a warm-up) and runs as the pipeline will:
the configured batch size, called by as many threads as there are classify workers. Its result is
cached with the export, keyed by the export, the CPU or GPU, the worker plan and the backends'
versions, so later starts reuse it; `birdwatch bench --tune` measures again.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from birdwatch.backends import Backend
from birdwatch.backends import BackendError
from birdwatch.backends import Graph
from birdwatch.backends import Runner
from birdwatch.backends import RunOptions
from birdwatch.backends import build_runner
from birdwatch.backends import candidates
from birdwatch.backends import open_runner
from birdwatch.backends.export import artefact_name
from birdwatch.backends.export import key_digest
from birdwatch.backends.export import onnx_key
from birdwatch.backends.export import write_atomic

log = logging.getLogger(__name__)

TIMING_S = 1.0


def choose(graph: Graph, cache_dir: Path, options: RunOptions, *, remeasure: bool = False) -> Runner:
    backends = candidates(graph.device)
    key = choice_key(graph, options, backends)
    path = cache_dir / artefact_name(f"{graph.name}-choice", key, ".json")
    if not remeasure and path.exists():
        try:
            chosen = json.loads(path.read_text())
            backend = Backend(chosen["backend"])
            log.info(
                "%s: engine.backend auto -> %s (%s, measured %s)",
                graph.name,
                backend,
                _said(chosen["img_per_s"]),
                chosen["measured"],
            )
            return open_runner(graph, backend, cache_dir, options)
        except (OSError, ValueError, KeyError):
            log.warning("%s: the cached backend choice %s is unreadable; measuring again", graph.name, path.name)
    runner, rates = measure(graph, backends, cache_dir, options)
    chosen = {
        "backend": runner.backend.value,
        "img_per_s": rates,
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "key": key,
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(chosen, indent=2, default=str))
    except OSError as e:
        log.warning(
            "%s: cannot keep the backend choice in %s (%s); it is measured again next start", graph.name, cache_dir, e
        )
    log.info(
        "%s: engine.backend auto -> %s, the fastest here at batch %d (%s)",
        graph.name,
        runner.backend,
        options.batch_size,
        _said(rates),
    )
    return runner


def measure(
    graph: Graph, backends: list[Backend], cache_dir: Path, options: RunOptions
) -> tuple[Runner, dict[str, float]]:
    """Each backend's images per second on this graph; returns the fastest runner and every rate."""
    best: Runner | None = None
    rates: dict[str, float] = {}
    x = torch.rand((options.batch_size, 3, *graph.input_hw), device=graph.device)
    for backend in backends:
        try:
            runner = build_runner(graph, backend, cache_dir, options)
        except BackendError as e:
            log.warning("%s: %s; left out of the choice", graph.name, e)
            continue
        try:
            rates[backend.value] = round(throughput(runner, x, options.callers), 1)
        except Exception as e:  # it loaded but cannot run this graph here (out of memory, say)
            log.warning(
                "%s: %s failed its timing (%s: %s); left out of the choice", graph.name, backend, type(e).__name__, e
            )
            continue
        if best is None or rates[backend.value] > rates[best.backend.value]:
            best = runner
    if best is None:  # nothing ran: torch, whose failure the pipeline then reports as a stage failure
        best = build_runner(graph, Backend.TORCH, cache_dir, options)
    return best, rates


def throughput(runner: Runner, x: torch.Tensor, callers: int = 1, seconds: float = TIMING_S) -> float:
    """Images per second of `runner` on `x`, called by `callers` threads side by side."""
    runner(x)  # warm-up: first calls allocate and pick kernels
    done = [0] * callers
    failed: list[BaseException] = []

    def work(i: int) -> None:
        end = time.perf_counter() + seconds
        try:
            while time.perf_counter() < end:
                runner(x)
                done[i] += len(x)
        except Exception as e:  # raised again on the calling thread
            failed.append(e)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,), name=f"timing-{i}") for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return sum(done) / (time.perf_counter() - started)


def choice_key(graph: Graph, options: RunOptions, backends: list[Backend]) -> dict[str, Any]:
    return {
        "onnx": key_digest(onnx_key(graph)),
        "machine": _machine(graph.device),
        "callers": options.callers,
        "threads": options.threads,
        "batch": options.batch_size,
        "precision": options.precision.dtype.value,
        "channels_last": options.precision.channels_last,
        "compile": options.compile,
        "backends": {b.value: _version(b) for b in backends},
    }


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(backend: Backend) -> str:
    package = {Backend.TORCH: "torch", Backend.ONNXRUNTIME: "onnxruntime", Backend.OPENVINO: "openvino"}.get(
        backend, "tensorrt"
    )
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # onnxruntime-gpu, or JetPack's tensorrt
        return "installed"


def _said(rates: dict[str, float]) -> str:
    return ", ".join(f"{name} {rate:g} img/s" for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]))
