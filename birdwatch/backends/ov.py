"""OpenVINO on the CPU: bf16 where the CPU computes it natively and engine.precision allows, else fp32.

The compiled model has one stream per classify worker and each worker thread its own infer
request, so workers run side by side as torch's do. OpenVINO's own model cache (`CACHE_DIR`) keeps the
compiled blob, so later starts skip compilation: one cache folder per ONNX export (`openvino/<export>/`),
removed once that export is (new weights, an adopted head), since OpenVINO never removes a blob itself.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from birdwatch.backends import Backend
from birdwatch.backends import Graph
from birdwatch.backends import RunOptions
from birdwatch.precision import Dtype

log = logging.getLogger(__name__)

CACHE = "openvino"  # in the export cache

# What OpenVINO's CPU plugin calls the precisions it computes in.
HINT = {Dtype.FP32: "f32", Dtype.BF16: "bf16", Dtype.FP16: "bf16"}  # fp16 on a CPU is bf16, as for torch


class OpenVinoRunner:
    backend = Backend.OPENVINO

    def __init__(self, onnx: Path, graph: Graph, options: RunOptions, cache_dir: Path) -> None:
        if graph.device.type != "cpu":
            raise RuntimeError(f"birdwatch runs OpenVINO on the CPU only, not {graph.device}")
        self.device = graph.device
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(blob_dir(onnx))})
        prune_blobs(onnx.parent)
        config = {
            "INFERENCE_PRECISION_HINT": HINT[options.precision.dtype],
            "NUM_STREAMS": options.callers,
            "INFERENCE_NUM_THREADS": options.callers * options.threads,
        }
        self._compiled = core.compile_model(str(onnx), "CPU", config)
        # What the plugin settled on: a CPU without native bf16 runs f32 whatever was asked.
        effective = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(effective, effective)
        self._local = threading.local()
        # OpenVINO's binding builds a C++ static in its first Type.to_dtype() (every inference makes one) and lets go
        # of the GIL inside: two classify workers making their first call at once deadlocked the process (7 starts
        # in 30 of a two-thread probe). Made here, once, before any worker runs.
        ov.Type.f32.to_dtype()

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        request = self._request()
        request.infer({0: x}, share_inputs=True)
        # The request reuses its output buffers on the next call: copy them out.
        return [torch.from_numpy(np.array(t.data, copy=True)) for t in request.output_tensors]


def blob_dir(onnx: Path) -> Path:
    """Where OpenVINO keeps the compiled blobs of one ONNX export."""
    return onnx.parent / CACHE / onnx.stem


def prune_blobs(cache_dir: Path) -> None:
    """Remove the blob folders of exports no longer in the cache (their weights replaced), and blobs of the
    flat layout older versions wrote straight into `openvino/`."""
    for entry in list((cache_dir / CACHE).glob("*")):
        if entry.is_dir() and (cache_dir / f"{entry.name}.onnx").exists():
            continue
        log.info("removed OpenVINO's compiled %s, of an export no longer in use", entry.name)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
