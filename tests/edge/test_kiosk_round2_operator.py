"""Kiosk round two (#25), the operator's traps (finding 5), the spreadsheet and name items of finding 7 and the event
screen (finding 8), each against a real `dkit serve` on loopback (a server of this module's own: its bans, prompts
and blocklist would disturb the shared kiosk's tests).

- finding 5: the kiosk's own screen (127.0.0.1 / ::1) cannot be banned (400, saying why), and a ban of it that an
  older database holds is not applied; an IPv6 ban is stored under its /64 and lifted by DELETE with the key
  percent-encoded; a hidden entry's thumbnail reaches the operator (token) through /api/admin/thumbs/.
- finding 7: no cell of the exported CSV is a formula in a spreadsheet that splits on , ; tab or |; a Cyrillic
  look-alike of a blocked word is refused; invisible names (Hangul filler, blank Braille) become "anonymous".
- finding 8, in headless Chromium: a prompt phrased as a template reads naturally under "Draw"; a 300-character
  prompt shows whole (wrapped and fitted, no ellipsis) at 800x480 and 1920x1080; the name is cleared when the
  result closes; "on the leaderboard" only for a rank the screen shows; the near-duplicate notice names an entry
  only when it is on screen.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import time
import urllib.parse
import zipfile

import pytest

from tests.edge.test_kiosk_attacks import Client
from tests.edge.test_kiosk_browser import chromium, new_page, shot, stroke
from tests.edge.test_server import RELAXED, Server, drawing

BLOCKED = "badword"
FORMULA = ("=", "+", "-", "@", "\t", "\r")
SEPARATORS = (",", ";", "\t", "|")
LONG_PROMPT = ("a raccoon in a yellow raincoat driving a red tractor across a muddy field at sunset while "
               "three ducks in sunglasses watch from a wooden fence and a hot air balloon shaped like a strawberry "
               "floats over the distant hills, with a tiny lighthouse on the left and a bakery truck by the barn")
LONG_PROMPT = (LONG_PROMPT + " door" * 20)[:300]
SIZES = {"800x480": (800, 480), "1080p": (1920, 1080)}


@pytest.fixture(scope="module")
def kiosk(judge_bundle, tmp_path_factory):
    """A kiosk of its own: no rate limits, no near-duplicate refusal, a blocklist of one word."""
    folder = tmp_path_factory.mktemp("round2-operator")
    (folder / "blocklist.txt").write_text(BLOCKED + "\n")
    srv = Server(judge_bundle, folder / "kiosk.sqlite", settings=(*RELAXED, f"blocklist={folder / 'blocklist.txt'}"))
    yield srv
    srv.kill(signal.SIGTERM)


def _prompt(kiosk: Server, text: str) -> None:
    assert Client(kiosk).admin("PUT", "/api/prompt", {"prompt": text})[0] == 200


# ------------------------------------------------------------------------------------------ finding 5: bans


def test_finding5_the_kiosk_screen_cannot_be_banned_and_an_old_ban_of_it_is_not_applied(kiosk):
    operator = Client(kiosk, "127.0.0.2")
    try:
        for screen in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            status, doc, _ = operator.admin("POST", "/api/admin/bans", {"client": screen, "reason": "entry #1"})
            assert status == 400 and "event screen" in doc["error"] and "hide or delete" in doc["error"], (screen, doc)
        assert operator.admin("GET", "/api/admin/bans")[1]["bans"] == []
        # a database from before holds a ban of the screen: every player at the kiosk still plays
        with sqlite3.connect(kiosk.db, timeout=30) as db:
            db.execute("INSERT INTO bans (client, created, reason) VALUES ('127.0.0.1', ?, 'old')", (time.time(),))
        status, doc, _ = Client(kiosk, "127.0.0.1").post("/api/submissions", drawing(1), name="at the kiosk")
        assert status == 200 and doc["stored"], doc
        # an entry made at the event screen tells the operator page why it has no ban
        entry = next(e for e in operator.admin("GET", "/api/admin/submissions")[1]["entries"] if e["id"] == doc["id"])
        assert entry["client"] == "127.0.0.1" and entry["kiosk_screen"] is True
        assert operator.admin("DELETE", "/api/admin/bans/127.0.0.1")[0] == 204  # and the operator can lift it
    finally:
        _lift_all_bans(operator)


def _lift_all_bans(operator: Client) -> None:
    """Whatever a failed test left banned (the module's other tests play from the screen's address)."""
    for ban in operator.admin("GET", "/api/admin/bans")[1]["bans"]:
        operator.admin("DELETE", "/api/admin/bans/" + urllib.parse.quote(ban["client"], safe=""))


def test_finding5_an_ipv6_ban_is_kept_by_its_64_and_can_be_lifted(kiosk):
    """An IPv6 ban, of a phone's address or of its /64, matches the key the kiosk gives that client (its /64 from
    outside, its whole address on the kiosk's own link: guard.banned), and is lifted by DELETE with its key
    percent-encoded (the "/" of a /64 broke the route); an address inside a banned /64 is answered with the ban to
    lift, never lifts a whole household's ban silently."""
    from dkit.edge.kiosk.guard import banned

    operator = Client(kiosk, "127.0.0.2")
    status, doc, _ = operator.admin("POST", "/api/admin/bans", {"client": "2001:db8::7", "reason": "spam"})
    if status == 200 and doc["client"] != "2001:db8::7":
        _lift_all_bans(operator)
    assert status == 200 and doc["client"] == "2001:db8::7"
    keys = [b["client"] for b in operator.admin("GET", "/api/admin/bans")[1]["bans"]]
    assert banned(keys, "2001:db8::/64") and banned(keys, "2001:db8::7") and not banned(keys, "2001:db9::/64")
    assert operator.admin("DELETE", "/api/admin/bans/2001%3Adb8%3A%3A7")[0] == 204
    assert operator.admin("DELETE", "/api/admin/bans/2001%3Adb8%3A%3A7")[0] == 404
    assert operator.admin("POST", "/api/admin/bans", {"client": "2001:db8::/64"})[1]["client"] == "2001:db8::/64"
    assert operator.admin("DELETE", "/api/admin/bans/2001%3Adb8%3A%3A%2F64")[0] == 204  # as admin.js encodes it
    assert operator.admin("POST", "/api/admin/bans", {"client": "2001:db8::/64"})[0] == 200
    status, doc, _ = operator.admin("DELETE", "/api/admin/bans/2001:db8::9")  # an address of the /64: named
    assert status == 404 and "refused by the ban of 2001:db8::/64" in doc["error"]
    assert operator.admin("DELETE", "/api/admin/bans/2001%3Adb8%3A%3A%2F64")[0] == 204
    assert operator.admin("GET", "/api/admin/bans")[1]["bans"] == []
    status, doc, _ = operator.admin("POST", "/api/admin/bans", {"client": "2001:db8::/48"})
    assert status == 400 and "one client" in doc["error"]  # a range wider than one client is refused by name


