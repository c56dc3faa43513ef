"""The precision a network runs at, one rule for the classifier, the detector head and training.

`auto` is reduced precision where the hardware computes it natively: bf16 on CUDA that has it
(fp16 on older CUDA), bf16 on CPUs with AVX512-BF16 or AMX, fp32 everywhere else, because emulated
bf16 is slower than fp32 (`birdwatch bench --tune` and bench/detector.py measure it per machine).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch

log = logging.getLogger(__name__)

AUTO = "auto"


class Dtype(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"  # autocast
    FP16 = "fp16"  # autocast

    @property
    def torch(self) -> torch.dtype:
        return {Dtype.FP32: torch.float32, Dtype.BF16: torch.bfloat16, Dtype.FP16: torch.float16}[self]


@dataclass(frozen=True)
class Precision:
    """How a network runs: measured per machine by `birdwatch bench --tune`, set in `engine:`/`detector:`."""

    dtype: Dtype = Dtype.FP32
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", Dtype(self.dtype))  # accepts "bf16" as well as Dtype.BF16

    @classmethod
    def resolve(
        cls,
        device: torch.device,
        dtype: str = AUTO,
        channels_last: bool | None = None,
        *,
        cpu_auto: bool = True,
    ) -> Precision:
        """The configured dtype (`auto` or one of Dtype) for this device.

        `cpu_auto=False` keeps `auto` at fp32 on a CPU even where bf16 is native: training asks for
        bf16 on a CPU explicitly (`--amp bf16`), so a head is not trained on rounded features by default.
        fp16 on a CPU becomes bf16: CPU autocast has no useful fp16 path.
        """
        if dtype == AUTO:
            resolved = _auto_dtype(device, cpu=cpu_auto)
        else:
            resolved = Dtype(dtype)
            if resolved is Dtype.FP16 and device.type == "cpu":
                log.info("precision fp16 has no fast path on a CPU; using bf16")
                resolved = Dtype.BF16
        if channels_last is None:
            channels_last = True  # faster for these convnets on CUDA and on this project's CPUs (bench)
        return cls(resolved, channels_last)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        return autocast(device, self.dtype)


def autocast(device: torch.device, dtype: Dtype | str) -> contextlib.AbstractContextManager[object]:
    """torch.autocast to `dtype` on `device`, or nothing for fp32."""
    dtype = Dtype(dtype)
    if dtype is Dtype.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype.torch)


def _auto_dtype(device: torch.device, *, cpu: bool) -> Dtype:
    if device.type == "cuda":
        return Dtype.BF16 if torch.cuda.is_bf16_supported() else Dtype.FP16
    if device.type == "cpu" and cpu and cpu_has_bf16():
        return Dtype.BF16
    return Dtype.FP32


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))
