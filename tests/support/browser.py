"""A real browser for the tests: Debian's headless chromium, driven by selenium through Debian's chromedriver.

    with start_browser(390, 844) as browser:  # a phone's viewport
        browser.open(url)
        assert browser.console_errors() == []
        assert browser.failed_requests(ignore_aborted=True) == []
        browser.screenshot(artefacts_dir() / "phone.png")

Only the system's /usr/bin/chromium and /usr/bin/chromedriver are used (`make system-packages` installs them):
the driver's path is given to selenium, so Selenium Manager never runs and nothing is downloaded. When
either is missing, `start_browser` raises `BrowserMissing`: a test that needs the browser fails, it is
never skipped.

The logs are read as selenium's `get_log` reads them, which drains them: each call of `console_errors` or
`failed_requests` returns what happened since the previous call of the same helper, so a test can open
a page, check it, act, and check again for just what the action did.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from types import TracebackType
from typing import Any
from typing import Self

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.command import Command

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_LOAD_TIMEOUT_S = 30.0  # driver.get() gives up after this (a page that never loads fails, it doesn't hang)
SCRIPT_TIMEOUT_S = 30.0  # execute_async_script likewise
# What chromium reports for a request it cancelled itself, e.g. a polled or streamed image still loading
# when the test navigates away or the page swaps its src: usually not a fault of the page.
ABORTED = "net::ERR_ABORTED"

REPO = Path(__file__).resolve().parents[2]


class BrowserMissing(RuntimeError):
    """chromium or chromedriver is not installed: the test fails and says how to install them."""


def artefacts_dir() -> Path:
    """Where tests leave screenshots for a person to look at: $BIRDWATCH_TEST_ARTEFACTS, else
    <repo>/test-artefacts (git-ignored). Created if missing."""
    directory = Path(os.environ.get("BIRDWATCH_TEST_ARTEFACTS") or REPO / "test-artefacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def browser_options(width: int, height: int, *, page_load_strategy: str = "normal") -> webdriver.ChromeOptions:
    """Headless system chromium as root in a container, with console and network logs kept for the tests."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: chromium's sandbox refuses to run as root
        "--disable-dev-shm-usage",  # a container's small /dev/shm would crash the renderer; /tmp instead
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",  # screenshots without a scrollbar eating the viewport's width
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",  # no calls home (there is no network but the loopback)
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
    ):
        options.add_argument(argument)
    options.page_load_strategy = page_load_strategy
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # The performance log is for the Network events (chromium 156 still sends some Page ones; they're skipped).
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
    return options


