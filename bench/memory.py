"""The feeder memory (birdwatch/decide/memory.py): how many corrections fix a confused pair, and what it costs.

A. Accuracy. A stand-in classifier, birder's mobilenet_v3_small_1_0 at 96 px on six synthetic species, trained
   here for `--steps` seeded steps on new birds on random backgrounds, written by save_network, loaded by
   load_classifier and run through ClassifierEngine.classify. Marsh and Willow tit differ only by a browner cap,
   and `--flip` of the Willow tits are trained as Marsh tits, so the model confuses them. Held-out and feeder
   crops: one camera (one background) visited by `--flock` birds a species, as at a garden feeder, and a new bird
   on a new background every crop. Corrections are the pair's feeder crops with their true names, kept as the
   history keeps them (Embedding.of: unit length, float16); each held-out crop's top-3 is re-ranked against them
   by `rerank` as FeederMemory.rerank does. Top-1 on the pair and on the other four species before and after 1,
   3, 5 and 10 corrections per species of the pair, mean over `--draws` picks of the corrections, per setting.
   Goal: the pair's errors at least halve by 5 corrections per species; the others lose at most 1 point.
B. Cost per crop of FeederMemory.rerank's per-frame path (one matrix product of a frame's two crops against the
   camera's keys, then `rerank` per crop) at 10, 1 000 and 100 000 remembered random unit vectors of dimension
   2048, at numpy's BLAS threads and at one, beside ClassifierEngine.forward of an untrained hgnet_v2_b2 at
   256 px, batch 8, at the threads of one classify worker (WorkerPlan).

    .venv/bin/python bench/memory.py --steps 500 --seed 0 --workdir /tmp/bench-memory --json /tmp/bench-memory.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from birder.data.transforms.classification import get_rgb_stats
from birder.model_registry import registry
from threadpoolctl import threadpool_info
from threadpoolctl import threadpool_limits
from torch.nn import functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from birdwatch.classify.engine import ClassifierEngine  # noqa: E402
from birdwatch.classify.engine import WorkerPlan  # noqa: E402
from birdwatch.classify.models import load_classifier  # noqa: E402
from birdwatch.config import MemoryConfig  # noqa: E402
from birdwatch.config import ModelConfig  # noqa: E402
from birdwatch.decide.memory import Recall  # noqa: E402
from birdwatch.decide.memory import rerank  # noqa: E402
from birdwatch.decide.memory import unit  # noqa: E402
from birdwatch.imaging import bgr_to_tensor  # noqa: E402
from birdwatch.precision import Precision  # noqa: E402
from birdwatch.tools import synthetic as syn  # noqa: E402
from birdwatch.tools.untrained import save_network  # noqa: E402
from birdwatch.tools.untrained import save_untrained  # noqa: E402
from birdwatch.types import Embedding  # noqa: E402
from birdwatch.types import Frame  # noqa: E402
from birdwatch.types import SpeciesScore  # noqa: E402

log = logging.getLogger("bench.memory")

NETWORK, SIZE, FRAME = "mobilenet_v3_small_1_0", 96, 160  # crops are cut from FRAME x FRAME pictures
COUNTS = (1, 3, 5, 10)  # corrections per species of the pair
TRAIN, HELD_OUT, FEEDER = 0, 1, 2  # streams: every crop is seeded by (seed, stream, index), never shared


@dataclass(frozen=True)
class Species:
    name: str
    body: tuple[int, int, int]  # BGR
    head: tuple[int, int, int]
    wing: tuple[int, int, int]
    shape: syn._Shape = field(default_factory=syn._Shape)


SPECIES = (
    Species("Robin", (70, 95, 120), (40, 110, 225), (50, 70, 95), syn._Shape(belly=True)),
    Species("Blue tit", (60, 200, 220), (200, 130, 40), (170, 120, 80), syn._Shape(head=0.13)),
    Species("Goldfinch", (110, 160, 190), (40, 40, 200), (30, 180, 220), syn._Shape(beak=0.28)),
    Species("House sparrow", (80, 115, 150), (130, 130, 130), (40, 70, 110), syn._Shape(body=(0.4, 0.24))),
    Species("Marsh tit", (120, 135, 150), (30, 30, 30), (95, 110, 125)),
    Species("Willow tit", (120, 135, 150), (30, 48, 70), (95, 110, 125)),  # only the cap is browner
)
BEAK = np.array([0, 150, 230])
PAIR = ("Marsh tit", "Willow tit")
NAMES = [s.name for s in SPECIES]


@dataclass(frozen=True)
class Bird:
    """One individual: its species and its own shade of the species' colours, and its size."""

    species: int
    colours: tuple[np.ndarray, np.ndarray, np.ndarray]  # body, head, wing
    length: int

    @classmethod
    def hatch(cls, label: int, rng: np.random.Generator) -> Bird:
        s = SPECIES[label]
        body, head, wing = (np.clip(np.array(c) + rng.normal(0, 8, 3), 0, 255) for c in (s.body, s.head, s.wing))
        return cls(label, (body, head, wing), int(rng.integers(40, 68)))


