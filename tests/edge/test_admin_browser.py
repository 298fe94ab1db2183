"""The operator page (/admin) in a real browser, beside the event screen, against a `dkit serve` of its own (the
bans and prompts it sets would disturb the shared kiosk's other tests).

Log in (admin off, then a wrong token: plain errors; then the right one, kept for the tab), watch the live stats,
hide an entry (gone from the public board, and back), delete one and all of a name, export the leaderboard zip, ban
a client on the network (its next drawing is refused; the event screen's own entries have no ban, and the page says
why) and unban it, delete all of a client, set a prompt
from the suggestions and run a round whose countdown the event screen shows. No JavaScript error and no CSP
refusal on either page. Screenshots go to build/screenshots/.
"""

from __future__ import annotations

import csv
import io
import re
import signal
import zipfile

import pytest

from tests.edge.test_kiosk_browser import SIZES, chromium, new_page, shot, stroke, wait_for_prompt
from tests.edge.test_server import TOKEN, Server, drawing

pytestmark = pytest.mark.devenv("playwright")  # drives Chromium; playwright is a dev package

SEED = [("alice", 0), ("bob", 1), ("carol", 2), ("mallory", 3), ("mallory", 4), ("dave", 5)]


@pytest.fixture(scope="module")
def kiosk(judge_bundle, tmp_path_factory):
    srv = Server(judge_bundle, tmp_path_factory.mktemp("admin-kiosk") / "kiosk.sqlite")
    try:
        for name, i in SEED:
            assert srv.submit(drawing(i), name=name)[0] == 200
        yield srv
    finally:
        srv.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def errors():
    found: list[str] = []
    yield found
    assert found == [], found  # no JavaScript error and no CSP refusal on the operator page or the event screen


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def admin(browser, kiosk, errors):
    page = new_page(browser, kiosk.url, (1280, 900), errors)
    page.goto(kiosk.url + "/admin?refresh=1")
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def event(browser, kiosk, errors):
    """The event screen on the 800x480 touchscreen, refreshing every second, no attract loop."""
    page = new_page(browser, kiosk.url, SIZES["800x480"], errors)
    page.goto(kiosk.url + "/?poll=1&attract=0")
    wait_for_prompt(page, "a cat")
    yield page
    page.context.close()


def queue_names(admin) -> list[str]:
    return admin.eval_on_selector_all("#queue li .who", "els => els.map(e => e.textContent)")


def board_names(page) -> list[str]:
    return page.eval_on_selector_all("#board li .who", "els => els.map(e => e.textContent)")


def entry(admin, name: str):
    return admin.locator("#queue li", has=admin.locator(".who", has_text=re.compile(f"^{name}$"))).first


def click_twice(locator) -> None:
    """A destructive button: the first click arms it, the second acts."""
    locator.click()
    locator.click()


def toast(admin, pattern: str) -> str:
    admin.wait_for_function(f"() => new RegExp({pattern!r}).test(document.getElementById('toast').textContent)",
                            timeout=10_000)
    return admin.text_content("#toast")


def test_login_refuses_admin_off_and_a_wrong_token_then_takes_the_right_one(admin, kiosk):
    def admin_off(route):
        route.fulfill(status=403, content_type="application/json", body='{"error": "admin routes are disabled"}')

    admin.route("**/api/admin/stats", admin_off)  # a kiosk started without a token
    admin.fill("#token", TOKEN)
    admin.click("#login-btn")
    admin.wait_for_function("() => /admin is off on this kiosk/i.test(document.getElementById('login-error')"
                            ".textContent)", timeout=10_000)
    admin.unroute("**/api/admin/stats")
    assert admin.is_hidden("#panel")
    admin.fill("#token", "not-the-token")
    admin.click("#login-btn")
    admin.wait_for_function("() => /wrong token/i.test(document.getElementById('login-error').textContent)",
                            timeout=10_000)
    assert admin.is_hidden("#panel") and admin.evaluate("() => sessionStorage.length") == 0
    assert admin.get_attribute("#token", "type") == "password"
    admin.fill("#token", TOKEN)
    admin.click("#login-btn")
    admin.wait_for_selector("#panel", state="visible", timeout=10_000)
    assert admin.evaluate("() => sessionStorage.getItem('dkit-admin-token')") == TOKEN
    admin.reload()  # the token stays for the tab
    admin.wait_for_selector("#panel", state="visible", timeout=10_000)
    admin.wait_for_function(f"() => document.querySelectorAll('#queue li').length === {len(SEED)}", timeout=10_000)
    ids = admin.eval_on_selector_all("#queue li", "els => els.map(e => +e.dataset.id)")
    assert ids == sorted(ids, reverse=True) and queue_names(admin) == [n for n, _ in reversed(SEED)]  # newest first
    admin.wait_for_function("() => [...document.querySelectorAll('#queue li img')].every(i => i.complete && "
                            "i.naturalWidth > 0)", timeout=10_000)  # every thumbnail loaded