def start_browser(width: int, height: int, *, mobile: bool = False, page_load_strategy: str = "normal") -> Browser:
    """A fresh headless chromium whose viewport is exactly `width` x `height` CSS pixels, closed by
    `Browser.close()` or `with`.

    `mobile` emulates a phone's browser as well as its size: the page is laid out at its
    `<meta name="viewport">` width (980 px without one, as on a phone) and scaled to fit. `page_load_strategy`
    "normal" waits in `open()` for the load event (images included: an MJPEG <img> counts as loaded at
    its first frame); "eager" only for the DOM, for a page whose load event may never come."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        raise BrowserMissing(
            f"the browser tests need Debian's chromium and chromedriver; missing: {', '.join(missing)}; "
            "install them with `make system-packages` (apt-get install chromium chromium-driver)"
        )
    # chromium's profile and temporary files, and chromedriver's log, in one folder that close() removes
    # (left to themselves they leave a folder in /tmp per run).
    scratch = Path(tempfile.mkdtemp(prefix="birdwatch-chromium-"))
    log_path = scratch / "chromedriver.log"
    # --enable-chrome-logs: chromium's own stderr in that log too, so a chromium that will not start says why.
    service = Service(
        executable_path=str(CHROMEDRIVER),
        service_args=["--enable-chrome-logs"],
        log_output=str(log_path),
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        driver = webdriver.Chrome(
            options=browser_options(width, height, page_load_strategy=page_load_strategy), service=service
        )
    except WebDriverException as error:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else "(no log)"
        shutil.rmtree(scratch, ignore_errors=True)
        raise RuntimeError(f"chromium did not start: {error.msg}\nchromedriver's log ends:\n{tail}") from error
    browser = Browser(driver, width, height, mobile=mobile, scratch=scratch)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        browser.size_viewport()
    except BaseException:
        browser.close()
        raise
    return browser


@dataclass
class Browser:
    """One chromium session: `driver` is selenium's WebDriver, for whatever the helpers don't cover."""

    driver: webdriver.Chrome
    width: int
    height: int
    mobile: bool = False
    scratch: Path | None = None  # chromium's profile and temporary files, chromedriver's log: removed on close
    _request_urls: dict[str, str] = field(default_factory=dict, repr=False)  # requestId -> URL, across drains
    _closed: bool = field(default=False, repr=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self, url: str) -> None:
        """Navigate to `url`; returns once it has loaded (per the page-load strategy), or raises
        selenium's TimeoutException after PAGE_LOAD_TIMEOUT_S."""
        self.driver.get(url)

    def viewport(self) -> tuple[int, int]:
        """The page's viewport as the page sees it: (innerWidth, innerHeight) in CSS pixels."""
        width, height = self.driver.execute_script("return [window.innerWidth, window.innerHeight]")
        return int(width), int(height)

    def size_viewport(self) -> None:
        """Make the viewport exactly width x height. --window-size alone does not: headless chromium
        keeps its window at least 500 px wide, and the window's height includes an (unseen) toolbar
        of about 140 px. The override holds across navigations, for this tab."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": self.mobile},
        )

    def console_errors(self, *, ignore_network: bool = False) -> list[str]:
        """The SEVERE entries of the browser's console since the last call (the log is drained): uncaught
        exceptions, console.error(...) (as `URL line:col "text"`), and chromium's own "Failed to load
        resource" line for each request that failed, which `ignore_network` leaves out (failed_requests
        says more about those)."""
        return [
            str(entry.get("message", ""))
            for entry in self._drain_log("browser")
            if entry.get("level") == "SEVERE" and not (ignore_network and entry.get("source") == "network")
        ]

    def failed_requests(self, *, ignore_aborted: bool = False) -> list[str]:
        """The requests that failed since the last call (the performance log is drained), one line each:
        `URL -> 404 Not Found` for an HTTP status >= 400, `URL -> net::ERR_...` for one that got no
        response. A request chromium cancelled itself reads `URL -> net::ERR_ABORTED` (see ABORTED): a
        streamed or polled image when the page navigates away, for one; `ignore_aborted` leaves those out."""
        failed: list[str] = []
        for entry in self._drain_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message.get("method"), message.get("params", {})
            if method == "Network.requestWillBeSent":
                self._request_urls[params["requestId"]] = params["request"]["url"]
            elif method == "Network.responseReceived":
                response = params["response"]
                if response.get("status", 0) >= 400:
                    failed.append(
                        f"{response['url']} -> {response['status']} {response.get('statusText', '')}".rstrip()
                    )
            elif method == "Network.loadingFailed":
                error = params.get("errorText", "")
                if ignore_aborted and error == ABORTED:
                    continue
                url = self._request_urls.get(params["requestId"], f"(request {params['requestId']})")
                blocked = params.get("blockedReason") or params.get("corsErrorStatus", {}).get("corsError")
                failed.append(f"{url} -> {error}" + (f" ({blocked})" if blocked else ""))
        return failed

    def _drain_log(self, kind: str) -> list[dict[str, Any]]:
        """What selenium's get_log(kind) does (chromedriver hands over the entries and forgets them), typed."""
        entries: list[dict[str, Any]] = self.driver.execute(Command.GET_LOG, {"type": kind})["value"]
        return entries

    def screenshot(self, path: Path | str) -> Path:
        """A PNG of the viewport at `path` (its folder created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"chromium could not take a screenshot to {path}")
        return path

    def close(self) -> None:
        """Quit chromium and chromedriver; a second call does nothing (selenium's own quit() would retry
        the gone driver three times)."""
        if self._closed:
            return
        self._closed = True
        self.driver.quit()  # ignores a browser that already died, and stops chromedriver in any case
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
