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

OpenCV and numpy are imported inside the functions that use them, so the CLI reads AttackSettings (for its
--help) without loading them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import math
import os
import platform
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
LEGIT, IDLE, DISK, FLOOD, WARMUP = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
GOALS = {"rss": "peak/idle RSS < 1.5x", "healthz": "/healthz p99 < 100 ms", "disk": "growth <= the quota",
         "legit": "legit ok/s under attack >= 0.5x unattacked"}
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{f.name}: expected a number >= 0, got {value!r}")
        if not 0 <= self.slowloris_fraction <= 1:
            raise ValueError(f"slowloris_fraction: expected 0..1, got {self.slowloris_fraction}")
        for name in ("legit_seconds", "combined_seconds", "healthz_requests"):  # no figure without them
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)!r}")


QUICK = AttackSettings(warmup=3, legit_seconds=1.5, bomb_seconds=1.5, bomb_clients=3, idle_sockets=100,
                       hold_seconds=0.5, healthz_requests=40, flood_seconds=1.5, combined_seconds=1.5,
                       settle_seconds=0.3)


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
        from dkit.edge.upload import MAX_PIXELS as max_pixels
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


# ------------------------------------------------------------------------------------------ clients


class Client:
    """HTTP/1.1 from one source address: keep-alive (reopened after an error or a `Connection: close`; a request
    that fails on a reused connection is retried once on a new one, as browsers do), or a new connection each."""

    def __init__(self, port: int, source: str, *, timeout: float = 60.0, keep_alive: bool = True):
        self.port, self.source, self.timeout, self.keep_alive = port, source, timeout, keep_alive
        self.conn: http.client.HTTPConnection | None = None
        self.used = False

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
                if res.will_close or not self.keep_alive:
                    self.close()
                return res.status, data, (time.perf_counter() - start) * 1000
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt or not reused or not isinstance(e, (ConnectionError, http.client.RemoteDisconnected)):
                    return f"error:{type(e).__name__}", b"", (time.perf_counter() - start) * 1000
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


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
    (dkit.edge.kiosk.config, the bundle's then the defaults), else (None, None): a server without one."""
    for item in reversed(serve_set):
        key, _, value = item.partition("=")
        if key.strip().removeprefix("kiosk.") == "max_disk_mb":
            with contextlib.suppress(ValueError):
                return float(value), "--serve-set"
    try:
        from dkit.edge.kiosk.config import KioskConfig
        cfg = KioskConfig.from_dict(bundle_kiosk)
        return float(cfg.max_disk_mb), "the bundle's kiosk settings" if bundle_kiosk else "KioskConfig default"
    except Exception:  # no kiosk settings in this version of the kit
        return None, None


class Server:
    """`dkit serve BUNDLE` in its own process on a free loopback port; stderr goes to a file (a pipe nobody reads
    would block the server once full), whose tail explains a failed start."""

    def __init__(self, bundle: str | os.PathLike, work: Path, *, threads: int = 1, serve_set: Sequence[str] = (),
                 port: int = 0):
        self.port = port or _free_port()
        self.data = work / "data"
        self.log = work / "serve.stderr"
        self.args = [sys.executable, "-m", "dkit", "serve", str(bundle), "--port", str(self.port), "--db",
                     str(self.data / "kiosk.sqlite"), "--threads", str(threads), "-q"]
        for item in serve_set:
            self.args += ["--set", item]
        env = {k: v for k, v in os.environ.items() if k != "DKIT_ADMIN_TOKEN"}  # admin routes off
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=err, env=env)

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_up(self, timeout: float = 120.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AttackBenchError(f"dkit serve exited {self.proc.returncode} on start "
                                       f"({' '.join(self.args[3:])}):\n{self.stderr_tail()}")
            status, _, _ = Client(self.port, HOST, timeout=2, keep_alive=False).request("GET", "/healthz")
            if status == 200:
                return time.monotonic() - start
            time.sleep(0.2)
        self.stop()
        raise AttackBenchError(f"dkit serve did not answer on port {self.port} within {timeout:.0f} s:\n"
                               f"{self.stderr_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submissions(self) -> int | None:
        status, data, _ = Client(self.port, HOST, timeout=10, keep_alive=False).request("GET", "/healthz")
        with contextlib.suppress(ValueError, AttributeError):
            return int(json.loads(data)["submissions"]) if status == 200 else None
        return None

    def stop(self) -> None:
        """Terminate; kill if it has not exited within 15 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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


def bench_attack(bundle: str | os.PathLike, settings: AttackSettings = AttackSettings(), *,
                 serve_set: Sequence[str] = (), threads: int = 1, port: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Every measurement in one run against one server (see the module docstring); a dict of the figures and the
    goals. Raises AttackBenchError when the bundle is no judge bundle or the server does not come up; a server
    that dies during the run ends it early with `server_died` set."""
    say = progress or (lambda msg: None)
    s = settings
    bundle_kiosk = check_judge_bundle(bundle)
    quota, quota_source = quota_mb(bundle_kiosk, serve_set)
    payloads = attack_payloads()
    bodies = [(name, *multipart(data, ctype=ctype)) for name, ctype, data in payloads]
    legit_images = [drawing(10_000 + i) for i in range(16)]
    nofile = _raise_nofile(2 * s.idle_sockets + 256)
    result: dict = {
        "bundle": str(bundle), "serve_set": list(serve_set), "settings": dataclasses.asdict(s),
        "addresses": {"legit": LEGIT, "idle_sockets": IDLE, "disk_flood": DISK, "image_flood": FLOOD,
                      "warmup": WARMUP},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "nofile": nofile},
        "payload_bytes": {name: len(data) for name, _, data in payloads},
        "server_died": None,
    }
    work = Path(tempfile.mkdtemp(prefix="dkit-bench-attack-"))
    server = Server(bundle, work, threads=threads, serve_set=serve_set, port=port)
    say(f"dkit serve on 127.0.0.1:{server.port} (pid {server.proc.pid}, data {server.data})")
    try:
        result["server"] = {"pid": server.proc.pid, "port": server.port, "start_s": round(server.wait_up(), 2)}
        phases = [("warm-up", _warmup), ("legit alone", _legit_alone), ("1 image flood", _image_flood),
                  ("2 idle sockets", _idle_sockets), ("3 disk flood", _disk_flood),
                  ("4 all attacks", _combined)]
        ctx = _Ctx(server, s, bodies, legit_images, quota, quota_source, say)
        for name, phase in phases:
            phase(ctx, result)
            if not server.alive():
                result["server_died"] = {"phase": name, "exit_code": server.proc.returncode,
                                         "stderr_tail": server.stderr_tail()}
                say(f"the server died during {name} (exit {server.proc.returncode})")
                break
            time.sleep(s.settle_seconds)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["goals"] = goals(result)
    return result


@dataclass
class _Ctx:
    server: Server
    s: AttackSettings
    bodies: list
    legit_images: list
    quota: float | None
    quota_source: str | None
    say: Callable[[str], None]
    idle_kb: int | None = None  # VmRSS after the warm-up


def _warmup(c: _Ctx, result: dict) -> None:
    client = Client(c.server.port, WARMUP)
    codes = Codes()
    for i in range(c.s.warmup):
        body, ctype = multipart(c.legit_images[i % len(c.legit_images)])
        codes.add(client.request("POST", "/api/score", body, {"Content-Type": ctype})[0])
    client.close()
    if c.s.warmup and "200" not in codes.as_dict():  # every figure below would measure a broken server
        raise AttackBenchError(f"dkit serve answered none of {c.s.warmup} warm-up scores ({_codes(codes.as_dict())}"
                               f"):\n{c.server.stderr_tail()}")
    time.sleep(0.5)
    idle = proc_status_kb(c.server.proc.pid, "VmRSS")
    result["warmup"] = {"requests": c.s.warmup, "status_codes": codes.as_dict(), "idle_rss_mb": _mb(idle)}
    c.idle_kb = idle
    c.say(f"warm-up: {c.s.warmup} scores {codes.as_dict()}; idle RSS {_mb(idle)} MiB")


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
    return {
        "rss": {"goal": GOALS["rss"], "value": rss, "pass": None if rss is None else rss < 1.5},
        "healthz": {"goal": GOALS["healthz"], "value": p99, "pass": None if p99 is None else p99 < 100},
        "disk": {"goal": GOALS["disk"], "value": growth, "quota_mb": quota, "pass": disk_pass, "note": note},
        "legit": {"goal": GOALS["legit"], "value": ratio, "pass": None if ratio is None else ratio >= 0.5},
    }


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
    width = max(len(k) for k, _ in rows) if rows else 0
    m = result["machine"]
    lines = [f"dkit bench attack {result['bundle']} ({m['cpus']} CPUs, {m['platform']})"
             + (f" --serve-set {' '.join(result['serve_set'])}" if result["serve_set"] else ""), ""]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("")
    for key, goal in g.items():
        value = goal["value"]
        if key == "disk" and value is not None:
            value = f"{value / 2**20:.1f} MiB" + (f" <= {goal['quota_mb']:g} MB" if goal["quota_mb"] is not None
                                                  else "")
        lines.append(f"{_verdict(goal)}  {goal['goal']}: {'n/a' if value is None else value}"
                     + (f" ({goal['note']})" if goal.get("note") else ""))
    if result.get("server_died"):
        died = result["server_died"]
        lines += ["", f"the server DIED during {died['phase']} (exit {died['exit_code']}):", died["stderr_tail"]]
    return "\n".join(lines) + "\n"
