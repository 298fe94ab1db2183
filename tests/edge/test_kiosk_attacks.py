"""The hostile-visitor attacks on `dkit serve`, each against a real server on loopback (dkit serve in a subprocess
with limits of its own), each answered with a clear 4xx/429/503 or a bounded cost, nothing stored that should not
be, and the server still serving. Attackers connect from other loopback addresses (127.0.0.2, 127.0.0.3: Linux
routes all of 127/8 to lo), so a per-client limit never hits the legitimate client at 127.0.0.1.

Covered elsewhere: thin images, bombs, chunked bodies, bidi/zero-width names, EXIF photos, huge ids, headers
(test_server.py); truncated JPEGs (test_upload.py).
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import signal
import socket
import time
import zipfile

import cv2
import numpy as np
import pytest

from tests.edge.test_server import TOKEN, Server, drawing, multipart


class Client:
    """HTTP from one source address (http.client, a new connection per request)."""

    def __init__(self, server: Server, source: str = "127.0.0.1"):
        self.server, self.source = server, source

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                admin: bool = False):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60, source_address=(self.source, 0))
        headers = dict(headers or {}) | ({"Authorization": f"Bearer {TOKEN}"} if admin else {})
        try:
            conn.request(method, path, body=body, headers=headers)
            res = conn.getresponse()
            data = res.read()
            doc = json.loads(data) if "json" in (res.getheader("content-type") or "") and data else data
            return res.status, doc, dict(res.getheaders())
        finally:
            conn.close()

    def post(self, path: str, image: bytes, name: str = "ada", **fields):
        body, ctype = multipart({"name": name} | fields, {"image": ("d.png", "image/png", image)})
        return self.request("POST", path, body, {"Content-Type": ctype})

    def admin(self, method: str, path: str, doc: dict | None = None):
        body = None if doc is None else json.dumps(doc).encode()
        return self.request(method, path, body, {"Content-Type": "application/json"} if body else {}, admin=True)


def _distinct(i: int) -> bytes:
    """A drawing unlike the others (a real doodle of its own), so near-duplicate refusal does not apply."""
    return drawing(i, ("apple", "bicycle", "diamond", "eye")[i % 4])


@pytest.fixture(scope="module")
def strict(judge_bundle, tmp_path_factory):
    """A kiosk with small limits: submissions burst 3 (then 1 per 100 s), scores burst 5, 2 s header and body
    deadlines, 4 connections per client, near-duplicates within 6 bits refused."""
    names = tmp_path_factory.mktemp("names") / "blocklist.txt"
    names.write_text("badword\n")
    srv = Server(judge_bundle, tmp_path_factory.mktemp("strict") / "kiosk.sqlite", settings=(
        "submit_rate=0.01", "submit_burst=3", "score_rate=0.01", "score_burst=5", "header_timeout=2",
        "body_timeout=2", "max_connections_per_client=4", "dup_bits=6", f"blocklist={names}"))
    yield srv
    srv.kill(signal.SIGTERM)


def test_a_flooding_client_is_rate_limited_and_others_still_play(strict):
    flood = Client(strict, "127.0.0.2")
    statuses = [flood.post("/api/submissions", _distinct(i))[0] for i in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    status, doc, headers = flood.post("/api/submissions", _distinct(7))
    assert status == 429 and int(headers["retry-after"]) >= 1 and doc["retry_after"] >= 1
    assert "try again in" in doc["error"]
    assert Client(strict, "127.0.0.1").post("/api/submissions", _distinct(8))[0] == 200  # the legitimate visitor
    assert strict.request("GET", "/healthz")[0] == 200


def test_the_score_oracle_is_rate_limited_and_the_best_cannot_be_resubmitted(strict):
    probe = Client(strict, "127.0.0.3")
    statuses = [probe.post("/api/score", _distinct(20 + i))[0] for i in range(7)]
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}  # 120 free probes are no longer possible
    best = _distinct(30)
    me = Client(strict, "127.0.0.4")
    first = me.post("/api/submissions", best)
    assert first[0] == 200 and first[1]["stored"]
    again = me.post("/api/submissions", best)  # the same image again
    assert again[0] == 409 and "same as one already on the board" in again[1]["error"]
    rgb = cv2.imdecode(np.frombuffer(best, np.uint8), cv2.IMREAD_COLOR)
    ok, jpeg = cv2.imencode(".jpg", cv2.resize(rgb, None, fx=0.8, fy=0.8), [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert me.post("/api/submissions", jpeg.tobytes())[0] == 409  # re-encoded and resized: still the same drawing
    board = strict.request("GET", "/api/leaderboard?limit=100")[1]["entries"]
    assert sum(e["id"] == first[1]["id"] for e in board) == 1


def test_a_blocklisted_name_is_refused(strict):
    status, doc, _ = Client(strict, "127.0.0.5").post("/api/submissions", _distinct(40), name="B@dw0rd")
    assert status == 400 and "name is not allowed" in doc["error"]


def _closed(sock: socket.socket, within: float = 15.0) -> bool:
    """Whether the server closes `sock` (recv returns b'' or the connection is reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def test_idle_and_slow_sockets_are_dropped_and_healthz_keeps_answering(strict):
    held = [_connect(strict.port, "127.0.0.6") for _ in range(10)]  # 4 allowed per client
    assert strict.request("GET", "/healthz")[0] == 200  # from 127.0.0.1, while they are held
    closed_at_once = sum(_closed(s, within=2.0) for s in held[4:])
    assert closed_at_once >= 5  # over the per-client cap: closed as soon as accepted (one may be racing)
    assert all(_closed(s) for s in held[:4])  # sending nothing: closed at the 2 s header deadline
    slow = _connect(strict.port, "127.0.0.7")
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    sent = 0
    slow.settimeout(0.25)
    try:
        for byte in request:  # slowloris: headers a byte at a time, never finished
            slow.send(bytes([byte]))
            sent += 1
            if slow.recv(1) == b"":
                break
    except TimeoutError:
        pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert _closed(slow) and sent < len(request)  # cut off before the headers were complete
    for s in [*held, slow]:
        s.close()
    assert strict.request("GET", "/healthz")[0] == 200


def test_a_slow_body_is_cut_off_with_408(strict):
    body, ctype = multipart({"name": "slow"}, {"image": ("d.png", "image/png", _distinct(50))})
    sock = _connect(strict.port, "127.0.0.8")
    sock.sendall(f"POST /api/score HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])  # then nothing more
    sock.settimeout(20)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_the_operator_moderates_bans_runs_rounds_and_exports(strict):
    player, other = Client(strict, "127.0.0.9"), Client(strict, "127.0.0.10")
    status, doc, _ = Client(strict, "127.0.0.11").request("GET", "/api/admin/stats")
    assert status == 401
    a = player.post("/api/submissions", _distinct(60), name="=HYPERLINK(1)")[1]
    b = other.post("/api/submissions", _distinct(61), name="bob")[1]
    queue = player.admin("GET", "/api/admin/submissions?limit=5")[1]["entries"]
    assert [e["id"] for e in queue[:2]] == [b["id"], a["id"]] and queue[0]["client"] == "127.0.0.10"
    assert player.admin("PATCH", f"/api/admin/submissions/{a['id']}", {"hidden": True})[1]["hidden"] is True
    board = strict.request("GET", "/api/leaderboard?limit=100")[1]["entries"]
    assert a["id"] not in {e["id"] for e in board} and b["id"] in {e["id"] for e in board}
    zipped = player.admin("GET", "/api/admin/export")
    assert zipped[0] == 200 and zipped[2]["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped[1])) as z:
        rows = list(csv.DictReader(io.StringIO(z.read("leaderboard.csv").decode())))
        hyper = next(r for r in rows if r["id"] == str(a["id"]))
        assert hyper["name"] == "'=HYPERLINK(1)" and hyper["hidden"] == "1"  # no formula in a spreadsheet
        assert all(r["thumbnail"] in z.namelist() for r in rows)
    assert player.admin("POST", "/api/admin/bans", {"client": "127.0.0.10", "reason": "spam"})[0] == 200
    banned = other.post("/api/submissions", _distinct(62))
    assert banned[0] == 403 and "may not take part" in banned[1]["error"]
    assert player.admin("POST", "/api/admin/delete", {"client": "127.0.0.10"})[1] == {"deleted": 1}
    assert player.admin("DELETE", "/api/admin/bans/127.0.0.10")[0] == 204
    stats = player.admin("GET", "/api/admin/stats")[1]
    assert stats["counts"]["banned"] == 1 and stats["disk"]["bytes"] > 0 and stats["per_minute"] >= 1
    assert stats["counts"]["rate_limited"] >= 1 and stats["counts"]["duplicates"] >= 1
    round_ = player.admin("POST", "/api/admin/round", {"prompt": "a red apple", "seconds": 1})[1]["round"]
    assert round_["prompt"] == "a red apple" and 0 < round_["remaining"] <= 1
    assert strict.request("GET", "/api/prompt")[1]["prompt"] == "a red apple"
    deadline = time.monotonic() + 30
    while strict.request("GET", "/api/prompt")[1]["round"]["remaining"] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    over = Client(strict, "127.0.0.12").post("/api/submissions", _distinct(63))
    assert over[0] == 409 and "round is over" in over[1]["error"]
    assert player.admin("PUT", "/api/prompt", {"prompt": "a cat"})[0] == 200  # free play again
    assert strict.request("GET", "/api/prompt")[1]["round"] is None


def test_the_quota_bounds_the_disk_and_retention_keeps_the_best(judge_bundle, tmp_path):
    srv = Server(judge_bundle, tmp_path / "kiosk.sqlite",
                 settings=("submit_rate=0", "dup_bits=-1", "keep_top=2", "keep_last=3"))
    try:
        client = Client(srv)
        scores = [client.post("/api/submissions", _distinct(i))[1]["score"] for i in range(8)]
        entries = client.admin("GET", "/api/admin/submissions?limit=100")[1]["entries"]
        assert len(entries) <= 2 + 3  # the best two and the newest three (they may overlap)
        assert max(scores) in {int(e["score"] + 0.5) for e in entries}  # answered in whole points, kept to 0.1
        thumbs = [p for p in (tmp_path / "thumbs").iterdir() if p.suffix == ".jpg"]
        assert len(thumbs) == len(entries)
    finally:
        srv.kill(signal.SIGTERM)
    full = Server(judge_bundle, tmp_path / "kiosk.sqlite", settings=("submit_rate=0", "dup_bits=-1",
                                                                    "max_disk_mb=0.01"))
    try:
        status, doc, _ = Client(full).post("/api/submissions", _distinct(9))
        assert status == 507 and "quota" in doc["error"]
        assert full.request("GET", "/healthz")[0] == 200
    finally:
        full.kill(signal.SIGTERM)


def test_the_admin_token_on_the_command_line_is_warned_about(judge_bundle, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    token_file = tmp_path / "token"
    token_file.write_text("")
    out = subprocess.run([sys.executable, "-m", "dkit", "serve", str(judge_bundle), "--admin-token-file",
                          str(token_file)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "the file is empty" in out.stderr
    out = subprocess.run([sys.executable, "-m", "dkit", "serve", str(judge_bundle), "--set", "workers=0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "kiosk.workers: expected an integer >= 1" in out.stderr


def test_the_token_comes_from_a_file_or_the_environment_and_the_command_line_is_warned_about(tmp_path, monkeypatch,
                                                                                              caplog):
    import argparse

    from dkit.cli.device import admin_token

    def args(**kw):
        return argparse.Namespace(**({"admin_token": None, "admin_token_file": None} | kw))

    monkeypatch.delenv("DKIT_ADMIN_TOKEN", raising=False)
    assert admin_token(args()) is None  # no default token: admin off
    monkeypatch.setenv("DKIT_ADMIN_TOKEN", "from-env")
    assert admin_token(args()) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert admin_token(args(admin_token_file=str(tmp_path / "token"))) == "from-file"
    assert not caplog.records
    assert admin_token(args(admin_token="on-the-command-line")) == "on-the-command-line"
    assert "visible to every user" in caplog.text