def test_live_stats_refresh_every_few_seconds(admin, kiosk):
    admin.wait_for_function(f"() => +document.getElementById('stat-accepted').textContent >= {len(SEED)}",
                            timeout=10_000)
    before = int(admin.text_content("#stat-stored"))
    assert kiosk.submit(drawing(6), name="erin")[0] == 200
    admin.wait_for_function(f"() => +document.getElementById('stat-stored').textContent === {before + 1}",
                            timeout=10_000)  # refreshed without a reload (?refresh=1)
    admin.wait_for_function("() => document.querySelectorAll('#queue li').length === " + str(len(SEED) + 1),
                            timeout=10_000)  # the new entry joins the queue at the top
    assert queue_names(admin)[0] == "erin"
    assert re.fullmatch(r"[\d.]+ MB of 512 MB \(\d+ %\).*", admin.text_content("#disk-text"))
    assert float(admin.text_content("#stat-rate")) >= 1
    shot(admin, "admin-stats.png", clip={"x": 0, "y": 0, "width": 1280, "height": 460})


def test_hide_takes_an_entry_off_the_public_board_and_unhide_brings_it_back(admin, event, kiosk):
    event.wait_for_function("() => [...document.querySelectorAll('#board .who')].some(e => e.textContent === 'bob')",
                            timeout=10_000)
    bob = entry(admin, "bob")
    bob.locator(".hide").click()
    admin.wait_for_function("() => document.querySelector('#queue li.hidden .badge.off') !== null", timeout=10_000)
    assert bob.locator(".hide").text_content() == "Unhide"
    event.wait_for_function("() => ![...document.querySelectorAll('#board .who')].some(e => e.textContent === 'bob')",
                            timeout=10_000)  # gone from the event screen
    board = kiosk.request("GET", "/api/leaderboard?limit=100")[1]["entries"]
    assert "bob" not in [e["name"] for e in board]
    shot(admin, "admin-queue.png", full_page=True)
    bob.locator(".hide").click()  # and back
    event.wait_for_function("() => [...document.querySelectorAll('#board .who')].some(e => e.textContent === 'bob')",
                            timeout=10_000)


def test_delete_one_and_all_of_a_name(admin, event, kiosk):
    click_twice(entry(admin, "carol").locator(".delete"))
    toast(admin, r"deleted")
    admin.wait_for_function("() => ![...document.querySelectorAll('#queue .who')].some(e => e.textContent === "
                            "'carol')", timeout=10_000)
    entry(admin, "mallory").locator(".who").click()  # a name in the queue fills the bulk form
    assert admin.input_value("#bulk-name") == "mallory"
    click_twice(admin.locator("#delete-name"))
    assert "Deleted 2 entries" in toast(admin, r"Deleted 2 entries")
    names = [e["name"] for e in kiosk.request("GET", "/api/admin/submissions", admin=True)[1]["entries"]]
    assert "carol" not in names and "mallory" not in names and "alice" in names
    assert "carol" not in queue_names(admin) and "mallory" not in queue_names(admin)
    event.wait_for_function("() => ![...document.querySelectorAll('#board .who')].some(e => ['carol', 'mallory']"
                            ".includes(e.textContent))", timeout=10_000)


def test_export_downloads_the_leaderboard_as_a_zip(admin):
    with admin.expect_download(timeout=20_000) as info:
        admin.click("#export")
    data = open(info.value.path(), "rb").read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        rows = list(csv.DictReader(io.StringIO(z.read("leaderboard.csv").decode())))
    assert {r["name"] for r in rows} == {"alice", "bob", "dave", "erin"}
    assert all(f"thumbs/{r['thumbnail'].split('/')[-1]}" in names for r in rows)
    assert info.value.suggested_filename.endswith(".zip")


