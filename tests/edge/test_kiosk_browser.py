"""The kiosk page in a real browser: headless Chromium (Debian's) driven by Playwright against `dkit serve`.

Draw strokes on the canvas with the mouse and with a pen, undo one, submit, and see the score, the rank and the
leaderboard (with the thumbnail) update; then camera mode on Chromium's fake webcam: a live score, nothing stored.
"""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; "
                                                          "`make test` installs it where it can)")


@pytest.fixture(scope="module")
def kiosk(kiosk_server):
    return kiosk_server


@pytest.fixture(scope="module")
def page(kiosk):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])  # a test webcam
        context = browser.new_context(viewport={"width": 1200, "height": 900}, has_touch=True)
        context.grant_permissions(["camera"], origin=kiosk.url)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # the page runs under the kiosk's Content-Security-Policy: anything it refuses is a console error
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(kiosk.url + "/")
        page.wait_for_function("() => document.getElementById('prompt').textContent === 'a cat'", timeout=20_000)
        yield page
        assert errors == [], errors  # no JavaScript error and no CSP refusal anywhere in the session
        browser.close()


INK = """() => { const c = document.getElementById('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width,
c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) if (Math.min(d[i], d[i + 1], d[i + 2]) < 240) n++;
return n; }"""


def _stroke(page, points):
    box = page.locator("#canvas").bounding_box()
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0] * box["width"], y0 + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x * box["width"], y0 + y * box["height"], steps=8)
    page.mouse.up()


def test_draw_undo_submit_and_see_the_leaderboard(page, kiosk):
    assert page.evaluate(INK) == 0  # a blank sheet
    _stroke(page, [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3)])  # a square, with the mouse
    square = page.evaluate(INK)
    assert square > 1000
    page.locator(".swatch").nth(1).click()  # another colour
    _stroke(page, [(0.1, 0.9), (0.9, 0.1)])
    assert page.evaluate(INK) > square
    page.click("#undo")  # the diagonal goes, the square stays
    assert page.evaluate(INK) == square
    # a pen stroke (pointerType pen, with pressure), as a stylus on a tablet sends it
    page.evaluate("""() => { const c = document.getElementById('canvas'), r = c.getBoundingClientRect();
      const ev = (type, x, y) => c.dispatchEvent(new PointerEvent(type, {pointerId: 7, pointerType: 'pen',
        pressure: 0.8, clientX: r.left + x * r.width, clientY: r.top + y * r.height, bubbles: true}));
      ev('pointerdown', 0.5, 0.2); for (let i = 0; i <= 10; i++) ev('pointermove', 0.5, 0.2 + i * 0.06);
      ev('pointerup', 0.5, 0.8); }""")
    assert page.evaluate(INK) > square
    page.fill("#name", "playwright")
    before = kiosk.request("GET", "/healthz")[1]["submissions"]
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('verdict').textContent !== ''", timeout=20_000)
    verdict = page.text_content("#verdict")
    score = page.text_content("#score")
    assert verdict in ("ok", "text", "no_match", "blocked")
    if verdict != "blocked":
        assert 0 <= int(score) <= 100 and page.text_content("#rank").startswith("#")
        page.wait_for_function("() => [...document.querySelectorAll('#board li')].some(li => "
                               "li.textContent.includes('playwright'))", timeout=20_000)
        page.wait_for_function("() => [...document.querySelectorAll('#board li')].some(li => li.textContent.includes("
                               "'playwright') && li.querySelector('img').complete && "
                               "li.querySelector('img').naturalWidth > 0)", timeout=20_000)  # the thumbnail shows
        assert kiosk.request("GET", "/healthz")[1]["submissions"] == before + 1
    page.click("#clear")
    assert page.evaluate(INK) == 0


def test_camera_mode_shows_a_live_score_and_stores_nothing(page, kiosk):
    before = kiosk.request("GET", "/healthz")[1]["submissions"]
    page.click("#camera")
    page.wait_for_function("() => /^(live: \\d+|blocked)$/.test(document.getElementById('live').textContent)",
                           timeout=30_000)
    assert page.is_visible("#video") and page.text_content("#camera") == "Drawing mode"
    page.click("#camera")  # back to drawing: the webcam stops
    assert not page.is_visible("#video") and page.text_content("#live") == ""
    assert kiosk.request("GET", "/healthz")[1]["submissions"] == before