def render(bird: Bird, rng: np.random.Generator, camera: np.ndarray | None) -> tuple[np.ndarray, Any]:
    """`bird` at `camera` (its background) or on a random one; (picture, a loose box as a localiser gives)."""
    image = camera.copy() if camera is not None else syn._varied_background(FRAME, FRAME, rng, int(rng.integers(3)))
    shape = replace(SPECIES[bird.species].shape, body_angle=float(rng.uniform(-25, 5)))
    length = int(bird.length * rng.uniform(0.85, 1.15))  # nearer the camera or farther
    sprite = syn._paint_bird(length, *bird.colours, BEAK, bool(rng.integers(2)), shape)
    sprite = syn._posed(sprite, float(rng.uniform(-20, 20)), bool(rng.integers(2)))
    light = rng.uniform(0.8, 1.2)  # sun and shade: absolute colour alone cannot tell the pair apart
    sprite = syn._Sprite(np.clip(sprite.image * light, 0, 255).astype(np.uint8), sprite.mask)
    x1, y1, x2, y2 = syn._paste(image, sprite, tuple(rng.uniform(0.35, 0.65, 2) * FRAME)) or (0, 0, FRAME, FRAME)
    px, py = rng.uniform(0.05, 0.3, 2) * (x2 - x1, y2 - y1)
    return image, (max(0, int(x1 - px)), max(0, int(y1 - py)), min(FRAME, int(x2 + px)), min(FRAME, int(y2 + py)))


def stream(seed: int, which: int, per_species: int, flock: int = 0) -> tuple[list[Any], list[int]]:
    """Crops seeded by (seed, stream, species, index). `flock` > 0: all at one camera, of that many individuals
    per species (the same birds in every stream); 0: each a new bird on a random background."""
    camera = syn._varied_background(FRAME, FRAME, np.random.default_rng([seed, 5]), clutter=2) if flock else None
    crops, labels = [], []
    for label in range(len(SPECIES)):
        birds = [Bird.hatch(label, np.random.default_rng([seed, 6, label, j])) for j in range(flock)]
        for i in range(per_species):
            rng = np.random.default_rng([seed, which, label, i])
            crops.append(render(birds[i % flock] if flock else Bird.hatch(label, rng), rng, camera))
            labels.append(label)
    return crops, labels


