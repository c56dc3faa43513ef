"""The feeder memory: a visit people corrected or confirmed lends its best crop's embedding, and crops that look like
it lean toward the name they gave, from the first correction; the memory lives in the history, follows undo and
clear, and refuses another model's embeddings in one line."""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from birdwatch import cli
from birdwatch.config import MemoryConfig
from birdwatch.decide.memory import FeederMemory
from birdwatch.decide.memory import Recall
from birdwatch.decide.memory import rerank
from birdwatch.deliver import corrections
from birdwatch.deliver import embeddings
from birdwatch.deliver.history import EventStore
from birdwatch.types import Detections
from birdwatch.types import Embedding
from birdwatch.types import Frame
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent
from tests.test_store import event
from tests.test_visits import Feeder
from tests.test_visits import make

MODEL = "test-model@0123456789ab"
CFG = MemoryConfig(strength=0.6, neighbours=5, min_similarity=0.5)
COAL_TIT_SAYS = (SpeciesScore("Coal Tit", 0.7), SpeciesScore("Eurasian Blue Tit", 0.2), SpeciesScore("Great Tit", 0.1))


def basis(i: int, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


def toward(i: int, j: int, similarity: float, dim: int = 8) -> np.ndarray:
    """A unit vector whose cosine to basis(i) is `similarity` (the rest along basis(j))."""
    return similarity * basis(i, dim) + np.sqrt(1 - similarity**2) * basis(j, dim)


def scores(top_k: tuple[SpeciesScore, ...]) -> dict[str, float]:
    return {s.name: pytest.approx(s.score) for s in top_k}


# -- the re-rank, by the formula in decide/memory.py --


def test_one_close_correction_outvotes_the_model_as_the_formula_says() -> None:
    recall = Recall.of([basis(0)], ["Great Tit"])
    # The same crop (similarity 1): w = 1, the vote all Great Tit, a = 0.6 * 1.
    blended = rerank(COAL_TIT_SAYS, np.array([1.0]), recall, CFG)
    assert [s.name for s in blended] == ["Great Tit", "Coal Tit", "Eurasian Blue Tit"]
    assert scores(blended) == {"Great Tit": 0.4 * 0.1 + 0.6, "Coal Tit": 0.4 * 0.7, "Eurasian Blue Tit": 0.4 * 0.2}


def test_neighbours_vote_by_closeness_and_a_far_one_has_no_say() -> None:
    recall = Recall.of([basis(0), basis(1), basis(2)], ["Great Tit", "Coal Tit", "Great Tit"])
    # Similarities 0.9 (Great Tit), 0.85 (Coal Tit), 0.4 (Great Tit, under min_similarity: no say).
    blended = rerank(COAL_TIT_SAYS, np.array([0.9, 0.85, 0.4]), recall, CFG)
    w_great, w_coal = 1.0, math.exp((0.85 - 0.9) / CFG.temperature)  # one temperature less alike: e times less
    vote_great, vote_coal = w_great / (w_great + w_coal), w_coal / (w_great + w_coal)
    a = 0.6 * (0.9 - 0.5) / 0.5
    assert scores(blended) == {
        "Coal Tit": (1 - a) * 0.7 + a * vote_coal,
        "Great Tit": (1 - a) * 0.1 + a * vote_great,
        "Eurasian Blue Tit": (1 - a) * 0.2,
    }
    assert [s.name for s in blended] == ["Coal Tit", "Great Tit", "Eurasian Blue Tit"], "not close enough to win"
    nearer = rerank(COAL_TIT_SAYS, np.array([0.99, 0.85, 0.4]), recall, CFG)
    assert nearer[0].name == "Great Tit", "a nearer neighbour has more say, and outvotes a farther look-alike"


def test_a_memory_of_nothing_alike_changes_nothing() -> None:
    recall = Recall.of([basis(0)], ["Great Tit"])
    assert rerank(COAL_TIT_SAYS, np.array([0.5]), recall, CFG) == COAL_TIT_SAYS
    assert rerank(COAL_TIT_SAYS, np.array([0.9]), recall, dataclasses.replace(CFG, strength=0.0))[0].name == "Coal Tit"


def test_only_the_models_top_k_and_the_memorys_names_can_lead() -> None:
    recall = Recall.of([basis(0), basis(1)], ["Eurasian Nuthatch", "Great Tit"])
    blended = rerank(COAL_TIT_SAYS, np.array([0.95, 0.2]), recall, CFG)
    assert len(blended) == 3
    assert {s.name for s in blended} <= {"Coal Tit", "Eurasian Blue Tit", "Great Tit", "Eurasian Nuthatch"}
    assert blended[0].name == "Eurasian Nuthatch", "a remembered name enters, with the model's 0 for it"
    assert blended[0].score == pytest.approx(0.6 * 0.9 * 1.0)  # a = 0.6 * (0.95 - 0.5) / 0.5; the vote all its


def test_only_the_nearest_neighbours_vote() -> None:
    recall = Recall.of([basis(i) for i in range(4)], ["Great Tit", "Coal Tit", "Coal Tit", "Coal Tit"])
    one = dataclasses.replace(CFG, neighbours=1)
    assert rerank(COAL_TIT_SAYS, np.array([0.99, 0.9, 0.9, 0.9]), recall, one)[0].name == "Great Tit"
    assert rerank(COAL_TIT_SAYS, np.array([0.99, 0.9, 0.9, 0.9]), recall, CFG)[0].name == "Coal Tit"


# -- the memory in the history --


def told(visit: str, species: str, vector: np.ndarray | None, camera: str = "feeder", model: str = MODEL) -> VisitEvent:
    e = dataclasses.replace(event("new", species, camera=camera, visit=visit))
    if vector is None:
        return e
    return dataclasses.replace(e, embedding=Embedding(model, vector.astype(np.float16)))


def history(tmp_path: Path, *events: VisitEvent) -> EventStore:
    store = EventStore(tmp_path / "birdwatch.db")
    for e in events:
        store.add(e, sent_ts=1.0)
    return store


def correct(store: EventStore, visits: list[str], name: str) -> list[corrections.Correction]:
    return store.run(lambda db: corrections.correct(db, visits, name, "test"), write=True)


def remembered(store: EventStore, **where: str) -> list[tuple[str, str]]:
    return [(r.visit_id, r.species) for r in store.run(lambda db: embeddings.remembered(db, **where))]


def test_the_history_keeps_each_visits_best_crop_and_the_memory_is_its_standing_corrections(tmp_path: Path) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)), told("v2", "Coal Tit", basis(1)))
    store.add(told("v1", "Coal Tit", basis(2)), sent_ts=1.0)  # a better crop replaces the visit's embedding
    assert remembered(store) == [], "nobody has said anything yet"
    (first,) = correct(store, ["v1"], "Great Tit")
    correct(store, ["v2"], "Coal Tit")  # "right as it is" counts too
    correct(store, ["v3"], "Great Tit")  # no such visit: nothing
    assert remembered(store) == [("v1", "Great Tit"), ("v2", "Coal Tit")]
    (row,) = [r for r in store.run(embeddings.remembered) if r.visit_id == "v1"]
    assert row.model == MODEL and np.array_equal(row.vector_of(8), basis(2))
    store.run(lambda db: corrections.undo(db, [first.id]), write=True)
    assert remembered(store) == [("v2", "Coal Tit")], "an undo takes the visit out"
    correct(store, ["v2"], corrections.NOT_A_BIRD)
    assert remembered(store) == [], "'not a bird' is no species to lean toward"


