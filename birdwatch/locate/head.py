"""The detection head on the classifier's own backbone: one network in memory serves both jobs.

The head is birder's FCOS (`registry.detection_net_factory("fcos", ...)`: an FPN over the last
three stages plus P6/P7, anchor-free, with focal, GIoU and centre-ness losses and batched NMS from
torchvision.ops). Handing birder the classifier itself would not do: `DetectionBaseNet.__init__`
calls `backbone.strip_for_detection_features()`, which replaces the classifier's head with
`Identity`, FCOS rewrites its `return_stages`, and as a child module the backbone would follow the
detector into `.train()` (BatchNorm statistics drift), `state_dict()` and the optimiser.
`SharedBackbone` stands in for it: it shows FCOS the attributes it reads and calls the real
network's `detection_features` under `no_grad`, while holding the network outside the module tree,
so the head's weights are all that `state_dict()` and `parameters()` hold and the classifier stays
exactly as loaded.

Precision (bf16/fp16 autocast) applies to the backbone, which is most of the work; its features
are handed to the head as float32, because FCOS builds its anchors in the features' dtype and
bf16 cannot hold pixel coordinates of a large frame (its step at 1024 is 8 pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from birder.data.transforms.classification import RGBType
from birder.model_registry import registry
from birder.net.detection.base import DetectionBaseNet
from torch import nn
from torchvision.ops import clip_boxes_to_image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from birdwatch.backends import Backend
from birdwatch.backends import Runner
from birdwatch.errors import ModelError
from birdwatch.imaging import bgr_to_tensor
from birdwatch.precision import Dtype
from birdwatch.precision import autocast
from birdwatch.types import Detections
from birdwatch.types import Source

HEAD_NETWORK = "fcos"
DEFAULT_FPN_WIDTH = 64  # 256 (FCOS's usual) triples the cost of a frame on a CPU; see bench/detector.py
PAD_MULTIPLE = 32  # the backbones' largest stride: canvases are padded to a multiple of it


class SharedBackbone(nn.Module):
    """A classifier network presented to a birder detection net as its backbone, without handing it over."""

    net: Any  # a birder classifier: its detection_features and stage facts are its own, not nn.Module's

    def __init__(self, net: nn.Module, precision: Dtype | str = Dtype.FP32) -> None:
        super().__init__()
        if not callable(getattr(net, "detection_features", None)) or not hasattr(net, "return_channels"):
            raise ModelError(f"{type(net).__name__} has no detection_features: it cannot carry a detection head")
        object.__setattr__(self, "net", net)  # not registered: no parameters, buffers or train() pass through
        self.input_channels: int = self.net.input_channels
        self.return_channels: list[int] = list(self.net.return_channels)
        self.return_stages: list[str] = list(self.net.return_stages)
        self.max_stride: int = self.net.max_stride
        self.stem_stride: int | None = getattr(net, "stem_stride", None)
        self.size: tuple[int, int] = self.net.size
        self.precision = Dtype(precision)  # autocast of the backbone's forward pass
        # Only the tests' preparation of an untrained backbone sets this; heads always train on a frozen one.
        self.trainable = False

    # The calls DetectionBaseNet makes on a backbone it owns; the shared network must not change.
    def strip_for_detection_features(self) -> None:
        pass

    def adjust_size(self, new_size: tuple[int, int]) -> None:
        self.size = new_size

    def set_dynamic_size(self, dynamic_size: bool = True) -> None:
        pass

    def detection_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grad = torch.enable_grad() if self.trainable else torch.no_grad()
        # An export is always fp32: the exported backends apply their own precision.
        precision = Dtype.FP32 if torch.onnx.is_in_onnx_export() else self.precision
        with grad, autocast(x.device, precision):
            features = self.net.detection_features(x)
        return {name: features[name].float() for name in self.return_stages}


def freeze(net: nn.Module) -> None:
    """The classifier stays as loaded: no gradients, BatchNorm in eval mode (running statistics fixed)."""
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)


def build_head(
    net: nn.Module,
    *,
    fpn_width: int = DEFAULT_FPN_WIDTH,
    num_classes: int = 1,
    precision: Dtype | str = Dtype.FP32,
) -> DetectionBaseNet:
    """A fresh FCOS head on the shared, frozen network."""
    if fpn_width % 32:
        raise ModelError(f"fpn_width {fpn_width}: must be a multiple of 32 (the head uses GroupNorm with 32 groups)")
    freeze(net)
    backbone: Any = SharedBackbone(net, precision)  # a DetectorBackbone in all but its class: see above
    head: DetectionBaseNet = registry.detection_net_factory(
        HEAD_NETWORK, num_classes, backbone, config={"fpn_width": fpn_width}
    )
    return head


def shared_backbone(head: DetectionBaseNet) -> SharedBackbone:
    backbone = head.backbone
    assert isinstance(backbone, SharedBackbone)
    return backbone


class HeadOutputs(nn.Module):
    """The network part of the detector: backbone features, FPN and FCOS head, without anchors or NMS.

    This is what an exported backend runs; `BirdDetector` decodes its outputs with FCOS's own
    anchors and post-processing, so every backend's boxes go through the same code.
    """

    OUTPUTS = ("cls_logits", "bbox_regression", "bbox_ctrness")

    head: Any  # birder's FCOS; its forward_net is its own

    def __init__(self, head: DetectionBaseNet) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        _, outputs = self.head.forward_net(x)
        return tuple(outputs[name] for name in self.OUTPUTS)


class BirdDetector:
    """Boxes for a list of images in one batch: letterbox, normalise as the classifier does, FCOS, map back.

    With a `runner` (an exported backend) every batch is padded to its fixed square `canvas` and
    the runner's outputs are decoded here; without one, the head runs as a torch module.
    """

    def __init__(
        self,
        head: DetectionBaseNet,
        *,
        rgb_stats: RGBType,
        device: torch.device,
        max_size: int,
        score_threshold: float = 0.4,
        nms_iou: float = 0.5,
        max_detections: int = 20,
        channels_last: bool = False,
        runner: Runner | None = None,
        canvas: int | None = None,
    ) -> None:
        self.head: Any = head.to(device).eval()  # birder's FCOS: its anchors and post-processing are its own
        self.runner = runner if runner is not None and runner.backend is not Backend.TORCH else None
        self.backend = self.runner.backend if self.runner else Backend.TORCH  # for logs and `models export`
        self.runs_in = self.runner.precision if self.runner else str(shared_backbone(head).precision)
        self.canvas = canvas or max_size
        self._levels: list[tuple[int, int]] | None = None  # feature map sizes of the canvas, for anchors
        self.device = device
        self.max_size = max_size
        self.channels_last = channels_last
        self.configure(score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections)
        self._mean = torch.tensor(rgb_stats["mean"], dtype=torch.float32, device=device).view(3, 1, 1)
        self._std = torch.tensor(rgb_stats["std"], dtype=torch.float32, device=device).view(3, 1, 1)

    def configure(self, *, score_threshold: float, nms_iou: float, max_detections: int) -> None:
        # FCOS applies these in its own post-processing (score filter, top-k, torchvision batched_nms).
        self.head.score_thresh = score_threshold
        self.head.nms_thresh = nms_iou
        self.head.detections_per_img = max_detections

    def batch(
        self, images: Sequence[torch.Tensor], canvas: int | None = None
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """3xHxW uint8 RGB tensors (already resized) -> one normalised float batch, zero-padded (to the
        smallest multiple of the stride, or to a fixed square canvas), and their sizes."""
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        height = canvas or round_up(max(h for h, _ in sizes), PAD_MULTIPLE)
        width = canvas or round_up(max(w for _, w in sizes), PAD_MULTIPLE)
        out = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=self.device)
        for i, im in enumerate(images):
            h, w = sizes[i]
            out[i, :, :h, :w] = (im.to(self.device, torch.float32) / 255.0 - self._mean) / self._std
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out, sizes

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], max_size: int | None = None) -> list[Detections]:
        """Boxes in each image's own pixels; images are BGR uint8 (OpenCV), of any sizes."""
        if not images:
            return []
        size = min(max_size or self.max_size, self.canvas) if self.runner else max_size or self.max_size
        resized, scales = [], []
        for image in images:
            tensor, scale = fit(bgr_to_tensor(image, self.device), size)
            resized.append(tensor)
            scales.append(scale)
        if self.runner is None:
            batch, sizes = self.batch(resized)
            results, _ = self.head(batch, image_sizes=sizes)
        else:
            batch, sizes = self.batch(resized, self.canvas)
            results = self.decode(batch, self.runner(batch), sizes)
        out = []
        for result, (sx, sy), image in zip(results, scales, images, strict=True):
            boxes = result["boxes"].float() / torch.tensor([sx, sy, sx, sy], device=self.device)
            boxes = clip_boxes_to_image(boxes, image.shape[:2])
            scores = result["scores"].float().cpu().numpy()
            out.append(Detections(boxes.cpu().numpy(), scores, Source.DETECTOR, birds=scores))  # it knows only birds
        return out

    def decode(
        self, batch: torch.Tensor, outputs: Sequence[torch.Tensor], sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """FCOS's own anchors and post-processing (score filter, top-k, batched NMS) on a runner's outputs."""
        head = self.head
        levels = self.levels()
        # The anchor generator reads only the shapes of the batch and the feature maps.
        placeholders = [batch.new_empty((1, 1, h, w)) for h, w in levels]
        images = head._to_img_list(batch, sizes)
        anchors = head.anchor_generator(images, placeholders)
        per_level = [h * w for h, w in levels]
        split = {
            name: list(torch.split(out.to(self.device), per_level, dim=1))
            for name, out in zip(HeadOutputs.OUTPUTS, outputs, strict=True)
        }
        split_anchors = [list(torch.split(a, per_level)) for a in anchors]
        found: list[dict[str, torch.Tensor]] = head.postprocess_detections(split, split_anchors, images.image_sizes)
        return found

    def levels(self) -> list[tuple[int, int]]:
        """(h, w) of each FPN level on the canvas, found once by running the torch network on an empty canvas."""
        if self._levels is None:
            x = torch.zeros((1, 3, self.canvas, self.canvas), device=self.device)
            with torch.inference_mode():
                features, _ = self.head.forward_net(x)
            self._levels = [(int(f.shape[2]), int(f.shape[3])) for f in features]
        return self._levels


def fit(image: torch.Tensor, max_size: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize a 3xHxW image so its longer side is `max_size` (up or down); returns it and the (x, y) scales."""
    h, w = int(image.shape[1]), int(image.shape[2])
    scale = max_size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):
        return image, (1.0, 1.0)
    resized = TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return resized, (new_w / w, new_h / h)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
