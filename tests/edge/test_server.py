"""The kiosk server for real: `dkit serve` (uvicorn) in a subprocess on loopback, a real judge bundle, real drawings.

Scoring and ranking, every moderation path, admin auth, every bad-input case (nothing stored, the server keeps
serving), and a kill -9 in the middle of it all: the restarted server has every acknowledged submission.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import struct
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from dkit.devtools.serve_process import ServeProcess
from tests.conftest import ASSETS, ROOT

TOKEN = "test-" + uuid.uuid4().hex
MAX_UPLOAD_MB = 0.5
# the shared server's limits: no rate limits and no near-duplicate refusal, so functional tests may resubmit freely
# (the limits themselves are tested on servers of their own, in test_kiosk_limits.py)
RELAXED = ("score_rate=0", "submit_rate=0", "dup_bits=-1")


class Server(ServeProcess):
    """`dkit serve` in a subprocess (dkit.devtools.serve_process, up when constructed); requests with urllib; JSON in
    and out."""

    def __init__(self, bundle: Path, db: Path, *, token: str | None = TOKEN, settings: tuple[str, ...] = RELAXED,
                 host: str = "127.0.0.1"):
        self.db, self.token = db, token
        args = ["--db", str(db), "--host", host, "--max-upload-mb", str(MAX_UPLOAD_MB),
                *(f"--set={s}" for s in settings)]
        super().__init__(bundle, args, host=host, env={**os.environ, "DKIT_ADMIN_TOKEN": token or ""}, cwd=ROOT)
        self.wait_up(timeout=120)

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
                admin: bool = False) -> tuple[int, dict | bytes]:
        headers = dict(headers or {})
        if admin:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                status, data, ctype = res.status, res.read(), res.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, data, ctype = e.code, e.read(), e.headers.get("content-type", "")
        return status, (json.loads(data) if "json" in ctype and data else data)

    def submit(self, image: bytes, *, name: str = "ada", prompt: str | None = None, path: str = "/api/submissions",
               filename: str = "drawing.png", part_type: str = "image/png"):
        fields = {"name": name} | ({"prompt": prompt} if prompt else {})
        body, ctype = multipart(fields, {"image": (filename, part_type, image)})
        return self.request("POST", path, body=body, headers={"Content-Type": ctype})


def multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for k, (filename, ctype, data) in files.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def drawing(i: int = 0, cls: str = "apple") -> bytes:
    """A real Quick, Draw! doodle rendered the kiosk way, as PNG bytes."""
    from dkit.distill.quickdraw import render

    bitmaps = np.load(ASSETS / "data" / "quickdraw" / f"{cls}.npy", mmap_mode="r")
    ok, png = cv2.imencode(".png", render(np.asarray(bitmaps[i]), 256))
    return png.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims to be width x height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data = zlib.compress(b"\0" * 100000)
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return b"\x89PNG\r\n\x1a\n" + chunk + idat


@pytest.fixture
def server(kiosk_server):
    return kiosk_server


# ------------------------------------------------------------------------------------------ scoring


def test_page_prompt_and_openapi(server):
    status, page = server.request("GET", "/")
    assert status == 200 and b"<canvas" in page and b"/static/kiosk.js" in page
    status, script = server.request("GET", "/static/kiosk.js")
    assert status == 200 and b"/api/submissions" in script
    status, prompt = server.request("GET", "/api/prompt")
    assert status == 200 and prompt["prompt"] == "a cat" and "a raccoon driving a tractor" in prompt["suggestions"]
    status, schema = server.request("GET", "/openapi.json")
    assert status == 200 and {"/api/submissions", "/api/leaderboard", "/api/prompt", "/api/score",
                              "/api/submissions/{sid}"} <= set(schema["paths"])


def test_submissions_are_scored_ranked_and_listed(server):
    before = server.request("GET", "/healthz")[1]["submissions"]
    results = []
    for i in range(4):
        status, doc = server.submit(drawing(i), name=f"player {i}")
        assert status == 200, doc
        results.append(doc)
    for doc in results:
        assert doc["prompt"] == "a cat" and doc["verdict"] in ("ok", "text", "no_match", "blocked")
        assert doc["stored"] == (doc["verdict"] != "blocked")
        if doc["stored"]:
            assert 0 <= doc["score"] <= 100 and 1 <= doc["rank"] <= doc["total"]
    stored = [d for d in results if d["stored"]]
    assert server.request("GET", "/healthz")[1]["submissions"] == before + len(stored)
    status, board = server.request("GET", "/api/leaderboard?limit=100")
    scores = [e["score"] for e in board["entries"]]
    assert status == 200 and scores == sorted(scores, reverse=True) and len(scores) >= len(stored)
    top = board["entries"][0]
    status, jpeg = server.request("GET", top["thumb_url"])
    assert status == 200 and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3
    # the camera route scores without storing
    status, doc = server.submit(drawing(9), path="/api/score")
    assert status == 200 and "rank" not in doc and 0 <= doc["score"] <= 100 and "raw_score" not in doc
    assert server.request("GET", "/healthz")[1]["submissions"] == before + len(stored)


# ------------------------------------------------------------------------------------------ admin


def test_admin_routes_need_the_token(server):
    body = json.dumps({"prompt": "a raccoon driving a tractor"}).encode()
    headers = {"Content-Type": "application/json"}
    assert server.request("PUT", "/api/prompt", body=body, headers=headers)[0] == 401
    wrong = headers | {"Authorization": "Bearer nope"}
    assert server.request("PUT", "/api/prompt", body=body, headers=wrong)[0] == 401
    status, doc = server.request("PUT", "/api/prompt", body=body, headers=headers, admin=True)
    assert status == 200 and doc["prompt"] == "a raccoon driving a tractor"
    assert server.request("GET", "/api/prompt")[1]["prompt"] == "a raccoon driving a tractor"
    # an on-device prompt (not shipped in the bundle) scores like any other; a hostile name is shown cleaned
    status, doc = server.submit(drawing(1, "bicycle"), name="gr\u202eace\u200b\x85" + "\u0336" * 39)
    assert status == 200 and doc["name"] == "gr" + "ace" + "\u0336" * 2, doc
    assert status == 200 and doc["prompt"] == "a raccoon driving a tractor"
    assert server.request("GET", "/api/leaderboard")[1]["prompt"] == "a raccoon driving a tractor"
    # earlier prompts keep their leaderboards; deleting needs the token too
    status, old = server.request("GET", "/api/leaderboard?prompt=a%20cat")
    assert status == 200 and old["entries"]
    victim = old["entries"][0]["id"]
    assert server.request("DELETE", f"/api/submissions/{victim}")[0] == 401
    assert server.request("DELETE", f"/api/submissions/{victim}", admin=True)[0] == 204
    assert server.request("DELETE", f"/api/submissions/{victim}", admin=True)[0] == 404
    assert victim not in [e["id"] for e in server.request("GET", "/api/leaderboard?prompt=a%20cat")[1]["entries"]]
    assert server.request("PUT", "/api/prompt", body=json.dumps({"prompt": "  "}).encode(), headers=headers,
                          admin=True)[0] == 400
    server.request("PUT", "/api/prompt", body=json.dumps({"prompt": "a cat"}).encode(), headers=headers, admin=True)


# ------------------------------------------------------------------------------------------ bad input


def _post_form(server: Server, form: tuple[bytes, str]):
    return server.request("POST", "/api/submissions", body=form[0], headers={"Content-Type": form[1]})


def _thin_png(width: int = 50_000, height: int = 1) -> bytes:
    """A real, decodable PNG strip: a few hundred bytes that the model's shortest-side resize would blow up."""
    ok, png = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    return png.tobytes()


