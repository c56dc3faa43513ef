"""TensorRT on an NVIDIA GPU or a Jetson: the ONNX export built into an engine on the device itself.

An engine is specific to the GPU, the TensorRT version and the precision, so it is cached under a key
that holds all three (plus the ONNX file's own key) and built again when any changes. fp16 unless
engine.precision is fp32. The builder's timing cache is kept beside the engines: a rebuild after an
upgrade reuses the kernel timings instead of measuring them all again (minutes on a Jetson).
Inputs and outputs stay on the GPU as torch tensors; nothing goes through the host.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import tensorrt as trt
import torch

from birdwatch.backends import Backend
from birdwatch.backends import Graph
from birdwatch.backends import RunOptions
from birdwatch.backends.export import artefact_name
from birdwatch.backends.export import cached
from birdwatch.backends.export import manifest_path
from birdwatch.precision import Dtype

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30  # builder scratch memory; a Jetson Orin Nano has 8 GB shared with the CPU
_LOGGER = trt.Logger(trt.Logger.WARNING)


class TensorRtRunner:
    backend = Backend.TENSORRT

    def __init__(self, onnx: Path, graph: Graph, options: RunOptions, cache_dir: Path) -> None:
        if graph.device.type != "cuda":
            raise RuntimeError("TensorRT needs a CUDA device (model.device: cuda)")
        self.device = graph.device
        fp16 = options.precision.dtype is not Dtype.FP32
        self.precision = "fp16" if fp16 else "fp32"
        onnx_manifest = json.loads(manifest_path(onnx).read_text())
        key = {
            "format": "tensorrt",
            "tensorrt": trt.__version__,
            "gpu": torch.cuda.get_device_name(self.device),
            "capability": list(torch.cuda.get_device_capability(self.device)),
            "fp16": fp16,
            "onnx_sha256": onnx_manifest["sha256"],
            "sources_sha256": onnx_manifest["key"]["sources_sha256"],
            "batch": [1, options.batch_size, max(graph.max_batch, options.batch_size)]
            if graph.dynamic_batch
            else [1, 1, 1],
        }
        path = onnx.with_name(artefact_name(graph.name, key, ".engine"))
        timing = onnx.parent / "tensorrt-timing.cache"
        cached(
            path,
            key,
            lambda tmp: _build(onnx, tmp, graph, key["batch"], fp16, timing),
            what=f"{graph.name} TensorRT engine",
        )
        runtime = trt.Runtime(_LOGGER)
        self._engine = runtime.deserialize_cuda_engine(path.read_bytes())
        self._context = self._engine.create_execution_context()
        self._outputs = list(graph.outputs)
        self._max_batch = key["batch"][2]
        # One execution context holds the shapes and buffers of one call: workers take turns on the GPU.
        self._lock = threading.Lock()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        x = batch.to(self.device, torch.float32).contiguous()
        if len(x) > self._max_batch:  # beyond the engine's profile: in parts
            parts = [self(part) for part in torch.split(x, self._max_batch)]
            return [torch.cat(outs) for outs in zip(*parts, strict=True)]
        with self._lock:
            return self._run(x)

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self._context.set_input_shape("input", tuple(x.shape)):
            raise RuntimeError(f"TensorRT refused an input of shape {tuple(x.shape)}")
        self._context.set_tensor_address("input", x.data_ptr())
        outs = []
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            self._context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT could not run the batch")
        stream.synchronize()  # the next caller rebinds the context's buffers
        return outs


def _build(onnx: Path, dst: Path, graph: Graph, batch: list[int], fp16: bool, timing_file: Path) -> None:
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(timing_file.read_bytes() if timing_file.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    h, w = graph.input_hw
    low, best, high = ((n, 3, h, w) for n in batch)
    profile.set_shape("input", low, best, high)
    config.add_optimization_profile(profile)
    log.info("building the TensorRT engine on this GPU (minutes on a Jetson; once per weights file)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build an engine for this network")
    dst.write_bytes(bytes(serialized))
    timing_file.write_bytes(bytes(config.get_timing_cache().serialize()))
