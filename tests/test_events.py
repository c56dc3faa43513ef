"""Event rules: a minimum score, and at most one event per (camera, species) per throttle interval."""

from __future__ import annotations

from birdwatch.config import EventsConfig
from birdwatch.events import Throttle
from birdwatch.types import Event
from birdwatch.types import Sighting
from birdwatch.types import SpeciesScore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sighting(camera: str, species: str, score: float, seq: int = 1) -> Sighting:
    return Sighting(camera, seq, 0.0, 0.0, (0, 0, 10, 10), (SpeciesScore(species, score), SpeciesScore("other", 0.01)))


def test_one_event_per_camera_and_species_per_interval() -> None:
    clock = Clock()
    throttle = Throttle(EventsConfig(min_score=0.5, throttle_s=60), clock)
    first = throttle.admit([sighting("feeder", "Blue Tit", 0.9), sighting("garden", "Blue Tit", 0.8)], "m")
    assert [(e.camera, e.species) for e in first] == [("feeder", "Blue Tit"), ("garden", "Blue Tit")]
    clock.now += 59
    assert throttle.admit([sighting("feeder", "Blue Tit", 0.99)], "m") == []
    assert [e.species for e in throttle.admit([sighting("feeder", "Robin", 0.7)], "m")] == ["Robin"]
    clock.now += 1
    assert len(throttle.admit([sighting("feeder", "Blue Tit", 0.6)], "m")) == 1
    assert throttle.suppressed == 1


def test_below_min_score_is_never_told() -> None:
    throttle = Throttle(EventsConfig(min_score=0.5, throttle_s=0))
    assert throttle.admit([sighting("feeder", "Blue Tit", 0.49)], "m") == []


def test_the_best_crop_of_a_batch_names_the_event() -> None:
    throttle = Throttle(EventsConfig(min_score=0.0, throttle_s=60))
    (event,) = throttle.admit([sighting("f", "Jay", 0.6, seq=1), sighting("f", "Jay", 0.8, seq=2)], "m")
    assert (event.score, event.frame_seq) == (0.8, 2)


def test_payload_is_plain_json_with_documented_fields() -> None:
    event = Event("sighting", "feeder", 1_700_000_000.0, "Jay", 0.87654, (SpeciesScore("Jay", 0.87654),), (1, 2, 3, 4), 9, "m")
    payload = event.to_payload()
    assert payload["score"] == 0.8765 and payload["top_k"] == [{"species": "Jay", "score": 0.8765}]
    assert payload["box"] == [1, 2, 3, 4] and len(payload["id"]) == 32
    assert payload["time"].startswith("2023-11-1") and payload["time"][-6] in "+-"
