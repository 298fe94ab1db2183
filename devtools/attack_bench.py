"""`dkit bench attack`: the kiosk server (`dkit serve`) under attack, measured in one run (stdlib + numpy + OpenCV).

    result = bench_attack("runs/quickdraw/bundle", AttackSettings(), serve_set=["max_disk_mb=20"])
    print(format_table(result))

The server runs in its own process on a free loopback port with a fresh database in a temporary folder, as on a
kiosk; every client is a plain http.client/socket client bound to its own source address (Linux loopback takes
any 127.x.y.z), so per-address limits see distinct clients:

    127.0.0.1  the legitimate player (POST /api/score, paced) and the /healthz timer
    127.0.0.2  idle sockets: connect and send nothing, or send a request's headers one byte a second (slowloris)
    127.0.0.3  the disk flood: distinct valid drawings to POST /api/submissions as fast as it can
    127.0.0.4  the image flood: thin strips, oversized headers and real decompression bombs to both POST routes
    127.0.0.5  the warm-up

Phases, in this order (each a measurement; the goals are reported, never enforced):
1. rss: idle RSS after the warm-up; the peak is reset (`echo 5 > /proc/PID/clear_refs`, VmHWM) and read after
   `bomb_clients` clients have flooded for `bomb_seconds`; VmRSS is also sampled every 10 ms (the fallback when
   clear_refs cannot be written). Goal: peak / idle < 1.5.
2. healthz: `idle_sockets` connections held open (re-opened when the server closes them) while GET /healthz is
   timed `healthz_requests` times, sequentially, a new connection each. Goal: p99 < 100 ms.
3. disk: the growth of the data folder (database + WAL + thumbnails) over a `flood_seconds` single-client flood.
   Goal: at most the server's quota (max_disk_mb: --serve-set, else the bundle's or KioskConfig's default).
4. legit: successful /api/score per second of the paced legitimate client, alone for `legit_seconds` (measured
   before phase 1) and then for `combined_seconds` while attacks 1-3 run at once. Goal: the ratio >= 0.5.

Then the attacks of the second audit (issue #25), each against a fresh server of its own (a scan bomb keeps an
unguarded server busy for minutes after it ends) while the legitimate player on 127.0.0.1 does what the event
screen does: a new drawing to POST /api/submissions every `player_submit_s` and a live score (POST /api/score)
every `player_score_s`, each on its own keep-alive connection, a tick that falls while its previous request is in
flight skipped (as the page's setInterval does) and counted as a request that got nothing. Its headline: the share
of its ticks answered 200, and the p99 latency of all its requests (a failure counted at the time it failed).

    127.0.0.6         the scan bomber       127.0.0.10..      the slow attackers (one address each)
    127.0.0.7         the hill climber      127.0.1.1..       the players who seed the climb's board
                                            127.0.2.1..       the upload clients

5. scan_bomb: `scan_bombs` progressive JPEGs (grey, `scan_bomb_side` px square, the last scan repeated
   `scan_bomb_repeats` times: ~260 kB, minutes of decoding each) kept in flight to POST /api/score from one
   address for `scan_bomb_seconds`. Goal: the player's share >= 0.9.
6. slow: `slow_per_client` connections from each of `slow_addresses` addresses for `slow_seconds`: slow readers
   (pipelined GET /static/kiosk.js, a 4 KB receive buffer, never read), uploads announcing a Content-Length over
   the limit and trickling the body (half with `Expect: 100-continue`) and slowloris headers, each re-opened when
   the server closes it. Goal: the player's share >= 0.9.
7. uploads: `uploads` concurrent uploads of one valid progressive JPEG of `upload_megapixels` megapixels padded
   to `upload_bytes` (COM segments) to POST /api/score from `upload_addresses` addresses; the RSS of the server's
   whole process tree (its own and its children's VmRSS, every 10 ms) at its peak over the same at idle. Goal: <=
   1.5x.
8. climb: the board seeded with `climb_seeds` drawings (a folder of images or Quick, Draw! .npy bitmaps, else
   random doodles) from several addresses; then from a blank canvas, random strokes added one at a time, each kept
   when POST /api/score's score improves, at most `climb_queries` queries (a 429 waited out when its Retry-After
   is short, the end of the climb when it is long: a spent budget); after each improvement the score is compared
   with the board's best (GET /api/leaderboard); a score that beats it is submitted (at most 5 times, each at a
   higher score), and the climb ends when a submission ranks 1 (a coarse score can claim more than the drawing
   holds). Goal: no rank 1 within the queries.

`phases` (`dkit bench attack --only`) runs some of them: rss, healthz, disk, legit (the first server's, with its
warm-up), scan-bomb, slow, uploads, climb.

OpenCV and numpy are imported inside the functions that use them, so the CLI reads AttackSettings (for its
--help) without loading them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import json
import math
import os
import platform
import resource
import selectors
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dkit.devtools.serve_process import ServeProcess, ServeStartError

HOST = "127.0.0.1"
LEGIT, IDLE, DISK, FLOOD, WARMUP = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
BOMBER, CLIMBER = "127.0.0.6", "127.0.0.7"
SLOW_FIRST, SEED_FIRST, UPLOAD_FIRST = "127.0.0.10", "127.0.1.1", "127.0.2.1"  # the first of consecutive addresses
GOALS = {"rss": "peak/idle RSS < 1.5x", "healthz": "/healthz p99 < 100 ms", "disk": "growth <= the quota",
         "legit": "legit ok/s under attack >= 0.5x unattacked",
         "scan_bomb": "player's share of requests answered 200 during the scan bomb >= 0.9",
         "slow": "player's share of requests answered 200 during the slow-read/trickle attack >= 0.9",
         "uploads": "process-tree RSS peak/idle under concurrent 4 MB uploads <= 1.5x",
         "climb": "a blind hill-climb reaches no rank 1 within its queries"}
FIRST_SERVER = ("rss", "healthz", "disk", "legit")  # on one server, after one warm-up
OWN_SERVER = ("scan_bomb", "slow", "uploads", "climb")  # each on a fresh server of its own
PHASES = FIRST_SERVER + OWN_SERVER
PLAYER_TIMEOUT = 20.0  # seconds the player waits for an answer (then counts an error)
CLIMB_MAX_WAIT = 30.0  # a 429 asking the climber to wait longer ends the climb (a spent budget, not a rate)
SLOW_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Slow: "  # then 'a' forever


class AttackBenchError(RuntimeError):
    """The bench could not measure: not a judge bundle, or the server did not come up (its stderr tail included)."""


@dataclass(frozen=True)
class AttackSettings:
    """Durations and sizes of each phase (the defaults: a run of about 2.5 minutes)."""

    warmup: int = 10  # /api/score requests before idle RSS is read
    legit_seconds: float = 20.0  # the legitimate client alone
    legit_interval_ms: float = 500.0  # its pace (0: as fast as it can)
    bomb_seconds: float = 20.0  # phase 1
    bomb_clients: int = 6
    idle_sockets: int = 500  # phase 2
    slowloris_fraction: float = 0.5  # of the idle sockets, those that trickle headers (the others send nothing)
    hold_seconds: float = 3.0  # idle sockets held before /healthz is timed
    healthz_requests: int = 300
    flood_seconds: float = 60.0  # phase 3
    combined_seconds: float = 20.0  # phase 4: attacks 1-3 together, the legit client measured
    settle_seconds: float = 1.0  # pause between phases (work still in flight drains)
    player_submit_s: float = 6.0  # phases 5-6: the player's pace (a submission, a live score)
    player_score_s: float = 1.0
    scan_bomb_seconds: float = 60.0  # phase 5
    scan_bombs: int = 10  # in flight at once, from one address
    scan_bomb_side: int = 6000
    scan_bomb_repeats: int = 2000  # extra copies of the last scan
    slow_seconds: float = 40.0  # phase 6
    slow_addresses: int = 16
    slow_per_client: int = 32  # connections each (the server's default per-client cap)
    slow_pipelined: int = 200  # GET /static/kiosk.js a slow reader sends at once (then one a second)
    uploads: int = 500  # phase 7
    upload_addresses: int = 50
    upload_bytes: int = 4_000_000
    upload_megapixels: float = 36.0
    upload_seconds: float = 60.0  # the longest an upload waits for its answer
    climb_seeds: int = 240  # phase 8 (the audit's board: 240 real drawings)
    climb_queries: int = 100

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{f.name}: expected a number >= 0, got {value!r}")
        if not 0 <= self.slowloris_fraction <= 1:
            raise ValueError(f"slowloris_fraction: expected 0..1, got {self.slowloris_fraction}")
        for name in ("legit_seconds", "combined_seconds", "healthz_requests", "player_submit_s", "player_score_s",
                     "scan_bomb_side", "slow_addresses", "slow_per_client", "uploads", "upload_addresses",
                     "upload_bytes", "upload_megapixels", "upload_seconds"):  # no figure without them
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)!r}")


QUICK = AttackSettings(warmup=3, legit_seconds=1.5, bomb_seconds=1.5, bomb_clients=3, idle_sockets=100,
                       hold_seconds=0.5, healthz_requests=40, flood_seconds=1.5, combined_seconds=1.5,
                       settle_seconds=0.3, player_submit_s=1.0, player_score_s=0.5, scan_bomb_seconds=2.0,
                       scan_bombs=2, scan_bomb_side=512, scan_bomb_repeats=20, slow_seconds=2.0, slow_addresses=2,
                       slow_per_client=8, slow_pipelined=20, uploads=6, upload_addresses=2, upload_bytes=300_000,
                       upload_megapixels=1.0, upload_seconds=30.0, climb_seeds=4, climb_queries=6)


# ------------------------------------------------------------------------------------------ payloads


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def zero_png(width: int, height: int, *, block_bytes: int = 4 << 20) -> bytes:
    """A real, complete PNG of width x height black RGB pixels (a decompression bomb when large), built without
    ever holding its pixels: its scanlines are all zero bytes (filter 0, value 0), so the zlib stream is one
    deflate block of `block_bytes` zeros (ended by a full flush: byte-aligned, no back-references across it)
    repeated, the remainder, an empty final block and the Adler-32 of n zeros ((n mod 65521) << 16 | 1)."""
    total = (1 + 3 * width) * height
    block = max(1, min(total, block_bytes))
    count, rest = divmod(total, block)

    def deflate(n: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(bytes(n)) + c.flush(zlib.Z_FULL_FLUSH)

    stream = [b"\x78\xda", deflate(block) * count, deflate(rest) if rest else b"",
              zlib.compressobj(9, zlib.DEFLATED, -15).flush(), struct.pack(">I", (total % 65521) << 16 | 1)]
    return _png(width, height, b"".join(stream))


def header_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels, with a little data (it cannot decode completely)."""
    return _png(width, height, zlib.compress(bytes(100_000), 9))


