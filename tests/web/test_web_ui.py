"""The browser UI end to end, in headless Chromium driven by Playwright.

Debian's ``chromium`` is the browser (Playwright's own downloads are not used);
scripts/install-chromium, which scripts/test runs, installs it. Outside CI the
test is skipped when it is missing; in CI (``CI`` set) it fails instead.
Screenshots are left in ``artifacts/`` (``web-ui.png`` and two more).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests._server import Server

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("OPENLETZ_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
# Without the networking flags, Chromium's own background connections (updates,
# sync, QUIC probes) stall or fail on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

try:
    from playwright.sync_api import (
        BrowserContext,
        ConsoleMessage,
        Page,
        expect,
        sync_playwright,
    )
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None


def _need_browser() -> None:
    missing = []
    if sync_playwright is None:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (scripts/install-chromium installs Debian's chromium)")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Site:
    server: Server
    keys: dict[str, str]
    api: httpx.Client  # Alice's


@pytest.fixture
def site(make_server: Callable[..., Server]) -> Iterator[Site]:
    _need_browser()
    # Images take 4 s at quality 2: long enough to watch progress climb.
    server = make_server(sandbox_duration_s=4, workers=1, preview_interval_s=0).start()
    keys = {name: server.create_key(name) for name in ("alice", "bob")}
    with server.client(keys["alice"]) as api:
        yield Site(server, keys, api)


@pytest.fixture
def browser(site: Site, tmp_path: Path) -> Iterator[BrowserContext]:
    # Playwright's sync API runs an event loop of its own in this thread until it
    # stops: whatever needs asyncio (making keys) is done before, in `site`.
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tmp_path / "profile",  # a fresh profile: no keys, no cache
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


class Problems:
    """Script errors and refusals by the page's security policy, collected."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("pageerror", lambda err: self.seen.append(f"error: {err}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # A refused request (a 400 shown to the user) is logged too; that one is fine.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.seen.append(f"console: {message.text}")


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Use this key").click()
    expect(page.get_by_role("heading", name="Create an image")).to_be_visible()


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Forget key").click()
    expect(page.get_by_label("API key", exact=True)).to_be_visible()


def watch_progress(page: Page, snapshot: Path, timeout: float = 60.0) -> tuple[list[int], bool]:
    """The progress values shown until 100, and whether a preview showed before it;
    ``snapshot`` gets a screenshot of the page halfway."""
    bar = page.get_by_role("progressbar")
    preview = page.locator("#preview")
    values: list[int] = []
    preview_seen = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = int(bar.get_attribute("aria-valuenow") or 0)
        if not values or values[-1] != value:
            values.append(value)
        if value == 100:
            return values, preview_seen
        if value > 0 and preview.is_visible():
            src = preview.get_attribute("src") or ""
            if src.startswith("data:image/jpeg;base64,") and not preview_seen and value >= 40:
                page.screenshot(path=str(snapshot), full_page=True)
                preview_seen = True
        page.wait_for_timeout(100)
    raise AssertionError(f"progress never reached 100: {values}")