def test_clearing_forgets_visits_by_camera_or_species_and_keeps_their_names(tmp_path: Path) -> None:
    store = history(
        tmp_path,
        told("v1", "Coal Tit", basis(0)),
        told("v2", "Coal Tit", basis(1), camera="garden"),
        told("v3", "Coal Tit", basis(2)),
    )
    correct(store, ["v1", "v2"], "Great Tit")
    correct(store, ["v3"], "Coal Tit")
    before = store.run(embeddings.version)
    assert store.run(lambda db: embeddings.forget(db, camera="garden")) == 1
    assert store.run(embeddings.version) != before, "the service sees that the memory changed"
    assert remembered(store) == [("v1", "Great Tit"), ("v3", "Coal Tit")]
    assert store.run(lambda db: embeddings.forget(db, species="Great Tit")) == 1
    assert remembered(store) == [("v3", "Coal Tit")]
    assert store.run(lambda db: corrections.name_of(db, "v2")) == "Great Tit", "forgetting is not un-correcting"
    correct(store, ["v2"], "Marsh Tit")
    assert ("v2", "Marsh Tit") in remembered(store), "a new correction of a forgotten visit counts again"


def test_the_memory_outlives_the_history_retention(tmp_path: Path) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)), told("v2", "Coal Tit", basis(1)))
    correct(store, ["v1"], "Great Tit")
    store.prune(retention_days=0, now=1e12)
    assert remembered(store) == [("v1", "Great Tit")]
    assert store.run(lambda db: db.execute("SELECT visit_id FROM embeddings").fetchall()) == [("v1",)]


