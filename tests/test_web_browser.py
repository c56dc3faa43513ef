"""The page in a real browser, over a real service: `birdwatch run` on a synthetic clip (a looping file
camera), a real mosquitto, and Debian's headless chromium (tests/support/browser.py).

One service for the module: it makes its visits in the first seconds of the clip, then the clip is
quiet for minutes, so what the tests read does not change under them. Each test picks its visits and its
species itself (a species the model named no visit), so the tests pass in any order, alone or together.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from birdwatch.tools.synthetic import Scene
from birdwatch.tools.synthetic import write_video
from tests.support.browser import ABORTED
from tests.support.browser import REPO
from tests.support.browser import Browser
from tests.support.browser import artefacts_dir
from tests.support.browser import start_browser
from tests.support.process import BirdwatchProcess
from tests.support.process import service_config
from tests.support.process import wait_until
from tests.support.servers import MosquittoBroker
from tests.support.servers import MqttCollector

PREFIX = "webtest"
PASSWORD = "a feeder's password"
WHO = "Ana"
FPS = 10
# One bird in each window, 1.5 s of empty frames between them (tracking.timeout_s is 1 s): a visit each.
WINDOWS = [(5 + 25 * i, 15 + 25 * i) for i in range(6)]
QUIET_FRAMES = 1500  # then 150 s of the empty feeder before the clip loops: no new visits while the tests run
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT_S = 15.0  # a page's reaction, a message on the broker


@dataclass
class Service:
    url: str
    process: BirdwatchProcess
    history: Path

    def visits(self) -> list[dict[str, Any]]:
        """The visit book as the service wrote it, oldest first (read-only; the service keeps writing)."""
        db = sqlite3.connect(f"{self.history.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT visit_id, species, name, ended FROM visits ORDER BY first_seen").fetchall()
        finally:
            db.close()
        return [dict(row) for row in rows]

    def ended_visits(self, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """At least `n` visits that have ended (their names no longer move), oldest first."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            found[:] = [v for v in self.visits() if v["ended"]]
            return len(found) >= n

        wait_until(enough, timeout, f"{n} ended visits")
        return found

    def unnamed_species(self, species: list[str]) -> list[str]:
        """Species of the model that it named no visit: a correction to one is the only way it gets visits."""
        named = {v["species"] for v in self.visits()}
        return [s for s in species if s not in named]


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: MosquittoBroker, small_weights: Path
) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("web-browser")
    clip = workdir / "clip.avi"
    scene = Scene(320, 240, WINDOWS[-1][1] + 10, n_birds=1, seed=3, presence=WINDOWS)
    frames = [frame for frame, _ in scene]
    write_video(clip, itertools.chain(frames, itertools.repeat(frames[-1], QUIET_FRAMES)), fps=FPS)
    password = workdir / "web-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)

    cameras = [{"name": "feeder", "url": str(clip), "loop": True, "motion": {"warmup_frames": 3}}]
    config = service_config(small_weights, cameras, mosquitto, prefix=PREFIX, tracking={"min_hits": 2})
    config["engine"] = {"backend": "torch"}  # no export and no timing of the backends at start: a quicker start
    config["web"]["password_file"] = str(password)
    bw = BirdwatchProcess(config, workdir).start()
    try:
        bw.wait_log("the page: http://", timeout=60)
        yield Service(f"http://127.0.0.1:{config['web']['port']}", bw, workdir / "birdwatch.db")
    finally:
        code = bw.terminate()
        log = bw.log
        assert code == 0, log[-4000:]
        assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with start_browser(*DESKTOP) as b:
        yield b


# ---- helpers ------------------------------------------------------------------------------------


def _allowed(line: str) -> bool:
    """A request chromium itself cancelled because the test moved on while the Now page was polling:
    its live picture or its status. Anything else that fails is the page's fault."""
    return f" -> {ABORTED}" in line and ("/live/" in line or "/api/now" in line)


def assert_clean(browser: Browser, what: str) -> None:
    """Nothing went wrong since the last look: no console error, no failed request."""
    errors = browser.console_errors()
    failed = [line for line in browser.failed_requests() if not _allowed(line)]
    assert errors == [], f"{what}: console errors {errors}"
    assert failed == [], f"{what}: failed requests {failed}"


