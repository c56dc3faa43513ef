"""The feeder memory: a crop that looks like the birds people named at this camera leans toward their names.

Every visit a person corrected or confirmed on the page lends its best crop's embedding, labelled with the name
they gave it (deliver/embeddings.py keeps them in the history). For each new crop, on the decide thread before the
visit votes, the remembered crops of its camera nearest by cosine similarity vote:

    w_i  = exp((s_i - s_max) / temperature)       for the `neighbours` nearest with s_i > min_similarity
    v(x) = sum of w_i labelled x / sum of w_i      the memory's vote, a distribution over names
    a    = strength * (s_max - min_similarity) / (1 - min_similarity)     how much a memory this close may say
    p'(x) = (1 - a) * p(x) + a * v(x)              over the model's top-k and the neighbours' names

so one correction counts from the first crop that resembles it, a memory of nothing similar says nothing, and no
name gets in that is neither in the model's top-k nor in the memory (a name off the top-k enters with p = 0).
The vote is sharp (a neighbour 0.05 less alike counts e times less) because look-alike species sit close in the
embedding: measured in `bench/memory.py`, a linear weight let the look-alike's remembered crops outvote the
bird's own and halved what five corrections fixed.

An index at these sizes is one matrix product: a feeder's memory is hundreds to thousands of crops, and
`bench/memory.py` measures the cost per crop at 10, 1 000 and 100 000 of them (under a millisecond at 1 000).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from birdwatch.config import MemoryConfig
from birdwatch.deliver import embeddings
from birdwatch.deliver.history import EventStore
from birdwatch.deliver.history import StoreError
from birdwatch.types import Detections
from birdwatch.types import Embedding
from birdwatch.types import SpeciesScore

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0  # how often the decide thread asks the history whether the memory changed


@dataclass(frozen=True)
class Recall:
    """One camera's memory as the re-rank reads it: unit-length embeddings and their names."""

    keys: np.ndarray  # (N, D) float32, each row of length 1
    labels: np.ndarray  # (N,) int, into names
    names: tuple[str, ...]

    @classmethod
    def of(cls, vectors: Sequence[np.ndarray], species: Sequence[str]) -> Recall:
        names = tuple(sorted(set(species)))
        keys = unit(np.stack(vectors).astype(np.float32)) if vectors else np.zeros((0, 0), np.float32)
        return cls(keys, np.array([names.index(s) for s in species], np.int64), names)

    def __len__(self) -> int:
        return len(self.labels)


def unit(x: np.ndarray) -> np.ndarray:
    norms: np.ndarray = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np.asarray(x / norms, np.float32)


def rerank(
    top_k: tuple[SpeciesScore, ...], similarities: np.ndarray, recall: Recall, cfg: MemoryConfig
) -> tuple[SpeciesScore, ...]:
    """One crop's top-k, blended with the vote of its nearest remembered crops (`similarities`: cosine to each)."""
    if not top_k or not len(recall):
        return top_k
    if len(similarities) > cfg.neighbours:
        nearest = np.argpartition(-similarities, cfg.neighbours - 1)[: cfg.neighbours]
    else:
        nearest = np.arange(len(similarities))
    close = nearest[similarities[nearest] > cfg.min_similarity]
    if not len(close):
        return top_k
    nearest_s = float(similarities[close].max())
    weights = np.exp((similarities[close] - nearest_s) / cfg.temperature)
    vote: Counter[str] = Counter()
    for label, weight in zip(recall.labels[close].tolist(), weights.tolist(), strict=True):
        vote[recall.names[label]] += weight / float(weights.sum())
    say = cfg.strength * (nearest_s - cfg.min_similarity) / max(1e-6, 1.0 - cfg.min_similarity)
    model = {s.name: s.score for s in top_k}
    blended = {name: (1 - say) * model.get(name, 0.0) + say * vote.get(name, 0.0) for name in {*model, *vote}}
    ranked = sorted(blended.items(), key=lambda kv: (-kv[1], kv[0]))[: len(top_k)]
    return tuple(SpeciesScore(name, score) for name, score in ranked)


