"""The event screen in a real browser: headless Chromium (Debian's) driven by Playwright against `dkit serve`.

Draw strokes on the canvas with the mouse and with a pen, undo one, submit, and see the score revealed (a count-up,
the rank, the verdict in plain words) and the leaderboard (with the thumbnail) update; camera mode on Chromium's
fake webcam: a live score, nothing stored. The layout fills a 1920x1080 display and an 800x480 touchscreen without
scrollbars, every control at least 48 px; the attract loop shows the best drawings when nobody touches the screen
and a tap ends it; API refusals (429, 503, 409, 403, 413, 400, 507, no network) read as plain sentences. The page
runs under the kiosk's strict CSP (no inline script or style): any JavaScript error or CSP refusal fails the
module. Screenshots go to build/screenshots/. The pages' files are a fixed allow-list (no path traversal).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.edge.test_server import drawing

pytestmark = pytest.mark.devenv("playwright")  # drives Chromium; playwright is a dev package

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "build" / "screenshots"
SIZES = {"1080p": (1920, 1080), "800x480": (800, 480)}
VERDICTS = ("ok", "text", "no_match", "blocked")
CODES = re.compile(r"^(ok|text|no_match|blocked)$")

INK = """() => { const c = document.getElementById('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width,
c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) if (Math.min(d[i], d[i + 1], d[i + 2]) < 240) n++;
return n; }"""
# the page fits the screen: no scrolling either way, and every visible control is at least 48 x 48 px
FITS = "() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
SMALL_CONTROLS = """() => [...document.querySelectorAll('button, input, select, a')]
  .filter(e => e.getClientRects().length).map(e => [e.id || e.className || e.tagName, e.getBoundingClientRect()])
  .filter(([, r]) => r.width < 48 || r.height < 48)
  .map(([n, r]) => `${n} ${Math.round(r.width)}x${Math.round(r.height)}`)"""


@contextlib.contextmanager
def chromium():
    """Headless Chromium with a fake webcam that needs no permission prompt."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; `make test` installs it where it can)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, url: str, size: tuple[int, int], errors: list[str], *, camera: bool = False):
    """A page in a fresh touch-screen context of `size`, its JS errors and CSP refusals collected in `errors`."""
    context = browser.new_context(viewport={"width": size[0], "height": size[1]}, has_touch=True)
    if camera:
        context.grant_permissions(["camera"], origin=url)
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
    # the page runs under the kiosk's Content-Security-Policy: anything it refuses is a console error
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if "Content Security Policy" in m.text
            else None)
    return page


def shot(page, name: str, **kwargs) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), animations="disabled", **kwargs)


def stroke(page, points) -> None:
    """A mouse stroke through `points` given as fractions of the canvas."""
    box = page.locator("#canvas").bounding_box()
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0] * box["width"], y0 + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(x0 + x * box["width"], y0 + y * box["height"], steps=8)
    page.mouse.up()


def wait_for_prompt(page, prompt: str | None = None) -> None:
    want = f"=== {prompt!r}" if prompt else "!== '…'"
    page.wait_for_function(f"() => document.getElementById('prompt').textContent {want}", timeout=20_000)


def wait_for_reveal(page) -> None:
    """Until the score reveal has counted up to the score."""
    page.wait_for_function("() => document.getElementById('result').dataset.state === 'done' && "
                           "!document.getElementById('result').hidden", timeout=20_000)


@pytest.fixture(scope="module")
def kiosk(kiosk_server):
    return kiosk_server


@pytest.fixture(scope="module")
def errors():
    found: list[str] = []
    yield found
    assert found == [], found  # no JavaScript error and no CSP refusal on any page of the module


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def page(browser, kiosk, errors):
    """The event screen on a 1920x1080 display, camera allowed."""
    page = new_page(browser, kiosk.url, SIZES["1080p"], errors, camera=True)
    page.goto(kiosk.url + "/")
    wait_for_prompt(page, "a cat")
    yield page
    page.context.close()