def _truncated_jpeg() -> bytes:
    ok, jpg = cv2.imencode(".jpg", cv2.imread(str(ASSETS / "data" / "photos" / "pets.jpg")))
    return jpg.tobytes()[: len(jpg) // 2]


BAD = [
    ("over the size limit", lambda s: s.submit(b"\xff\xd8\xff" + os.urandom(int(MAX_UPLOAD_MB * 2**20) + 70000)), 413,
     "at most"),
    ("not an image", lambda s: s.submit(b"hello, I am text"), 400, "not an image"),
    ("empty file", lambda s: s.submit(b""), 400, "empty"),
    ("truncated jpeg", lambda s: s.submit(_truncated_jpeg(), filename="x.jpg", part_type="image/jpeg"), 400,
     "truncated"),
    ("corrupt png", lambda s: s.submit(drawing(0)[:60] + os.urandom(200)), 400, "corrupt"),
    ("decompression bomb", lambda s: s.submit(png_header_only(100_000, 100_000)), 400, "decompression bomb"),
    # issue #12's first attack: unstored, unauthenticated scoring of a 1 x 50,000 strip took the server to 2.9 GB
    ("thin strip to /api/score", lambda s: s.submit(_thin_png(), path="/api/score"), 400,
     "50000x1 pixels; at most 8:1"),
    ("tall strip", lambda s: s.submit(_thin_png(1, 9_000)), 400, "1x9000 pixels; at most 8:1"),
    ("id past SQLite's range", lambda s: s.request("DELETE", f"/api/submissions/{2**70}", admin=True), 400, "sid"),
    ("json body", lambda s: s.request("POST", "/api/submissions", body=b'{"image": 1}',
                                      headers={"Content-Type": "application/json"}), 415, "multipart/form-data"),
    ("text part", lambda s: s.submit(drawing(0), part_type="text/plain"), 415, "not an image"),
    ("missing image field", lambda s: _post_form(s, multipart({"name": "x"}, {})), 400, "no file field 'image'"),
    ("unknown prompt", lambda s: s.submit(drawing(0), prompt="a prompt nobody set"), 404, "unknown prompt"),
    ("unknown leaderboard", lambda s: s.request("GET", "/api/leaderboard?prompt=nope"), 404, "unknown prompt"),
    ("bad limit", lambda s: s.request("GET", "/api/leaderboard?limit=many"), 400, "limit"),
    ("unknown thumbnail", lambda s: s.request("GET", "/thumbs/../../etc/passwd"), 404, ""),
]


@pytest.mark.parametrize(("case", "send", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_clearly_and_nothing_is_stored(server, case, send, status, message):
    before = server.request("GET", "/healthz")[1]["submissions"]
    got, doc = send(server)
    assert got == status, doc
    if message:
        assert isinstance(doc, dict) and message in doc["error"], doc
    health = server.request("GET", "/healthz")
    assert health[0] == 200 and health[1]["submissions"] == before  # nothing stored, still serving


# ------------------------------------------------------------------------------------------ moderation


def test_moderation_paths(judge_bundle):
    """Blocked, penalised for writing, no match, ok: the judge's rules on embeddings placed where each applies."""
    from dkit.edge.bundle.manifest import Calibration
    from dkit.edge.infer.judge import Judge
    from dkit.edge.infer.runtime import Runtime

    with Runtime.load(judge_bundle) as rt:
        judge = Judge(rt)
        d = rt.prompt_embeddings.shape[1]
        e = np.eye(d, dtype=np.float32)
        judge.shipped = {"a cat": e[0]}
        judge.text_emb, judge.unsafe_emb = e[1:2], e[2:3]
        judge.calibration = Calibration((0.0, 1.0), (0.0, 100.0))

        def mix(*weights: float) -> np.ndarray:  # a unit vector with these weights on e0, e1, ...
            v = sum(w * e[i] for i, w in enumerate(weights))
            return v / np.linalg.norm(v)

        blocked = judge.judge(mix(0.5, 0.0, 0.8), "a cat")
        assert blocked.verdict == "blocked" and blocked.score is None
        text = judge.judge(mix(0.6, 0.8), "a cat")
        assert text.verdict == "text" and text.score == pytest.approx(text.raw_score * 0.5, abs=0.1)
        assert text.raw_score == pytest.approx(60, abs=0.1)
        nothing = judge.judge(mix(0.1, 0.0, 0.0, 1.0), "a cat")
        assert nothing.verdict == "no_match" and "doesn't match 'a cat'" in nothing.reason
        ok = judge.judge(mix(0.9, 0.3, 0.2), "a cat")
        assert ok.verdict == "ok" and ok.score == pytest.approx(100 * 0.9 / np.linalg.norm([0.9, 0.3, 0.2]), abs=0.1)
        # margins and penalty come from the bundle, not the code
        judge.cfg = dataclasses.replace(judge.cfg, text_margin=0.5)
        assert judge.judge(mix(0.6, 0.8), "a cat").verdict == "ok"


def test_a_new_prompt_is_embedded_like_the_shipped_ones(judge_bundle):
    from dkit.edge.infer.judge import Judge
    from dkit.edge.infer.runtime import Runtime

    with Runtime.load(judge_bundle) as rt:
        judge = Judge(rt)
        shipped = judge.shipped.pop("a raccoon driving a tractor")
        again = judge.embed_prompt("  a raccoon   driving a tractor ")  # the text encoder, on the device
        assert float(again @ shipped) > 0.9999 and "a raccoon driving a tractor" in judge.cache
        with pytest.raises(ValueError, match="empty"):
            judge.embed_prompt("   ")


# ------------------------------------------------------------------------------------------ crash


def test_kill_9_loses_no_acknowledged_submission(judge_bundle, tmp_path):
    db = tmp_path / "kiosk.sqlite"
    first = Server(judge_bundle, db)
    acknowledged = []
    for i in range(6):
        status, doc = first.submit(drawing(i, "eye"), name=f"crash {i}")
        assert status == 200
        if doc["stored"]:
            acknowledged.append(doc["id"])
    first.kill(signal.SIGKILL)  # no shutdown, no checkpoint
    second = Server(judge_bundle, db, token=None)
    try:
        entries = second.request("GET", "/api/leaderboard?limit=100")[1]["entries"]
        assert sorted(e["id"] for e in entries) == sorted(acknowledged)
        assert all(second.request("GET", e["thumb_url"])[0] == 200 for e in entries)
        # started without a token: the admin routes are off, not open
        status, doc = second.request("DELETE", f"/api/submissions/{acknowledged[0]}", admin=True)
        assert status == 403 and "--admin-token" in doc["error"]
    finally:
        second.kill(signal.SIGTERM)


@pytest.mark.parametrize(("w", "h", "ok"), [(800, 100, True), (100, 800, True), (801, 100, False), (1, 9, False)])
def test_the_aspect_bound_is_checked_before_decoding(w, h, ok, monkeypatch):
    """8:1 passes, anything thinner is refused from the header alone: cv2.imdecode never runs on it."""
    from dkit.edge.images import decode as upload

    calls = []
    real = upload.cv2.imdecode
    monkeypatch.setattr(upload.cv2, "imdecode", lambda *a: calls.append(1) or real(*a))
    if ok:
        assert upload.decode_upload(_thin_png(w, h)).shape == (h, w, 3) and calls == [1]
    else:
        with pytest.raises(upload.UploadError, match=f"{w}x{h} pixels; at most 8:1"):
            upload.decode_upload(_thin_png(w, h))
        assert calls == []


def test_a_portrait_phone_photo_is_turned_upright_not_refused(server):
    """A JPEG stored landscape with EXIF orientation 6 (how phones save portrait shots) was refused as corrupt."""
    import io

    from PIL import Image

    from dkit.edge.images.decode import decode_upload

    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 150, 100))  # stored: blue left half, red right half
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    rgb = decode_upload(buf.getvalue())
    assert rgb.shape == (300, 100, 3)  # upright: portrait
    assert rgb[10, 50, 2] > 200 and rgb[290, 50, 0] > 200  # blue on top, red at the bottom, as the phone showed it
    status, doc = server.submit(buf.getvalue(), path="/api/score", filename="IMG_0001.jpg", part_type="image/jpeg")
    assert status == 200 and doc["verdict"] in ("ok", "text", "no_match", "blocked"), doc


def test_a_chunked_upload_is_cut_off_at_the_limit_while_it_is_read(server):
    """No Content-Length, 1.5x the limit sent in chunks: answered 413 once the limit is passed (the rest is read and
    dropped, up to 2 limits, so the client sees the answer); nothing stored, and the server still serves (issue
    #12: 300 MB were spooled to /tmp before the 413)."""
    import http.client
    from urllib.parse import urlparse

    before = server.request("GET", "/healthz")[1]["submissions"]
    limit = int(MAX_UPLOAD_MB * 2**20)
    boundary = "dkitchunked"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + drawing(0)
    sent = [0]

    def body():
        yield head
        chunk = b"\0" * 65536
        while sent[0] < limit + limit // 2:
            sent[0] += len(chunk)
            yield chunk

    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request("POST", "/api/submissions", body=body(), encode_chunked=True,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading and closed: the response is already on the wire
    response = conn.getresponse()
    doc = json.loads(response.read())
    conn.close()
    assert response.status == 413 and "at most" in doc["error"], doc
    assert "transfer-encoding" not in {k.lower() for k in response.headers}  # a plain JSON answer
    health = server.request("GET", "/healthz")
    assert health[0] == 200 and health[1]["submissions"] == before


def test_every_response_carries_the_security_headers_and_docs_are_off(server):
    """CSP (self only: the pages' scripts and styles are /static files, nothing inline, no 'unsafe-inline'),
    nosniff, no framing, no referrer, on the pages, the API and errors alike; /docs and /redoc need --docs."""
    import re
    import urllib.request

    for path in ("/", "/api/prompt", "/healthz", "/api/leaderboard?prompt=nope", "/thumbs/nothing.jpg"):
        req = urllib.request.Request(server.url + path)
        try:
            res = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            res = e
        csp = res.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert res.headers["X-Content-Type-Options"] == "nosniff" and res.headers["X-Frame-Options"] == "DENY"
        assert res.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self';" in csp and "sha256" not in csp  # no inline code to allow at all
    for page in ("/", "/admin"):
        html = server.request("GET", page)[1].decode()
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]|<style\b|\sstyle\s*=|\son[a-z]+\s*=", html), page
        assert re.search(r'<script [^>]*src="/static/[a-z]+\.js"', html), page
    for path in ("/docs", "/redoc"):
        assert server.request("GET", path)[0] == 404
    status, doc = server.request("GET", "/api/leaderboard?prompt=nope")
    assert status == 404 and "a cat" not in doc["error"]  # a 404 no longer lists every prompt ever set


def test_an_unexpected_failure_is_a_json_500_without_details(judge_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from dkit.edge.kiosk.server import create_app

    app = create_app(judge_bundle, db=tmp_path / "k.sqlite")

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        res = client.get("/boom")
    assert res.status_code == 500 and res.json() == {"error": "internal error (logged on the kiosk)"}
    assert "secret" not in res.text and res.headers["content-type"] == "application/json"
