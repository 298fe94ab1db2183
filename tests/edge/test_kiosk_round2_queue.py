"""Issue #25, review of findings 1 and 3: a place in the work queue is taken before the upload's body is read (so
memory stays bounded), so a body trickled within the size limit must not hold it for long, and the players at the
kiosk's own screen (127.0.0.1) always find a place. A real `dkit serve` on loopback: 1 worker, 3 waiting, 1 place
reserved for the screen, a minimum body rate of 32 KiB/s after the 5 s grace, counted on the bytes received (not the
length announced), rate limits off.
"""

from __future__ import annotations

import pytest

from tests.edge.test_kiosk_attacks import Client
from tests.edge.test_kiosk_round2_decode import Partial, _known, _queue_len, _stop, _until
from tests.edge.test_server import RELAXED, Server, drawing

SETTINGS = ("workers=1", "queue=3", "queue_per_client=2", "screen_reserve=1", "min_body_rate=32768",
            "body_timeout=30")


@pytest.fixture(scope="module")
def kiosk(judge_bundle, tmp_path_factory):
    srv = Server(judge_bundle, tmp_path_factory.mktemp("queue") / "kiosk.sqlite",
                 settings=_known((*RELAXED, *SETTINGS)))
    yield srv
    _stop(srv)


def test_trickled_bodies_cannot_hold_the_queue_and_the_screen_keeps_its_place(kiosk):
    """Four addresses each start an upload (one announcing 400 kB, the others a 20-odd kB drawing) and stop after
    1 kB. Three take the places other clients may take (4 less the screen's 1); the fourth is answered 503 at once,
    unread. The kiosk screen (127.0.0.1) is scored meanwhile, in its reserved place. Each held upload is answered 408
    once its bytes fall behind the minimum rate (5 s grace + 1 kB at 32 KiB/s, not the 30 s body deadline, nor the
    17 s the announced 400 kB would earn), which frees the places: a phone at 127.0.0.9 is then scored. (Before: the
    four held every place for 30 s, and the screen got 503 "busy".)"""
    big = drawing(0, "bicycle") + bytes(400_000)  # announces 400 kB (the limit here is 0.5 MB): 17 s, were it trusted
    held = [Partial(kiosk, f"127.0.0.{30 + i}", big if i == 0 else drawing(i, "bicycle")) for i in range(3)]
    try:
        assert _until(lambda: _queue_len(kiosk) == 3)
        fourth = Partial(kiosk, "127.0.0.33", drawing(3, "bicycle"))
        status, headers, body = fourth.answer()
        fourth.sock.close()
        assert status == 503 and headers.get("connection") == "close", (status, body)
        screen = Client(kiosk, "127.0.0.1").post("/api/score", drawing(4, "bicycle"))
        assert screen[0] == 200, screen[:2]
        late = [h.answer() for h in held]  # within the sockets' 20 s timeout: before the 30 s body deadline
        assert [s for s, _, _ in late] == [408] * 3, late
        assert all(h.get("connection") == "close" and b"slower than 32 KiB/s" in b for _, h, b in late), late
    finally:
        for h in held:
            h.sock.close()
    assert _until(lambda: _queue_len(kiosk) == 0)
    assert Client(kiosk, "127.0.0.9").post("/api/score", drawing(5, "bicycle"))[0] == 200


def test_the_minimum_rate_counts_the_bytes_received_not_the_length_announced():
    """BodyLimit's next-bytes deadline: the body deadline, or sooner the time the bytes received so far (plus one)
    are due at the minimum rate after the grace; an honest 100 kB upload at the rate keeps its time."""
    from dkit.edge.kiosk.bodies import BODY_GRACE, BodyLimit

    limit = BodyLimit(None, 4 << 20, body_timeout=30.0, min_rate=16384.0)
    assert limit._due(100.0, 0)[0] == pytest.approx(100.0 + BODY_GRACE + 1 / 16384)
    assert "slower than 16 KiB/s" in limit._due(100.0, 0)[1]
    assert limit._due(100.0, 100_000)[0] == pytest.approx(100.0 + BODY_GRACE + 100_001 / 16384)
    assert limit._due(100.0, 1 << 22) == (130.0, "")  # the body deadline comes first
    assert BodyLimit(None, 4 << 20, body_timeout=30.0)._due(100.0, 0) == (130.0, "")  # no rate: the deadline only