def train(crops: list[tuple[np.ndarray, Any]], labels: list[int], steps: int, seed: int, flip: float) -> Any:
    """The stand-in, from scratch, on crops resized exactly as ClassifierEngine.preprocess resizes them."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 99])
    pair = [NAMES.index(n) for n in PAIR]
    # Willow tits mislabelled as Marsh tits, as careless data would: the head leans to Marsh while the backbone
    # still sees the cap, which is the confusion a feeder memory can undo.
    y = torch.tensor([pair[0] if v == pair[1] and rng.random() < flip else v for v in labels])
    x = torch.stack(
        [
            TF.resize(bgr_to_tensor(img, torch.device("cpu"))[:, y1:y2, x1:x2], [SIZE, SIZE], InterpolationMode.BICUBIC)
            for img, (x1, y1, x2, y2) in crops
        ]
    )
    stats = get_rgb_stats("birder")  # what save_network records, so the engine normalises alike
    mean, std = torch.tensor(stats["mean"]).view(1, 3, 1, 1), torch.tensor(stats["std"]).view(1, 3, 1, 1)
    net = registry.net_factory(NETWORK, len(NAMES), 3, size=(SIZE, SIZE))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps, pct_start=0.1)
    picks = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        idx = torch.randint(len(x), (32,), generator=picks)
        batch = ((x[idx].float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(batch), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            log.info("training: step %d of %d, loss %.3f", step + 1, steps, loss.item())
    return net.eval()


def classify(engine: ClassifierEngine, crops: list[tuple[np.ndarray, Any]]) -> tuple[list[Any], np.ndarray]:
    """(top-k per crop, embeddings) through the engine's own preprocessing, 32 one-bird frames at a time."""
    tops: list[Any] = []
    embeddings = []
    for start in range(0, len(crops), 32):
        chunk = crops[start : start + 32]
        frames = [Frame("feeder", start + i, 0.0, img) for i, (img, _) in enumerate(chunk)]
        for named in engine.classify(frames, [[box] for _, box in chunk]):
            tops.extend(named.species)
            embeddings.append(named.embeddings)
    return tops, np.concatenate(embeddings)


def top1(tops: list[Any], queries: np.ndarray, recall: Recall, cfg: MemoryConfig) -> list[str]:
    """Each crop's leader after the re-rank, computed as FeederMemory.rerank does (one product, then per crop)."""
    similarities = queries @ recall.keys.T
    return [rerank(t, row, recall, cfg)[0].name for t, row in zip(tops, similarities, strict=True)]


def stand_in(args: argparse.Namespace) -> tuple[ClassifierEngine, float]:
    """Train, save and load the stand-in; (its engine, seconds the training took)."""
    log.info("rendering %d training crops, each a new bird on a random background", len(SPECIES) * args.train)
    crops, labels = stream(args.seed, TRAIN, args.train)
    started = time.perf_counter()
    net = train(crops, labels, args.steps, args.seed, args.flip)
    train_s = time.perf_counter() - started
    path = save_network(net, args.workdir / f"{NETWORK}_memory-bench.pt", NAMES, (SIZE, SIZE))
    return ClassifierEngine(load_classifier(ModelConfig(file=str(path), device="cpu")), top_k=3, batch_size=32), train_s


def accuracy(
    engine: ClassifierEngine, args: argparse.Namespace, flock: int, cfgs: list[MemoryConfig]
) -> dict[str, Any]:
    """Top-1 of held-out crops before and after corrections from the feeder stream, per setting."""
    test_crops, test_labels = stream(args.seed, HELD_OUT, args.test, flock)
    feeder_crops, feeder_labels = stream(args.seed, FEEDER, args.feeder, flock)
    keep = [i for i, v in enumerate(feeder_labels) if NAMES[v] in PAIR]  # only the pair is ever corrected
    tops, queries = classify(engine, test_crops)
    queries = unit(queries)  # FeederMemory.rerank compares unit-length crops
    _, feeder_raw = classify(engine, [feeder_crops[i] for i in keep])
    kept = [Embedding.of("bench", v).vector for v in feeder_raw]  # float16, as the history keeps them
    kept_names = np.array([NAMES[feeder_labels[i]] for i in keep])
    truth = np.array([NAMES[v] for v in test_labels])
    in_pair = np.isin(truth, PAIR)

    def scores(leaders: list[str]) -> tuple[float, float]:
        right = np.array(leaders) == truth
        return 100 * float(right[in_pair].mean()), 100 * float(right[~in_pair].mean())

    leaders = np.array([t[0].name for t in tops])
    before = scores(leaders.tolist())
    each = {name: 100 * float(np.mean(leaders[truth == name] == name)) for name in PAIR}
    rows = []
    for cfg in cfgs:
        pair_acc, other_acc = {0: before[0]}, {0: before[1]}
        for n in COUNTS:
            draws = []
            for draw in range(args.draws):
                rng = np.random.default_rng([args.seed, 7, draw])  # the same picks for every setting
                chosen = [i for name in PAIR for i in rng.permutation(np.flatnonzero(kept_names == name))[:n]]
                recall = Recall.of([kept[i] for i in chosen], kept_names[chosen].tolist())
                draws.append(scores(top1(tops, queries, recall, cfg)))
            pair_acc[n], other_acc[n] = (float(np.mean(v)) for v in zip(*draws, strict=True))
        halved = 100 - pair_acc[5] <= (100 - before[0]) / 2
        goal = halved and min(other_acc.values()) >= before[1] - 1  # the others hold at every n
        rows.append({**vars(cfg), "pair": pair_acc, "others": other_acc, "goal": goal})
    sims = queries @ unit(np.stack(kept).astype(np.float32)).T  # to every feeder crop of the pair
    same = truth[:, None] == kept_names[None, :]
    groups = {
        "same species": sims[in_pair][same[in_pair]],
        "look-alike": sims[in_pair][~same[in_pair]],
        "other species": sims[~in_pair].ravel(),
        "other species, nearest": sims[~in_pair].max(axis=1),
    }
    similarity = {k: [float(np.percentile(v, p)) for p in (5, 50, 95)] for k, v in groups.items()}
    counts = {"pair_crops": int(in_pair.sum()), "other_crops": int((~in_pair).sum())}
    return {**counts, "before": before, "before_each": each, "settings": rows, "similarity": similarity}