# -- the memory in the decide stage --


def classified(species: tuple[SpeciesScore, ...], vector: np.ndarray) -> Detections:
    found = Detections(np.array([[10, 10, 60, 60]], np.float32), np.ones(1, np.float32))
    return found.with_species([species], vector.reshape(1, -1))


def test_a_correction_counts_from_the_next_crop_and_survives_a_restart(tmp_path: Path) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)))
    memory = FeederMemory(CFG, MODEL, store)
    memory.refresh()
    crop = toward(0, 1, 0.95)
    assert memory.rerank("feeder", classified(COAL_TIT_SAYS, crop)).species == (COAL_TIT_SAYS,)
    correct(store, ["v1"], "Great Tit")
    memory._checked = -1e9  # the decide thread's next tick, a second later
    memory.refresh()
    assert memory.sizes() == {"feeder": 1}
    assert memory.rerank("feeder", classified(COAL_TIT_SAYS, crop)).species[0][0].name == "Great Tit"
    assert memory.rerank("garden", classified(COAL_TIT_SAYS, crop)).species == (COAL_TIT_SAYS,), "per camera"
    store.close()
    again = FeederMemory(CFG, MODEL, EventStore(tmp_path / "birdwatch.db"))
    again.refresh()
    assert again.rerank("feeder", classified(COAL_TIT_SAYS, crop)).species[0][0].name == "Great Tit"


