"""Classification of crops in batches, with preprocessing that matches birder's own.

birder's `classification_transform` resizes a PIL RGB image to the network size (bicubic,
antialiased), converts to float in [0, 1] and normalises. Here the frame goes to the device once,
crops are cut there as views and resized with torchvision's tensor resize (the same bicubic
antialias kernel), so there is no per-crop round trip through PIL. Crops from every camera share
one forward pass.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from birdwatch.backends import Graph
from birdwatch.backends import Runner
from birdwatch.backends import RunOptions
from birdwatch.backends import TorchRunner
from birdwatch.classify.models import Classifier
from birdwatch.geometry import clip_box
from birdwatch.imaging import bgr_to_tensor
from birdwatch.precision import Precision
from birdwatch.types import Box
from birdwatch.types import Frame
from birdwatch.types import Named
from birdwatch.types import SpeciesScore

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 4  # beyond this, more workers only split the batches thinner


@dataclass(frozen=True)
class WorkerPlan:
    """How many classify workers run batches side by side, and the torch CPU threads each one uses."""

    workers: int
    threads: int | None  # None: leave torch's default (on a GPU the CPU only feeds it)

    @classmethod
    def resolve(cls, device: torch.device, workers: int = 0, threads: int = 0) -> WorkerPlan:
        """0 means auto. On a CPU, auto is one single-threaded worker per core (up to four, then the
        cores are shared out): each worker runs whole batches on its own core, so a core taken for a
        moment by capture or motion delays one batch, where a single worker's intra-op threads would
        all wait for it at every layer. Measured on 2 cores under capture and motion load, hgnet_v2_b2
        batch 7: 2 workers x 1 thread 72 img/s against 1 worker x 2 threads 50 img/s. On a GPU: one."""
        if device.type != "cpu":
            return cls(workers or 1, threads or None)
        cores = cpu_cores()
        workers = workers or min(cores, MAX_AUTO_WORKERS)
        return cls(workers, threads or max(1, cores // workers))

    def apply(self) -> int:
        """torch's CPU thread count is one setting for the whole process (every thread's ops use it).
        Returns the count it replaced, for whoever wants to put it back."""
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        return before


class LogitsAndEmbedding(nn.Module):
    """The network as birder's `infer_image(..., return_embedding=True)` runs it: the embedding, then the
    classifier on it, so both come out of one forward pass (and one export)."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net  # a birder network: `embedding` and `classify` are its own

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.net.embedding(x)
        logits = self.net.classify(embedding)
        # One row per crop whatever the network: DeiT's embedding is (N, 2, D) (class and distillation tokens),
        # CrossViT's a list of its branches'.
        if isinstance(embedding, list | tuple):
            embedding = torch.cat([e.flatten(1) for e in embedding], dim=1)
        return logits, embedding.flatten(1)


def classifier_graph(classifier: Classifier) -> Graph:
    """The classifier's logits and embedding, as every backend runs them; the export is keyed by its weights file."""
    return Graph(
        name=classifier.name,
        module=LogitsAndEmbedding(classifier.net),
        input_hw=tuple(classifier.size),  # type: ignore[arg-type]
        outputs=("logits", "embedding"),
        sources=(classifier.path,),
        device=classifier.device,
    )


def cpu_cores() -> int:
    """The cores this process may run on (a container or systemd CPUAffinity may allow fewer than exist)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ClassifierEngine:
    def __init__(
        self,
        classifier: Classifier,
        *,
        top_k: int = 3,
        batch_size: int = 16,
        precision: Precision | None = None,
        compile: bool = False,
        runner: Runner | None = None,
    ) -> None:
        """`runner` runs the network (`birdwatch.backends.open_runner`); without one, eager torch at `precision`."""
        self.classifier = classifier
        self.device = classifier.device
        self.top_k = min(top_k, len(classifier.class_names))
        self.batch_size = batch_size
        self.precision = precision or Precision()
        self.runner = runner or TorchRunner(
            classifier_graph(classifier), RunOptions(self.precision, batch_size=batch_size, compile=compile)
        )
        mean = torch.tensor(classifier.rgb_stats["mean"], dtype=torch.float32, device=self.device)
        std = torch.tensor(classifier.rgb_stats["std"], dtype=torch.float32, device=self.device)
        # (x / 255 - mean) / std as one multiply and one add, in place: a third of the time of three passes.
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        self._shift = (-mean / std).view(1, 3, 1, 1)

    def preprocess(self, crops: Sequence[tuple[torch.Tensor, Box]]) -> torch.Tensor:
        """(frame as 3xHxW uint8 RGB on the device, box) pairs -> normalised N x 3 x h x w float batch."""
        size = list(self.classifier.size)
        resized = []
        for image, (x1, y1, x2, y2) in crops:
            crop = image[:, y1:y2, x1:x2]
            resized.append(TF.resize(crop, size, interpolation=InterpolationMode.BICUBIC, antialias=True))
        return torch.stack(resized).to(torch.float32).mul_(self._scale).add_(self._shift)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(softmax over species, embedding) per crop, in chunks of batch_size; both stay on the device."""
        probs, embeddings = [], []
        # Near-equal chunks: 9 crops at batch 8 run as 5 + 4, not 8 + an inefficient 1.
        chunks = max(1, math.ceil(len(batch) / self.batch_size))
        for chunk in batch.tensor_split(chunks):
            logits, embedding = self.runner(chunk)
            probs.append(torch.softmax(logits.to(self.device), dim=1))
            embeddings.append(embedding.to(self.device))
        if not probs:
            return torch.zeros((0, len(self.classifier.class_names)), device=self.device), torch.zeros((0, 0))
        return torch.cat(probs), torch.cat(embeddings)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax over species, in chunks of batch_size; stays on the device."""
        return self.forward(batch)[0]

    def classify(self, frames: Sequence[Frame], boxes: Sequence[Sequence[Box]]) -> list[Named]:
        """Top-k species and the embedding of every box of every frame, in one pass; result[i] is frame i."""
        crops: list[tuple[torch.Tensor, Box]] = []
        for frame, frame_boxes in zip(frames, boxes, strict=True):
            if not frame_boxes:
                continue
            image = bgr_to_tensor(frame.image, self.device)
            crops.extend((image, clip_box(box, frame.size)) for box in frame_boxes)
        if not crops:
            return [Named.empty() for _ in frames]
        probs, embeddings = self.forward(self.preprocess(crops))
        scores, indices = probs.topk(self.top_k, dim=1)
        scores_np, indices_np = scores.cpu().numpy(), indices.cpu().numpy()
        embeddings_np = embeddings.float().cpu().numpy()
        names = self.classifier.class_names
        results: list[Named] = []
        row = 0
        for frame_boxes in boxes:
            rows = range(row, row + len(frame_boxes))
            species = tuple(
                tuple(SpeciesScore(names[i], float(s)) for i, s in zip(indices_np[r], scores_np[r], strict=True))
                for r in rows
            )
            results.append(Named(species, np.ascontiguousarray(embeddings_np[row : row + len(frame_boxes)])))
            row += len(frame_boxes)
        return results