def pictures_loaded(browser: Browser) -> None:
    """Every picture in the viewport has arrived (lazy ones below it are not asked for): the screenshot
    shows them, and none is cut off by the next navigation."""
    script = """
        return [...document.images].filter((img) => {
            const r = img.getBoundingClientRect();
            return r.bottom > 0 && r.top < innerHeight && r.width > 0 && !(img.complete && img.naturalWidth > 0);
        }).map((img) => img.src);
    """
    waiting: list[str] = []

    def arrived() -> bool:
        waiting[:] = browser.driver.execute_script(script)
        return not waiting

    try:
        wait_until(arrived, WAIT_S, f"the pictures of {browser.driver.current_url}")
    except AssertionError as error:
        raise AssertionError(f"{error}; still loading: {waiting}") from None


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT_S) -> Any:
    return WebDriverWait(driver, timeout).until(condition, message=what)


def css(driver: WebDriver | WebElement, selector: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, selector)


def reloaded(browser: Browser, action: Callable[[], None], what: str) -> None:
    """Do `action`, which makes the page reload itself, and return once the new page has loaded."""
    old = css(browser.driver, "html")
    action()
    wait(browser.driver, ec.staleness_of(old), f"{what}: the page did not reload")
    wait(browser.driver, lambda d: d.execute_script("return document.readyState") == "complete", what)


def cards_on_today(driver: WebDriver) -> bool:
    """Today shows a visit; else it is loaded again (the page does not update itself)."""
    if driver.find_elements(By.CSS_SELECTOR, "ul.cards li.card"):
        return True
    driver.refresh()
    return False


def species_list(browser: Browser) -> list[str]:
    """The model's species, as the page offers them for a correction (its datalist)."""
    options = browser.driver.find_elements(By.CSS_SELECTOR, "#species-list option")
    return [str(option.get_attribute("value")) for option in options]


def gallery_counts(browser: Browser, base: str) -> dict[str, int]:
    browser.open(f"{base}/species")
    counts = {}
    for card in browser.driver.find_elements(By.CSS_SELECTOR, "ul.gallery li.card"):
        counts[css(card, "a.name").text] = int(css(card, "[data-count]").text)
    return counts


def chart_titles(browser: Browser, base: str) -> list[str]:
    browser.open(f"{base}/charts")
    script = "return [...document.querySelectorAll('#per-day svg title')].map((t) => t.textContent)"
    return [str(t) for t in browser.driver.execute_script(script)]


def sign_in(browser: Browser, base: str, who: str = WHO, then: str = "/") -> None:
    browser.open(f"{base}/login?next={quote(then)}")
    driver = browser.driver
    css(driver, "input[name=who]").send_keys(who)
    css(driver, "input[name=password]").send_keys(PASSWORD)
    reloaded(browser, css(driver, "main.login button[type=submit]").click, "signing in")
    assert driver.current_url == base + then
    assert css(driver, "header .who button").text.startswith(f"{who} · sign out")


def corrections_of(collector: MqttCollector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in collector.messages]


def wait_corrections(
    collector: MqttCollector, match: Callable[[dict[str, Any]], bool], count: int = 1
) -> list[dict[str, Any]]:
    got = collector.wait_for(lambda m: match(json.loads(m.payload)), timeout=WAIT_S, count=count)
    return [json.loads(m.payload) for m in got]


# ---- every page, at both widths -----------------------------------------------------------------

SHOTS = {"/": "today", "/now": "now", "/species": "species", "/charts": "charts", "/review": "review"}
DISTORTED = """
    return [...document.images].filter((img) => {
        if (!img.complete || !img.naturalWidth || !/[/](media|live)[/]/.test(img.src)) return false;
        if (getComputedStyle(img).objectFit !== "fill") return false;  // cover, contain: never stretched
        const r = img.getBoundingClientRect();
        const shown = r.width / r.height, own = img.naturalWidth / img.naturalHeight;
        return r.width > 0 && Math.abs(shown / own - 1) > 0.05;
    }).map((img) => `${img.src} ${img.naturalWidth}x${img.naturalHeight} shown ${img.width}x${img.height}`);
"""