def test_draw_undo_submit_and_see_the_score_reveal(page, kiosk):
    assert page.evaluate(INK) == 0  # a blank sheet
    stroke(page, [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3)])  # a square, with the mouse
    square = page.evaluate(INK)
    assert square > 1000
    page.locator(".swatch").nth(1).click()  # another colour
    stroke(page, [(0.1, 0.9), (0.9, 0.1)])
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
    page.wait_for_function("() => !document.getElementById('result').hidden", timeout=20_000)
    wait_for_reveal(page)
    verdict = page.get_attribute("#verdict", "data-verdict")
    sentence = page.text_content("#verdict")
    assert verdict in VERDICTS and len(sentence) > 15 and not CODES.match(sentence)  # plain words, not a code
    score = page.text_content("#score")
    if verdict == "blocked":
        assert score == "–"
    else:
        assert 0 <= int(score) <= 100 and re.fullmatch(r"#\d+ of \d+", page.text_content("#rank"))
        assert page.evaluate("() => getComputedStyle(document.getElementById('ring')).getPropertyValue('--p')"
                             ).strip() == score  # the dial shows the same score
        shot(page, "event-score-reveal.png")
        page.wait_for_function("() => [...document.querySelectorAll('#board li')].some(li => li.textContent.includes("
                               "'playwright') && li.querySelector('img').complete && "
                               "li.querySelector('img').naturalWidth > 0)", timeout=20_000)  # the thumbnail shows
        assert kiosk.request("GET", "/healthz")[1]["submissions"] == before + 1
    page.click("#again")  # the reveal closes and the sheet is blank for the next drawing
    page.wait_for_selector("#result", state="hidden")
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


# what the screen says for each refusal of POST /api/submissions (the bodies and headers the API sends)
REFUSALS = [
    (429, {"error": "too many requests: try again in 1 s", "retry_after": 1}, {}, r"^Slow down — try again in 1 s$"),
    (429, {"error": "too many requests"}, {"Retry-After": "1"}, r"^Slow down — try again in 1 s$"),
    (503, {"error": "the kiosk is busy", "retry_after": 1}, {"Retry-After": "1"}, r"judge is busy — try again in 1 s"),
    (409, {"error": "this image is (almost) the same as one already on the board: draw a new one"}, {},
     r"almost the same as a drawing already entered"),  # no entry named: the copied one may not be on screen
    (409, {"error": "this round is over: wait for the next one"}, {}, r"round is over"),
    (403, {"error": "this device may not take part any more (ask the operator)"}, {}, r"isn't taking drawings"),
    (413, {"error": "the image is over 524,288 bytes"}, {}, r"too big"),
    (400, {"error": "that name is not allowed here: choose another one"}, {}, r"name isn't allowed"),
    (400, {"error": "not an image"}, {}, r"couldn't read that picture"),
    (507, {"error": "storage full: the operator must make room"}, {}, r"out of space"),
    (0, None, {}, r"Can't reach the judge"),  # the network is gone
]


def refusal(status: int, body: dict | None, headers: dict):
    """A route handler answering with `status` (0: the network fails)."""
    def answer(route):
        if status == 0:
            return route.abort("internetdisconnected")
        return route.fulfill(status=status, headers=headers, content_type="application/json", body=json.dumps(body))

    return answer


def test_refusals_read_as_plain_words(page):
    stroke(page, [(0.2, 0.2), (0.8, 0.8)])
    for status, body, headers, expected in REFUSALS:
        page.route("**/api/submissions", refusal(status, body, headers))
        page.wait_for_function("() => !document.getElementById('submit').disabled", timeout=10_000)
        page.click("#submit")
        page.wait_for_function(f"() => !document.getElementById('notice').hidden && new RegExp({json.dumps(expected)})"
                               ".test(document.getElementById('notice').textContent)", timeout=10_000)
        if status in (429, 503):
            assert page.is_disabled("#submit")  # no submitting until the wait is over
        page.unroute("**/api/submissions")
        assert page.is_hidden("#result")
    page.wait_for_function("() => !document.getElementById('submit').disabled", timeout=10_000)
    page.click("#clear")


@pytest.mark.parametrize("size", SIZES)
def test_the_screen_fits_without_scrollbars_with_touch_sized_controls(browser, kiosk, errors, size):
    width, height = SIZES[size]
    assert kiosk.submit(drawing(10), name="seed")[0] == 200  # something on the board
    page = new_page(browser, kiosk.url, (width, height), errors)
    try:
        page.goto(kiosk.url + "/?attract=0")
        wait_for_prompt(page)
        page.wait_for_function("() => document.querySelectorAll('#board li').length > 0", timeout=20_000)
        assert page.evaluate(FITS) == [width, height]
        assert page.evaluate(SMALL_CONTROLS) == []
        stage = page.locator("#stage").bounding_box()
        assert abs(stage["width"] - stage["height"]) < 1 and stage["height"] > height * 0.6  # a big square sheet
        for sel in ("#submit", "#name", "#undo", "#camera", "#board", ".swatch >> nth=7"):
            box = page.locator(sel).bounding_box()
            assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width + 0.5 \
                and box["y"] + box["height"] <= height + 0.5, (sel, box)
        stroke(page, [(0.2, 0.5), (0.5, 0.2), (0.8, 0.5), (0.5, 0.8), (0.2, 0.5)])
        page.fill("#name", f"screen {size}")
        page.click("#submit")
        wait_for_reveal(page)
        card = page.locator("#result .card").bounding_box()
        assert card["x"] >= 0 and card["y"] >= 0 and card["x"] + card["width"] <= width \
            and card["y"] + card["height"] <= height  # the whole reveal is on screen
        assert page.evaluate(FITS) == [width, height] and page.evaluate(SMALL_CONTROLS) == []
        if size == "800x480":
            shot(page, "event-800x480-reveal.png")
        page.click("#again")
        page.wait_for_selector("#result", state="hidden")
        page.wait_for_function("() => [...document.querySelectorAll('#board li')].some(li => li.textContent.includes("
                               f"'screen {size}'))", timeout=20_000)
        shot(page, f"event-{size}.png")
    finally:
        page.context.close()


