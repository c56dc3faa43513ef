"""Untrained networks of the real architectures, written in birder's file format (no model hub offline).

Tests and the benchmarks use these: a forward pass costs the same as with trained weights.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from birder.common import fs_ops
from birder.conf import settings as birder_settings
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry
from birder.net.base import get_signature


def save_untrained(
    network: str, path: str | Path, class_names: list[str], size: tuple[int, int], *, decisive: bool = False
) -> Path:
    """A randomly initialised network of a real architecture, written by birder's own checkpoint code.

    No model hub is reachable offline; tests and the benchmark use these (same cost as trained weights).
    Untrained embeddings are tiny, so softmax comes out near-uniform; `decisive` scales the classifier
    head to give logits a standard deviation of about 4, so a top-1 means something in tests.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = registry.net_factory(network, len(class_names), 3, size=size)
    net.eval()
    if decisive:
        with torch.no_grad():
            probe = torch.rand(4, 3, *size)
            logits = net(probe)
            scale = 4.0 / float((logits - logits.mean(dim=1, keepdim=True)).std().clamp_min(1e-12))
            head: Any = net.classifier  # birder's final linear layer
            head.weight.mul_(scale)
            head.bias.zero_()
    return save_network(net, path, class_names, size)


def save_network(net: torch.nn.Module, path: str | Path, class_names: list[str], size: tuple[int, int]) -> Path:
    """Write a birder classification network in birder's own file format (what `load_classifier` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    signature = get_signature((1, 3, *size), len(class_names))
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    with tempfile.TemporaryDirectory() as tmp:
        previous = birder_settings.MODELS_DIR
        birder_settings.MODELS_DIR = Path(tmp)  # checkpoint_model writes <MODELS_DIR>/<name>_<epoch>.pt
        try:
            fs_ops.checkpoint_model(
                "untrained", 0, net, signature, class_to_idx, get_rgb_stats("birder"), None, None, None, None
            )
        finally:
            birder_settings.MODELS_DIR = previous
        shutil.move(str(Path(tmp) / "untrained_0.pt"), path)
    return path