def test_finding5_a_hidden_entrys_thumbnail_reaches_the_operator(kiosk):
    player, operator = Client(kiosk, "127.0.0.3"), Client(kiosk, "127.0.0.2")
    status, doc, _ = player.post("/api/submissions", drawing(2), name="to hide")
    assert status == 200 and doc["stored"]
    assert operator.admin("PATCH", f"/api/admin/submissions/{doc['id']}", {"hidden": True})[1]["hidden"] is True
    entry = next(e for e in operator.admin("GET", "/api/admin/submissions")[1]["entries"] if e["id"] == doc["id"])
    url = entry["thumb_url"]
    assert url.startswith("/api/admin/thumbs/")
    status, jpeg, headers = operator.admin("GET", url)
    assert status == 200 and headers["content-type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    assert player.request("GET", url)[0] == 401  # the operator's route needs the token
    assert operator.admin("GET", "/api/admin/thumbs/" + "0" * 32 + ".jpg")[0] == 404
    assert operator.admin("PATCH", f"/api/admin/submissions/{doc['id']}", {"hidden": False})[0] == 200


# ------------------------------------------------------------------------------------------ finding 7: CSV, names


def _formula_cells(text: str) -> list[str]:
    """Every cell of `text` that starts a formula in a spreadsheet splitting on any separator, read as a CSV
    reader reads it (quotes honoured) and as a naive split does (quotes taken as part of the cell)."""
    found = []
    for sep in SEPARATORS:
        for row in csv.reader(io.StringIO(text), delimiter=sep):
            found += [c for c in row if c.lstrip(" ")[:1] in FORMULA]
        for line in text.splitlines():
            found += [c for c in line.split(sep) if c.lstrip(' "')[:1] in FORMULA]
    return found


def test_finding7_csv_cells_are_no_formula_whatever_the_spreadsheet_splits_on(kiosk):
    names = [";=1+1", "a,=1+1", "x\t@SUM(A1:A9)", "y|@SUM(A1:A9)", "b|=2+2", "c; -3+3", 'd;"=4+4"', "=HYPERLINK(1)",
             "e,+5"]
    player, operator = Client(kiosk, "127.0.0.4"), Client(kiosk, "127.0.0.2")
    _prompt(kiosk, "a cat;=1+1|@x")  # the operator's prompt is a cell too
    stored = set()
    try:
        for i, name in enumerate(names):
            status, doc, _ = player.post("/api/submissions", drawing(30 + i), name=name)
            assert status == 200 and doc["stored"], doc
            stored.add(doc["name"])  # as the kiosk keeps it (a tab is a control character: gone)
        status, data, _ = operator.admin("GET", "/api/admin/export?prompt=a%20cat%3B%3D1%2B1%7C%40x")
    finally:
        _prompt(kiosk, "a cat")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        text = z.read("leaderboard.csv").decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(names)
    assert _formula_cells(text) == [], text
    assert {r["name"].replace("'", "") for r in rows} == stored  # the operator still reads the names


def test_finding7_look_alike_and_invisible_names(kiosk):
    player = Client(kiosk, "127.0.0.5")
    for name in ("b\u0430dword", "\u0432\u0430dw\u043erd".replace("\u0432", "b"), "B\u0410DW\u041eRD",
                 "b\u0251dw\u03bfrd"):  # Cyrillic a / o, capital A / O; Latin alpha, Greek omicron
        status, doc, _ = player.post("/api/submissions", drawing(50), name=name)
        assert status == 400 and "name is not allowed" in doc["error"], (name, doc)
    for i, name in enumerate(("\u3164", "\u2800\u2800\u2800", "\u115f\u1160", "\uffa0", "\u2000\u200a\u3000",
                              "\u3164\u034f\u2800")):
        status, doc, _ = player.post("/api/submissions", drawing(51 + i), name=name)
        assert status == 200 and doc["name"] == "anonymous", (name, doc)
    status, doc, _ = player.post("/api/submissions", drawing(60), name="\u0417\u043e\u044f")  # a real Cyrillic name
    assert status == 200 and doc["name"] == "\u0417\u043e\u044f"


# ------------------------------------------------------------------------------------------ finding 8: the screen


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def errors():
    found: list[str] = []
    yield found
    assert found == [], found  # no JavaScript error and no CSP refusal


def _screen(browser, kiosk, errors, size, query="?attract=0"):
    page = new_page(browser, kiosk.url, size, errors)
    page.goto(kiosk.url + "/" + query)
    page.wait_for_function("() => !['', '…'].includes(document.getElementById('prompt').textContent)",
                           timeout=20_000)
    return page


# the prompt is whole and on screen: its text, no ellipsis, nothing scrolled or clipped in it or in the header
WHOLE = """(id) => { const el = document.getElementById(id), box = el.getBoundingClientRect();
  const top = el.closest('#top, .overlay'), outer = top.getBoundingClientRect();
  return {text: el.textContent, ellipsis: getComputedStyle(el).textOverflow === 'ellipsis' || /…|\\.\\.\\.$/.test(
    el.textContent), clipped: el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1
    || top.scrollHeight > top.clientHeight + 1, inside: box.top >= outer.top - 1 && box.bottom <= outer.bottom + 1
    && box.left >= -1 && box.right <= innerWidth + 1 && box.bottom <= innerHeight + 1,
    font: parseFloat(getComputedStyle(el).fontSize),
    page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight]}; }"""


@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding8_a_template_prompt_reads_naturally(browser, kiosk, errors):
    _prompt(kiosk, "a drawing of an apple")
    page = _screen(browser, kiosk, errors, SIZES["800x480"])
    try:
        page.wait_for_function("() => document.getElementById('prompt').textContent === 'an apple'", timeout=20_000)
        assert " ".join(page.text_content("#ask").split()) == "Draw an apple"
    finally:
        page.context.close()
        _prompt(kiosk, "a cat")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding8_a_300_character_prompt_shows_whole(browser, kiosk, errors, size):
    width, height = SIZES[size]
    _prompt(kiosk, LONG_PROMPT)
    shown = LONG_PROMPT
    try:
        page = _screen(browser, kiosk, errors, (width, height), "?attract=2&slide=60")
        page.wait_for_function(f"() => document.getElementById('prompt').textContent === {json.dumps(shown)}",
                               timeout=20_000)
        fit = page.evaluate(WHOLE, "ask")
        assert " ".join(fit["text"].split()) == "Draw " + shown and not fit["ellipsis"], fit
        assert not fit["clipped"] and fit["inside"] and fit["page"] == [width, height], fit
        assert fit["font"] >= 14, fit  # readable, not shrunk to nothing
        stage = page.locator("#stage").bounding_box()
        assert stage["y"] + stage["height"] <= height + 0.5 and stage["height"] > height / 2  # still a big sheet
        shot(page, f"event-{size}-300-char-prompt.png")
        page.wait_for_selector("#attract", state="visible", timeout=10_000)  # the attract loop's title too
        page.wait_for_timeout(400)  # its fade-in
        title = page.evaluate(WHOLE, "attract-title")
        assert shown in " ".join(title["text"].split()) and not title["ellipsis"] and not title["clipped"], title
        assert title["inside"] and page.evaluate("() => document.getElementById('attract').scrollHeight <= "
                                                 "innerHeight"), title
        page.context.close()
    finally:
        _prompt(kiosk, "a cat")


def _wait_for_reveal(page) -> None:
    """Until the result shows, counted up (the state of the last one stays 'done' while it is hidden)."""
    page.wait_for_function("() => !document.getElementById('result').hidden && "
                           "document.getElementById('result').dataset.state === 'done'", timeout=20_000)


def _answer(status: int, doc: dict):
    """A route handler answering POST /api/submissions with `status` and `doc`, as the API would."""
    def fulfil(route, request=None):
        route.fulfill(status=status, content_type="application/json", body=json.dumps(doc))
    return fulfil


def _fake_result(**doc):
    return _answer(200, {"prompt": "a cat", "score": 61.0, "verdict": "ok", "id": 999, "name": "x", "stored": True}
                   | doc)


@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding8_the_name_is_cleared_when_the_result_closes(browser, kiosk, errors):
    page = _screen(browser, kiosk, errors, SIZES["800x480"])
    try:
        for close in ("#again", "outside"):
            stroke(page, [(0.2, 0.2), (0.8, 0.8)])
            page.fill("#name", "first player")
            page.click("#submit")
            _wait_for_reveal(page)
            assert page.input_value("#name") == "first player"  # still theirs while they look at their score
            if close == "#again":
                page.click("#again")
            else:
                page.mouse.click(5, 5)  # a tap beside the card
            page.wait_for_selector("#result", state="hidden", timeout=10_000)
            assert page.input_value("#name") == ""  # the next player does not submit under it
    finally:
        page.context.close()


@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding8_on_the_leaderboard_only_for_a_rank_on_screen(browser, kiosk, errors):
    for i in range(12):  # more entries than the small screen shows
        assert Client(kiosk, "127.0.0.6").post("/api/submissions", drawing(70 + i), name=f"seed {i}")[0] == 200
    page = _screen(browser, kiosk, errors, SIZES["800x480"])
    try:
        page.wait_for_function("() => document.querySelectorAll('#board li').length === 10", timeout=20_000)
        shows = page.evaluate("() => [...document.querySelectorAll('#board li')].filter(li => "
                              "li.getBoundingClientRect().height > 0).length")
        assert 1 <= shows < 10
        for rank, total, want, not_want in (
                (13, 13, f"Rank 13 of 13 — the screen shows the top {shows}.", "on the leaderboard"),
                (shows + 1, 13, f"Rank {shows + 1} of 13", "on the leaderboard"),
                (shows, 13, "You're on the leaderboard!", "Rank"),
                (1, 13, "You're top of the leaderboard!", "Rank")):
            page.route("**/api/submissions", _fake_result(rank=rank, total=total))
            stroke(page, [(0.3, 0.3), (0.6, 0.6)])
            page.click("#submit")
            _wait_for_reveal(page)
            assert page.text_content("#rank") == f"#{rank} of {total}"
            reason = page.text_content("#reason")
            assert want in reason and not_want not in reason, (rank, reason)
            page.unroute("**/api/submissions")
            page.click("#again")
            page.wait_for_selector("#result", state="hidden", timeout=10_000)
    finally:
        page.context.close()


@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding8_the_duplicate_notice_names_only_an_entry_on_screen(browser, kiosk, errors):
    board = Client(kiosk).request("GET", "/api/leaderboard?limit=100")[1]["entries"]
    assert len(board) > 10
    page = _screen(browser, kiosk, errors, SIZES["800x480"])
    try:
        page.wait_for_function("() => document.querySelectorAll('#board li').length > 0", timeout=20_000)
        error = {"error": "this image is (almost) the same as one already on the board: draw a new one"}
        for copied, want in ((board[-1]["id"], "a drawing already entered"), (board[0]["id"], "#1 on the board"),
                             (None, "a drawing already entered")):
            body = error | ({"duplicate_of": copied} if copied else {})
            page.route("**/api/submissions", _answer(409, body))
            stroke(page, [(0.3, 0.3), (0.6, 0.6)])
            page.wait_for_function("() => !document.getElementById('submit').disabled", timeout=10_000)
            page.click("#submit")
            page.wait_for_function("(want) => document.getElementById('notice').textContent.includes(want)", arg=want,
                                   timeout=10_000)
            page.unroute("**/api/submissions")
    finally:
        page.context.close()


# ------------------------------------------------------------------------------------------ finding 5: the page


@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding5_the_operator_page_explains_why_the_screen_has_no_ban_and_shows_hidden_thumbnails(browser, kiosk,
                                                                                                   errors):
    from tests.edge.test_server import TOKEN

    operator = Client(kiosk, "127.0.0.2")
    at_screen = Client(kiosk, "127.0.0.1").post("/api/submissions", drawing(90), name="at the screen")[1]
    hidden = Client(kiosk, "127.0.0.7").post("/api/submissions", drawing(91), name="hidden one")[1]
    assert operator.admin("PATCH", f"/api/admin/submissions/{hidden['id']}", {"hidden": True})[0] == 200
    page = new_page(browser, kiosk.url, (1280, 900), errors)
    try:
        page.goto(kiosk.url + "/admin?refresh=60")
        page.fill("#token", TOKEN)
        page.click("#login-btn")
        screen_row, hidden_row = (page.locator(f"#queue li[data-id='{d['id']}']") for d in (at_screen, hidden))
        screen_row.wait_for(timeout=10_000)
        assert screen_row.locator(".ban").is_disabled()  # the kiosk's own screen: no ban, and the page says why
        assert "kiosk's own screen" in screen_row.locator(".screen-note").text_content()
        assert hidden_row.locator(".ban").is_enabled()
        page.wait_for_function("(id) => { const i = document.querySelector(`#queue li[data-id='${id}'] img`); "
                               "return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'); }",
                               arg=hidden["id"], timeout=10_000)  # the hidden entry's thumbnail, with the token
        page.fill("#ban-client", "2001:db8::5")  # an IPv6 ban, banned and lifted from the page
        page.click("#ban-btn")
        page.click("#ban-btn")
        page.wait_for_selector("#bans li[data-client='2001:db8::5']", timeout=10_000)
        page.locator("#bans li[data-client='2001:db8::5'] .unban").click()
        page.wait_for_selector("#bans li[data-client='2001:db8::5']", state="detached", timeout=10_000)
        assert operator.admin("GET", "/api/admin/bans")[1]["bans"] == []
    finally:
        page.context.close()


@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding5_the_page_says_the_screens_entries_are_not_remembered_and_allows_deleted_ones_again(browser, kiosk,
                                                                                                    errors):
    """"Delete all by client" for the kiosk's own screen deletes without remembering (the page says so before and
    after); a remembered delete is counted on the page, and "Allow them again" forgets them."""
    from tests.edge.test_server import TOKEN

    operator = Client(kiosk, "127.0.0.2")
    Client(kiosk, "127.0.0.1").post("/api/submissions", drawing(92), name="at the screen")
    gone = Client(kiosk, "127.0.0.8").post("/api/submissions", drawing(93), name="deleted one")[1]
    assert operator.admin("DELETE", f"/api/submissions/{gone['id']}")[0] == 204
    remembered = operator.admin("GET", "/api/admin/removed")[1]["total"]
    assert remembered >= 1
    page = new_page(browser, kiosk.url, (1280, 900), errors)
    try:
        page.goto(kiosk.url + "/admin?refresh=60")
        page.fill("#token", TOKEN)
        page.click("#login-btn")
        page.wait_for_selector("#removed-note .allow-again:visible", timeout=10_000)
        note = page.text_content("#removed-note")
        assert f"{remembered} deleted drawing" in note and "does not remember" in note and "127.0.0.1" in note, note
        page.fill("#bulk-client", "127.0.0.1")
        page.click("#delete-client")
        page.click("#delete-client")
        page.wait_for_function("() => document.querySelector('#toast').textContent.includes('not remembered')",
                               timeout=10_000)
        assert operator.admin("GET", "/api/admin/removed")[1]["total"] == remembered
        page.click("#removed-note .allow-again")
        page.click("#removed-note .allow-again")
        page.wait_for_function("() => document.querySelector('#toast').textContent.includes('may be drawn again')",
                               timeout=10_000)
        assert operator.admin("GET", "/api/admin/removed")[1]["total"] == 0
        page.wait_for_selector("#removed-note .allow-again", state="hidden", timeout=10_000)
    finally:
        page.context.close()
