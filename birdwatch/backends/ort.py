"""ONNX Runtime: the CPU execution provider, or CUDA's where onnxruntime-gpu has it. Computes in fp32.

One session serves every classify worker: `run` is thread-safe and releases the GIL. With the CPU
plan's one thread per worker, each call runs on its worker's own thread, side by side as torch's
workers do; with more, the session's intra-op pool of that size is shared by the calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from birdwatch.backends import Backend
from birdwatch.backends import Graph
from birdwatch.backends import RunOptions
from birdwatch.backends import fp32_only


class OrtRunner:
    backend = Backend.ONNXRUNTIME

    def __init__(self, onnx: Path, graph: Graph, options: RunOptions) -> None:
        self.device = graph.device
        self.precision = fp32_only(options, self.backend)
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # warnings about unused initialisers are noise at every start
        providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
        if graph.device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": graph.device.index or 0}))
        self._session = ort.InferenceSession(str(onnx), so, providers=providers)
        if graph.device.type == "cuda" and self._session.get_providers()[0] != "CUDAExecutionProvider":
            # ORT falls back to its CPU provider quietly (a missing cuDNN, say): that is not what was asked.
            raise RuntimeError("onnxruntime's CUDA provider did not load (is cuDNN installed?)")
        self._outputs = list(graph.outputs)

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        outs = self._session.run(self._outputs, {"input": x})
        return [torch.from_numpy(o).to(self.device) for o in outs]
