"""Where a network runs: eager torch, ONNX Runtime, OpenVINO or TensorRT, behind one `Runner` call.

A `Graph` is a network with a fixed job (the classifier's logits, or the detector's backbone
features plus FCOS head outputs) and the facts that key its export. `open_runner` gives a `Runner`
for it on the configured backend: torch runs the module as it is; the others run its ONNX export,
made once and cached in the models directory (`birdwatch.backends.export`). The classify and locate
stages call `runner(batch)` and do not know which one runs.

`auto` times every backend installed for the device on this graph (`birdwatch.backends.choose`).
A backend that is not installed or fails to load falls back to torch with one warning.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from birdwatch.errors import BirdwatchError
from birdwatch.precision import Dtype
from birdwatch.precision import Precision

log = logging.getLogger(__name__)


class Backend(StrEnum):
    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


# The Python package that provides each exported backend, and the install that brings it.
PACKAGE = {Backend.ONNXRUNTIME: "onnxruntime", Backend.OPENVINO: "openvino", Backend.TENSORRT: "tensorrt"}
EXTRA = {
    Backend.ONNXRUNTIME: "pip install 'birdwatch[onnxruntime]' (or onnxruntime-gpu for CUDA)",
    Backend.OPENVINO: "pip install openvino",
    Backend.TENSORRT: "use JetPack's TensorRT, or pip install 'birdwatch[tensorrt]' on a CUDA PC",
}


class BackendError(BirdwatchError):
    """A backend is missing or cannot run this graph here; the caller falls back to torch."""


@dataclass(frozen=True)
class Graph:
    """A network to run, with what makes its export unique.

    `module(x)` takes one float32 N x 3 x H x W batch and returns a tensor or a tuple of tensors.
    `sources` are the weights files (the classifier's, plus the head's for the detector); the export
    cache is keyed by their SHA-256, so new weights are exported anew.
    """

    name: str  # file stem of the export, e.g. "hgnet_v2_b2_danube-delta" or "...-detector"
    module: nn.Module
    input_hw: tuple[int, int]
    outputs: tuple[str, ...]
    sources: tuple[Path, ...]
    device: torch.device
    dynamic_batch: bool = True
    max_batch: int = 64  # TensorRT's optimisation profile covers batches 1..max_batch
    extra_key: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOptions:
    """How a runner should use the machine: its precision, and the worker plan's threads."""

    precision: Precision = field(default_factory=Precision)
    threads: int = 1  # per concurrent caller
    callers: int = 1  # classify workers calling the runner side by side
    batch_size: int = 8  # the batch the runner is mostly called with (TensorRT's optimum, auto's timing)
    compile: bool = False  # torch only


class Runner(Protocol):
    backend: Backend
    precision: str  # what it computes in, for logs and the bench

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the graph, in `Graph.outputs` order, on the batch's device."""
        ...


def installed(backend: Backend) -> bool:
    return backend is Backend.TORCH or importlib.util.find_spec(PACKAGE[backend]) is not None


def candidates(device: torch.device) -> list[Backend]:
    """Backends that can run on this device and are installed, torch first."""
    if device.type == "cuda":
        wanted = [Backend.TORCH, Backend.TENSORRT, Backend.ONNXRUNTIME]
    else:
        wanted = [Backend.TORCH, Backend.ONNXRUNTIME, Backend.OPENVINO]
    return [b for b in wanted if installed(b) and _usable(b, device)]


def _usable(backend: Backend, device: torch.device) -> bool:
    if backend is Backend.ONNXRUNTIME and device.type == "cuda":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    return True


def open_runner(graph: Graph, backend: Backend | str, cache_dir: Path, options: RunOptions) -> Runner:
    """The runner for `backend` (auto: the fastest measured here); torch when another cannot run, with a warning."""
    backend = Backend(backend)
    if backend is Backend.AUTO:
        from birdwatch.backends.choose import choose

        return choose(graph, cache_dir, options)
    try:
        return build_runner(graph, backend, cache_dir, options)
    except BackendError as e:
        log.warning("%s: %s; running it on torch instead", graph.name, e)
        return build_runner(graph, Backend.TORCH, cache_dir, options)


def build_runner(graph: Graph, backend: Backend, cache_dir: Path, options: RunOptions) -> Runner:
    """Exactly `backend`, or BackendError saying why it cannot run here."""
    if backend is Backend.TORCH:
        return TorchRunner(graph, options)
    if not installed(backend):
        raise BackendError(f"engine.backend {backend} is not installed ({EXTRA[backend]})")
    if not _usable(backend, graph.device):
        raise BackendError(f"engine.backend {backend} has no provider for {graph.device}")
    from birdwatch.backends.export import onnx_file

    try:
        onnx = onnx_file(graph, cache_dir)
        if backend is Backend.ONNXRUNTIME:
            from birdwatch.backends.ort import OrtRunner

            return OrtRunner(onnx, graph, options)
        if backend is Backend.OPENVINO:
            from birdwatch.backends.ov import OpenVinoRunner

            return OpenVinoRunner(onnx, graph, options, cache_dir)
        from birdwatch.backends.trt import TensorRtRunner

        return TensorRtRunner(onnx, graph, options, cache_dir)
    except BackendError:
        raise
    except Exception as e:  # a backend's own failure to export, parse or compile: torch still runs
        raise BackendError(f"{backend} could not load it ({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "no message"


class TorchRunner:
    """The module itself, eager (or torch.compile'd), at the configured autocast and memory format."""

    backend = Backend.TORCH

    def __init__(self, graph: Graph, options: RunOptions) -> None:
        self.device = graph.device
        self._precision = options.precision
        self.precision = self._precision.dtype.value + (" channels_last" if self._precision.channels_last else "")
        module = graph.module
        if self._precision.channels_last:
            module.to(memory_format=torch.channels_last)
        self._forward = torch.compile(module) if options.compile else module

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        if self._precision.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._precision.autocast(self.device):
            out = self._forward(batch)
        outs = out if isinstance(out, tuple | list) else (out,)
        return [o.float() for o in outs]


def fp32_only(options: RunOptions, backend: Backend) -> str:
    """Backends that compute in fp32 only say so once when another precision was asked for."""
    if options.precision.dtype is not Dtype.FP32:
        log.info(
            "%s runs in fp32 on this device (engine.precision %s applies to torch)", backend, options.precision.dtype
        )
    return Dtype.FP32.value
