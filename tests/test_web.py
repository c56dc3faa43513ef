"""The page over HTTP, route by route: what anyone on this machine may see, what needs the password, and what a
correction does to the history. A real history (SQLite, written by EventStore) and real snapshot files; the
app is Starlette's own, driven through its TestClient (the browser tests drive the real service)."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from starlette.testclient import TestClient

from birdwatch.config import parse_config
from birdwatch.deliver import corrections
from birdwatch.deliver import visitbook
from birdwatch.deliver.export import EBIRD_COLUMNS
from birdwatch.deliver.history import EventStore
from birdwatch.errors import ConfigError
from birdwatch.types import SpeciesScore
from birdwatch.types import VisitEvent
from birdwatch.web.app import Site
from birdwatch.web.app import create_app
from birdwatch.web.auth import MAX_FAILURES
from birdwatch.web.auth import Guard
from birdwatch.web.live import LatestFrames
from tests.test_store import event

PASSWORD = "correct horse battery staple"
SPECIES = ["Great Tit", "Eurasian Blue Tit", "Coal Tit", "European Robin", "Eurasian Nuthatch"]
LOCAL = ("127.0.0.1", 40000)
REMOTE = ("192.168.1.20", 40000)


def visit_events(visit: str, species: str, start: float, score: float, snapshot: Path | None) -> list[VisitEvent]:
    top = (SpeciesScore(species, score), SpeciesScore("Coal Tit", score / 2), SpeciesScore("European Robin", 0.01))
    new = dataclasses.replace(
        event("new", species, visit=visit, ts=start + 2), score=score, top_k=top, first_seen=start, last_seen=start + 2
    )
    new = dataclasses.replace(new, snapshot=str(snapshot) if snapshot else None)
    end = dataclasses.replace(new, kind="end", ts=start + 8, last_seen=start + 8, snapshot=None, id=f"{visit}-end")
    return [new, end]


def jpeg(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((48, 64, 3), shade, np.uint8))
    return path


@dataclasses.dataclass
class Feeder:
    history: Path
    snapshots: Path
    site: Site
    visits: dict[str, str]  # visit id -> species as told


@pytest.fixture
def feeder(tmp_path: Path) -> Feeder:
    history, snapshots = tmp_path / "birdwatch.db", tmp_path / "snapshots"
    store = EventStore(history)
    start = time.mktime(time.strptime(time.strftime("%Y-%m-%d"), "%Y-%m-%d")) + 60  # today, whatever the hour
    told = {"v1": ("Great Tit", 0.9), "v2": ("Great Tit", 0.85), "v3": ("Great Tit", 0.8), "v4": ("Coal Tit", 0.3)}
    for i, (visit, (species, score)) in enumerate(told.items()):
        snap = jpeg(snapshots / time.strftime("%Y-%m-%d") / f"{visit}_crop.jpg", 40 * i)
        jpeg(snap.with_name(f"{visit}_frame.jpg"), 40 * i)
        for e in visit_events(visit, species, start + 60 * i, score, snap):
            store.add(e, sent_ts=time.time())
    store.close()
    site = Site(history, snapshots, SPECIES, ["feeder"], Guard(PASSWORD), location=parse_config(CONFIG).location)
    return Feeder(history, snapshots, site, {v: s for v, (s, _) in told.items()})


CONFIG = yaml.safe_dump(
    {"cameras": [{"name": "feeder", "url": "rtsp://cam/1"}], "location": {"latitude": 48.1, "longitude": 11.5}}
)


@pytest.fixture
def local(feeder: Feeder) -> Iterator[TestClient]:
    with TestClient(create_app(feeder.site), client=LOCAL, base_url="http://127.0.0.1:8765") as client:
        yield client


def signed_in(feeder: Feeder, who: str = "Anna") -> TestClient:
    client = TestClient(create_app(feeder.site), client=LOCAL, base_url="http://127.0.0.1:8765")
    answer = client.post("/login", data={"password": PASSWORD, "who": who, "next": "/"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(client: TestClient) -> str:
    page = client.get("/").text
    return page.split('<meta name="csrf" content="')[1].split('"')[0]


def names(history: Path) -> dict[str, str]:
    with sqlite3.connect(history) as db:
        return dict(db.execute("SELECT visit_id, name FROM visits"))


# ---- viewing ---------------------------------------------------------------------------------------


PAGES = ["/", "/now", "/api/now", "/species", "/species/Great%20Tit", "/visit/v1", "/charts", "/review", "/health"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_opens_for_someone_on_this_machine(local: TestClient, path: str) -> None:
    answer = local.get(path)
    assert answer.status_code == 200, answer.text[:500]


def test_today_shows_each_visit_with_its_best_crop_newest_first(local: TestClient) -> None:
    page = local.get("/").text
    order = [page.index(f'data-visit="{v}"') for v in ("v4", "v3", "v2", "v1")]
    assert order == sorted(order), "newest first"
    assert page.count('src="/media/') == 4
    earlier = local.get("/?day=2001-01-01").text
    assert "No visits that day" in earlier
    assert local.get("/?day=yesterday").status_code == 400


def test_a_visit_shows_its_crops_frame_top_k_and_the_events_it_sent(local: TestClient) -> None:
    page = local.get("/visit/v1").text
    assert "v1_crop.jpg" in page and "v1_frame.jpg" in page
    assert page.count('class="pickname"') == 3, "the top 3"
    assert "<td>new</td>" in page and "<td>end</td>" in page
    assert local.get("/visit/nope").status_code == 404


def test_the_species_gallery_counts_visits_and_the_review_queue_holds_the_unsure_one(local: TestClient) -> None:
    gallery = local.get("/species").text
    assert "<span data-count>3</span> visits" in gallery and "<span data-count>1</span> visit" in gallery
    review = local.get("/review").text
    assert 'data-visit="v4"' in review and "unsure (0.30)" in review
    assert 'data-visit="v2"' not in review, "a sure visit of a common species needs no second look"


def test_the_live_picture_is_a_jpeg_of_the_latest_frame_or_says_why_there_is_none(feeder: Feeder) -> None:
    feeder.site.live = LatestFrames()
    with TestClient(create_app(feeder.site), client=LOCAL) as client:
        waiting = client.get("/live/feeder.jpg")
        assert waiting.status_code == 200 and waiting.content[:2] == b"\xff\xd8"
        from birdwatch.types import Frame

        feeder.site.live.put_frame(Frame("feeder", 1, time.time(), np.zeros((720, 1280, 3), np.uint8)))
        picture = client.get("/live/feeder.jpg")
        decoded = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (540, 960, 3), "scaled to the page's width"
        assert client.get("/live/garden.jpg").status_code == 404


def test_from_another_machine_viewing_needs_the_password_unless_public(feeder: Feeder) -> None:
    with TestClient(create_app(feeder.site), client=REMOTE) as remote:
        answer = remote.get("/", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
        assert remote.get("/media/" + time.strftime("%Y-%m-%d") + "/v1_crop.jpg").status_code == 401
    feeder.site.guard = Guard(PASSWORD, public_view=True)
    with TestClient(create_app(feeder.site), client=REMOTE) as remote:
        assert remote.get("/").status_code == 200


# ---- pictures: the snapshot folder and nothing else -------------------------------------------------


@pytest.mark.timeout(60)
def test_no_path_outside_the_snapshot_folder_is_served_to_raw_requests(feeder: Feeder, tmp_path: Path) -> None:
    """Through a real server, the paths sent as written (an HTTP client library would tidy them first)."""
    import http.client

    from birdwatch.web.server import WebServer
    from tests.support.process import wait_until
    from tests.support.servers import free_port

    secret = jpeg(tmp_path / "secret.jpg", 7)
    (feeder.snapshots / "link.jpg").symlink_to(secret)
    server = WebServer(feeder.site, "127.0.0.1", free_port(), retry_s=0.1)
    server.start()
    try:
        wait_until(lambda: server.port is not None, timeout=20, what="the page listens")
        for path in (
            "/media/../secret.jpg",
            "/media/../../secret.jpg",
            "/media/%2e%2e/secret.jpg",
            "/media/..%2fsecret.jpg",
            "/media/%2e%2e%2f%2e%2e%2fsecret.jpg",
            "/media/link.jpg",
        ):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request("GET", path)
            answer = conn.getresponse()
            body = answer.read()
            conn.close()
            assert answer.status in (400, 404), (path, answer.status)
            assert body[:2] != b"\xff\xd8", path
    finally:
        server.stop()


def test_no_path_outside_the_snapshot_folder_is_served(feeder: Feeder, local: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    jpeg(secret, 7)
    (feeder.snapshots / "link.jpg").symlink_to(secret)
    day = time.strftime("%Y-%m-%d")
    assert local.get(f"/media/{day}/v1_crop.jpg").headers["content-type"] == "image/jpeg"
    for attempt in (
        "/media/../secret.jpg",
        "/media/%2e%2e/secret.jpg",
        "/media/%2E%2E%2Fsecret.jpg",
        f"/media/{day}/..%2f..%2fsecret.jpg",
        "/media/link.jpg",  # a symlink out of the folder
        "/media/%2Fetc%2Fpasswd",
        "/media/../birdwatch.db",
    ):
        answer = local.get(attempt)
        assert answer.status_code == 404, (attempt, answer.status_code)
        assert answer.content[:2] != b"\xff\xd8"


# ---- changes need the password ----------------------------------------------------------------------


def test_a_correction_without_the_password_is_refused_and_changes_nothing(feeder: Feeder, local: TestClient) -> None:
    answer = local.post("/api/correct", json={"visits": ["v1"], "species": "Coal Tit"})
    assert answer.status_code == 403 and "sign in" in answer.json()["error"]
    assert names(feeder.history)["v1"] == "Great Tit"


def test_a_signed_in_post_without_its_csrf_token_or_from_another_site_is_refused(feeder: Feeder) -> None:
    client = signed_in(feeder)
    assert client.post("/api/correct", json={"visits": ["v1"], "species": "Coal Tit"}).status_code == 403
    token = csrf_of(client)
    wrong = client.post(
        "/api/correct", json={"visits": ["v1"], "species": "Coal Tit"}, headers={"X-CSRF-Token": "0" * 32}
    )
    assert wrong.status_code == 403
    cross = client.post(
        "/api/correct",
        json={"visits": ["v1"], "species": "Coal Tit"},
        headers={"X-CSRF-Token": token, "Origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    assert names(feeder.history)["v1"] == "Great Tit"
    ok = client.post("/api/correct", json={"visits": ["v1"], "species": "Coal Tit"}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and names(feeder.history)["v1"] == "Coal Tit"


def test_the_password_as_a_bearer_token_lets_a_script_correct(feeder: Feeder, local: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {PASSWORD}"}
    assert local.post("/api/correct", json={"visits": ["v2"], "not_a_bird": True}, headers=bearer).status_code == 200
    assert names(feeder.history)["v2"] == corrections.NOT_A_BIRD
    wrong = {"Authorization": "Bearer guess"}
    assert local.post("/api/correct", json={"visits": ["v3"], "not_a_bird": True}, headers=wrong).status_code == 403


def test_five_wrong_passwords_lock_the_address_out_even_for_the_right_one(feeder: Feeder) -> None:
    client = TestClient(create_app(feeder.site), client=REMOTE)
    for _ in range(MAX_FAILURES - 1):
        assert client.post("/login", data={"password": "guess"}).status_code == 401
    assert client.post("/login", data={"password": "guess"}).status_code == 401  # the fifth: counted, then locked
    locked = client.post("/login", data={"password": PASSWORD}, follow_redirects=False)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    other = TestClient(create_app(feeder.site), client=("192.168.1.21", 1))
    assert other.post("/login", data={"password": PASSWORD}, follow_redirects=False).status_code == 303


def test_a_wrong_bearer_token_counts_as_a_wrong_password_and_is_locked_out_too(feeder: Feeder) -> None:
    client = TestClient(create_app(feeder.site), client=REMOTE)
    for _ in range(MAX_FAILURES):
        guess = client.get("/export/visits.csv", headers={"Authorization": "Bearer guess"})
        assert guess.status_code in (303, 403)
    right = client.get("/export/visits.csv", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert right.status_code == 403, "locked out: the right token is refused too, for now"
    assert client.post("/login", data={"password": PASSWORD}, follow_redirects=False).status_code == 429


def test_a_forged_or_garbled_session_cookie_or_csrf_token_is_no_session_and_no_error(feeder: Feeder) -> None:
    client = TestClient(create_app(feeder.site), client=REMOTE)
    for cookie in (b"1.a.b.\xe9", b"9999999999.41.00." + b"0" * 64, b"x"):
        raw = {"Cookie": b"birdwatch_session=" + cookie}
        assert client.get("/now", headers=raw, follow_redirects=False).status_code == 303, cookie  # type: ignore[arg-type]
    signed = signed_in(feeder)
    garbled = {"X-CSRF-Token": b"\xe9"}
    answer = signed.post("/api/correct", json={"visits": ["v1"], "species": "Coal Tit"}, headers=garbled)  # type: ignore[arg-type]
    assert answer.status_code == 403


def test_signing_out_needs_the_sessions_own_form(feeder: Feeder) -> None:
    client = signed_in(feeder)
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert client.get("/export/visits.csv").status_code == 200, "still signed in"
    out = client.post("/logout", data={"csrf": csrf_of(client)}, follow_redirects=False)
    assert out.status_code == 303 and 'birdwatch_session=""' in out.headers["set-cookie"]


def test_a_request_relayed_by_a_proxy_on_this_machine_is_not_this_machine(feeder: Feeder, local: TestClient) -> None:
    relayed = local.get("/", headers={"X-Forwarded-For": "203.0.113.9"}, follow_redirects=False)
    assert relayed.status_code == 303 and relayed.headers["location"].startswith("/login")


def test_signing_in_goes_back_only_to_a_page_of_this_site(feeder: Feeder) -> None:
    client = TestClient(create_app(feeder.site), client=LOCAL)
    for target, lands in (("/review", "/review"), ("//evil.example/", "/"), ("https://evil.example/", "/")):
        answer = client.post("/login", data={"password": PASSWORD, "next": target}, follow_redirects=False)
        assert answer.headers["location"] == lands


def test_the_password_is_in_no_page_or_response(feeder: Feeder) -> None:
    client = signed_in(feeder)
    bodies = [client.get(p).text for p in [*PAGES, "/login", "/export/visits.csv"]]
    bodies += [client.post("/login", data={"password": "guess"}).text]
    assert not [b for b in bodies if PASSWORD in b]
    cookie = client.cookies.get("birdwatch_session") or ""
    assert PASSWORD not in cookie


# ---- what a correction does -------------------------------------------------------------------------


def test_a_correction_moves_the_visit_in_every_count_keeps_the_model_s_word_and_undoes(feeder: Feeder) -> None:
    client = signed_in(feeder, who="Anna")
    token = {"X-CSRF-Token": csrf_of(client)}
    made = client.post("/api/correct", json={"visits": ["v1"], "species": "Eurasian Nuthatch"}, headers=token).json()
    assert made["name"] == "Eurasian Nuthatch" and len(made["corrections"]) == 1
    gallery = client.get("/species").text
    assert "Eurasian Nuthatch" in gallery and "<span data-count>2</span> visits" in gallery
    assert "Eurasian Nuthatch" in client.get("/charts").text
    page = client.get("/visit/v1").text
    assert 'class="was"' in page and "Anna named it <b>Eurasian Nuthatch</b>" in page
    with sqlite3.connect(feeder.history) as db:
        assert db.execute("SELECT species, corrected FROM visits WHERE visit_id='v1'").fetchone() == (
            "Great Tit",
            "Eurasian Nuthatch",
        ), "the model's verdict is kept beside the person's"
        [(correction, is_undo)] = corrections.untold(db)
    assert not is_undo
    assert correction.payload() | {"ts": 0, "time": ""} == {
        "correction_id": made["corrections"][0],
        "visit_id": "v1",
        "camera": "feeder",
        "species": "Eurasian Nuthatch",
        "not_a_bird": False,
        "was": "Great Tit",
        "model_species": "Great Tit",
        "undo": False,
        "by": "Anna",
        "ts": 0,
        "time": "",
    }
    undone = client.post("/api/undo", json={"corrections": made["corrections"]}, headers=token).json()
    assert undone["undone"] == made["corrections"]
    assert names(feeder.history)["v1"] == "Great Tit"
    assert "<span data-count>3</span> visits" in client.get("/species").text


def test_a_bulk_correction_names_all_of_a_species_today_and_not_a_bird_leaves_every_count(feeder: Feeder) -> None:
    client = signed_in(feeder)
    token = {"X-CSRF-Token": csrf_of(client)}
    made = client.post(
        "/api/correct", json={"visits": ["x"], "species_today": "Great Tit", "species": "Coal Tit"}, headers=token
    ).json()
    assert len(made["corrections"]) == 3
    assert set(names(feeder.history).values()) == {"Coal Tit"}
    client.post("/api/correct", json={"visits": ["v1", "v2"], "not_a_bird": True}, headers=token)
    with sqlite3.connect(feeder.history) as db:
        assert visitbook.per_day(db, 1) == [(time.strftime("%Y-%m-%d"), "Coal Tit", 2)]
        assert [s.species for s in visitbook.species_seen(db)] == ["Coal Tit"]


def test_a_name_that_is_not_the_model_s_is_refused(feeder: Feeder) -> None:
    client = signed_in(feeder)
    answer = client.post(
        "/api/correct", json={"visits": ["v1"], "species": "Dodo"}, headers={"X-CSRF-Token": csrf_of(client)}
    )
    assert answer.status_code == 400 and "Dodo" in answer.json()["error"]


def test_corrections_outlive_a_rebuild_of_the_book(feeder: Feeder) -> None:
    with sqlite3.connect(feeder.history) as db:
        corrections.correct(db, ["v1"], "Coal Tit", "Anna")
        visitbook.rebuild(db)
        corrections.reapply(db)
    assert names(feeder.history)["v1"] == "Coal Tit"


# ---- exports ---------------------------------------------------------------------------------------


def test_exports_need_the_password_and_the_visits_csv_round_trips(feeder: Feeder, local: TestClient) -> None:
    assert local.get("/export/visits.csv").status_code == 403
    client = signed_in(feeder)
    answer = client.get("/export/visits.csv")
    assert answer.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert {r["visit_id"]: r["species"] for r in rows} == feeder.visits
    assert {r["visit_id"] for r in rows} == set(feeder.visits)


def test_the_ebird_download_is_the_record_format_column_by_column(feeder: Feeder) -> None:
    client = signed_in(feeder)
    rows = list(csv.reader(io.StringIO(client.get("/export/ebird.csv").text)))
    assert {len(r) for r in rows} == {len(EBIRD_COLUMNS)} == {19}
    by_species = {r[0]: r for r in rows}
    assert set(by_species) == {"Great Tit", "Coal Tit"}
    tit = dict(zip(EBIRD_COLUMNS, by_species["Great Tit"], strict=True))
    assert tit["Latitude"] == "48.100000" and tit["Longitude"] == "11.500000"
    assert tit["Date"] == time.strftime("%m/%d/%Y") and tit["Protocol"] == "Stationary"
    assert tit["Number"] == "1", "three visits one after the other: one bird at a time"


# ---- the config ------------------------------------------------------------------------------------


def test_a_page_bound_beyond_this_machine_without_a_password_is_refused_at_load() -> None:
    config = {"cameras": [{"name": "feeder", "url": "rtsp://cam/1"}], "web": {"bind": "0.0.0.0"}}
    with pytest.raises(ConfigError, match=r"web\.bind: 0\.0\.0\.0 .* set web\.password_file"):
        parse_config(yaml.safe_dump(config))


def test_the_password_comes_from_its_file_or_the_environment_and_one_is_made_when_none_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from birdwatch.web.site import page_password

    base = {"cameras": [{"name": "feeder", "url": "rtsp://cam/1"}], "store": {"path": str(tmp_path / "bw.db")}}
    made = page_password(parse_config(yaml.safe_dump(base)))
    kept = tmp_path / "web-password"
    assert kept.read_text().strip() == made and os.stat(kept).st_mode & 0o077 == 0
    assert page_password(parse_config(yaml.safe_dump(base))) == made, "made once, kept"
    monkeypatch.setenv("BW_PAGE", "from-env")
    assert page_password(parse_config(yaml.safe_dump({**base, "web": {"password_env": "BW_PAGE"}}))) == "from-env"
    with pytest.raises(ConfigError, match="web.password_env: environment variable NOPE"):
        page_password(parse_config(yaml.safe_dump({**base, "web": {"password_env": "NOPE"}})))


def test_export_corrections_writes_the_named_crops_one_folder_per_species(feeder: Feeder, tmp_path: Path) -> None:
    from birdwatch.cli import main

    with sqlite3.connect(feeder.history) as db:
        corrections.correct(db, ["v1"], "Eurasian Nuthatch", "Anna")
        corrections.correct(db, ["v2"], "Great Tit", "Anna")  # confirmed: as good a label
        corrections.correct(db, ["v3"], corrections.NOT_A_BIRD, "Anna")  # no class to train
    out = tmp_path / "train"
    assert main(["export", "corrections", "--db", str(feeder.history), "--out", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "Eurasian Nuthatch/v1_v1_crop.jpg",
        "Great Tit/v2_v2_crop.jpg",
    ]
    # birder's image folder takes every folder for a class: the embeddings are files beside them.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["Eurasian Nuthatch", "Great Tit"]
    assert (out / "embeddings.npy").is_file() and (out / "labels.csv").is_file()


def test_a_history_from_before_corrections_gains_them_with_every_visit_named_as_told(feeder: Feeder) -> None:
    with sqlite3.connect(feeder.history) as db:  # the schema 2 of the last release
        db.executescript(
            "DROP INDEX visits_name; DROP INDEX visits_name_best; ALTER TABLE visits DROP COLUMN name;"
            " ALTER TABLE visits DROP COLUMN corrected; DROP TABLE corrections; PRAGMA user_version=2;"
        )
    EventStore(feeder.history).close()
    assert names(feeder.history) == feeder.visits
    with sqlite3.connect(feeder.history) as db:
        assert corrections.correct(db, ["v1"], "Coal Tit", "Anna")
    assert names(feeder.history)["v1"] == "Coal Tit"


@pytest.mark.timeout(60)
def test_a_page_server_that_crashes_logs_one_line_and_serves_again(
    feeder: Feeder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import urllib.request

    import uvicorn

    from birdwatch.web.server import WebServer
    from tests.support.process import wait_until
    from tests.support.servers import free_port

    serve = uvicorn.Server.serve
    crashes = iter([RuntimeError("event loop broke")])

    async def crashing_once(self: uvicorn.Server, sockets: list[object] | None = None) -> None:
        for crash in crashes:
            raise crash
        await serve(self, sockets=sockets)  # type: ignore[arg-type]

    monkeypatch.setattr(uvicorn.Server, "serve", crashing_once)
    server = WebServer(feeder.site, "127.0.0.1", free_port(), retry_s=0.1)
    with caplog.at_level("ERROR", logger="birdwatch.web"):
        server.start()
        try:
            wait_until(lambda: server.port is not None and server.restarts == 1, timeout=20, what="served again")
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/species", timeout=5) as answer:
                assert answer.status == 200
        finally:
            server.stop()
    assert [r.getMessage() for r in caplog.records] == [
        "the page stopped (RuntimeError: event loop broke); starting it again in 0 s"
    ]


def test_signed_in_a_species_page_offers_all_of_its_visits_today_at_once(feeder: Feeder) -> None:
    page = signed_in(feeder).get("/species/Great%20Tit").text
    today = time.strftime("%Y-%m-%d")
    assert f'data-pick-day="{today}">Tick all of today (Great Tit)' in page
    assert page.count(f'data-day="{today}"') == 3