def header_jpeg(width: int = 65535, height: int = 65535) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to claim width x height (65,535 is JPEG's maximum)."""
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5: i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def strip_png(width: int, height: int = 1) -> bytes:
    """A valid, tiny PNG strip (1 x 50,000 pixels: decodes small, but a shortest-side resize scales it up)."""
    import cv2
    import numpy as np

    return cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1].tobytes()


def drawing(seed: int, side: int = 512) -> bytes:
    """A valid random-stroke doodle as PNG bytes: strokes, a few filled shapes; a different seed makes a different
    drawing (not a near-duplicate)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    canvas = np.full((side, side, 3), 255, np.uint8)
    for _ in range(int(rng.integers(4, 14))):
        pts = np.cumsum(rng.integers(-60, 61, (int(rng.integers(3, 24)), 2)), axis=0) + rng.integers(64, side - 64, 2)
        color = tuple(int(c) for c in rng.integers(0, 200, 3))
        cv2.polylines(canvas, [pts.astype(np.int32)], False, color, int(rng.integers(3, 16)), cv2.LINE_AA)
    for _ in range(int(rng.integers(1, 4))):
        x, y = (int(v) for v in rng.integers(0, side, 2))
        r = int(rng.integers(10, side // 4))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.circle(canvas, (x, y), r, color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (x, y), (x + r, y + int(rng.integers(10, side // 4))), color, -1)
    return cv2.imencode(".png", canvas)[1].tobytes()


def attack_payloads(max_pixels: int | None = None) -> list[tuple[str, str, bytes]]:
    """(name, content type, bytes) of the image flood: strips, lying headers, and real bombs: one of 20000 x 20000
    pixels (1.2 GB decoded, ~1.2 MB of file) and one at the edge's pixel limit (accepted and decoded by a server
    that only checks the header, ~108 MB decoded from ~100 kB)."""
    if max_pixels is None:
        from dkit.edge.images.decode import MAX_PIXELS as max_pixels
    side = math.isqrt(max_pixels)
    return [("strip_1x50000_png", "image/png", strip_png(50_000)),
            ("strip_1x200000_png", "image/png", strip_png(200_000)),
            ("header_100000x100000_png", "image/png", header_png(100_000, 100_000)),
            ("header_65535x65535_jpeg", "image/jpeg", header_jpeg()),
            ("bomb_20000x20000_png", "image/png", zero_png(20_000, 20_000)),
            (f"bomb_{side}x{side}_png", "image/png", zero_png(side, side))]


def multipart(image: bytes, *, ctype: str = "image/png", name: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body as the kiosk page posts it (an `image` part, an optional `name`); its header."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n' if name else ""
    body = (head + f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="d"\r\n'
            f"Content-Type: {ctype}\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def progressive_jpeg(image, quality: int = 90) -> bytes:
    """An image (grey or BGR numpy array) encoded as a progressive JPEG by OpenCV."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise AttackBenchError("OpenCV could not encode a progressive JPEG")
    return buf.tobytes()


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG after its SOI; a scan (SOS, 0xDA) runs to the end of its
    entropy-coded data (stuffed 0xFF00 and restart markers included), the last entry is the EOI."""
    out, i = [], 2
    while i + 1 < len(data):
        if data[i] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((marker, i, end))
        i = end
    return out


def scan_bomb(side: int = 6000, repeats: int = 2000) -> bytes:
    """A valid progressive JPEG, grey, side x side, whose last scan (a refinement scan of ~59 bytes) is there
    1 + `repeats` times: each copy makes a decoder walk every block of the image again (2,000 copies of a
    6000 x 6000 image: ~260 kB, minutes of decoding), and libjpeg only warns about it."""
    import numpy as np

    data = progressive_jpeg(np.full((side, side), 128, np.uint8))
    _, start, end = [seg for seg in jpeg_segments(data) if seg[0] == 0xDA][-1]
    return data[:end] + data[start:end] * repeats + data[end:]


def pad_jpeg(data: bytes, size: int) -> bytes:
    """The JPEG grown to `size` bytes by comment segments (COM, 0xFE) after its SOI (to within 3 bytes when it is
    less than 4 short); as is when it is not smaller."""
    need, pads = size - len(data), []
    while need >= 4:  # a segment is 4 bytes (marker, length) and up to 65,533 of comment
        n = min(need - 4, 65533)
        rest = need - n - 4
        if 0 < rest < 4:  # leave room for one more segment
            n -= 4 - rest
        pads.append(b"\xff\xfe" + struct.pack(">H", n + 2) + b"p" * n)
        need -= n + 4
    return data[:2] + b"".join(pads) + data[2:]


def large_jpeg(megapixels: float = 36.0, size: int = 4_000_000) -> bytes:
    """A valid progressive colour JPEG of `megapixels` (a doodle upscaled to a square) padded to `size` bytes: what
    a big phone photo costs a decoder (a progressive JPEG keeps its whole coefficient buffer) in an upload of
    `size`."""
    import cv2
    import numpy as np

    side = max(16, math.isqrt(int(megapixels * 1e6)))
    small = cv2.imdecode(np.frombuffer(drawing(7), np.uint8), cv2.IMREAD_COLOR)
    return pad_jpeg(progressive_jpeg(cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR)), size)


def render_bitmap(bitmap, size: int = 256):
    """A Quick, Draw! 28x28 white-on-black bitmap ((784,) or (28, 28) uint8) as the kiosk canvas shows a doodle:
    dark strokes on white, upscaled to size x size with cubic interpolation, BGR."""
    import cv2
    import numpy as np

    square = np.asarray(bitmap, np.uint8).reshape(28, 28)
    big = cv2.resize(255 - square, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.repeat(big[:, :, None], 3, axis=2)


def seed_images(count: int, folder: str | os.PathLike | None = None) -> tuple[list[bytes], str]:
    """`count` drawings (PNG bytes) to seed the board, and where they came from: from `folder`, its images (.png,
    .jpg, .jpeg, .webp) and then the doodles of its Quick, Draw! .npy files ((N, 784) or (N, 1, 784) uint8),
    taken in turn from each file; without a folder, the bench's own random doodles."""
    import cv2
    import numpy as np

    if folder is None:
        return [drawing(500_000 + i) for i in range(count)], "random doodles (drawing())"
    root = Path(folder)
    if not root.is_dir():
        raise AttackBenchError(f"{folder}: not a folder (of drawings or Quick, Draw! .npy files)")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    out = [p.read_bytes() for p in files[:count]]
    arrays = [np.load(p, mmap_mode="r") for p in sorted(root.glob("*.npy"))]
    arrays = [a.reshape(len(a), -1) for a in arrays if a.size and a.size // len(a) == 784]
    for i in range(max((count - len(out) + len(arrays) - 1) // max(len(arrays), 1), 0)):
        for a in arrays:
            if len(out) < count and i < len(a):
                out.append(cv2.imencode(".png", render_bitmap(a[i]))[1].tobytes())
    if not out:
        raise AttackBenchError(f"{folder}: no images or Quick, Draw! .npy files to seed the board with")
    return out, f"{folder} ({len(files)} images, {len(arrays)} .npy files)"


def addresses(first: str, count: int) -> list[str]:
    """`count` consecutive loopback addresses from `first` (127.0.0.10, 127.0.0.11, ...)."""
    start = ipaddress.IPv4Address(first)
    return [str(start + k) for k in range(count)]


# ------------------------------------------------------------------------------------------ clients


class Client:
    """HTTP/1.1 from one source address: keep-alive (reopened after an error or a `Connection: close`; a request
    that fails on a reused connection is retried once on a new one, as browsers do), or a new connection each."""

    def __init__(self, port: int, source: str, *, timeout: float = 60.0, keep_alive: bool = True):
        self.port, self.source, self.timeout, self.keep_alive = port, source, timeout, keep_alive
        self.conn: http.client.HTTPConnection | None = None
        self.used = False
        self.headers: dict[str, str] = {}  # the last response's headers (lower-case names)
        self.aborted = False

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int | str, bytes, float]:
        """(status or 'error:ExceptionName', body, milliseconds)."""
        start = time.perf_counter()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout,
                                                       source_address=(self.source, 0))
                self.used = False
            reused = self.used
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                res = self.conn.getresponse()
                data = res.read()
                self.used = True
                self.headers = {k.lower(): v for k, v in res.getheaders()}
                if res.will_close or not self.keep_alive:
                    self.close()
                return res.status, data, (time.perf_counter() - start) * 1000
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt or not reused or self.aborted or not isinstance(
                        e, (ConnectionError, http.client.RemoteDisconnected)):
                    return f"error:{type(e).__name__}", b"", (time.perf_counter() - start) * 1000
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def abort(self) -> None:
        """Unblock a request in flight on another thread: its socket is shut down, so it returns an error (and is
        not retried)."""
        self.aborted = True
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Codes:
    """Status codes seen, overall and by key (route and payload), under one lock."""

    def __init__(self) -> None:
        self.all: Counter = Counter()
        self.by: dict[str, Counter] = {}
        self.lock = threading.Lock()

    def add(self, status, key: str | None = None) -> None:
        with self.lock:
            self.all[str(status)] += 1
            if key is not None:
                self.by.setdefault(key, Counter())[str(status)] += 1

    def total(self) -> int:
        return sum(self.all.values())

    def as_dict(self) -> dict:
        with self.lock:
            return dict(sorted(self.all.items()))

    def by_dict(self) -> dict:
        with self.lock:
            return {k: dict(sorted(v.items())) for k, v in sorted(self.by.items())}


class Worker(threading.Thread):
    """A client thread running `step()` until stopped (stop(), then join)."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.halt = threading.Event()

    def stop(self) -> None:
        self.halt.set()


class ImageFlood(Worker):
    """Phase 1's client: the payloads in turn, to POST /api/score and /api/submissions alternately (keep-alive)."""

    def __init__(self, port: int, bodies: Sequence[tuple[str, bytes, str]], codes: Codes, k: int):
        super().__init__(f"image-flood-{k}")
        self.client, self.bodies, self.codes, self.k = Client(port, FLOOD), bodies, codes, k

    def run(self) -> None:
        i = self.k
        while not self.halt.is_set():
            name, body, ctype = self.bodies[i % len(self.bodies)]
            path = ("/api/score", "/api/submissions")[(i + i // len(self.bodies)) % 2]  # every pair in 2n
            status, _, _ = self.client.request("POST", path, body, {"Content-Type": ctype})
            self.codes.add(status, f"{path} {name}")
            i += 1
        self.client.close()


class DiskFlood(Worker):
    """Phase 3's client: a new random drawing each time to POST /api/submissions, as fast as it goes (keep-alive,
    Retry-After ignored)."""

    def __init__(self, port: int, codes: Codes, seed: int):
        super().__init__("disk-flood")
        self.client, self.codes, self.seed = Client(port, DISK), codes, seed
        self.stored = 0
        self.requests = 0

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            body, ctype = multipart(drawing(self.seed + i), name=f"flood {i}")
            status, data, _ = self.client.request("POST", "/api/submissions", body, {"Content-Type": ctype})
            self.codes.add(status)
            self.requests += 1
            if status == 200:
                with contextlib.suppress(ValueError, AttributeError):
                    self.stored += bool(json.loads(data).get("stored"))
            i += 1
        self.client.close()


class Legit(Worker):
    """The legitimate player: a drawing to POST /api/score every `interval` seconds (0: back to back), keep-alive,
    requests started during `seconds` (so a paced client makes exactly seconds / interval); each response recorded
    as (status, ms)."""

    def __init__(self, port: int, images: Sequence[bytes], interval: float, seconds: float):
        super().__init__("legit")
        self.client, self.images, self.interval, self.seconds = Client(port, LEGIT), images, interval, seconds
        self.records: list[tuple[int | str, float]] = []

    def run(self) -> None:
        due = time.monotonic()
        end = due + self.seconds
        i = 0
        while not self.halt.is_set() and due < end:
            now = time.monotonic()
            if now < due:
                self.halt.wait(due - now)
                continue
            body, ctype = multipart(self.images[i % len(self.images)])
            status, _, ms = self.client.request("POST", "/api/score", body, {"Content-Type": ctype})
            self.records.append((status, ms))
            due = max(due + self.interval, time.monotonic()) if self.interval else time.monotonic()
            i += 1
        self.client.close()

    def summary(self) -> dict:
        ok = [ms for status, ms in self.records if status == 200]
        codes = Counter(str(s) for s, _ in self.records)
        return {"seconds": round(self.seconds, 2), "requests": len(self.records), "ok": len(ok),
                "ok_per_s": round(len(ok) / self.seconds, 3) if self.seconds else 0.0,
                "p50_ms": _pct(ok, 50), "p99_ms": _pct(ok, 99), "status_codes": dict(sorted(codes.items()))}


class IdleSockets(Worker):
    """`count` connections from IDLE that send nothing, or (the first `fraction` of them) a request's headers one
    byte a second, never finishing; one the server closes (or answers) is counted and re-opened a second later."""

    def __init__(self, port: int, count: int, fraction: float, *, reopen_after: float = 1.0):
        super().__init__("idle-sockets")
        self.port, self.count, self.reopen_after = port, count, reopen_after
        self.trickle = round(count * fraction)
        self.socks: list[socket.socket | None] = [None] * count
        self.sent = [0] * count
        self.due = [0.0] * count
        self.opened = self.closed_by_server = self.answered = self.connect_errors = self.max_open = 0
        self.answers: Counter = Counter()
        self.ready = threading.Event()  # every socket tried once
        self.lock = threading.Lock()

    def _open(self, i: int, sel: selectors.BaseSelector) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((IDLE, 0))
            s.settimeout(1.0)
            s.connect((HOST, self.port))
            s.setblocking(False)
        except OSError:
            s.close()
            self.connect_errors += 1
            self.due[i] = time.monotonic() + self.reopen_after
            return
        self.socks[i], self.sent[i] = s, 0
        self.opened += 1
        sel.register(s, selectors.EVENT_READ, i)

    def _lost(self, i: int, sel: selectors.BaseSelector, answer: bytes = b"") -> None:
        s = self.socks[i]
        if s is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(s)
        s.close()
        self.socks[i] = None
        self.closed_by_server += 1
        if answer:
            self.answered += 1
            self.answers[answer.split(b"\r\n", 1)[0][:40].decode("latin-1")] += 1
        self.due[i] = time.monotonic() + self.reopen_after

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        tick = 0.0
        try:
            while not self.halt.is_set():
                now = time.monotonic()
                for i in range(self.count):
                    if self.socks[i] is None and now >= self.due[i] and not self.halt.is_set():
                        self._open(i, sel)
                with self.lock:
                    self.max_open = max(self.max_open, self.open_now())
                self.ready.set()
                if now - tick >= 1.0:  # one byte a second from each trickling socket
                    tick = now
                    for i in range(self.trickle):
                        s = self.socks[i]
                        if s is None:
                            continue
                        n = self.sent[i]
                        byte = SLOW_REQUEST[n:n + 1] or b"a"
                        try:
                            s.send(byte)
                            self.sent[i] += 1
                        except OSError:
                            self._lost(i, sel)
                for key, _ in sel.select(timeout=0.05):
                    try:
                        data = key.fileobj.recv(4096)
                    except OSError:
                        data = b""
                    self._lost(key.data, sel, data)
        finally:
            for s in self.socks:
                if s is not None:
                    s.close()
            self.socks = [None] * self.count
            sel.close()

    def open_now(self) -> int:
        return sum(s is not None for s in self.socks)

    def snapshot(self) -> dict:
        with self.lock:
            return {"target": self.count, "slowloris": self.trickle, "silent": self.count - self.trickle,
                    "open_now": self.open_now(), "max_open": self.max_open, "opened": self.opened,
                    "closed_by_server": self.closed_by_server, "answered_before_close": self.answered,
                    "answers": dict(self.answers), "connect_errors": self.connect_errors}


def retry_after(headers: dict[str, str], default: float = 1.0) -> float:
    """A response's Retry-After in seconds (the default when it has none or an unreadable one)."""
    try:
        return max(0.0, float(headers.get("retry-after", default)))
    except ValueError:
        return default


class Repeater(Worker):
    """One request sent again and again from `source` until stopped (keep-alive; a 429 or 503 waited out for its
    Retry-After, at most 5 s). stop() also shuts its socket down, so a request the server holds for minutes does
    not hold the bench."""

    def __init__(self, port: int, source: str, path: str, body: bytes, ctype: str, codes: Codes, name: str):
        super().__init__(name)
        self.client = Client(port, source, timeout=600)
        self.path, self.body, self.ctype, self.codes = path, body, ctype, codes

    def run(self) -> None:
        while not self.halt.is_set():
            status, _, _ = self.client.request("POST", self.path, self.body, {"Content-Type": self.ctype})
            if self.halt.is_set():
                break
            self.codes.add(status)
            if status in (429, 503):
                self.halt.wait(min(5.0, retry_after(self.client.headers)))
            elif not isinstance(status, int):
                self.halt.wait(0.2)
        self.client.close()

    def stop(self) -> None:
        super().stop()
        self.client.abort()


class Player(Worker):
    """The legitimate player on LEGIT, as the event screen plays: a new drawing to POST /api/submissions every
    `submit_every` seconds (each a different one of `fresh`) and one of `images` to POST /api/score every
    `score_every` seconds, each route on its own keep-alive connection, ticks during `seconds`; a tick that falls
    while that route's previous request is in flight is skipped (the page's setInterval skips it) and counted as a
    request that got nothing."""

    def __init__(self, port: int, images: Sequence[bytes], fresh: Sequence[bytes], seconds: float,
                 score_every: float, submit_every: float, *, timeout: float = PLAYER_TIMEOUT):
        super().__init__("player")
        self.port, self.seconds, self.timeout = port, seconds, timeout
        self.images = {"/api/score": images, "/api/submissions": fresh}
        self.every = {"/api/score": score_every, "/api/submissions": submit_every}
        self.records: list[tuple[str, int | str, float]] = []  # (route, status, ms)
        self.skipped: Counter = Counter()
        self.lock = threading.Lock()
        self.clients: list[Client] = []

    def run(self) -> None:
        loops = [threading.Thread(target=self._loop, args=(path, every), name=f"player {path}", daemon=True)
                 for path, every in self.every.items()]
        for t in loops:
            t.start()
        for t in loops:
            t.join()

    def _loop(self, path: str, every: float) -> None:
        client = Client(self.port, LEGIT, timeout=self.timeout)
        with self.lock:
            self.clients.append(client)
        start = time.monotonic()
        ticks = math.ceil(self.seconds / every)
        k = 0
        while not self.halt.is_set() and k < ticks:
            wait = start + k * every - time.monotonic()
            if wait > 0:
                self.halt.wait(wait)
                continue
            images = self.images[path]
            body, ctype = multipart(images[k % len(images)], name="player" if path == "/api/submissions" else None)
            status, _, ms = client.request("POST", path, body, {"Content-Type": ctype})
            with self.lock:
                self.records.append((path, status, ms))
            after = max(k + 1, math.floor((time.monotonic() - start) / every) + 1)  # the next tick not yet past
            self.skipped[path] += min(after, ticks) - (k + 1)
            k = after
        client.close()

    def stop(self) -> None:
        super().stop()
        with self.lock:
            for client in self.clients:
                client.abort()

    def summary(self) -> dict:
        """Ticks (requests made + skipped), those answered 200, their share; the latency of all its requests (errors
        and timeouts at the time they failed) and of those answered 200."""
        with self.lock:
            records = list(self.records)
        doc: dict = {"seconds": round(self.seconds, 2), "routes": {}}
        for path, every in self.every.items():
            mine = [(status, ms) for p, status, ms in records if p == path]
            ok = sum(status == 200 for status, _ in mine)
            doc["routes"][path] = {"every_s": every, "requests": len(mine), "skipped": self.skipped[path], "ok": ok,
                                   "status_codes": dict(sorted(Counter(str(s) for s, _ in mine).items()))}
        ticks = len(records) + sum(self.skipped.values())
        ok_ms = [ms for _, status, ms in records if status == 200]
        every_ms = [ms for _, _, ms in records]
        doc |= {"ticks": ticks, "requests": len(records), "ok": len(ok_ms),
                "share": round(len(ok_ms) / ticks, 3) if ticks else None,
                "p50_ms": _pct(every_ms, 50), "p99_ms": _pct(every_ms, 99), "p99_ok_ms": _pct(ok_ms, 99),
                "max_ms": _pct(every_ms, 100),
                "status_codes": dict(sorted(Counter(str(s) for _, s, _ in records).items()))}
        return doc


SLOW_KINDS = ("read", "upload", "slowloris")


class SlowSockets(Worker):
    """Phase 6's attackers: `per_client` connections from each of `sources`, of three kinds (of every 8: 4 `read`,
    3 `upload`, 1 `slowloris`, the kinds a server without deadlines for them never closes weighing most): `read`, a slow
    reader (a 4 KB receive buffer, `pipelined` GET /static/kiosk.js sent at once and one more each second, its
    answers never read: a closed connection shows as an error on sending); `upload`, a POST /api/score announcing
    a Content-Length of `announce` bytes (over the limit) whose body trickles 64 bytes a second (every other one
    with `Expect: 100-continue`); `slowloris`, a request's headers a byte a second. Connecting is non-blocking; a
    connection the server closes or answers (a 100 Continue excepted) is counted and re-opened `reopen_after` s
    later."""

    GET = b"GET /static/kiosk.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def __init__(self, port: int, sources: Sequence[str], per_client: int, pipelined: int, *,
                 announce: int = 64 << 20, reopen_after: float = 0.5):
        super().__init__("slow-sockets")
        self.port, self.pipelined, self.announce, self.reopen_after = port, pipelined, announce, reopen_after
        self.plan: list[tuple[str, str, bool]] = []  # (source, kind, Expect: 100-continue)
        for src in sources:
            uploads = 0
            for j in range(per_client):
                kind = "slowloris" if j % 8 == 7 else ("read", "upload")[j % 2]
                self.plan.append((src, kind, kind == "upload" and uploads % 2 == 1))
                uploads += kind == "upload"
        n = len(self.plan)
        self.socks: list[socket.socket | None] = [None] * n
        self.connected = [False] * n
        self.out = [b""] * n
        self.sent = [0] * n
        self.born = [0.0] * n
        self.due = [0.0] * n
        self.stats = {k: Counter() for k in SLOW_KINDS}
        self.answers = {k: Counter() for k in SLOW_KINDS}
        self.longest = dict.fromkeys(SLOW_KINDS, 0.0)  # the longest a connection of each kind was held (s)
        self.max_open = 0
        self.ready = threading.Event()  # every connection tried once
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()

    def _open(self, i: int) -> None:
        src, kind, _ = self.plan[i]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if kind == "read":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((src, 0))
            s.setblocking(False)
            s.connect_ex((HOST, self.port))
        except OSError:
            s.close()
            self.stats[kind]["connect_errors"] += 1
            self.due[i] = time.monotonic() + self.reopen_after
            return
        self.socks[i], self.connected[i], self.out[i], self.sent[i] = s, False, b"", 0
        self.sel.register(s, selectors.EVENT_WRITE, i)

    def _connected(self, i: int) -> None:
        s = self.socks[i]
        _, kind, expect = self.plan[i]
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.stats[kind]["connect_errors"] += 1
            self._drop(i)
            return
        self.connected[i], self.born[i] = True, time.monotonic()
        self.stats[kind]["opened"] += 1
        if kind == "read":
            self.sel.unregister(s)  # its answers are never read
            self._send(i, self.GET * self.pipelined)
            return
        self.sel.modify(s, selectors.EVENT_READ, i)
        if kind == "upload":
            head = (f"POST /api/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                    f"boundary=x\r\nContent-Length: {self.announce}\r\n"
                    + ("Expect: 100-continue\r\n" if expect else "") + "\r\n--x\r\n")
            self._send(i, head.encode())

    def _send(self, i: int, data: bytes) -> None:
        s = self.socks[i]
        self.out[i] += data
        try:
            n = s.send(self.out[i])
        except BlockingIOError:
            return
        except OSError:
            self._lost(i)
            return
        self.out[i] = self.out[i][n:]

    def _trickle(self, i: int) -> None:
        kind = self.plan[i][1]
        if kind == "read":
            self._send(i, self.GET if len(self.out[i]) < 4096 else b"")
        elif kind == "upload":
            self._send(i, b"a" * 64)
        else:
            n = self.sent[i]
            self.sent[i] += 1
            self._send(i, SLOW_REQUEST[n:n + 1] or b"a")

    def _readable(self, i: int) -> None:
        try:
            data = self.socks[i].recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        lines = [part.split(b"\r\n", 1)[0] for part in data.split(b"\r\n\r\n") if part]
        final = [line for line in lines if not line.startswith(b"HTTP/1.1 100")]
        if data and not final:
            self.stats[self.plan[i][1]]["continue_100"] += 1  # told to go on sending: it trickles on
            return
        self._lost(i, final[0] if final else b"")

    def _drop(self, i: int) -> None:
        s = self.socks[i]
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(s)
        s.close()
        self.socks[i], self.connected[i] = None, False
        self.due[i] = time.monotonic() + self.reopen_after

    def _lost(self, i: int, answer: bytes = b"") -> None:
        kind = self.plan[i][1]
        self.stats[kind]["closed_by_server"] += 1
        self.longest[kind] = max(self.longest[kind], time.monotonic() - self.born[i])
        if answer:
            self.answers[kind][answer.split(b"\r\n", 1)[0][:40].decode("latin-1")] += 1
        self._drop(i)

    def run(self) -> None:
        tick = 0.0
        try:
            while not self.halt.is_set():
                now = time.monotonic()
                for i in range(len(self.plan)):
                    if self.socks[i] is None and now >= self.due[i]:
                        self._open(i)
                with self.lock:
                    self.max_open = max(self.max_open, sum(self.connected))
                if now - tick >= 1.0:
                    tick = now
                    for i in range(len(self.plan)):
                        if self.connected[i]:
                            self._trickle(i)
                for key, _ in self.sel.select(timeout=0.05):
                    i = key.data
                    if self.socks[i] is not None:
                        (self._readable if self.connected[i] else self._connected)(i)
                self.ready.set()
        finally:
            for s in self.socks:
                if s is not None:
                    s.close()
            self.sel.close()

    def snapshot(self) -> dict:
        """Per kind: open now, opened, closed by the server, connect errors, the server's answers, the longest held
        (s); and the totals."""
        now = time.monotonic()
        with self.lock:
            doc: dict = {"target": len(self.plan), "open_now": sum(self.connected), "max_open": self.max_open,
                         "kinds": {}}
            for kind in SLOW_KINDS:
                mine = [i for i, p in enumerate(self.plan) if p[1] == kind]
                held = [now - self.born[i] for i in mine if self.connected[i]]
                doc["kinds"][kind] = {"target": len(mine), "open_now": len(held),
                                      "opened": self.stats[kind]["opened"],
                                      "closed_by_server": self.stats[kind]["closed_by_server"],
                                      "connect_errors": self.stats[kind]["connect_errors"],
                                      "continue_100": self.stats[kind]["continue_100"],
                                      "answers": dict(self.answers[kind]),
                                      "longest_held_s": round(max([self.longest[kind], *held]), 1)}
        return doc


def upload_once(port: int, source: str, head: bytes, body: bytes, timeout: float) -> tuple[int | str, float]:
    """One upload on a new connection from `source`: the headers and the body sent whole, then the status line
    read; (status or 'error:ExceptionName', milliseconds). A server that answers (and closes) before it has read
    the body still gets its answer counted when it arrives."""
    start = time.perf_counter()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect((HOST, port))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)
            s.sendall(body)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        status: int | str = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else "error:no answer"
    except (OSError, ValueError, IndexError) as e:
        status = f"error:{type(e).__name__}"
    finally:
        s.close()
    return status, (time.perf_counter() - start) * 1000


# ------------------------------------------------------------------------------------------ the server


class RssWatch:
    """The server's resident memory during a phase: VmHWM after `echo 5 > /proc/PID/clear_refs` (the kernel's
    exact peak), and VmRSS sampled every 10 ms (the fallback when clear_refs cannot be written)."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid, self.interval = pid, interval
        self.peak_sampled = 0
        self.hwm_reset = False
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="rss", daemon=True)

    def __enter__(self) -> RssWatch:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.thread.join()
        self.hwm_kb = proc_status_kb(self.pid, "VmHWM") if self.hwm_reset else None

    def _sample(self) -> None:
        while not self.halt.is_set():
            self.peak_sampled = max(self.peak_sampled, proc_status_kb(self.pid, "VmRSS") or 0)
            self.halt.wait(self.interval)

    def peak_kb(self) -> int:
        return max(self.hwm_kb or 0, self.peak_sampled)

    def method(self) -> str:
        return "VmHWM after clear_refs, and VmRSS every 10 ms" if self.hwm_reset else "VmRSS sampled every 10 ms"


def proc_status_kb(pid: int, field: str) -> int | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM); None where there is no such file."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (/proc/PID/task/TID/children, recursively); [] when it is gone."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        out.append(p)
        for tid in tasks:
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
    return out


def tree_rss_kb(pid: int) -> int | None:
    """The VmRSS of a process and all its descendants, summed (kB); None when it is gone."""
    sizes = [proc_status_kb(p, "VmRSS") for p in process_tree(pid)]
    return sum(v for v in sizes if v) or None


class TreeRssWatch:
    """The peak of the resident memory of a process tree (the server and its decoder processes): VmRSS summed over
    the tree every `interval` s; also the main process's own peak and the most processes seen."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid, self.interval = pid, interval
        self.peak_kb = self.main_peak_kb = self.processes = 0
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="tree-rss", daemon=True)

    def __enter__(self) -> TreeRssWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.thread.join()

    def _sample(self) -> None:
        while not self.halt.is_set():
            pids = process_tree(self.pid)
            self.processes = max(self.processes, len(pids))
            sizes = {p: proc_status_kb(p, "VmRSS") or 0 for p in pids}
            self.peak_kb = max(self.peak_kb, sum(sizes.values()))
            self.main_peak_kb = max(self.main_peak_kb, sizes.get(self.pid, 0))
            self.halt.wait(self.interval)


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def disk_usage(folder: Path) -> dict:
    """Bytes under the server's data folder: the database, its WAL (and -shm), thumbnails, anything else."""
    out = {"db": 0, "wal": 0, "thumbs": 0, "other": 0, "files": 0}
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                size = os.stat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                continue
            part = Path(root).relative_to(folder).parts
            key = ("thumbs" if part and part[0] == "thumbs" else "wal" if name.endswith(("-wal", "-shm"))
                   else "db" if name.endswith(".sqlite") else "other")
            out[key] += size
            out["files"] += 1
    out["total"] = out["db"] + out["wal"] + out["thumbs"] + out["other"]
    return out


