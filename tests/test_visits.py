"""Visit rules, driven by constructed classified boxes (an untrained classifier names every crop alike):
one `new` and one `end` per visit, the species voted over the visit's crops and weighted by score,
updates only on material change or heartbeat, the cooldown, and allow/block lists."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from birdwatch.config import EventsConfig
from birdwatch.config import TrackingConfig
from birdwatch.decide.species import check_species_lists
from birdwatch.decide.visit import Told
from birdwatch.decide.visits import Visits
from birdwatch.errors import ConfigError
from birdwatch.types import Detections
from birdwatch.types import Frame
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent

T0 = 1_700_000_000.0  # wall clock of the first frame
FPS = 10


class Feeder:
    """A camera whose frames and crops a test makes up; time is frame-driven, 10 frames a second."""

    def __init__(self, visits: Visits, camera: str = "feeder") -> None:
        self.visits = visits
        self.camera = camera
        self.seq = 0
        self.events: list[VisitEvent] = []
        self.pictures: list[VisitEvent] = []  # the events that carried a (better) picture
        self.tracks: list[list[int]] = []  # per frame, the track id of each box

    @property
    def now(self) -> float:
        return self.seq / FPS

    def frame(
        self, *crops: tuple[Sequence[float], Sequence[tuple[str, float]]], birds: Sequence[float] | None = None
    ) -> list[VisitEvent]:
        """One frame with these (box, [(species, score), ...]) crops; `birds`: the localiser's bird score
        of each (0: it calls the box something else), or None for motion regions."""
        self.seq += 1
        image = np.full((240, 320, 3), self.seq % 255, np.uint8)
        frame = Frame(self.camera, self.seq, T0 + self.now, image, self.now)
        found = Detections(
            np.array([box for box, _ in crops], np.float32).reshape(-1, 4),
            np.ones(len(crops), np.float32),
            birds=birds,
        ).with_species([tuple(SpeciesScore(n, s) for n, s in top) for _, top in crops])
        tracked, told = self.visits.observe(frame, found)
        self.tracks.append(tracked.track_ids.tolist())  # type: ignore[union-attr]
        return self.keep(told)

    def keep(self, told: list[Told]) -> list[VisitEvent]:
        events = [t.event for t in told]
        self.events += events
        self.pictures += [t.event for t in told if t.picture is not None]
        return events

    def bird(self, top: Sequence[tuple[str, float]], x: float = 100) -> list[VisitEvent]:
        return self.frame(([x, 80, x + 60, 140], top))

    def wait(self, seconds: float) -> list[VisitEvent]:
        """Time passes with empty frames."""
        out = []
        for _ in range(round(seconds * FPS)):
            out += self.frame()
        return out

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def make(**events: object) -> Visits:
    cfg = EventsConfig(**{"min_score": 0.3, "cooldown_s": 0.0, "update_min_interval_s": 0.0, **events})  # type: ignore[arg-type]
    return Visits(
        TrackingConfig(min_hits=3, timeout_s=1.0), cfg, "test-model", top_k=3, wall=lambda: T0, mono=lambda: 0.0
    )


BLUE_TIT = [("Eurasian Blue Tit", 0.9), ("Great Tit", 0.06), ("Coal Tit", 0.02)]


def test_one_new_and_one_end_per_visit() -> None:
    feeder = Feeder(make())
    for _ in range(20):
        feeder.bird(BLUE_TIT)
    feeder.wait(2)
    assert feeder.kinds() == ["new", "end"]
    new, end = feeder.events
    assert new.visit_id == end.visit_id and new.id != end.id
    assert new.frames == 3, "told at confirmation (min_hits), not before"
    assert end.frames == 20 and end.end_reason == "timeout"
    assert end.first_seen == pytest.approx(T0 + 0.1) and end.last_seen == pytest.approx(T0 + 2.0)
    assert end.species == "Eurasian Blue Tit" and end.score == pytest.approx(0.9)
    assert [s.name for s in end.top_k] == ["Eurasian Blue Tit", "Great Tit", "Coal Tit"]
    assert end.box == (100, 80, 160, 140) and end.model == "test-model"


def test_two_frames_are_not_a_visit() -> None:
    feeder = Feeder(make())
    feeder.bird(BLUE_TIT)
    feeder.bird(BLUE_TIT)
    feeder.wait(3)
    assert feeder.events == []


def test_sixty_forty_visit_is_named_by_the_sixty() -> None:
    feeder = Feeder(make())
    a, b = "Eurasian Blue Tit", "Great Tit"
    for says_a in "aabababaab":  # 6 crops say a, 4 say b, interleaved; all equally sure
        feeder.bird([(a, 0.7), (b, 0.2)] if says_a == "a" else [(b, 0.7), (a, 0.2)])
    feeder.wait(2)
    end = feeder.events[-1]
    assert end.kind == "end" and end.species == a
    assert end.score == pytest.approx((6 * 0.7 + 4 * 0.2) / 10)
    assert end.top_k[1] == SpeciesScore(b, pytest.approx((4 * 0.7 + 6 * 0.2) / 10))


def test_the_vote_is_weighted_by_score() -> None:
    """Six unsure crops for one species lose to four confident ones for another."""
    feeder = Feeder(make(min_score=0.0))
    a, b = "House Sparrow", "Tree Sparrow"
    for i in range(10):
        feeder.bird([(b, 0.9), (a, 0.05)] if i % 3 == 0 else [(a, 0.3), (b, 0.25)])
    feeder.wait(2)
    end = feeder.events[-1]
    assert end.species == b, "4 x 0.9 + 6 x 0.25 beats 6 x 0.3 + 4 x 0.05"


def test_update_on_species_change_not_on_every_frame() -> None:
    feeder = Feeder(make())
    a, b = "Great Tit", "Coal Tit"
    for _ in range(4):
        feeder.bird([(a, 0.8), (b, 0.1)])
    for _ in range(8):  # the bird turns: the later crops look like b and outvote the early ones
        feeder.bird([(b, 0.95), (a, 0.02)])
    feeder.wait(2)
    kinds = feeder.kinds()
    assert kinds[0] == "new" and kinds[-1] == "end"
    updates = [e for e in feeder.events if e.kind == "update"]
    assert feeder.events[0].species == a and feeder.events[-1].species == b
    assert any(u.species == b for u in updates), "the change of species was told"
    assert len(updates) <= 4, f"a few updates, not one per frame: {kinds}"
    assert len({e.visit_id for e in feeder.events}) == 1


def test_small_score_changes_are_not_news() -> None:
    feeder = Feeder(make(update_min_score_change=0.1))
    for i in range(30):
        feeder.bird([("Eurasian Nuthatch", 0.80 + 0.01 * (i % 3))])
    feeder.wait(2)
    assert feeder.kinds() == ["new", "end"]


def test_material_score_change_is_an_update_within_the_interval() -> None:
    feeder = Feeder(make(update_min_score_change=0.1, update_min_interval_s=1.0))
    for _ in range(3):
        feeder.bird([("European Robin", 0.4)])
    for _ in range(20):
        feeder.bird([("European Robin", 0.95)])  # the mean climbs from 0.4 towards 0.95
    feeder.wait(2)
    stamps = [round(e.ts - T0, 1) for e in feeder.events if e.kind == "update"]
    assert stamps, feeder.kinds()
    assert all(b - a >= 1.0 for a, b in zip([0.3, *stamps], stamps, strict=False)), stamps


def test_heartbeat_updates_a_long_visit() -> None:
    feeder = Feeder(make(heartbeat_s=1.0))
    for _ in range(35):  # 3.5 s of a steady bird
        feeder.bird(BLUE_TIT)
    feeder.wait(2)
    assert feeder.kinds() == ["new", "update", "update", "update", "end"]


def test_cooldown_keeps_a_quick_return_quiet() -> None:
    visits = make(cooldown_s=30.0)
    feeder = Feeder(visits)
    for _ in range(5):
        feeder.bird(BLUE_TIT)
    feeder.wait(2)
    for _ in range(5):  # back 2 s later: same species, same camera
        feeder.bird(BLUE_TIT)
    assert visits.state("feeder").present, "a quiet visit is still a bird at the feeder"
    feeder.wait(2)
    for _ in range(5):  # a different species is news at once
        feeder.bird([("Great Spotted Woodpecker", 0.8)])
    feeder.wait(30)
    for _ in range(5):  # after the cooldown, the blue tit is news again
        feeder.bird(BLUE_TIT)
    feeder.wait(2)
    told = [(e.kind, e.species) for e in feeder.events]
    assert told == [
        ("new", "Eurasian Blue Tit"),
        ("end", "Eurasian Blue Tit"),
        ("new", "Great Spotted Woodpecker"),
        ("end", "Great Spotted Woodpecker"),
        ("new", "Eurasian Blue Tit"),
        ("end", "Eurasian Blue Tit"),
    ]
    assert visits.quiet == 1


def test_cooldown_is_per_camera() -> None:
    visits = make(cooldown_s=60.0)
    feeder, window = Feeder(visits, "feeder"), Feeder(visits, "window")
    for _ in range(5):
        feeder.bird(BLUE_TIT)
    feeder.wait(2)
    window.seq = feeder.seq  # the same moment
    for _ in range(5):
        window.bird(BLUE_TIT)
    assert [e.kind for e in window.events] == ["new"]


def test_block_list_silences_a_species() -> None:
    visits = make(block=["House Sparrow"])
    feeder = Feeder(visits)
    for _ in range(10):
        feeder.bird([("House Sparrow", 0.9), ("Eurasian Tree Sparrow", 0.05)])
    feeder.wait(2)
    assert feeder.events == []


def test_allow_list_tells_only_those_species() -> None:
    visits = make(allow=["Eurasian Blue Tit"])
    feeder = Feeder(visits)
    for _ in range(6):
        feeder.bird([("Common Starling", 0.9)])
    feeder.wait(2)
    for _ in range(6):
        feeder.bird(BLUE_TIT)
    feeder.wait(2)
    assert [(e.kind, e.species) for e in feeder.events] == [("new", "Eurasian Blue Tit"), ("end", "Eurasian Blue Tit")]


def test_a_told_visit_keeps_its_best_allowed_name() -> None:
    """A blue tit told, then crops that look like a blocked species: it is not renamed to it."""
    feeder = Feeder(make(block=["Domestic Cat"]))
    for _ in range(4):
        feeder.bird(BLUE_TIT)
    for _ in range(10):
        feeder.bird([("Domestic Cat", 0.99)])
    feeder.wait(2)
    assert {e.species for e in feeder.events} == {"Eurasian Blue Tit"}
    assert all(s.name != "Domestic Cat" for s in feeder.events[0].top_k)


def test_below_min_score_is_not_told() -> None:
    visits = make(min_score=0.5)
    feeder = Feeder(visits)
    for _ in range(10):
        feeder.bird([("Eurasian Wren", 0.45), ("Dunnock", 0.4)])
    feeder.wait(2)
    assert feeder.events == [] and visits.unnamed == 1


def test_two_birds_at_once_are_two_visits() -> None:
    feeder = Feeder(make())
    for _ in range(6):
        feeder.frame(([20, 20, 80, 80], BLUE_TIT), ([200, 120, 260, 180], [("Great Tit", 0.8)]))
    feeder.wait(2)
    news = [e for e in feeder.events if e.kind == "new"]
    ends = [e for e in feeder.events if e.kind == "end"]
    assert len(news) == len(ends) == 2
    assert {e.species for e in news} == {"Eurasian Blue Tit", "Great Tit"}
    assert {e.visit_id for e in news} == {e.visit_id for e in ends}


def test_tick_ends_visits_when_the_camera_goes_quiet() -> None:
    feeder = Feeder(make())
    for _ in range(5):
        feeder.bird(BLUE_TIT)
    assert feeder.visits.tick(now=feeder.now + 0.5, wall=T0 + 1) == []
    (end,) = feeder.keep(feeder.visits.tick(now=feeder.now + 1.01, wall=T0 + 2))
    assert end.kind == "end" and end.ts == T0 + 2


def test_close_ends_open_visits_as_shutdown() -> None:
    feeder = Feeder(make())
    for _ in range(5):
        feeder.bird(BLUE_TIT)
    (end,) = feeder.keep(feeder.visits.close())
    assert end.kind == "end" and end.end_reason == "shutdown"
    assert feeder.visits.close() == []


def test_snapshots_go_with_new_and_with_a_better_crop_only() -> None:
    feeder = Feeder(make(heartbeat_s=0.5))
    for _ in range(3):
        feeder.bird([("Eurasian Jay", 0.6)])
    for _ in range(10):
        feeder.bird([("Eurasian Jay", 0.6)])  # no better crop
    feeder.bird([("Eurasian Jay", 0.95)], x=120)  # a better one
    for _ in range(6):
        feeder.bird([("Eurasian Jay", 0.6)])
    feeder.wait(2)
    with_image = [(e.kind, e.box) for e in feeder.pictures]
    assert with_image[0] == ("new", (100, 80, 160, 140))
    assert with_image[1:] == [("update", (120, 80, 180, 140))]
    assert feeder.events[-1].box == (120, 80, 180, 140)


def test_camera_state_counts_todays_visits_and_presence() -> None:
    visits = make()
    feeder = Feeder(visits)
    visits.seed("feeder", None, "2023-11-14", 4)
    state = visits.state("feeder", wall=T0)
    assert (state.present, state.species, state.visits_today) == (False, None, 4)
    for _ in range(5):
        feeder.bird(BLUE_TIT)
    state = visits.state("feeder", wall=T0)
    assert (state.present, state.species, state.visits_today) == (True, "Eurasian Blue Tit", 5)
    feeder.wait(2)
    assert not visits.state("feeder", wall=T0).present
    assert visits.state("feeder", wall=T0 + 86400).visits_today == 0, "a new day"


def test_species_lists_are_checked_against_the_model() -> None:
    names = ["Eurasian Blue Tit", "Great Tit"]
    check_species_lists(EventsConfig(allow=["Great Tit"]), names, "m")
    with pytest.raises(
        ConfigError,
        match=r"events.block\[0\]: 'Blue Tit' is not a species of model m; did you mean 'Eurasian Blue Tit'\?",
    ):
        check_species_lists(EventsConfig(block=["Blue Tit"]), names, "m")


def test_the_boxes_come_back_with_their_track_ids() -> None:
    feeder = Feeder(make())
    feeder.frame(([100, 80, 160, 140], BLUE_TIT), ([250, 20, 300, 70], BLUE_TIT))
    feeder.frame(([104, 80, 164, 140], BLUE_TIT), ([250, 22, 300, 72], BLUE_TIT))
    first, second = feeder.tracks
    assert len(set(first)) == 2 and second == first, "each bird keeps its track from frame to frame"


def test_unclassified_boxes_are_refused() -> None:
    frame = Frame("feeder", 1, T0, np.zeros((240, 320, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="not classified"):
        make().observe(frame, Detections(np.array([[0, 0, 10, 10]], np.float32), np.ones(1, np.float32)))


# ---- bird or not: the localiser's verdict ------------------------------------------------------------


def test_a_track_the_localiser_calls_not_a_bird_is_no_visit_whatever_the_classifier_says() -> None:
    visits = make()
    feeder = Feeder(visits)
    for _ in range(10):  # a cat, named a blackbird with confidence by a classifier that knows only birds
        feeder.frame(([100, 80, 160, 140], [("Blackbird", 0.95)]), birds=[0.0])
    feeder.wait(2)
    assert feeder.events == []
    assert visits.not_birds == 1 and visits.unnamed == 0


def test_a_track_the_localiser_only_half_believes_is_a_bird_is_no_visit() -> None:
    visits = make(min_bird_score=0.5)
    feeder = Feeder(visits)
    for _ in range(10):  # a leaf, boxed as a bird at 0.42 every frame by a weak detector
        feeder.frame(([100, 80, 160, 140], [("Blackbird", 0.95)]), birds=[0.42])
    feeder.wait(2)
    assert feeder.events == []
    assert visits.not_birds == 1
    sure = Feeder(make(min_bird_score=0.5), camera="sure")
    for bird in (0.3, 0.4, 0.5, 0.9, 0.9):  # a bird, doubted at first: confirmed at 3 crops (mean 0.4), told at 4
        sure.frame(([100, 80, 160, 140], [("Blackbird", 0.95)]), birds=[bird])
    sure.wait(2)
    assert sure.kinds() == ["new", "end"]
    assert sure.events[0].frames == 4


def test_the_visit_carries_the_localisers_mean_bird_score_and_one_odd_frame_does_not_end_it() -> None:
    feeder = Feeder(make(min_bird_score=0.5))
    scores = [0.9, 0.7, 0.0, 0.8, 0.6]  # one frame the localiser took the bird for something else
    for bird in scores:
        feeder.frame(([100, 80, 160, 140], [("Blackbird", 0.9)]), birds=[bird])
    feeder.wait(2)
    assert feeder.kinds() == ["new", "end"]
    end = feeder.events[-1]
    assert end.bird_score == pytest.approx(np.mean(scores))
    assert end.to_payload()["bird_score"] == pytest.approx(np.mean(scores), abs=1e-4)


def test_two_boxes_of_one_bird_in_a_frame_count_its_better_bird_score_once() -> None:
    feeder = Feeder(make(), camera="split")
    feeder.frame(([100, 80, 160, 140], [("Blackbird", 0.9)]), birds=[0.9])
    for _ in range(4):  # then split at a wing: two boxes on the one track, each frame
        feeder.frame(
            ([100, 80, 160, 140], [("Blackbird", 0.9)]), ([104, 84, 156, 136], [("Blackbird", 0.8)]), birds=[0.5, 0.9]
        )
    assert all(ids[0] == ids[-1] for ids in feeder.tracks), feeder.tracks  # one track
    feeder.wait(2)
    assert feeder.kinds() == ["new", "end"]
    assert feeder.events[-1].bird_score == pytest.approx(0.9)  # not 0.7 (both boxes), nor above 0.9


def test_motion_regions_say_nothing_of_birds() -> None:
    feeder = Feeder(make())
    for _ in range(4):
        feeder.bird([("Blackbird", 0.9)])
    feeder.wait(2)
    assert feeder.kinds() == ["new", "end"]
    assert all(e.bird_score is None for e in feeder.events)
    assert feeder.events[0].to_payload()["bird_score"] is None