def test_another_models_memory_is_left_out_in_one_line_and_rebuilt_from_these_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = history(
        tmp_path,
        told("v1", "Coal Tit", basis(0), model="regnet_y_8g_eu-common@ffffffffffff"),
        told("v2", "Coal Tit", basis(1)),
        told("v3", "Coal Tit", basis(2)),
    )
    correct(store, ["v1", "v2", "v3"], "Great Tit")
    # v3's vector cut short, as a torn write would leave it
    store.run(lambda db: db.execute("UPDATE embeddings SET vector = x'0000' WHERE visit_id = 'v3'"), write=True)
    memory = FeederMemory(CFG, MODEL, store)
    with caplog.at_level(logging.WARNING, logger="birdwatch.decide.memory"):
        memory.refresh()
        memory._checked = -1e9
        memory.refresh()  # unchanged: no second line
    assert memory.sizes() == {"feeder": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "1 visit(s) were remembered with other weights (1 of regnet_y_8g_eu-common@ffffffffffff)" in lines[0]
    assert "rebuilt from the 1 made with these weights" in lines[0]
    assert "1 remembered embedding(s) are garbled" in lines[1]
    crop = toward(1, 2, 0.9)
    assert memory.rerank("feeder", classified(COAL_TIT_SAYS, crop)).species[0][0].name == "Great Tit"
    wrong_length = classified(COAL_TIT_SAYS, np.ones(16, np.float32))
    assert memory.rerank("feeder", wrong_length).species == (COAL_TIT_SAYS,), "another length: never compared"


def test_a_visit_keeps_the_embedding_of_its_best_crop() -> None:
    feeder = Feeder(make())
    seen = []
    for i, score in enumerate([0.6, 0.9, 0.7, 0.8]):
        vector = basis(i)
        feeder.seq += 1
        frame = Frame("feeder", feeder.seq, 1000.0 + feeder.now, np.zeros((240, 320, 3), np.uint8), feeder.now)
        found = classified((SpeciesScore("Great Tit", score),), vector)
        seen += [t.event for t in feeder.visits.observe(frame, found)[1]]
    with_embedding = [e for e in seen if e.embedding is not None]
    assert with_embedding, "the new event brings the visit's best crop so far"
    best = with_embedding[-1].embedding
    assert best is not None and best.model == "test-model" and best.vector.dtype == np.float16
    assert np.array_equal(best.vector.astype(np.float32), basis(1)), "the crop scored 0.9"
    assert all(e.to_payload().get("embedding") is None for e in seen), "never published"


# -- birdwatch memory --


def test_birdwatch_memory_shows_clears_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)), told("v2", "Coal Tit", basis(1), camera="garden"))
    correct(store, ["v1", "v2"], "Great Tit")
    store.close()
    db = str(tmp_path / "birdwatch.db")
    assert cli.main(["memory", "show", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "feeder" in out and "garden" in out and "2 visit(s) of 1 species on 2 camera(s)" in out
    assert cli.main(["memory", "export", "--db", db, "--out", str(tmp_path / "probe")]) == 0
    matrix = np.load(tmp_path / "probe" / "embeddings.npy")
    assert matrix.shape == (2, 8) and np.array_equal(matrix[0], basis(0))
    labels = (tmp_path / "probe" / "labels.csv").read_text().splitlines()
    assert labels[0] == "camera,species,visit_id,correction_id,model" and labels[1].startswith("feeder,Great Tit,v1,")
    assert cli.main(["memory", "clear", "--db", db]) == 2
    assert "say what to forget" in capsys.readouterr().err
    assert cli.main(["memory", "clear", "--db", db, "--camera", "garden"]) == 0
    assert "forgot 1 visit(s)" in capsys.readouterr().out
    assert cli.main(["memory", "show", "--db", db, "--json"]) == 0
    assert '"camera": "feeder"' in capsys.readouterr().out
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT corrected FROM visits WHERE visit_id = 'v2'").fetchone() == ("Great Tit",)
    assert cli.main(["memory", "show", "--db", str(tmp_path / "none.db")]) == 2
    assert "no event history" in capsys.readouterr().err


# -- look-alikes on the page --


def test_the_page_lists_the_visits_like_one_most_alike_first_and_names_them_in_one_go(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from birdwatch.web.app import Site
    from birdwatch.web.app import create_app
    from birdwatch.web.auth import Guard

    store = history(
        tmp_path,
        told("v1", "Coal Tit", basis(0)),
        told("v2", "Coal Tit", toward(0, 1, 0.95)),
        told("v3", "Coal Tit", toward(0, 2, 0.85)),
        told("v4", "Coal Tit", basis(3)),
        told("v5", "Coal Tit", toward(0, 4, 0.9), model="another@000000000000"),
        told("v6", "Coal Tit", None),
    )
    store.close()
    site = Site(tmp_path / "birdwatch.db", tmp_path, ["Coal Tit", "Great Tit"], ["feeder"], Guard("pw"))
    with TestClient(create_app(site), client=("127.0.0.1", 40000), base_url="http://127.0.0.1:8765") as client:
        near = client.get("/api/alike/v1", params={"min": 0.8}).json()
        assert [(n["visit_id"], n["similarity"]) for n in near] == [("v2", pytest.approx(0.95, abs=2e-3)),
                                                                    ("v3", pytest.approx(0.85, abs=2e-3))]  # fmt: skip
        assert [n["visit_id"] for n in client.get("/api/alike/v1", params={"min": -1}).json()] == ["v2", "v3", "v4"]
        assert client.get("/api/alike/v6").status_code == 404, "no crop kept: nothing to compare"
        assert client.get("/api/alike/v1", params={"min": "lots"}).status_code == 400
        page = client.get("/visit/v1/alike", params={"min": 0.8}).text
        assert page.index('data-visit="v2"') < page.index('data-visit="v3"') and 'data-visit="v4"' not in page
        assert "alike 0.95" in page
        assert 'href="/visit/v1/alike"' in client.get("/visit/v1").text
        answer = client.post("/login", data={"password": "pw", "who": "Anna", "next": "/"}, follow_redirects=False)
        assert answer.status_code == 303
        page = client.get("/visit/v1/alike", params={"min": 0.8}).text
        assert "Tick all 2 shown" in page
        token = page.split('<meta name="csrf" content="')[1].split('"')[0]
        ids = [n["visit_id"] for n in client.get("/api/alike/v1", params={"min": 0.8}).json()]
        named = client.post(
            "/api/correct", json={"visits": ids, "species": "Great Tit"}, headers={"X-CSRF-Token": token}
        )
        assert named.status_code == 200, named.text
    with sqlite3.connect(tmp_path / "birdwatch.db") as db:
        assert dict(db.execute("SELECT visit_id, name FROM visits WHERE visit_id IN ('v2', 'v3', 'v4')")) == {
            "v2": "Great Tit",
            "v3": "Great Tit",
            "v4": "Coal Tit",
        }


def test_a_visit_like_none_the_feeder_knows_and_unsure_is_novel(tmp_path: Path) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)))
    correct(store, ["v1"], "Great Tit")
    memory = FeederMemory(CFG, MODEL, store)
    assert memory.novel("feeder", Embedding.of(MODEL, basis(5)), 0.3) is None, "nothing remembered yet"
    memory.refresh()
    assert memory.novel("feeder", Embedding.of(MODEL, basis(5)), 0.3) is True
    assert memory.novel("feeder", Embedding.of(MODEL, basis(5)), 0.9) is False, "sure of its species"
    assert memory.novel("feeder", Embedding.of(MODEL, toward(0, 5, 0.9)), 0.3) is False, "like a known bird"
    assert memory.novel("garden", Embedding.of(MODEL, basis(5)), 0.3) is None, "another camera's memory"
    assert memory.novel("feeder", Embedding.of("other@1", basis(5)), 0.3) is None


