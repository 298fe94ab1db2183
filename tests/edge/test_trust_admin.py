"""Issue #24, finding 12: a kiosk serving an untrained (random-teacher) bundle says so to its operator (the
`dkit serve` log and a banner on /admin, in a real browser) and never on the public event screen.
"""

from __future__ import annotations

import signal

import pytest

from tests.edge.test_kiosk_browser import chromium, new_page, wait_for_prompt
from tests.edge.test_server import TOKEN, Server


@pytest.fixture(scope="module")
def kiosk(judge_bundle, tmp_path_factory):
    srv = Server(judge_bundle, tmp_path_factory.mktemp("trust-kiosk") / "kiosk.sqlite")
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.kill(signal.SIGTERM)


@pytest.mark.devenv("playwright")  # a real browser (Chromium, driven by playwright)
def test_finding12_untrained_bundle_banner_on_admin_not_on_the_event_screen(kiosk):
    status, stats = kiosk.request("GET", "/api/admin/stats", admin=True)
    assert status == 200 and stats["bundle"]["untrained"] is True
    assert "UNTRAINED (random) teacher" in stats["bundle"]["warning"]
    for public in ("/api/prompt", "/healthz", "/api/leaderboard"):  # nothing public says it
        assert "untrained" not in str(kiosk.request("GET", public)[1]).lower()
    errors: list[str] = []
    with chromium() as browser:
        admin = new_page(browser, kiosk.url, (1280, 900), errors)
        admin.goto(kiosk.url + "/admin?refresh=1")
        assert admin.is_hidden("#untrained-banner")  # nothing before the operator logs in
        admin.fill("#token", TOKEN)
        admin.click("#login-btn")
        admin.wait_for_selector("#untrained-banner", state="visible", timeout=10_000)
        banner = admin.text_content("#untrained-banner")
        assert banner.startswith("UNTRAINED bundle (judge-toy):") and "meaningless" in banner
        event = new_page(browser, kiosk.url, (1280, 720), errors)
        event.goto(kiosk.url + "/?poll=1&attract=0")
        wait_for_prompt(event, "a cat")
        assert "untrained" not in event.inner_text("body").lower()
        assert event.query_selector("#untrained-banner") is None
    assert errors == []
    kiosk.kill(signal.SIGTERM)
    log = kiosk.stderr_text()
    said = [line for line in log.splitlines() if "UNTRAINED" in line]
    assert len(said) == 1 and said[0].startswith("dkit: WARNING: ") and str(kiosk.bundle) in said[0]
    assert log.index("UNTRAINED") < log.index("kiosk on http://")  # before the kiosk says where it is