def check_judge_bundle(bundle: str | os.PathLike) -> dict | None:
    """Refuse (AttackBenchError) anything but a judge bundle (a clip-embed student with its text encoder); the
    bundle's own kiosk settings, if its manifest has any."""
    from dkit.edge.bundle import BundleError, open_bundle

    try:
        with open_bundle(bundle) as b:
            m = b.manifest
            if m.task != "embed" or m.tokenizer is None or "text" not in m.models:
                raise AttackBenchError(f"{bundle}: a {m.task} bundle, not a judge bundle (the kiosk needs a "
                                       "clip-embed student with its text encoder)")
            kiosk = getattr(m.judge, "kiosk", None) if m.judge is not None else None
            return dict(kiosk) if kiosk else None
    except BundleError as e:
        raise AttackBenchError(str(e)) from e


def quota_mb(bundle_kiosk: dict | None, serve_set: Sequence[str]) -> tuple[float | None, str | None]:
    """The server's disk quota (max_disk_mb) and where it came from: --serve-set, else the kiosk settings
    (dkit.edge.bundle.kiosk_config, the bundle's then the defaults), else (None, None): a server without one."""
    for item in reversed(serve_set):
        key, _, value = item.partition("=")
        if key.strip().removeprefix("kiosk.") == "max_disk_mb":
            with contextlib.suppress(ValueError):
                return float(value), "--serve-set"
    try:
        from dkit.edge.bundle.kiosk_config import KioskConfig
        cfg = KioskConfig.from_dict(bundle_kiosk)
        return float(cfg.max_disk_mb), "the bundle's kiosk settings" if bundle_kiosk else "KioskConfig default"
    except Exception:  # no kiosk settings in this version of the kit
        return None, None


