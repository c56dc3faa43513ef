"""Untrained networks of the real architectures, saved in birder's format (no model hub offline).

Session-scoped: building and saving takes a second or two each. Species names are made up but the
class counts and input sizes are those of the pretrained models birdwatch ships configs for
(birdwatch.tools.specs, the table the bench uses too).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from birdwatch.tools import specs
from birdwatch.tools.untrained import save_untrained

# As dicts (name, network, classes, size), the way the tests read them.
DANUBE = dataclasses.asdict(specs.DANUBE_DELTA)
EU_COMMON = dataclasses.asdict(specs.EU_COMMON)


def species_names(n: int) -> list[str]:
    return [f"Test species {i:03d}" for i in range(n)]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def danube_weights(models_dir: Path) -> Path:
    """hgnet_v2_b2, 368 classes, 256 px, with a decisive (non-uniform) untrained head."""
    return save_untrained(
        DANUBE["network"],
        models_dir / "hgnet_v2_b2_untrained-danube.pt",
        species_names(DANUBE["classes"]),
        DANUBE["size"],
        decisive=True,
    )


@pytest.fixture(scope="session")
def eu_common_weights(models_dir: Path) -> Path:
    """regnet_y_8g, 707 classes, 384 px (148 MB, like the real file)."""
    return save_untrained(
        EU_COMMON["network"],
        models_dir / "regnet_y_8g_untrained-eu.pt",
        species_names(EU_COMMON["classes"]),
        EU_COMMON["size"],
    )


SMALL = {"network": "mobilenet_v3_small_1_0", "classes": 20, "size": (96, 96)}


@pytest.fixture(scope="session")
def small_weights(models_dir: Path) -> Path:
    """A small real birder network (MobileNet v3 small, 96 px, 20 classes) for tests of what happens
    around the classifier (tracks, visits, outbox), where the species do not matter but CPU time does."""
    return save_untrained(
        SMALL["network"],
        models_dir / "mobilenet_v3_small_1_0_untrained.pt",
        species_names(SMALL["classes"]),
        SMALL["size"],
    )