def layout_faults(browser: Browser) -> list[tuple[str, str]]:
    """(fault, detail): the page is wider than the screen (it scrolls sideways), or a picture is stretched."""
    faults = []
    width = browser.driver.execute_script("return document.documentElement.scrollWidth")
    if width > browser.width:
        faults.append(("wider than the screen", f"{width} px on a {browser.width} px screen"))
    faults += [("distorted picture", str(detail)) for detail in browser.driver.execute_script(DISTORTED)]
    return faults


@pytest.mark.timeout(150)
def test_every_page_loads_cleanly_on_desktop_and_phone(service: Service) -> None:
    service.process.wait_log("new on", timeout=60)
    first = service.ended_visits(3)[0]  # a few cards on Today, for the screenshots
    pages = [
        "/",
        "/now",
        "/species",
        f"/species/{quote(first['name'], safe='')}",
        f"/visit/{first['visit_id']}",
        "/charts",
        "/review",
        "/health",
        "/login",
    ]
    shots: dict[str, Path] = {}
    faults: list[str] = []
    for size, mobile, label in ((DESKTOP, False, "desktop"), (PHONE, True, "phone")):
        with start_browser(*size, mobile=mobile) as browser:
            browser.open(service.url + "/")
            assert browser.viewport() == size
            wait(browser.driver, cards_on_today, "Today shows no visit", timeout=30)
            for path in pages:
                browser.open(service.url + path)
                pictures_loaded(browser)
                assert browser.driver.title.endswith("birdwatch"), f"{path}: {browser.driver.title!r}"
                assert_clean(browser, f"{path} at {label} width")
                page = path.split("/")[1] or "today"
                faults += [f"{path} at {label} width: {fault}: {detail}" for fault, detail in layout_faults(browser)]
                name = "visit" if page == "visit" else SHOTS.get(path)
                if name:
                    shots[f"{name}-{label}"] = browser.screenshot(artefacts_dir() / f"web-{name}-{label}.png")
            assert_clean(browser, f"leaving the last page at {label} width")

    assert faults == []
    assert sorted(shots) == sorted(f"{n}-{w}" for n in [*SHOTS.values(), "visit"] for w in ("desktop", "phone"))
    if os.environ.get("BIRDWATCH_SCREENSHOTS_TO_DOCS") == "1":  # for the README; never otherwise
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for key in ("today-desktop", "today-phone"):
            shutil.copyfile(shots[key], docs / f"web-{key}.png")


# ---- corrections --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sign_in_and_correct_a_visit_everywhere_and_on_mqtt(
    service: Service, browser: Browser, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    collector = mqtt_collector(f"{PREFIX}/+/correction")
    visit = service.ended_visits(3)[0]
    base = service.url
    sign_in(browser, base)
    target = service.unnamed_species(species_list(browser))[0]
    assert visit["name"] != target
    counts_before = gallery_counts(browser, base)

    browser.open(f"{base}/visit/{visit['visit_id']}")
    driver = browser.driver
    assert css(driver, "h1").text.startswith(visit["name"])
    css(driver, "form.rename input[name=species]").send_keys(target)
    reloaded(browser, css(driver, "form.rename button[type=submit]").click, "correcting the visit")
    h1 = css(driver, "h1")
    assert h1.text.startswith(target), h1.text
    assert css(h1, ".was").text == visit["species"]  # the model's word, struck through
    assert f"{WHO} named it {target} (was {visit['name']})" in css(driver, "ul.corrections").text
    assert_clean(browser, "the visit's page after the correction")

    counts_after = gallery_counts(browser, base)
    assert counts_after.get(target) == counts_before.get(target, 0) + 1, (counts_before, counts_after)
    assert any(f": {target} 1" in title for title in chart_titles(browser, base)), "the chart has no bar of it"
    assert_clean(browser, "the species and the charts after the correction")

    told = wait_corrections(collector, lambda p: p["visit_id"] == visit["visit_id"])
    assert len(told) == 1
    message = told[0]
    assert message["species"] == target and message["was"] == visit["name"], message
    assert message["undo"] is False and message["by"] == WHO and message["camera"] == "feeder", message
    assert message["model_species"] == visit["species"] and message["not_a_bird"] is False, message