def test_the_attract_loop_shows_the_best_drawings_when_idle_and_a_tap_ends_it(browser, kiosk, errors):
    for i, name in enumerate(("attract one", "attract two")):  # at least two drawings to cycle through
        assert kiosk.submit(drawing(20 + i), name=name)[0] == 200
    page = new_page(browser, kiosk.url, SIZES["800x480"], errors)
    try:
        page.goto(kiosk.url + "/?attract=1&slide=1")
        wait_for_prompt(page)
        stroke(page, [(0.2, 0.2), (0.8, 0.8)])
        page.fill("#name", "walked away")
        page.wait_for_selector("#attract", state="visible", timeout=10_000)  # 1 s without input
        assert page.evaluate(INK) == 0 and page.input_value("#name") == ""  # the next player starts afresh
        page.wait_for_function("() => { const i = document.getElementById('attract-img'); "
                               "return i.complete && i.naturalWidth > 0; }", timeout=10_000)
        first = page.text_content("#attract-caption")
        assert re.match(r"#1 · \d+ · ", first)
        page.wait_for_function(f"() => document.getElementById('attract-caption').textContent !== {first!r}",
                               timeout=10_000)  # it cycles
        assert page.evaluate(FITS) == [800, 480]
        shot(page, "event-attract.png")
        page.touchscreen.tap(400, 240)  # a tap anywhere ends it, and draws nothing
        page.wait_for_selector("#attract", state="hidden", timeout=5_000)
        assert page.evaluate(INK) == 0
        page.wait_for_selector("#attract", state="visible", timeout=10_000)  # idle again: it comes back
    finally:
        page.context.close()


def test_static_files_are_a_fixed_allow_list(kiosk):
    from dkit.edge.kiosk.headers import page_csp

    for name, ctype in (("kiosk.js", "text/javascript"), ("common.js", "text/javascript"), ("kiosk.css", "text/css"),
                        ("admin.js", "text/javascript"), ("admin.css", "text/css"), ("icon.svg", "image/svg+xml")):
        with urllib.request.urlopen(f"{kiosk.url}/static/{name}", timeout=30) as res:
            assert res.status == 200 and res.headers["Content-Type"].startswith(ctype), name
            assert res.headers["X-Content-Type-Options"] == "nosniff"
            etag = res.headers["ETag"]
        assert kiosk.request("GET", f"/static/{name}", headers={"If-None-Match": etag})[0] == 304
    for path in ("/static/..%2Fkiosk%2Fpages.py", "/static/%2e%2e%2fserver.py", "/static/../server.py",
                 "/static/..%5Cserver.py", "/static/kiosk.html", "/static/admin.html", "/static/", "/static/KIOSK.JS",
                 "/static/kiosk.js%00", "/static/.%2e/.%2e/pyproject.toml", "/static//etc/passwd",
                 "/static/%2Fetc%2Fpasswd", "/static/__init__.py"):
        status, body = kiosk.request("GET", path)
        assert status in (404, 405) and b"import" not in (body if isinstance(body, bytes) else b""), path
    for path in ("/", "/admin"):  # both pages: HTML with no inline code, under a CSP without hashes
        with urllib.request.urlopen(kiosk.url + path, timeout=30) as res:
            html, csp = res.read().decode(), res.headers["Content-Security-Policy"]
        assert res.headers["Content-Type"].startswith("text/html") and page_csp(html) == csp
        assert "script-src 'self';" in csp and "style-src 'self';" in csp and "sha256" not in csp
        assert kiosk.token not in html  # the operator page is public and holds no data
