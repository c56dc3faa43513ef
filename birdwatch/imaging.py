"""Frames as OpenCV decodes them (BGR HxWx3 uint8) into the tensors the networks read."""

from __future__ import annotations

import numpy as np
import torch


def bgr_to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """BGR HxWx3 uint8 -> RGB 3xHxW uint8 on the device: one copy to the device per frame (pinned on
    CUDA, so it overlaps), the channel swap done there. It keeps HWC memory order: not contiguous."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    tensor = tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)
    return tensor.permute(2, 0, 1).flip(0)