@pytest.mark.timeout(120)
def test_bulk_correction_of_three_visits_from_today(
    service: Service, browser: Browser, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    collector = mqtt_collector(f"{PREFIX}/+/correction")
    visits = service.ended_visits(3)[-3:]
    ids = [v["visit_id"] for v in visits]
    base = service.url
    sign_in(browser, base)
    target = service.unnamed_species(species_list(browser))[1]
    assert all(v["name"] != target for v in visits)

    driver = browser.driver
    form = css(driver, "form[data-bulk]")
    assert not form.is_displayed(), "the bulk form waits for a visit to be ticked"
    for visit_id in ids:
        css(driver, f'input.pick[data-visit="{visit_id}"]').click()
    wait(driver, lambda d: form.is_displayed(), "the bulk form did not show")
    assert css(form, "[data-count]").text == "3 selected"
    assert len(driver.find_elements(By.CSS_SELECTOR, "li.card.selected")) == 3
    css(form, "input[name=species]").send_keys(target)
    reloaded(browser, css(form, "button[type=submit]").click, "the bulk correction")

    for visit_id in ids:
        card = css(driver, f'li.card[data-visit="{visit_id}"]')
        assert card.get_attribute("data-name") == target
        assert css(card, "a.name").text == target
    assert css(driver, "#toast").text.startswith(f"3 visits: {target}")
    assert_clean(browser, "Today after the bulk correction")

    told = wait_corrections(collector, lambda p: p["visit_id"] in ids, count=3)
    assert sorted(p["visit_id"] for p in told) == sorted(ids)
    was = {v["visit_id"]: v["name"] for v in visits}
    for message in told:
        assert message["species"] == target and message["undo"] is False and message["by"] == WHO, message
        assert message["was"] == was[message["visit_id"]], message


@pytest.mark.timeout(120)
def test_undo_from_the_toast_and_from_the_visit_page(
    service: Service, browser: Browser, mqtt_collector: Callable[..., MqttCollector]
) -> None:
    collector = mqtt_collector(f"{PREFIX}/+/correction")
    visit = service.ended_visits(3)[1]
    base = service.url
    sign_in(browser, base)
    target = service.unnamed_species(species_list(browser))[2]
    assert visit["name"] != target
    driver = browser.driver
    page = f"{base}/visit/{visit['visit_id']}"

    def correct(after: int = 0) -> int:
        """Correct the visit to `target` on its page; the id of the correction, as told on MQTT."""
        css(driver, "form.rename input[name=species]").send_keys(target)
        reloaded(browser, css(driver, "form.rename button[type=submit]").click, "correcting the visit")
        assert css(driver, "h1").text.startswith(target)
        told = wait_corrections(
            collector,
            lambda p: p["visit_id"] == visit["visit_id"] and not p["undo"] and p["correction_id"] > after,
        )
        assert len(told) == 1 and told[0]["species"] == target, told
        return int(told[0]["correction_id"])

    def undone(correction_id: int) -> None:
        assert css(driver, "h1").text.startswith(visit["name"]), css(driver, "h1").text
        assert "· undone" in css(driver, "ul.corrections").text
        assert not driver.find_elements(By.CSS_SELECTOR, "button.undo")
        told = wait_corrections(collector, lambda p: p["correction_id"] == correction_id and p["undo"])
        assert len(told) == 1
        message = told[0]
        assert message["visit_id"] == visit["visit_id"], message
        assert message["species"] == visit["name"] and message["was"] == target, message

    # The toast after a correction offers to undo it.
    browser.open(page)
    first = correct()
    toast = css(driver, "#toast")
    assert toast.is_displayed() and toast.text.startswith(f"1 visit: {target}")
    reloaded(browser, css(toast, "button").click, "undoing from the toast")
    assert css(driver, "#toast").text == "Undone: 1"
    undone(first)

    # So does the visit's own list of corrections, for the latest.
    second = correct(after=first)
    reloaded(browser, css(driver, "button.undo").click, "undoing from the visit's page")
    undone(second)
    assert_clean(browser, "the visit's page after two corrections undone")
    messages = [p for p in corrections_of(collector) if p["visit_id"] == visit["visit_id"]]
    assert [(p["correction_id"], p["undo"]) for p in messages] == [
        (first, False),
        (first, True),
        (second, False),
        (second, True),
    ]