def test_ban_refuses_the_clients_next_drawing_and_unban_lets_it_play(admin, event, kiosk):
    from tests.edge.test_kiosk_attacks import Client

    # an entry made at the event screen (loopback): its client is every player at the kiosk, so no ban, and why
    alice = entry(admin, "alice")
    assert alice.locator(".ban").is_disabled() and "kiosk's own screen" in alice.locator(".screen-note").text_content()
    # a phone on the network (another address) is banned from its entry, and its next drawing is refused
    phone = Client(kiosk, "127.0.0.2")
    assert phone.post("/api/submissions", drawing(8), name="zed")[0] == 200
    admin.wait_for_function("() => [...document.querySelectorAll('#queue .who')].some(e => e.textContent === 'zed')",
                            timeout=10_000)
    click_twice(entry(admin, "zed").locator(".ban"))
    admin.wait_for_selector("#bans li[data-client='127.0.0.2']", timeout=10_000)
    status, doc, _ = phone.post("/api/submissions", drawing(9), name="zed")
    assert status == 403 and "may not take part" in doc["error"]
    stroke(event, [(0.2, 0.2), (0.8, 0.3), (0.5, 0.8), (0.2, 0.2)])  # the event screen still plays
    event.click("#submit")
    event.wait_for_function("() => !document.getElementById('result').hidden && "
                            "document.getElementById('result').dataset.state === 'done'", timeout=20_000)
    event.click("#again")
    admin.locator("#bans li[data-client='127.0.0.2'] .unban").click()
    admin.wait_for_selector("#bans li", state="detached", timeout=10_000)
    assert admin.is_visible("#bans-empty")
    assert phone.post("/api/submissions", drawing(9), name="zed")[0] == 200  # unbanned: it plays again
    # every entry of a client at once
    entry(admin, "zed").locator(".client").click()
    assert admin.input_value("#bulk-client") == "127.0.0.2"
    click_twice(admin.locator("#delete-client"))
    toast(admin, r"Deleted 2 entries")
    entry(admin, "alice").locator(".client").click()
    assert admin.input_value("#bulk-client") == "127.0.0.1"
    click_twice(admin.locator("#delete-client"))
    toast(admin, r"Deleted \d+ entr")
    admin.wait_for_selector("#queue-empty", state="visible", timeout=10_000)
    assert kiosk.request("GET", "/api/admin/submissions", admin=True)[1]["entries"] == []
    event.wait_for_function("() => document.querySelectorAll('#board li').length === 0", timeout=10_000)


def test_set_a_prompt_and_run_a_round_the_event_screen_counts_down(admin, event, kiosk):
    admin.click("#suggestions button:has-text('a raccoon driving a tractor')")
    assert admin.input_value("#prompt-text") == "a raccoon driving a tractor"
    admin.click("#set-prompt")
    toast(admin, r"Prompt set to")
    wait_for_prompt(event, "a raccoon driving a tractor")
    assert admin.text_content("#current-prompt") == "a raccoon driving a tractor"
    admin.fill("#prompt-text", "a dog on a skateboard")  # free text, with a round of 90 s
    admin.fill("#round-seconds", "90")
    admin.click("#start-round")
    toast(admin, r"Round .* started")
    assert re.search(r"1:[23]\d left", admin.text_content("#round-status"))
    wait_for_prompt(event, "a dog on a skateboard")
    event.wait_for_selector("#round", state="visible", timeout=10_000)
    assert re.fullmatch(r"1:[23]\d", event.text_content("#countdown"))
    assert kiosk.request("GET", "/api/prompt")[1]["round"]["prompt"] == "a dog on a skateboard"
    shot(event, "event-round.png")
    click_twice(admin.locator("#end-round"))
    toast(admin, r"Round ended")
    event.wait_for_function("() => document.getElementById('round-label').textContent === 'Round over'",
                            timeout=10_000)
    admin.fill("#prompt-text", "a cat")  # free play again: no countdown
    admin.click("#set-prompt")
    wait_for_prompt(event, "a cat")
    event.wait_for_selector("#round", state="hidden", timeout=10_000)