# -- what the review found --


def test_a_frame_of_no_birds_beside_a_frame_with_one_keeps_the_batch_whole() -> None:
    from birdwatch.runtime.stages import spread
    from birdwatch.types import Named

    named = Named((COAL_TIT_SAYS,), np.ones((1, 8), np.float32))
    species, rows = spread(named, np.array([False, True]))
    assert species == [(), COAL_TIT_SAYS] and rows.shape == (2, 8) and rows[0].sum() == 0 and rows[1].sum() == 8
    species, rows = spread(Named((), np.zeros((0, 8), np.float32)), np.array([False, False]))  # only a cat here
    assert species == [(), ()] and rows.shape == (2, 8)


def test_a_better_crop_of_a_visit_corrected_while_open_reaches_the_memory(tmp_path: Path) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)))
    correct(store, ["v1"], "Great Tit")
    before = store.run(embeddings.version)
    store.add(told("v1", "Coal Tit", basis(1)), sent_ts=1.0)  # same length, another crop
    assert store.run(embeddings.version) != before


def test_rows_no_birdwatch_wrote_leave_the_memory_as_it_was(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)), told("v2", "Coal Tit", basis(1)))
    correct(store, ["v1"], "Great Tit")
    memory = FeederMemory(CFG, MODEL, store)
    memory.refresh()
    correct(store, ["v2"], "Great Tit")
    store.run(lambda db: db.execute("UPDATE embeddings SET vector = 'text' WHERE visit_id = 'v2'"), write=True)
    memory._checked = -1e9
    with caplog.at_level(logging.WARNING, logger="birdwatch.decide.memory"):
        memory.refresh()
    assert memory.sizes() == {"feeder": 1}, "the garbled row is left out, the rest stays"
    assert any("garbled" in r.getMessage() for r in caplog.records)