def rerank_cost(sizes: tuple[int, ...], dim: int, seed: int) -> dict[str, dict[int, dict[str, float]]]:
    """ms per crop of the per-frame path, frames of two crops each near one remembered crop; at numpy's own BLAS
    threads (as the service runs it) and at one (a busy core's spinning BLAS threads wait on each other)."""
    rng, names = np.random.default_rng(seed), tuple(f"species {i}" for i in range(50))
    cfg, top = MemoryConfig(), tuple(SpeciesScore(f"species {i}", p) for i, p in enumerate((0.5, 0.3, 0.1)))
    out: dict[str, dict[int, dict[str, float]]] = {}
    for n in sizes:
        keys = unit(rng.standard_normal((n, dim), dtype=np.float32))
        recall = Recall(keys, rng.integers(0, len(names), n), names)
        frames = int(np.clip(2e9 / keys.nbytes, 20, 5000))  # the product reads every key: fewer of the big ones
        near = keys[rng.integers(0, n, (frames, 2))] + rng.standard_normal((frames, 2, dim), dtype=np.float32) / 40
        for threads in (None, 1):
            product = per_crop = 0.0
            with threadpool_limits(threads, user_api="blas"):
                blas = next(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
                label = f"{blas} BLAS thread(s)"
                for crops in near:
                    started = time.perf_counter()
                    similarities = unit(crops) @ recall.keys.T
                    middle = time.perf_counter()
                    for row in similarities:
                        rerank(top, row, recall, cfg)
                    product += middle - started
                    per_crop += time.perf_counter() - middle
            ms = {"ms_per_crop": 500 * (product + per_crop) / frames, "product_ms_per_crop": 500 * product / frames}
            out.setdefault(label, {})[n] = ms
            log.info("re-rank at %d remembered, %s: %.3f ms per crop", n, label, ms["ms_per_crop"])
    return out


def forward_cost(workdir: Path) -> float:
    """ms per crop of hgnet_v2_b2 at 256 px, batch 8, at the threads and precision the service picks here."""
    WorkerPlan.resolve(torch.device("cpu")).apply()
    path = save_untrained("hgnet_v2_b2", workdir / "hgnet_v2_b2_untrained.pt", NAMES, (256, 256))
    classifier = load_classifier(ModelConfig(file=str(path), device="cpu"))
    engine = ClassifierEngine(classifier, batch_size=8, precision=Precision.resolve(classifier.device))
    batch = torch.randn(8, 3, 256, 256)
    engine.forward(batch)  # the first pass pays for allocations
    started = time.perf_counter()
    for _ in range(5):
        engine.forward(batch)
    return 1000 * (time.perf_counter() - started) / (8 * 5)


def report(train_s: float, scenarios: dict[str, Any], cost: dict[str, Any], forward_ms: float) -> None:
    print(f"\nA. Top-1 (%) of the stand-in (trained in {train_s:.0f} s) on held-out crops, before corrections (n=0)")
    print("   and after n per species of the pair, mean of the draws. Goal: pair errors halved at n=5, others -1")
    head = "".join(f"{'n=' + str(n):>6}" for n in (0, *COUNTS))
    for scenario, acc in scenarios.items():
        each = ", ".join(f"{name} {v:.0f}" for name, v in acc["before_each"].items())
        print(f"\n   {scenario}: {acc['pair_crops']} crops of the pair ({each}), {acc['other_crops']} of the others")
        print(f"   {'strength neighbours min_sim':<27} | pair  {head} | others{head} | goal")
        for row in acc["settings"]:
            label = f"{row['strength']:<8} {row['neighbours']:<10} {row['min_similarity']}"
            pair, others = ("".join(f"{row[k][n]:>6.1f}" for n in (0, *COUNTS)) for k in ("pair", "others"))
            default = " (default)" if all(row[k] == v for k, v in vars(MemoryConfig()).items()) else ""
            print(f"   {label:<27} |       {pair} |       {others} | {'met' if row['goal'] else 'NOT met'}{default}")
        print("   cosine similarity to the pair's feeder crops, 5th / 50th / 95th percentile:")
        for name, (p5, p50, p95) in acc["similarity"].items():
            print(f"     {name:<24} {p5:6.3f} {p50:6.3f} {p95:6.3f}")
    print(f"\nB. Re-rank cost per crop (frames of 2 crops, dimension 2048, float32; load {os.getloadavg()[0]:.1f})")
    for label, sizes in cost.items():
        for n, c in sizes.items():
            print(
                f"   {n:>7} remembered, {label}: {c['ms_per_crop']:8.3f} ms per crop ({c['product_ms_per_crop']:.3f}"
                f" of it the product), {100 * c['ms_per_crop'] / forward_ms:.2f}% of the forward"
            )
    threads = torch.get_num_threads()
    print(f"   classifier forward, hgnet_v2_b2 256 px, batch 8, {threads} thread(s): {forward_ms:.1f} ms per crop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps of 32 crops (fixed, not timed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-memory"), help="where the weights go")
    parser.add_argument("--train", type=int, default=250, help="training crops per species")
    parser.add_argument("--test", type=int, default=100, help="held-out crops per species")
    parser.add_argument("--feeder", type=int, default=30, help="feeder crops per species of the pair")
    parser.add_argument("--flock", type=int, default=3, help="birds per species that visit the one camera")
    parser.add_argument("--flip", type=float, default=0.45, help="share of Willow tits trained as Marsh tits")
    parser.add_argument("--draws", type=int, default=5, help="random picks of which feeder crops are corrections")
    parser.add_argument("--settings", default="0.6:0.5,0.9:0.5,0.6:0.8,0.9:0.8", help="strength:min_sim[:k],...")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    # One thread: on a busy 2-core machine two threads spin against each other (a training step 0.17 s on one,
    # 0.5-3 s on two), one thread keeps the sums in one order, and it is one classify worker's share in the service.
    torch.set_num_threads(1)
    settings = [
        MemoryConfig(strength=float(v[0]), min_similarity=float(v[1]), neighbours=int(v[2]) if len(v) > 2 else 5)
        for v in (one.split(":") for one in args.settings.split(","))
    ]
    started = time.perf_counter()
    engine, train_s = stand_in(args)
    scenarios = {}
    for scenario, flock in ((f"one camera, {args.flock} birds a species", args.flock), ("a new bird every crop", 0)):
        log.info("held-out and feeder crops: %s", scenario)
        scenarios[scenario] = accuracy(engine, args, flock, settings)
    cost = rerank_cost((10, 1_000, 100_000), 2048, args.seed)
    forward_ms = forward_cost(args.workdir)
    report(train_s, scenarios, cost, forward_ms)
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        given = {k: str(v) for k, v in vars(args).items()}
        figures = dict(args=given, train_s=train_s, accuracy=scenarios, rerank_cost=cost, wall_s=wall)
        figures |= dict(forward_ms_per_crop=forward_ms, load=os.getloadavg())
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