class Server(ServeProcess):
    """`dkit serve BUNDLE` (dkit.devtools.serve_process) on a free loopback port, its data under `work/data`, its
    stderr in `work/serve.stderr` (whose tail explains a failed start), the admin routes off."""

    def __init__(self, bundle: str | os.PathLike, work: Path, *, threads: int = 1, serve_set: Sequence[str] = (),
                 port: int = 0, extra: Sequence[str] = ()):
        self.data = work / "data"
        args = ["--db", str(self.data / "kiosk.sqlite"), "--threads", str(threads), "-q"]
        for item in serve_set:
            args += ["--set", item]
        env = {k: v for k, v in os.environ.items() if k != "DKIT_ADMIN_TOKEN"}  # admin routes off
        super().__init__(bundle, [*args, *extra], port=port, host=HOST, env=env, log=work / "serve.stderr")

    def wait_up(self, timeout: float = 120.0) -> float:
        """Seconds until /healthz answered; AttackBenchError (with the stderr tail) if it never did."""
        try:
            return super().wait_up(timeout)
        except ServeStartError as e:
            raise AttackBenchError(str(e)) from e

    def submissions(self) -> int | None:
        """The stored submissions /healthz reports (None when it does not answer)."""
        status, data, _ = Client(self.port, HOST, timeout=10, keep_alive=False).request("GET", "/healthz")
        with contextlib.suppress(ValueError, AttributeError):
            return int(json.loads(data)["submissions"]) if status == 200 else None
        return None


