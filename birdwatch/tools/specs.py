"""The pretrained models birdwatch ships configs for, as the bench and the tests rebuild them untrained.

One table, so the benchmarks and the test fixtures build networks of the same shape: a forward pass of
an untrained network of the real architecture costs what the published weights cost.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str  # birder's pretrained name (the weights file is `<name>.pt`)
    network: str  # birder network
    classes: int  # species
    size: tuple[int, int]  # (H, W) input


DANUBE_DELTA = ModelSpec("hgnet_v2_b2_danube-delta", "hgnet_v2_b2", 368, (256, 256))
EU_COMMON = ModelSpec("regnet_y_8g_intermediate-eu-common", "regnet_y_8g", 707, (384, 384))

# By the short names `birdwatch bench --model` takes.
MODELS: dict[str, ModelSpec] = {"danube-delta": DANUBE_DELTA, "eu-common": EU_COMMON}