def test_generate_share_and_delete_in_the_browser(site: Site, browser: BrowserContext) -> None:
    alice, bob, api = site.keys["alice"], site.keys["bob"], site.api
    page = browser.new_page()
    problems = Problems(page)
    page.goto(f"{site.server.base_url}/")

    # The server says that it runs the sandbox engine.
    banner = page.get_by_role("status").filter(has_text="Sandbox engine in use")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("OPENLETZ_ENGINE=sandbox")

    # A wrong key is refused with the server's message; a right one is kept.
    page.get_by_label("API key", exact=True).fill("olz_not_a_key")
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#key-error")).to_contain_text("invalid API key")
    sign_in(page, alice)
    page.reload()
    expect(page.get_by_role("heading", name="Create an image")).to_be_visible()

    # Every parameter is on the form with its default.
    expect(page.get_by_label("Width")).to_have_value("1600")
    expect(page.get_by_label("Height")).to_have_value("1600")
    expect(page.get_by_label("Quality")).to_have_value("2")
    expect(page.get_by_label("Creativity")).to_have_value("2")
    expect(page.get_by_label("Watermark the image")).to_be_checked()
    expect(page.get_by_label("Mode", exact=True)).to_have_value("default")
    expect(page.get_by_label("Model version")).to_have_value("")

    # A value out of range: the server's message, shown as it is.
    page.get_by_label("Prompt").fill("a lighthouse at dusk, oil painting")
    page.get_by_label("Width").fill("5000")
    page.get_by_role("button", name="Generate").click()
    refused = api.post("/images", json={"prompt": "x", "width": 5000}).json()["message"]
    expect(page.locator("#create-error")).to_have_text(refused)
    assert api.get("/images").json() == []

    # A real one: progress climbs to 100 with a growing preview, then the image.
    page.get_by_role("button", name="Landscape 16:9").click()
    page.get_by_role("button", name="Generate").click()
    ARTIFACTS.mkdir(exist_ok=True)
    values, preview_seen = watch_progress(page, ARTIFACTS / "web-ui-progress.png")
    assert values == sorted(values), values
    assert len({v for v in values if 0 < v < 100}) >= 3, values
    assert preview_seen, "no preview was shown while the image formed"
    image = page.get_by_role("img", name="a lighthouse at dusk, oil painting")
    expect(image).to_be_visible()
    page.wait_for_function("() => document.getElementById('final').naturalWidth > 0")
    expect(page.locator("#viewer-status")).to_have_text("Ready")

    made = api.get("/images").json()
    assert len(made) == 1
    image_id = made[0]["id"]
    assert (made[0]["width"], made[0]["height"], made[0]["status"]) == (1920, 1080, "ready")
    links = page.locator("#versions a")
    expect(links).to_have_count(5)
    assert links.first.inner_text() == "original (1920 \N{MULTIPLICATION SIGN} 1080)"
    hrefs = {
        links.nth(i).inner_text().split(" ")[0]: str(links.nth(i).get_attribute("href"))
        for i in range(5)
    }
    assert set(hrefs) == set(made[0]["imageVersions"])
    for name, href in hrefs.items():
        assert httpx.get(href, timeout=10).status_code == 200, name

    # The gallery holds it; make it public.
    card = page.locator(f'#mine .card[data-id="{image_id}"]')
    expect(card).to_be_visible()
    expect(card.locator("img")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "web-ui.png"), full_page=True)
    card.get_by_label("Public").check()
    # The switch is off limits while the server is asked, then drawn anew.
    expect(card.get_by_label("Public")).to_be_enabled()
    expect(card.get_by_label("Public")).to_be_checked()
    assert api.get(f"/images/{image_id}").json()["privacy"] == "public"

    # A running image can be stopped.
    page.get_by_label("Prompt").fill("a slow one")
    page.get_by_label("Quality").press("End")
    expect(page.locator("#quality-value")).to_have_text("5")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    page.wait_for_function(
        "() => Number(document.getElementById('progress').getAttribute('aria-valuenow')) > 0"
    )
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#viewer-status")).to_have_text("Stopped")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()

    # Bob sees Alice's public image among the public images of others, and his own
    # images (13 of them, stopped at once) on two pages.
    with site.server.client(bob) as bobs_api:
        for i in range(13):
            made_by_bob = bobs_api.post("/images", json={"prompt": f"bob {i}"}).json()["id"]
            assert bobs_api.put(f"/images/{made_by_bob}/interruption").status_code == 204
    sign_out(page)
    assert page.evaluate("() => localStorage.length") == 0
    expect(page.get_by_label("Prompt")).to_have_value("")
    sign_in(page, bob)
    shared = page.locator(f'#public .card[data-id="{image_id}"]')
    expect(shared).to_be_visible()
    expect(shared.get_by_label("Public")).to_have_count(0)
    expect(page.locator("#mine .card")).to_have_count(12)
    expect(page.locator(f'#mine .card[data-id="{image_id}"]')).to_have_count(0)
    page.get_by_role("button", name="Older").first.click()
    expect(page.locator("#mine-page")).to_have_text("Page 2")
    expect(page.locator("#mine .card")).to_have_count(1)
    expect(page.locator("#mine .card .prompt")).to_have_text("bob 0")
    page.get_by_role("button", name="Newer").first.click()
    expect(page.locator("#mine .card")).to_have_count(12)
    expect(page.locator("#public-pager")).to_be_hidden()
    shared.get_by_role("button", name="Open: a lighthouse at dusk, oil painting").click()
    expect(page.locator("#viewer-status")).to_have_text("Ready")
    expect(page.locator("#versions a")).to_have_count(5)
    page.screenshot(path=str(ARTIFACTS / "web-ui-public.png"), full_page=True)

    # Back to Alice: private again, then deleted.
    sign_out(page)
    sign_in(page, alice)
    card = page.locator(f'#mine .card[data-id="{image_id}"]')
    card.get_by_label("Public").uncheck()
    expect(card.get_by_label("Public")).to_be_enabled()
    expect(card.get_by_label("Public")).not_to_be_checked()
    assert api.get(f"/images/{image_id}").json()["privacy"] == "private"
    card.get_by_role("button", name="Open: a lighthouse at dusk, oil painting").click()
    expect(page.locator("#viewer-status")).to_have_text("Ready")
    card.get_by_role("button", name="Delete").click()
    expect(card.get_by_role("button", name="Delete")).to_have_text("Delete for good?")
    card.get_by_role("button", name="Delete").click()
    expect(card).to_have_count(0)
    assert api.get(f"/images/{image_id}").status_code == 404
    expect(page.locator("#viewer-empty")).to_be_visible()  # it was open: no longer

    assert problems.seen == []
