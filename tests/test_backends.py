"""Every inference backend installed here gives torch's answers, on the real architectures.

Parity at fp32 (engine.precision: fp32): species probabilities within 1e-3 of torch and the same
top-1, on real crops of synthetic feeder frames, for both default models' architectures; detector
boxes with IoU >= 0.99 to torch's. The CPU backends (ONNX Runtime, OpenVINO) are part of the test
install, so a missing one fails here. TensorRT needs a CUDA device; its test runs where there is one.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from birder.inference.classification import infer_batch
from torchvision.ops import box_iou

from birdwatch.backends import PACKAGE
from birdwatch.backends import Backend
from birdwatch.backends import RunOptions
from birdwatch.backends import build_runner
from birdwatch.backends import candidates
from birdwatch.backends import installed
from birdwatch.backends import open_runner
from birdwatch.backends.export import manifest_path
from birdwatch.backends.export import onnx_file
from birdwatch.classify.engine import ClassifierEngine
from birdwatch.classify.engine import classifier_graph
from birdwatch.classify.models import Classifier
from birdwatch.classify.models import load_classifier
from birdwatch.config import DetectorConfig
from birdwatch.config import ModelConfig
from birdwatch.locate.localiser import load_detector
from birdwatch.precision import Dtype
from birdwatch.precision import Precision
from birdwatch.precision import cpu_has_bf16
from birdwatch.tools.bench import synthetic_crops
from birdwatch.tools.synthetic import render_still
from tests.fixtures_detector import TrainedHead

CPU_BACKENDS = [Backend.ONNXRUNTIME, Backend.OPENVINO]
FP32 = RunOptions(Precision(Dtype.FP32), threads=2, batch_size=8)
MAX_DP = 1e-3


def classifier(weights: Path) -> Classifier:
    return load_classifier(ModelConfig(file=str(weights), device="cpu"))


def engine_and_batch(clf: Classifier, runner: object | None) -> tuple[ClassifierEngine, torch.Tensor]:
    """The engine and 12 real crops (two batches), preprocessed as the classify stage does it."""
    engine = ClassifierEngine(clf, batch_size=8, precision=Precision(Dtype.FP32), runner=runner)  # type: ignore[arg-type]
    frames, boxes = synthetic_crops(12)
    crops = [
        (torch.from_numpy(np.ascontiguousarray(f.image[..., ::-1])).permute(2, 0, 1), b)
        for f, bs in zip(frames, boxes, strict=True)
        for b in bs
    ]
    return engine, engine.preprocess(crops)


def probabilities(clf: Classifier, runner: object | None) -> torch.Tensor:
    """Softmax of the engine over 12 real crops, as the classify stage computes it."""
    engine, batch = engine_and_batch(clf, runner)
    return engine.probabilities(batch)


def assert_birders_embedding(clf: Classifier, runner: object | None) -> None:
    """The engine's embeddings, from the pass that gives its probabilities, are birder's own
    (`infer_batch(..., return_embedding=True)`, what `infer_image` calls) on the same crops."""
    engine, batch = engine_and_batch(clf, runner)
    probs, embedding = engine.forward(batch)
    with torch.inference_mode():
        birder_probs, birder_embedding = infer_batch(clf.net, batch, return_embedding=True)
    assert birder_embedding is not None and embedding.shape == birder_embedding.shape
    assert embedding.shape[1] == clf.net.embedding_size
    max_de = np.abs(embedding.cpu().numpy() - birder_embedding).max()
    assert max_de <= MAX_DP, f"max |d embedding| {max_de:.2e} over {MAX_DP}"
    assert np.abs(probs.cpu().numpy() - birder_probs).max() <= MAX_DP


def assert_same_species(theirs: torch.Tensor, torch_p: torch.Tensor) -> None:
    assert theirs.shape == torch_p.shape
    max_dp = (theirs - torch_p).abs().max().item()
    assert max_dp <= MAX_DP, f"max |dp| {max_dp:.2e} over {MAX_DP}"
    assert torch.equal(theirs.argmax(1), torch_p.argmax(1)), "top-1 differs"


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["danube_weights", "eu_common_weights"])  # both default architectures
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_default_architectures_give_torchs_species_on_every_backend(
    backend: Backend, weights: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    clf = classifier(request.getfixturevalue(weights))
    reference = probabilities(clf, None)
    runner = build_runner(classifier_graph(clf), backend, tmp_path, FP32)
    assert runner.backend is backend
    assert_same_species(probabilities(clf, runner), reference)
    assert_birders_embedding(clf, runner)


@pytest.mark.parametrize("weights", ["danube_weights", "eu_common_weights"])
def test_torch_gives_birders_embedding_from_the_same_pass(weights: str, request: pytest.FixtureRequest) -> None:
    assert_birders_embedding(classifier(request.getfixturevalue(weights)), None)


REGION = 120  # not a multiple of the stride: the export's canvas is padded to 128, as torch pads


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the session's trained head may be made for this test
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_detector_finds_torchs_boxes_on_every_backend(
    backend: Backend, trained_head: TrainedHead, tmp_path: Path
) -> None:
    # As detector+motion runs it: square regions around motion, several in one batch.
    cfg = DetectorConfig(file=str(trained_head.result.head), score_threshold=0.3, precision="fp32")
    frames = [render_still(REGION, REGION, seed)[0] for seed in range(40, 46)]
    clf = classifier(trained_head.classifier_file)
    reference = load_detector(cfg, clf).detect(frames, max_size=REGION)
    exported = load_detector(cfg, clf, canvas=REGION, backend=backend, cache_dir=tmp_path, options=FP32)
    assert exported.runner is not None and exported.runner.backend is backend
    assert exported.canvas == 128
    found = exported.detect(frames, max_size=REGION)
    assert sum(len(d) for d in reference) >= len(frames) // 2, "the trained head should see the birds"
    for ours, theirs in zip(found, reference, strict=True):
        assert len(ours) == len(theirs)
        if len(theirs):
            iou = box_iou(torch.from_numpy(ours.boxes), torch.from_numpy(theirs.boxes)).diagonal()
            assert iou.min().item() >= 0.99, f"box IoU {iou.min().item():.4f}"
            assert np.abs(ours.scores - theirs.scores).max() <= MAX_DP


# bf16 (engine.precision auto on a CPU with AVX512-BF16 or AMX) rounds every activation to 8 bits of
# mantissa. Its parity is stated, not fp32's: on the fine-tuned stand-in (real bird-like crops), against
# torch at fp32, the same top-1 for at least 9 in 10 crops and probabilities within 0.05.
BF16_MAX_DP = 0.05
BF16_TOP1 = 0.9


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the session's fine-tuned backbone may be made for this test
@pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 runs natively only on CPUs with AVX512-BF16 or AMX")
def test_openvino_at_bf16_keeps_its_stated_parity(bird_backbone_weights: Path, tmp_path: Path) -> None:
    clf = classifier(bird_backbone_weights)
    reference = probabilities(clf, None)
    bf16 = RunOptions(Precision(Dtype.BF16), threads=2, batch_size=8)
    runner = build_runner(classifier_graph(clf), Backend.OPENVINO, tmp_path, bf16)
    assert runner.precision == "bf16"
    theirs = probabilities(clf, runner)
    max_dp = (theirs - reference).abs().max().item()
    top1 = (theirs.argmax(1) == reference.argmax(1)).float().mean().item()
    assert max_dp <= BF16_MAX_DP and top1 >= BF16_TOP1, f"bf16: max |dp| {max_dp:.3f}, top-1 agreement {top1:.2f}"


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or not installed(Backend.TENSORRT), reason="TensorRT needs a CUDA device"
)
def test_tensorrt_gives_torchs_species_on_the_gpu(danube_weights: Path, tmp_path: Path) -> None:
    clf = load_classifier(ModelConfig(file=str(danube_weights), device="cuda"))
    reference = probabilities(clf, None)
    runner = build_runner(classifier_graph(clf), Backend.TENSORRT, tmp_path, FP32)
    assert_same_species(probabilities(clf, runner).cpu(), reference.cpu())
    assert_birders_embedding(clf, runner)


def test_the_cpu_backends_are_installed_with_the_tests() -> None:
    assert all(installed(b) for b in CPU_BACKENDS), "pip install -e '.[test]' brings onnxruntime and openvino"
    assert candidates(torch.device("cpu")) == [Backend.TORCH, *CPU_BACKENDS]


@pytest.mark.slow
def test_an_export_is_made_once_and_a_damaged_one_is_made_again(
    danube_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clf = classifier(danube_weights)
    graph = classifier_graph(clf)
    first = onnx_file(graph, tmp_path)
    made_at = first.stat().st_mtime_ns
    assert onnx_file(graph, tmp_path) == first and first.stat().st_mtime_ns == made_at, "a good export is reused"

    with first.open("r+b") as f:  # a power cut mid-write, or a bad sector
        f.seek(first.stat().st_size // 2)
        f.write(b"\xff" * 4096)
    with caplog.at_level(logging.WARNING):
        again = onnx_file(graph, tmp_path)
    assert "damaged" in caplog.text
    assert again == first and again.stat().st_mtime_ns != made_at
    runner = build_runner(graph, Backend.ONNXRUNTIME, tmp_path, FP32)
    assert_same_species(probabilities(clf, runner), probabilities(clf, None))


@pytest.mark.slow
def test_new_weights_get_their_own_export(danube_weights: Path, small_weights: Path, tmp_path: Path) -> None:
    a = onnx_file(classifier_graph(classifier(danube_weights)), tmp_path)
    b = onnx_file(classifier_graph(classifier(small_weights)), tmp_path)
    assert a != b and a.exists() and b.exists()
    key = json.loads(manifest_path(b).read_text())["key"]
    assert key["input"] == [3, 96, 96] and key["torch"] == torch.__version__ and key["dynamic_batch"]


def test_a_backend_that_is_not_installed_falls_back_to_torch_with_one_warning(
    small_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package TensorRT would come from is one that no machine has.
    monkeypatch.setitem(PACKAGE, Backend.TENSORRT, "tensorrt_as_on_a_box_without_it")
    assert not installed(Backend.TENSORRT)
    with caplog.at_level(logging.WARNING):
        runner = open_runner(classifier_graph(classifier(small_weights)), Backend.TENSORRT, tmp_path, FP32)
    assert runner.backend is Backend.TORCH
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "tensorrt is not installed" in warnings[0].getMessage()
    assert "running it on torch instead" in warnings[0].getMessage()


@pytest.mark.slow
def test_auto_measures_every_backend_once_and_keeps_its_choice(
    small_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    graph = classifier_graph(classifier(small_weights))
    with caplog.at_level(logging.INFO, logger="birdwatch.backends"):
        chosen = open_runner(graph, Backend.AUTO, tmp_path, FP32)
    said = [r.getMessage() for r in caplog.records if "engine.backend auto" in r.getMessage()]
    assert len(said) == 1 and f"-> {chosen.backend}" in said[0]
    for backend in candidates(graph.device):
        assert f"{backend} " in said[0], f"{backend} was not measured: {said[0]}"
    (choice,) = tmp_path.glob("*-choice-*.json")
    recorded = json.loads(choice.read_text())
    assert recorded["backend"] == chosen.backend.value
    assert set(recorded["img_per_s"]) == {b.value for b in candidates(graph.device)}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="birdwatch.backends"):
        again = open_runner(graph, Backend.AUTO, tmp_path, FP32)
    assert again.backend is chosen.backend
    assert "measured " + recorded["measured"] in caplog.text, "the second start reuses the measurement"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_models_export_makes_ahead_what_a_start_then_finds(small_weights: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "cameras:\n  - {name: feeder, url: rtsp://cam.local/stream}\n"
        f"model: {{file: {small_weights}, device: cpu, models_dir: {tmp_path / 'models'}}}\n"
        "engine: {backend: openvino, precision: fp32}\n"
    )

    def export() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "birdwatch", "models", "export", "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)

    first = export()
    assert first.returncode == 0, first.stderr[-2000:]
    assert "classifier: openvino (fp32)" in first.stdout and "ready in" in first.stdout
    assert re.search(r"made \S+ to ONNX in [\d.]+ s", first.stderr), first.stderr[-2000:]
    assert list((tmp_path / "models" / "compiled").glob("*.onnx"))

    second = export()
    assert second.returncode == 0, second.stderr[-2000:]
    assert "making" not in second.stderr, "the second start reuses the export"


@pytest.mark.timeout(120)
def test_models_export_of_an_unknown_backend_is_one_line(small_weights: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "birdwatch", "models", "export", "--backend", "tensorflow", "x"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 2 and "invalid choice: 'tensorflow'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_export_for_new_weights_of_the_same_name_replaces_the_old_one(tmp_path: Path) -> None:
    from birdwatch.tools.untrained import save_untrained

    cache = tmp_path / "compiled"
    exports = []
    for release in ("2025", "2026"):  # the same model name, retrained: new weights, new export
        weights = save_untrained(
            "mobilenet_v3_small_1_0",
            tmp_path / release / "mobilenet_v3_small_1_0_feeder.pt",
            [f"{release} a", "b"],
            (96, 96),
        )
        exports.append(onnx_file(classifier_graph(classifier(weights)), cache))
    assert exports[0] != exports[1]
    assert sorted(p.name for p in cache.iterdir()) == sorted([exports[1].name, manifest_path(exports[1]).name])


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_classify_workers_calling_one_runner_side_by_side_get_their_own_answers(
    backend: Backend, danube_weights: Path, tmp_path: Path
) -> None:
    clf = classifier(danube_weights)
    runner = build_runner(classifier_graph(clf), backend, tmp_path, replace(FP32, threads=1, callers=2))
    batches = [torch.rand((n, 3, *clf.size), generator=torch.Generator().manual_seed(n)) for n in (3, 5, 4, 6)]
    alone = [runner(b)[0] for b in batches]
    together: list[torch.Tensor | None] = [None] * len(batches)

    def work(i: int) -> None:
        for _ in range(3):
            together[i] = runner(batches[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for mine, expected in zip(together, alone, strict=True):
        assert mine is not None and torch.allclose(mine, expected, atol=1e-5)


@pytest.mark.slow
def test_openvino_keeps_the_compiled_blobs_of_the_exports_in_use_only_over_many_adoptions(tmp_path: Path) -> None:
    """Each adoption (a retrained network under the same name) compiles a new blob; the replaced ones go."""
    from birdwatch.tools.untrained import save_untrained

    cache = tmp_path / "compiled"
    for night in range(4):
        weights = save_untrained(
            "mobilenet_v3_small_1_0", tmp_path / str(night) / "mobilenet_v3_small_1_0_feeder.pt", ["a", "b"], (96, 96)
        )
        build_runner(classifier_graph(classifier(weights)), Backend.OPENVINO, cache, FP32)
        blobs = [p for p in (cache / "openvino").rglob("*") if p.is_file()]
        exports = list(cache.glob("*.onnx"))
        assert len(exports) == 1 and blobs, f"night {night}: {exports}, {blobs}"
        assert {p.relative_to(cache / "openvino").parts[0] for p in blobs} == {exports[0].stem}, (
            f"night {night}: only the export in use has compiled blobs: {blobs}"
        )


@pytest.mark.timeout(240)
def test_models_export_says_what_runs_each_part_of_a_teacher_config(
    small_weights: Path, teacher_weights: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "cameras:\n  - {name: feeder, url: rtsp://cam.local/stream}\n"
        f"model: {{file: {small_weights}, device: cpu, models_dir: {tmp_path / 'models'}}}\n"
        f"localiser: teacher\nteacher: {{file: {teacher_weights}}}\ntracking: {{timeout_s: 5}}\n"
        "engine: {backend: onnxruntime, precision: fp32}\n"
    )
    command = [sys.executable, "-m", "birdwatch", "models", "export", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=200, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "classifier: onnxruntime (fp32)" in result.stdout
    assert "teacher: torch (" in result.stdout, "the teacher runs on torch by design, not a fallback"
    assert "Traceback" not in result.stderr