def _raise_nofile(need: int) -> dict:
    """Raise this process's soft RLIMIT_NOFILE to `need` (up to the hard limit), for the idle sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return {"before": soft, "now": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def _pct(values: Iterable[float], q: float) -> float | None:
    import numpy as np

    v = list(values)
    return round(float(np.percentile(v, q)), 2) if v else None


def _stop_all(workers: Iterable[Worker], timeout: float = 90.0) -> None:
    """Stop the workers and wait for their requests in flight (a bomb may take a while to be answered)."""
    workers = list(workers)
    for w in workers:
        w.stop()
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(0.1, deadline - time.monotonic()))


# ------------------------------------------------------------------------------------------ the run


def select_phases(only: Iterable[str] | str | None = None) -> list[str]:
    """The phases to run, in the bench's order: those named in `only` (names or one comma-separated string;
    `scan-bomb` and `scan_bomb` alike), else all of PHASES. ValueError naming an unknown one."""
    if only is None:
        return list(PHASES)
    names = only.split(",") if isinstance(only, str) else list(only)
    wanted = {n.strip().replace("-", "_") for n in names if n.strip()}
    unknown = sorted(wanted - set(PHASES))
    if unknown or not wanted:
        raise ValueError(f"unknown phase {', '.join(unknown) or '(none given)'}: expected some of "
                         f"{', '.join(p.replace('_', '-') for p in PHASES)}")
    return [p for p in PHASES if p in wanted]


def bench_attack(bundle: str | os.PathLike, settings: AttackSettings = AttackSettings(), *,
                 serve_set: Sequence[str] = (), threads: int = 1, port: int = 0,
                 progress: Callable[[str], None] | None = None, only: Iterable[str] | str | None = None,
                 seeds_from: str | os.PathLike | None = None) -> dict:
    """The measurements (see the module docstring; `only`: some of the phases, `seeds_from`: a folder of drawings
    or Quick, Draw! .npy files to seed the climb's board) in one run; a dict of the figures and the goals. Raises
    AttackBenchError when the bundle is no judge bundle or a server does not come up, ValueError for an unknown
    phase; a server that dies during the run ends it early with `server_died` set."""
    say = progress or (lambda msg: None)
    s = settings
    phases = select_phases(only)
    bundle_kiosk = check_judge_bundle(bundle)
    quota, quota_source = quota_mb(bundle_kiosk, serve_set)
    payloads = attack_payloads() if {"rss", "legit"} & set(phases) else []
    bodies = [(name, *multipart(data, ctype=ctype)) for name, ctype, data in payloads]
    legit_images = [drawing(10_000 + i) for i in range(16)]
    nofile = _raise_nofile(max(2 * s.idle_sockets, 2 * s.slow_addresses * s.slow_per_client, 2 * s.uploads) + 256)
    result: dict = {
        "bundle": str(bundle), "serve_set": list(serve_set), "settings": dataclasses.asdict(s), "phases": phases,
        "addresses": {"legit": LEGIT, "idle_sockets": IDLE, "disk_flood": DISK, "image_flood": FLOOD,
                      "warmup": WARMUP, "scan_bomb": BOMBER, "climber": CLIMBER, "slow_first": SLOW_FIRST,
                      "seeders_first": SEED_FIRST, "uploads_first": UPLOAD_FIRST},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "nofile": nofile, "load_avg": [round(v, 2) for v in os.getloadavg()]},
        "payload_bytes": {name: len(data) for name, _, data in payloads},
        "server_died": None,
    }
    work = Path(tempfile.mkdtemp(prefix="dkit-bench-attack-"))
    ctx = _Ctx(bundle, work, list(serve_set), threads, s, bodies, legit_images, quota, quota_source, say,
               seeds_from=seeds_from)
    try:
        if set(phases) & set(FIRST_SERVER):
            _first_server(ctx, result, [p for p in phases if p in FIRST_SERVER], port)
        for name in phases:
            if name in OWN_SERVER and not result["server_died"]:
                _own_server(ctx, result, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    result["goals"] = goals(result)
    return result


@dataclass
class _Ctx:
    bundle: str | os.PathLike
    work: Path
    serve_set: list
    threads: int
    s: AttackSettings
    bodies: list
    legit_images: list
    quota: float | None
    quota_source: str | None
    say: Callable[[str], None]
    server: Server | None = None  # the server of the phase under way
    idle_kb: int | None = None  # VmRSS after the warm-up
    seeds_from: str | os.PathLike | None = None


def _died(c: _Ctx, result: dict, phase: str) -> bool:
    """True (and `server_died` set) when the phase's server is gone."""
    if c.server.alive():
        return False
    result["server_died"] = {"phase": phase, "exit_code": c.server.proc.returncode,
                             "stderr_tail": c.server.stderr_tail()}
    c.say(f"the server died during {phase} (exit {c.server.proc.returncode})")
    return True


def _first_server(c: _Ctx, result: dict, selected: Sequence[str], port: int) -> None:
    """Phases 1-4 (those selected) on one server, after its warm-up."""
    steps = [("warm-up", _warmup, True), ("legit alone", _legit_alone, "legit" in selected),
             ("1 image flood", _image_flood, "rss" in selected),
             ("2 idle sockets", _idle_sockets, "healthz" in selected),
             ("3 disk flood", _disk_flood, "disk" in selected), ("4 all attacks", _combined, "legit" in selected)]
    c.server = Server(c.bundle, c.work / "first", threads=c.threads, serve_set=c.serve_set, port=port)
    c.say(f"dkit serve on 127.0.0.1:{c.server.port} (pid {c.server.proc.pid}, data {c.server.data})")
    try:
        result["server"] = {"pid": c.server.proc.pid, "port": c.server.port, "start_s": round(c.server.wait_up(), 2)}
        for name, phase, wanted in steps:
            if not wanted:
                continue
            phase(c, result)
            if _died(c, result, name):
                break
            time.sleep(c.s.settle_seconds)
    finally:
        c.server.stop()


def _own_server(c: _Ctx, result: dict, name: str) -> None:
    """One of phases 5-8 on a fresh server of its own (started, warmed up, stopped after)."""
    title, prepare, run = OWN_PHASES[name]
    prepared = prepare(c)  # the payloads, made before the server starts (one sets its options)
    extra = prepared.pop("serve_args", [])
    c.server = Server(c.bundle, c.work / name, threads=c.threads, serve_set=c.serve_set, extra=extra)
    c.say(f"{title}: dkit serve on 127.0.0.1:{c.server.port} (pid {c.server.proc.pid})")
    try:
        info = {"pid": c.server.proc.pid, "port": c.server.port, "start_s": round(c.server.wait_up(), 2),
                "args": extra, "load_avg": [round(v, 2) for v in os.getloadavg()]}
        info["warmup_codes"] = _warm(c.server, c.legit_images, max(1, c.s.warmup))
        time.sleep(0.5)
        run(c, prepared, result)
        result[name]["server"] = info
        _died(c, result, title)
    finally:
        c.server.stop()
    time.sleep(c.s.settle_seconds)


def _warm(server: Server, images: Sequence[bytes], count: int) -> dict:
    """`count` scores from WARMUP (the models loaded, the first allocations made); the status codes. Raises
    AttackBenchError when none is answered 200 (every figure would measure a broken server)."""
    client = Client(server.port, WARMUP)
    codes = Codes()
    for i in range(count):
        body, ctype = multipart(images[i % len(images)])
        codes.add(client.request("POST", "/api/score", body, {"Content-Type": ctype})[0])
    client.close()
    if count and "200" not in codes.as_dict():
        raise AttackBenchError(f"dkit serve answered none of {count} warm-up scores ({_codes(codes.as_dict())}"
                               f"):\n{server.stderr_tail()}")
    return codes.as_dict()


def _warmup(c: _Ctx, result: dict) -> None:
    codes = _warm(c.server, c.legit_images, c.s.warmup)
    time.sleep(0.5)
    idle = proc_status_kb(c.server.proc.pid, "VmRSS")
    result["warmup"] = {"requests": c.s.warmup, "status_codes": codes, "idle_rss_mb": _mb(idle)}
    c.idle_kb = idle
    c.say(f"warm-up: {c.s.warmup} scores {codes}; idle RSS {_mb(idle)} MiB")


def _legit_alone(c: _Ctx, result: dict) -> None:
    c.say(f"legit client alone for {c.s.legit_seconds:g} s (a drawing every {c.s.legit_interval_ms:g} ms)")
    legit = Legit(c.server.port, c.legit_images, c.s.legit_interval_ms / 1000, c.s.legit_seconds)
    legit.start()
    legit.join()
    result["legit"] = {"interval_ms": c.s.legit_interval_ms, "route": "POST /api/score",
                       "connection": "keep-alive", "unattacked": legit.summary()}
    c.say(f"  {legit.summary()['ok_per_s']} ok/s, p99 {legit.summary()['p99_ms']} ms")


def _image_flood(c: _Ctx, result: dict) -> None:
    c.say(f"1: image flood, {c.s.bomb_clients} clients for {c.s.bomb_seconds:g} s "
          f"({len(c.bodies)} payloads to /api/score and /api/submissions)")
    codes = Codes()
    idle = c.idle_kb or proc_status_kb(c.server.proc.pid, "VmRSS")
    with RssWatch(c.server.proc.pid) as rss:
        workers = [ImageFlood(c.server.port, c.bodies, codes, k) for k in range(c.s.bomb_clients)]
        start = time.monotonic()
        for w in workers:
            w.start()
        time.sleep(c.s.bomb_seconds)
        _stop_all(workers)
        seconds = time.monotonic() - start
    peak = rss.peak_kb()
    ratio = round(peak / idle, 3) if idle and peak else None
    result["rss"] = {"idle_mb": _mb(idle), "peak_mb": _mb(peak), "ratio": ratio, "method": rss.method(),
                     "peak_hwm_mb": _mb(rss.hwm_kb), "peak_sampled_mb": _mb(rss.peak_sampled),
                     "clients": c.s.bomb_clients, "seconds": round(seconds, 2), "requests": codes.total(),
                     "status_codes": codes.as_dict(), "by_payload": codes.by_dict()}
    c.say(f"  peak {_mb(peak)} MiB / idle {_mb(idle)} MiB = {ratio}x; {codes.total()} requests {codes.as_dict()}")


def _idle_sockets(c: _Ctx, result: dict) -> None:
    c.say(f"2: {c.s.idle_sockets} idle sockets from {IDLE} ({round(c.s.idle_sockets * c.s.slowloris_fraction)} "
          f"slowloris), then {c.s.healthz_requests} GET /healthz")
    idle = IdleSockets(c.server.port, c.s.idle_sockets, c.s.slowloris_fraction)
    idle.start()
    idle.ready.wait(60)
    time.sleep(c.s.hold_seconds)
    held = idle.snapshot()
    codes = Codes()
    times = []
    client = Client(c.server.port, LEGIT, timeout=10, keep_alive=False)
    for _ in range(c.s.healthz_requests):
        status, _, ms = client.request("GET", "/healthz")
        codes.add(status)
        times.append(ms)
    after = idle.snapshot()
    _stop_all([idle])
    result["healthz"] = {"requests": len(times), "connection": "new connection per request, sequential",
                         "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99), "max_ms": _pct(times, 100),
                         "failures": sum(v for k, v in codes.as_dict().items() if k != "200"),
                         "status_codes": codes.as_dict(), "idle_sockets_before": held, "idle_sockets": after}
    c.say(f"  p50 {_pct(times, 50)} ms, p99 {_pct(times, 99)} ms; attacker sockets open {after['open_now']}/"
          f"{after['target']}, closed by the server {after['closed_by_server']}")


def _disk_flood(c: _Ctx, result: dict) -> None:
    c.say(f"3: disk flood from {DISK} for {c.s.flood_seconds:g} s (quota: "
          f"{f'{c.quota:g} MB' if c.quota is not None else 'none known'})")
    codes = Codes()
    before, rows_before = disk_usage(c.server.data), c.server.submissions()
    flood = DiskFlood(c.server.port, codes, seed=1_000_000)
    peak = before["total"]
    start = time.monotonic()
    flood.start()
    while time.monotonic() - start < c.s.flood_seconds:
        time.sleep(min(1.0, max(0.0, c.s.flood_seconds - (time.monotonic() - start))))
        peak = max(peak, disk_usage(c.server.data)["total"])
    _stop_all([flood])
    seconds = time.monotonic() - start
    after, rows_after = disk_usage(c.server.data), c.server.submissions()
    peak = max(peak, after["total"])
    result["disk"] = {"seconds": round(seconds, 2), "requests": flood.requests, "stored": flood.stored,
                      "stored_per_s": round(flood.stored / seconds, 2) if seconds else 0.0,
                      "status_codes": codes.as_dict(), "bytes_before": before["total"],
                      "bytes_after": after["total"], "growth_bytes": after["total"] - before["total"],
                      "peak_growth_bytes": peak - before["total"], "before": before, "after": after,
                      "rows_before": rows_before, "rows_after": rows_after,
                      "quota_mb": c.quota, "quota_source": c.quota_source}
    c.say(f"  +{(after['total'] - before['total']) / 2**20:.1f} MiB, {flood.stored} stored of {flood.requests} "
          f"{codes.as_dict()}")


def _combined(c: _Ctx, result: dict) -> None:
    c.say(f"4: attacks 1-3 together for {c.s.combined_seconds:g} s, the legit client measured")
    image_codes, disk_codes = Codes(), Codes()
    idle = IdleSockets(c.server.port, c.s.idle_sockets, c.s.slowloris_fraction)
    idle.start()
    idle.ready.wait(60)
    attackers: list[Worker] = [ImageFlood(c.server.port, c.bodies, image_codes, k) for k in range(c.s.bomb_clients)]
    attackers.append(DiskFlood(c.server.port, disk_codes, seed=2_000_000))
    before = disk_usage(c.server.data)
    with RssWatch(c.server.proc.pid) as rss:
        for w in attackers:
            w.start()
        time.sleep(0.5)  # the attacks are under way before the legit client starts
        legit = Legit(c.server.port, c.legit_images, c.s.legit_interval_ms / 1000, c.s.combined_seconds)
        legit.start()
        legit.join()
        sockets = idle.snapshot()
        _stop_all([*attackers, idle])
    after = disk_usage(c.server.data)
    attacked = legit.summary() | {"rss_peak_mb": _mb(rss.peak_kb()), "image_flood_codes": image_codes.as_dict(),
                                  "disk_flood_codes": disk_codes.as_dict(),
                                  "disk_growth_bytes": after["total"] - before["total"], "idle_sockets": sockets}
    legit_doc = result.setdefault("legit", {})
    legit_doc["attacked"] = attacked
    base = legit_doc.get("unattacked", {}).get("ok_per_s")
    legit_doc["ratio"] = round(attacked["ok_per_s"] / base, 3) if base else None
    c.say(f"  {attacked['ok_per_s']} ok/s under attack vs {base} alone = {legit_doc['ratio']}x; "
          f"p99 {attacked['p99_ms']} ms")


def _player(c: _Ctx, seconds: float) -> Player:
    """The legitimate player of phases 5-6 (fresh drawings enough for every submission tick)."""
    fresh = [drawing(40_000 + i) for i in range(math.ceil(seconds / c.s.player_submit_s) + 1)]
    return Player(c.server.port, c.legit_images, fresh, seconds, c.s.player_score_s, c.s.player_submit_s)


def _say_player(c: _Ctx, doc: dict) -> None:
    routes = "; ".join(f"{path} {r['ok']}/{r['requests'] + r['skipped']}" for path, r in doc["routes"].items())
    c.say(f"  player: {doc['ok']} of {doc['ticks']} ticks answered 200 = {doc['share']} ({routes}); "
          f"p99 {doc['p99_ms']} ms; {_codes(doc['status_codes'])}")


def _prepare_scan_bomb(c: _Ctx) -> dict:
    bomb = scan_bomb(c.s.scan_bomb_side, c.s.scan_bomb_repeats)
    return {"bomb": bomb, "multipart": multipart(bomb, ctype="image/jpeg")}


def _scan_bomb(c: _Ctx, prep: dict, result: dict) -> None:
    s, bomb = c.s, prep["bomb"]
    scans = sum(marker == 0xDA for marker, _, _ in jpeg_segments(bomb))
    c.say(f"5: scan bomb: {s.scan_bombs} in flight from {BOMBER} ({len(bomb):,} bytes, {s.scan_bomb_side} px, "
          f"{scans} scans) for {s.scan_bomb_seconds:g} s, the player on {LEGIT}")
    codes = Codes()
    body, ctype = prep["multipart"]
    bombers = [Repeater(c.server.port, BOMBER, "/api/score", body, ctype, codes, f"scan-bomb-{k}")
               for k in range(s.scan_bombs)]
    for w in bombers:
        w.start()
    time.sleep(0.5)  # the bombs are in before the player starts
    player = _player(c, s.scan_bomb_seconds)
    player.start()
    player.join()
    _stop_all(bombers, timeout=10)
    doc = player.summary()
    result["scan_bomb"] = {"bomb_bytes": len(bomb), "side": s.scan_bomb_side, "scans": scans,
                           "in_flight": s.scan_bombs, "source": BOMBER, "seconds": s.scan_bomb_seconds,
                           "bomb_answers": codes.as_dict(), "player": doc}
    _say_player(c, doc)
    c.say(f"  bombs answered: {_codes(codes.as_dict())}")


def _prepare_slow(c: _Ctx) -> dict:
    return {}


def _slow(c: _Ctx, prep: dict, result: dict) -> None:
    s = c.s
    sources = addresses(SLOW_FIRST, s.slow_addresses)
    c.say(f"6: slow readers, over-length trickled uploads and slowloris: {s.slow_per_client} connections from each "
          f"of {sources[0]}..{sources[-1]} for {s.slow_seconds:g} s, the player on {LEGIT}")
    attack = SlowSockets(c.server.port, sources, s.slow_per_client, s.slow_pipelined)
    attack.start()
    attack.ready.wait(60)
    time.sleep(s.hold_seconds)
    before = attack.snapshot()
    player = _player(c, s.slow_seconds)
    player.start()
    player.join()
    after = attack.snapshot()
    _stop_all([attack])
    doc = player.summary()
    result["slow"] = {"addresses": len(sources), "first": sources[0], "last": sources[-1],
                      "per_client": s.slow_per_client, "seconds": s.slow_seconds, "pipelined": s.slow_pipelined,
                      "sockets_when_the_player_started": before, "sockets": after, "player": doc}
    _say_player(c, doc)
    c.say(f"  attacker connections open {after['open_now']}/{after['target']} (max {after['max_open']}); "
          + "; ".join(f"{k} closed {v['closed_by_server']}, longest held {v['longest_held_s']} s"
                      for k, v in after["kinds"].items()))


def _prepare_uploads(c: _Ctx) -> dict:
    image = large_jpeg(c.s.upload_megapixels, c.s.upload_bytes)
    body, ctype = multipart(image, ctype="image/jpeg")
    head = (f"POST /api/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n").encode()
    prep = {"image": image, "head": head, "body": body}
    if len(image) > 4 << 20:  # over `dkit serve`'s default --max-upload-mb
        prep["serve_args"] = ["--max-upload-mb", str(math.ceil(len(image) / (1 << 20)) + 1)]
    return prep


def _uploads(c: _Ctx, prep: dict, result: dict) -> None:
    s = c.s
    sources = addresses(UPLOAD_FIRST, s.upload_addresses)
    pid = c.server.proc.pid
    idle = tree_rss_kb(pid)
    c.say(f"7: {s.uploads} concurrent uploads of {len(prep['image']):,} bytes (a {s.upload_megapixels:g} MP "
          f"progressive JPEG) from {sources[0]}..{sources[-1]}; idle RSS of the server's tree {_mb(idle)} MiB")
    gate = threading.Event()
    answers: list[tuple[int | str, float] | None] = [None] * s.uploads

    def one(k: int) -> None:
        gate.wait()
        answers[k] = upload_once(c.server.port, sources[k % len(sources)], prep["head"], prep["body"],
                                 s.upload_seconds)

    threads = [threading.Thread(target=one, args=(k,), name=f"upload-{k}", daemon=True) for k in range(s.uploads)]
    for t in threads:
        t.start()
    with TreeRssWatch(pid) as rss:
        start = time.monotonic()
        gate.set()
        deadline = start + s.upload_seconds + 10
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        seconds = time.monotonic() - start
    time.sleep(0.5)
    codes = Counter(str(a[0]) if a else "unfinished" for a in answers)
    ms = [a[1] for a in answers if a]
    peak = rss.peak_kb
    result["uploads"] = {"uploads": s.uploads, "addresses": len(sources), "first": sources[0],
                         "upload_bytes": len(prep["image"]), "request_bytes": len(prep["head"]) + len(prep["body"]),
                         "megapixels": s.upload_megapixels, "seconds": round(seconds, 2),
                         "idle_mb": _mb(idle), "peak_mb": _mb(peak), "ratio": round(peak / idle, 3) if idle else None,
                         "main_peak_mb": _mb(rss.main_peak_kb), "processes": rss.processes,
                         "after_mb": _mb(tree_rss_kb(pid)), "method": "VmRSS of the process tree every 10 ms",
                         "status_codes": dict(sorted(codes.items())), "p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99)}
    u = result["uploads"]
    c.say(f"  peak {u['peak_mb']} / idle {u['idle_mb']} MiB = {u['ratio']}x ({u['processes']} processes at most; "
          f"{_codes(u['status_codes'])})")


def _prepare_climb(c: _Ctx) -> dict:
    seeds, source = seed_images(c.s.climb_seeds, c.seeds_from)
    return {"seeds": seeds, "source": source}


def _climb(c: _Ctx, prep: dict, result: dict) -> None:
    s = c.s
    c.say(f"8: hill climb: the board seeded with {len(prep['seeds'])} drawings ({prep['source']}), then at most "
          f"{s.climb_queries} queries from {CLIMBER}")
    seeded = seed_board(c.server.port, prep["seeds"])
    doc = hill_climb(c.server.port, s.climb_queries)
    result["climb"] = {"seeds": seeded | {"source": prep["source"]}} | doc
    c.say(f"  board best {doc['board_top']}; {doc['stopped']} "
          f"({doc['improvements']} improvements, best {doc['best_score']}, {doc['distinct_scores']} distinct scores"
          f"; {_codes(doc['status_codes'])})")


OWN_PHASES = {"scan_bomb": ("5 scan bomb", _prepare_scan_bomb, _scan_bomb),
              "slow": ("6 slow sockets", _prepare_slow, _slow),
              "uploads": ("7 concurrent uploads", _prepare_uploads, _uploads),
              "climb": ("8 hill climb", _prepare_climb, _climb)}


# ------------------------------------------------------------------------------------------ the climb


def seed_board(port: int, images: Sequence[bytes], per_address: int = 4) -> dict:
    """Each image submitted (named `seed N`) from its own address, `per_address` to one (inside a submission
    burst; a 429 waited out once); how many were stored, and the status codes."""
    start = time.monotonic()
    sources = addresses(SEED_FIRST, math.ceil(len(images) / per_address))
    clients = {src: Client(port, src, timeout=60) for src in sources}
    codes: Counter = Counter()
    stored = 0
    for i, image in enumerate(images):
        client = clients[sources[i // per_address]]
        body, ctype = multipart(image, name=f"seed {i}")
        for _ in range(2):
            status, data, _ = client.request("POST", "/api/submissions", body, {"Content-Type": ctype})
            if status != 429:
                break
            time.sleep(min(10.0, retry_after(client.headers)))
        codes[str(status)] += 1
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                stored += bool(json.loads(data).get("stored"))
    for client in clients.values():
        client.close()
    return {"submitted": len(images), "stored": stored, "addresses": len(sources),
            "status_codes": dict(sorted(codes.items())), "seconds": round(time.monotonic() - start, 1)}


def board_top(client: Client) -> float | None:
    """The best score on the current prompt's board (GET /api/leaderboard?limit=1); None when it is empty."""
    status, data, _ = client.request("GET", "/api/leaderboard?limit=1")
    with contextlib.suppress(ValueError, AttributeError, KeyError, IndexError, TypeError):
        if status == 200:
            entries = json.loads(data)["entries"]
            return float(entries[0]["score"]) if entries else None
    return None


def with_stroke(canvas, rng):
    """A copy of the canvas with one more random dark stroke (2-5 points, 2-6 px wide); the strokes drawn depend
    only on `rng`'s state, so the same seed draws the same strokes against any server."""
    import cv2
    import numpy as np

    side = canvas.shape[0]
    n = int(rng.integers(2, 6))
    pts = np.cumsum(rng.normal(0, side / 8, (n, 2)), axis=0) + rng.uniform(side * 0.2, side * 0.8, 2)
    width = int(rng.integers(2, 7))
    out = canvas.copy()
    cv2.polylines(out, [np.clip(pts, 4, side - 5).astype(np.int32)], False, (0, 0, 0), width, cv2.LINE_AA)
    return out


def hill_climb(port: int, queries: int, *, side: int = 256, seed: int = 0, max_claims: int = 5) -> dict:
    """A blind hill climb from CLIMBER: from a blank canvas, a random stroke added at a time and kept when POST
    /api/score's answer beats the best so far (its `score`, ties broken by `raw_score` and then `cosine` where the
    server still answers them: every bit of precision it gives away is used); at most `queries` answered queries
    (a 429 waited out for its Retry-After, or the end of the climb when that is over CLIMB_MAX_WAIT: a spent
    budget). After each improvement the best score is compared with the board's (GET /api/leaderboard); one that
    beats it is submitted (at most `max_claims` times, each at a higher score than the last), and the climb ends
    when a submission ranks 1: a coarse score can claim more than the drawing holds."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    client = Client(port, CLIMBER, timeout=60)
    top0 = top = board_top(client)
    canvas = candidate = np.full((side, side, 3), 255, np.uint8)
    best, used, improvements, reached, waited = None, 0, 0, None, 0.0
    best_key: tuple | None = None
    scores: set = set()
    fields: list[str] = []
    claims: list[dict] = []
    codes: Counter = Counter()
    stopped = f"not within {queries} queries"
    start = time.monotonic()
    deadline = start + 5 * queries + 30
    while used < queries:
        if time.monotonic() > deadline:
            stopped = f"out of time after {used} queries"
            break
        body, ctype = multipart(cv2.imencode(".png", candidate)[1].tobytes())
        status, data, _ = client.request("POST", "/api/score", body, {"Content-Type": ctype})
        codes[str(status)] += 1
        if status == 429:
            wait = retry_after(client.headers)
            if wait > CLIMB_MAX_WAIT:
                stopped = f"refused after {used} queries (429, Retry-After {wait:g} s: {_error_of(data)})"
                break
            time.sleep(wait)
            waited += wait
            continue  # the same candidate again
        used += 1
        key = _climb_key(data) if status == 200 else None
        if key is not None:
            fields = sorted(json.loads(data))
            scores.add(key[0])
            if best_key is None or key > best_key:
                improvements += best_key is not None
                canvas, best_key, best = candidate, key, key[0]
                top = board_top(client)
                claimed = claims[-1]["shown"] if claims else -math.inf
                if (top is None or best > top) and best > claimed and len(claims) < max_claims:
                    claims.append({"after": used, "shown": best} | _submit_canvas(client, canvas))
                    if claims[-1].get("rank") == 1:
                        reached, stopped = used, f"rank 1 after {used} queries"
                        break
        candidate = with_stroke(canvas, rng)
    client.close()
    if reached is None and claims:
        stopped += (f" (rank 1 claimed {len(claims)}x by the score; submitted, ranked "
                    + ", ".join(str(c.get("rank") or c["status"]) for c in claims) + ")")
    return {"queries": used, "max_queries": queries, "reached_rank1_after": reached, "stopped": stopped,
            "board_top": top0, "board_top_last": top, "best_score": best, "improvements": improvements,
            "distinct_scores": len(scores), "score_fields": fields, "raw_cosine_returned": "cosine" in fields,
            "status_codes": dict(sorted(codes.items())), "waited_s": round(waited, 1),
            "seconds": round(time.monotonic() - start, 1), "claims": claims}


def _submit_canvas(client: Client, canvas) -> dict:
    """The canvas submitted (name `climber`): its status, and the score, rank and total (or the error) answered."""
    import cv2

    body, ctype = multipart(cv2.imencode(".png", canvas)[1].tobytes(), name="climber")
    status, data, _ = client.request("POST", "/api/submissions", body, {"Content-Type": ctype})
    out: dict = {"status": status}
    with contextlib.suppress(ValueError, AttributeError):
        doc = json.loads(data)
        out |= {k: doc[k] for k in ("score", "stored", "rank", "total", "error") if k in doc}
    return out


def _climb_key(data: bytes) -> tuple | None:
    """(score, raw_score, cosine) of an /api/score answer, -inf for those it lacks; None without a score."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        doc = json.loads(data)
        if doc.get("score") is not None:
            return tuple(float(doc[k]) if doc.get(k) is not None else -math.inf
                         for k in ("score", "raw_score", "cosine"))
    return None


def _error_of(data: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(data).get("error"))[:120]
    return data[:120].decode("latin-1")


def goals(result: dict) -> dict:
    """Each goal: its text, the measured value, pass (True/False) or None where it was not measured."""
    rss = result.get("rss", {}).get("ratio")
    p99 = result.get("healthz", {}).get("p99_ms")
    disk = result.get("disk", {})
    ratio = result.get("legit", {}).get("ratio")
    quota = disk.get("quota_mb")
    growth = disk.get("growth_bytes")
    disk_pass = None if growth is None else (quota is not None and growth <= quota * (1 << 20))
    note = None
    if growth is not None and quota is None:
        note = "no quota known (this server has no max_disk_mb setting)"
    elif growth is not None and growth < 0.9 * quota * (1 << 20) and "507" not in disk.get("status_codes", {}):
        note = ("the quota was not reached, so this run does not show that it holds: pass --serve-set "
                "max_disk_mb=N below the growth")
    out = {
        "rss": {"goal": GOALS["rss"], "value": rss, "pass": None if rss is None else rss < 1.5},
        "healthz": {"goal": GOALS["healthz"], "value": p99, "pass": None if p99 is None else p99 < 100},
        "disk": {"goal": GOALS["disk"], "value": growth, "quota_mb": quota, "pass": disk_pass, "note": note},
        "legit": {"goal": GOALS["legit"], "value": ratio, "pass": None if ratio is None else ratio >= 0.5},
    }
    for key in ("scan_bomb", "slow"):
        player = result.get(key, {}).get("player", {})
        share = player.get("share")
        out[key] = {"goal": GOALS[key], "value": share, "p99_ms": player.get("p99_ms"),
                    "pass": None if share is None else share >= 0.9}
    up = result.get("uploads", {}).get("ratio")
    out["uploads"] = {"goal": GOALS["uploads"], "value": up, "pass": None if up is None else up <= 1.5}
    climb = result.get("climb")
    if climb is None:
        out["climb"] = {"goal": GOALS["climb"], "value": None, "pass": None}
    else:
        reached = climb["reached_rank1_after"]
        out["climb"] = {"goal": GOALS["climb"], "value": climb["stopped"], "queries": reached,
                        "pass": reached is None}
    return {key: out[key] for key in result.get("phases", FIRST_SERVER)}


def unmeasured(result: dict) -> str | None:
    """Why not every measurement was made (the server died, or a phase has no figure), or None when all were."""
    died = result.get("server_died")
    if died:
        return f"the server died during {died['phase']} (exit {died['exit_code']})"
    missing = [key for key, goal in result["goals"].items() if goal["value"] is None]
    if missing:
        legit = result.get("legit", {}).get("unattacked", {})
        why = f" (the legit client alone got {_codes(legit['status_codes'])})" if "legit" in missing and legit else ""
        return f"no figure for {', '.join(missing)}{why}"
    return None


# ------------------------------------------------------------------------------------------ the table


def _codes(codes: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in codes.items()) or "none"


def _verdict(goal: dict) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[goal["pass"]]


def format_table(result: dict) -> str:
    """The figures and the goals as an aligned text table (pass/fail lines at the end)."""
    g = result["goals"]
    rows: list[tuple[str, str]] = []
    if "rss" in result:
        r = result["rss"]
        rows += [("1 image flood: RSS peak / idle", f"{r['peak_mb']} / {r['idle_mb']} MiB = {r['ratio']}x "
                  f"({r['clients']} clients, {r['seconds']} s, {r['requests']} requests; {r['method']})"),
                 ("  status codes", _codes(r["status_codes"]))]
        for key, codes in r["by_payload"].items():
            rows.append((f"    {key}", _codes(codes)))
    if "healthz" in result:
        h = result["healthz"]
        sk = h["idle_sockets"]
        rows += [("2 /healthz p50 / p99 / max", f"{h['p50_ms']} / {h['p99_ms']} / {h['max_ms']} ms "
                  f"({h['requests']} requests, {h['connection']}; {_codes(h['status_codes'])})"),
                 ("  attacker sockets", f"{sk['open_now']} of {sk['target']} open at the end (max {sk['max_open']}; "
                  f"{sk['slowloris']} slowloris, {sk['silent']} silent); {sk['closed_by_server']} closed by the "
                  f"server, {sk['opened']} opened, {sk['connect_errors']} connect errors")]
        if sk["answers"]:
            rows.append(("  server's answers to them", _codes(sk["answers"])))
    if "disk" in result:
        d = result["disk"]
        quota = f"{d['quota_mb']:g} MB ({d['quota_source']})" if d["quota_mb"] is not None else "none known"
        rows += [("3 disk flood: growth", f"{d['growth_bytes']:,} bytes ({d['growth_bytes'] / 2**20:.1f} MiB) in "
                  f"{d['seconds']} s; {d['stored']} stored of {d['requests']} ({d['stored_per_s']}/s); "
                  f"quota {quota}"),
                 ("  status codes", _codes(d["status_codes"])),
                 ("  after: db / wal / thumbs", f"{d['after']['db']:,} / {d['after']['wal']:,} / "
                  f"{d['after']['thumbs']:,} bytes ({d['after']['files']} files)")]
    legit = result.get("legit", {})
    if "attacked" in legit:
        u, a = legit["unattacked"], legit["attacked"]
        pace = f"every {legit['interval_ms']:g} ms" if legit["interval_ms"] else "back to back"
        ratio = "n/a" if legit["ratio"] is None else legit["ratio"]
        rows += [("4 legit ok/s alone -> attacked", f"{u['ok_per_s']} -> {a['ok_per_s']} = {ratio}x "
                  f"({pace}, {legit['connection']})"),
                 ("  alone", f"{u['ok']}/{u['requests']} ok in {u['seconds']} s, p50 {u['p50_ms']} ms, "
                  f"p99 {u['p99_ms']} ms; {_codes(u['status_codes'])}"),
                 ("  attacked", f"{a['ok']}/{a['requests']} ok in {a['seconds']} s, p50 {a['p50_ms']} ms, "
                  f"p99 {a['p99_ms']} ms; {_codes(a['status_codes'])}"),
                 ("  meanwhile", f"RSS peak {a['rss_peak_mb']} MiB, disk +{a['disk_growth_bytes']:,} bytes, "
                  f"attacker sockets open {a['idle_sockets']['open_now']}; image flood {_codes(a['image_flood_codes'])}"
                  f"; disk flood {_codes(a['disk_flood_codes'])}")]
    rows += _round_two_rows(result)
    width = max(len(k) for k, _ in rows) if rows else 0
    m = result["machine"]
    lines = [f"dkit bench attack {result['bundle']} ({m['cpus']} CPUs, {m['platform']}; load average "
             f"{' '.join(map(str, m.get('load_avg', [])))} before, {' '.join(map(str, m.get('load_avg_after', [])))}"
             " after)" + (f" --serve-set {' '.join(result['serve_set'])}" if result["serve_set"] else ""), ""]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("")
    for key, goal in g.items():
        value = goal["value"]
        if key == "disk" and value is not None:
            value = f"{value / 2**20:.1f} MiB" + (f" <= {goal['quota_mb']:g} MB" if goal["quota_mb"] is not None
                                                  else "")
        if key in ("scan_bomb", "slow") and value is not None:
            value = f"{value} (p99 {goal['p99_ms']} ms)"
        lines.append(f"{_verdict(goal)}  {goal['goal']}: {'n/a' if value is None else value}"
                     + (f" ({goal['note']})" if goal.get("note") else ""))
    if result.get("server_died"):
        died = result["server_died"]
        lines += ["", f"the server DIED during {died['phase']} (exit {died['exit_code']}):", died["stderr_tail"]]
    return "\n".join(lines) + "\n"


def _player_rows(doc: dict) -> list[tuple[str, str]]:
    rows = [("  player (127.0.0.1)", f"{doc['ok']} of {doc['ticks']} ticks answered 200 = {doc['share']}; p50 "
             f"{doc['p50_ms']} / p99 {doc['p99_ms']} ms (of the 200s: p99 {doc['p99_ok_ms']} ms); "
             f"{_codes(doc['status_codes'])}")]
    for path, r in doc["routes"].items():
        rows.append((f"    {path}", f"{r['ok']} ok of {r['requests']} sent + {r['skipped']} skipped (one every "
                     f"{r['every_s']:g} s); {_codes(r['status_codes'])}"))
    return rows


def _round_two_rows(result: dict) -> list[tuple[str, str]]:
    """The table's rows for phases 5-8."""
    rows: list[tuple[str, str]] = []
    if "scan_bomb" in result:
        b = result["scan_bomb"]
        rows += [("5 scan bomb: player's share", f"{b['player']['share']} ({b['in_flight']} bombs in flight from "
                  f"{b['source']}: {b['bomb_bytes']:,} bytes, {b['side']} px, {b['scans']} scans; {b['seconds']:g} s)"),
                 *_player_rows(b["player"]), ("  bombs answered", _codes(b["bomb_answers"]))]
    if "slow" in result:
        w = result["slow"]
        sk = w["sockets"]
        rows += [("6 slow sockets: player's share", f"{w['player']['share']} ({w['per_client']} connections from "
                  f"each of {w['first']}..{w['last']}, {w['seconds']:g} s)"), *_player_rows(w["player"]),
                 ("  attacker connections", f"{sk['open_now']} of {sk['target']} open at the end (max "
                  f"{sk['max_open']}; {w['sockets_when_the_player_started']['open_now']} when the player started)")]
        for kind, k in sk["kinds"].items():
            rows.append((f"    {kind}", f"{k['open_now']}/{k['target']} open, {k['opened']} opened, "
                         f"{k['closed_by_server']} closed by the server, longest held {k['longest_held_s']} s; "
                         f"answers: {_codes(k['answers'])}" + (f"; 100 Continue {k['continue_100']}"
                                                              if k["continue_100"] else "")))
    if "uploads" in result:
        u = result["uploads"]
        rows += [("7 uploads: tree RSS peak / idle", f"{u['peak_mb']} / {u['idle_mb']} MiB = {u['ratio']}x "
                  f"({u['uploads']} concurrent uploads of {u['upload_bytes']:,} bytes from {u['addresses']} "
                  f"addresses, {u['seconds']} s; {u['processes']} processes at most; {u['method']})"),
                 ("  main process peak, after", f"{u['main_peak_mb']} MiB, {u['after_mb']} MiB after"),
                 ("  status codes", f"{_codes(u['status_codes'])}; p50 {u['p50_ms']} ms, p99 {u['p99_ms']} ms")]
    if "climb" in result:
        h = result["climb"]
        seeds = h["seeds"]
        rows += [("8 hill climb", f"{h['stopped']} (board best {h['board_top']}; climb best {h['best_score']}, "
                  f"{h['improvements']} improvements, {h['distinct_scores']} distinct scores; {h['seconds']} s, "
                  f"{h['waited_s']} s of it waiting out 429s)"),
                 ("  seeds", f"{seeds['stored']} stored of {seeds['submitted']} from {seeds['addresses']} addresses "
                  f"({seeds['source']}); {_codes(seeds['status_codes'])}"),
                 ("  /api/score", f"fields {', '.join(h['score_fields'])}; {_codes(h['status_codes'])}")]
        for claim in h["claims"]:
            rows.append((f"  claim after {claim['after']} queries", ", ".join(f"{k} {v}" for k, v in claim.items()
                                                                             if k != "after")))
    return rows