def test_forgetting_a_visit_forgets_its_earlier_corrections_too(tmp_path: Path) -> None:
    store = history(tmp_path, told("v1", "Coal Tit", basis(0)))
    correct(store, ["v1"], "Great Tit")
    (latest,) = correct(store, ["v1"], "Marsh Tit")
    store.run(lambda db: embeddings.forget(db, camera="feeder"))
    store.run(lambda db: corrections.undo(db, [latest.id]), write=True)
    assert remembered(store) == [], "undoing the latest does not bring the earlier one back"


def test_any_birder_classifier_gives_one_embedding_row_per_crop(tmp_path: Path) -> None:
    from birdwatch.classify.engine import ClassifierEngine
    from birdwatch.classify.models import load_classifier
    from birdwatch.config import ModelConfig
    from birdwatch.tools.untrained import save_untrained

    # DeiT's embedding is two tokens, (N, 2, D): flattened to one row, as the memory compares rows.
    path = save_untrained("deit_t16", tmp_path / "deit_t16_test.pt", ["a", "b", "c"], (32, 32))
    engine = ClassifierEngine(load_classifier(ModelConfig(file=str(path), device="cpu")), top_k=2)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    (named,) = engine.classify([Frame("feeder", 1, 0.0, image, 0.0)], [[(0, 0, 40, 40), (10, 10, 60, 60)]])
    assert named.embeddings.shape == (2, 2 * 192) and len(named.species) == 2


def test_the_look_alikes_need_a_viewer_and_the_review_puts_novel_visits_first(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from birdwatch.web import book
    from birdwatch.web.app import Site
    from birdwatch.web.app import create_app
    from birdwatch.web.auth import Guard

    store = history(
        tmp_path,
        dataclasses.replace(
            told("v1", "Coal Tit", basis(0)), score=0.5, novel=True, first_seen=time.time() - 600
        ),  # older
        dataclasses.replace(told("v2", "Coal Tit", basis(1)), score=0.4),
    )
    store.close()
    with sqlite3.connect(tmp_path / "birdwatch.db") as db:
        queue = book.review_queue(db, below=0.3)
    assert [r.visit.visit_id for r in queue] == ["v1", "v2"], "the novel one first, though older"
    assert queue[0].why.startswith("like none of the birds named here")
    site = Site(tmp_path / "birdwatch.db", tmp_path, ["Coal Tit"], ["feeder"], Guard("pw"))
    remote = TestClient(create_app(site), client=("192.168.1.9", 40000), base_url="http://127.0.0.1:8765")
    assert remote.get("/visit/v1/alike", follow_redirects=False).status_code == 303
    assert remote.get("/api/alike/v1").status_code == 401
    local = TestClient(create_app(site), client=("127.0.0.1", 40000), base_url="http://127.0.0.1:8765")
    assert local.get("/api/alike/v1", params={"min": "2"}).json() == {
        "error": "min='2': give a similarity between -1 and 1, like 0.8"
    }