class FeederMemory:
    """Each camera's memory, read from the history when it changes; used by the decide thread alone."""

    def __init__(self, cfg: MemoryConfig, model: str, store: EventStore) -> None:
        """`model` is `Embedding.model` of the running weights: remembered crops of other weights are left out
        (with one line), the memory rebuilt from those of these."""
        self.cfg = cfg
        self.model = model
        self.store = store
        self._recall: dict[str, Recall] = {}
        self._version: tuple[object, ...] | None = None
        self._checked = -CHECK_EVERY_S
        self._left_out: tuple[int, int] = (0, 0)  # (other weights', garbled) as last logged: one line per change
        self.reranked = 0  # crops whose leader the memory changed

    def refresh(self) -> None:
        """Read the memory again if it changed (a correction, an undo, a clear); at most every CHECK_EVERY_S."""
        if not self.cfg.enabled or time.monotonic() - self._checked < CHECK_EVERY_S:
            return
        self._checked = time.monotonic()
        try:
            version = self.store.run(embeddings.version)
            if version == self._version:
                return
            rows = self.store.run(embeddings.remembered)
            recall = self._recall_of(rows)
        except StoreError:
            return  # the history said why; the memory as it was stays
        except Exception as exc:  # rows no birdwatch wrote: the memory as it was stays, and the service goes on
            if self._version != ("unreadable",):
                log.warning("feeder memory: cannot read it from the history (%s); it stays as it was", exc)
            self._version = ("unreadable",)
            return
        self._version = version
        self._recall = recall

    def rerank(self, camera: str, found: Detections) -> Detections:
        """The frame's classified boxes with their top-k re-ranked by the camera's memory."""
        recall = self._recall.get(camera)
        if recall is None or found.species is None or found.embeddings is None or not len(found):
            return found
        if found.embeddings.shape[1] != recall.keys.shape[1]:
            return found
        similarities = unit(found.embeddings) @ recall.keys.T
        species = []
        for top_k, row in zip(found.species, similarities, strict=True):
            blended = rerank(top_k, row, recall, self.cfg)
            self.reranked += bool(blended and top_k and blended[0].name != top_k[0].name)
            species.append(blended)
        return found.with_species(species, found.embeddings)

    def novel(self, camera: str, embedding: Embedding, score: float) -> bool | None:
        """A visit whose best crop is like none of the camera's remembered ones and whose species is unsure;
        None when there is nothing to compare with (an empty memory, other weights)."""
        recall = self._recall.get(camera)
        if recall is None or embedding.model != self.model or len(embedding.vector) != recall.keys.shape[1]:
            return None
        nearest = float((recall.keys @ embedding.vector.astype(np.float32)).max())
        return nearest <= self.cfg.min_similarity and score < self.cfg.novel_below

    def sizes(self) -> dict[str, int]:
        """Remembered crops per camera."""
        return {camera: len(recall) for camera, recall in self._recall.items()}

    def _recall_of(self, rows: list[embeddings.Remembered]) -> dict[str, Recall]:
        kept: dict[str, tuple[list[np.ndarray], list[str]]] = {}
        other_models: Counter[str] = Counter()
        garbled = 0
        # The weights' embedding length, as most of their rows have it: a row of another length is garbled.
        lengths = Counter(len(r.vector) for r in rows if r.model == self.model and isinstance(r.vector, bytes))
        dim = lengths.most_common(1)[0][0] // 2 if lengths else 0
        for row in rows:
            vector = row.vector_of(dim)
            if row.model != self.model:
                other_models[row.model] += 1
            elif vector is None or not np.isfinite(vector).all():
                garbled += 1
            else:
                vectors, names = kept.setdefault(row.camera, ([], []))
                vectors.append(vector)
                names.append(row.species)
        self._say_left_out(other_models, garbled, sum(len(names) for _, names in kept.values()))
        return {camera: Recall.of(vectors, names) for camera, (vectors, names) in kept.items()}

    def _say_left_out(self, other_models: Counter[str], garbled: int, kept: int) -> None:
        """One line when remembered crops are refused, and again only when that changes."""
        left_out = (sum(other_models.values()), garbled)
        if left_out == self._left_out:
            return
        self._left_out = left_out
        if other_models:
            which = ", ".join(f"{n} of {m}" for m, n in other_models.most_common())
            log.warning(
                "feeder memory: %d visit(s) were remembered with other weights (%s), not %s: left out; the memory is "
                "rebuilt from the %d made with these weights, and grows again as you correct",
                left_out[0],
                which,
                self.model,
                kept,
            )
        if garbled:
            log.warning("feeder memory: %d remembered embedding(s) are garbled in the history: left out", garbled)
