"""Issue #25, review of findings 1 and 3: a place in the work queue is taken before the upload's body is read (so
memory stays bounded), so a body trickled within the size limit must not hold it for long, and the players at the
kiosk's own screen (127.0.0.1) always find a place. A real `dkit serve` on loopback: 1 worker, 3 waiting, 1 place
reserved for the screen, the default minimum body rate (32 KiB/s after a 2 s grace), rate limits off.
"""

from __future__ import annotations

import pytest

from tests.edge.test_kiosk_attacks import Client
from tests.edge.test_kiosk_round2_decode import Partial, _known, _queue_len, _stop, _until
from tests.edge.test_server import RELAXED, Server, drawing

SETTINGS = ("workers=1", "queue=3", "queue_per_client=2", "screen_reserve=1", "min_body_rate=32768",
            "body_timeout=30")


@pytest.fixture(scope="module")
def kiosk(judge_run, tmp_path_factory):
    _, run, _, _ = judge_run
    srv = Server(run / "bundle", tmp_path_factory.mktemp("queue") / "kiosk.sqlite",
                 settings=_known((*RELAXED, *SETTINGS)))
    yield srv
    _stop(srv)


def test_trickled_bodies_cannot_hold_the_queue_and_the_screen_keeps_its_place(kiosk):
    """Four addresses each start an upload of a 20-odd kB drawing and stop after 1 kB. Three take the places other
    clients may take (4 less the screen's 1); the fourth is answered 503 at once, unread. The kiosk screen
    (127.0.0.1) is scored meanwhile, in its reserved place. Each held upload is answered 408 once its body is late
    for the minimum rate (2 s + 20 kB at 32 KiB/s, not the 30 s body deadline), which frees the places: a phone at
    127.0.0.9 is then scored. (Before: the four held every place for 30 s, and the screen got 503 "busy".)"""
    held = [Partial(kiosk, f"127.0.0.{30 + i}", drawing(i, "bicycle")) for i in range(3)]
    try:
        assert _until(lambda: _queue_len(kiosk) == 3)
        fourth = Partial(kiosk, "127.0.0.33", drawing(3, "bicycle"))
        status, headers, body = fourth.answer()
        fourth.sock.close()
        assert status == 503 and headers.get("connection") == "close", (status, body)
        screen = Client(kiosk, "127.0.0.1").post("/api/score", drawing(4, "bicycle"))
        assert screen[0] == 200, screen[:2]
        late = [h.answer() for h in held]  # within the sockets' 20 s timeout: long before the 30 s body deadline
        assert [s for s, _, _ in late] == [408] * 3, late
        assert all(h.get("connection") == "close" and b"did not arrive within" in b for _, h, b in late)
    finally:
        for h in held:
            h.sock.close()
    assert _until(lambda: _queue_len(kiosk) == 0)
    assert Client(kiosk, "127.0.0.9").post("/api/score", drawing(5, "bicycle"))[0] == 200


def test_the_minimum_rate_gives_an_honest_upload_its_time():
    """The deadline is the grace plus the announced length at the minimum rate, capped by the body deadline; a
    chunked upload (no length) is allowed what the largest upload would be."""
    from starlette.requests import Request

    from dkit.edge.kiosk.uploads import BODY_GRACE, body_deadline

    def request(length: str | None) -> Request:
        headers = [(b"content-length", length.encode())] if length is not None else []
        return Request({"type": "http", "headers": headers, "method": "POST", "path": "/"})

    assert body_deadline(request("32768"), 4 << 20, 30.0, 32768.0) == pytest.approx(BODY_GRACE + 1.0)
    assert body_deadline(request(str(4 << 20)), 4 << 20, 30.0, 32768.0) == 30.0
    assert body_deadline(request(None), 1 << 16, 30.0, 32768.0) == pytest.approx(BODY_GRACE + 4.0)
    assert body_deadline(request("100"), 4 << 20, 30.0, 0.0) == 30.0
