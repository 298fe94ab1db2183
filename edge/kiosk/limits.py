"""Abuse limits of the kiosk: per-client token buckets (429 + Retry-After) and the bounded work queue (503 +
Retry-After; 429 for a client over its share), with the counters the operator page shows.

    from dkit.edge.kiosk.limits import Buckets

    buckets = Buckets(rate=0.2, burst=5)           # one bucket per client address
    wait = buckets.take("10.0.0.7")                 # 0.0: allowed; else seconds until the next token
    async with queue.place(client) as place:        # Busy when `workers` run and `queue` more wait, ClientBusy
        async with place.running():                 # when the client holds `per_client` places; then its turn
            ...

Memory is bounded too: at most MAX_CLIENTS buckets are kept (the least recently used one is dropped first; a
dropped client starts again with a full bucket, which is what a new client gets anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

MAX_CLIENTS = 10_000
IPV6_PREFIX = 64  # one household or phone gets a whole /64: an IPv6 client is keyed by it


def client_key(host: str, local: str = "") -> str:
    """The key every per-client limit and ban uses for a peer address `host` reached on the server's own address
    `local` (the socket's sockname; "" when unknown): the address itself; an IPv6 one by its /64 network (one
    household or phone gets a whole /64), except on the kiosk's own link, where every phone of the venue shares the
    server's /64: a link-local address (fe80::/10) or one in the same /64 as `local` is keyed whole; an IPv4-mapped
    IPv6 one (::ffff:a.b.c.d, from a dual-stack socket) as the IPv4 address.

        client_key("2001:db8::1")                       # -> "2001:db8::/64"
        client_key("2001:db8::1", local="2001:db8::2")  # -> "2001:db8::1" (a neighbour on the venue's LAN)
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.is_loopback:  # ::1, the device itself, not the ::/64 network
            return "::1"
        if addr.is_link_local or _same_64(addr, local):
            return str(addr).split("%", 1)[0]  # (without a link-local address's %interface)
        return str(ipaddress.ip_network(f"{addr}/{IPV6_PREFIX}", strict=False))
    return str(addr)


def _same_64(addr: ipaddress.IPv6Address, local: str) -> bool:
    """Whether `addr` is in the /64 of the server's own address `local` (a global one; not "::", unknown)."""
    try:
        mine = ipaddress.ip_address(local.split("%", 1)[0])
    except ValueError:
        return False
    if mine.version != 6 or mine.is_unspecified or mine.is_loopback or mine.ipv4_mapped is not None:
        return False
    return addr in ipaddress.ip_network(f"{mine}/{IPV6_PREFIX}", strict=False)


KIOSK_SCREEN = frozenset({"127.0.0.1", "::1"})  # client keys of the kiosk's own browser (loopback)


def is_kiosk_screen(client: str) -> bool:
    """Whether a client key is the kiosk's own screen: the browser on the device itself, which talks to the server over
    loopback (127.0.0.1 or ::1). It is never banned and has no scoring budget: every player at the event screen
    shares it. For a request, take its key from dkit.edge.kiosk.guard.client_of (or ask guard.is_screen): that gives
    a screen key only to a loopback peer with no forwarded address, whatever X-Forwarded-For says."""
    return client in KIOSK_SCREEN


class Buckets:
    """Token buckets keyed by client: `burst` tokens, refilled at `rate` per second; rate 0 = no limit."""

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS):
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 when allowed, else the seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._state.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._state[client] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._state) > self.max_clients:
                self._state.popitem(last=False)
        return wait


class Busy(Exception):
    """The work queue is full: answered 503 with Retry-After."""


class ClientBusy(Exception):
    """The client already holds its share of the work queue (`per_client` places): answered 429 with Retry-After."""


class WorkQueue:
    """The kiosk's scoring work, charged per client: at most `workers` images scored at once and `queue` more
    waiting, of which one client holds at most `per_client` places (running + waiting) and at most `run_per_client`
    running ones (max(1, workers - 1) by default, so one client never takes every worker); waiting clients are served
    round-robin, one image each in turn, not first come first served, so many uploads from one address cannot starve
    another. Two steps, because a place is taken before the upload is read (so at most workers + queue uploads are
    in memory) and the running slot after:

        async with queue.place(client) as place:     # Busy (503) or ClientBusy (429) at once, nothing read yet
            data = await read_upload(...)
            async with place.running():                # waits for a worker slot, the client's turn in the round
                ...

    `slot(client)` is both at once. Event-loop only (no locks): every decision is made between two awaits.
    """

    def __init__(self, workers: int, queue: int, per_client: int | None = None, run_per_client: int | None = None,
                 reserve: int = 0):
        self.workers, self.queue = workers, queue
        self.reserve = min(reserve, workers + queue - 1)  # places only the kiosk's own screen may take
        self.per_client = per_client if per_client is not None else workers + queue
        self.run_per_client = run_per_client if run_per_client is not None else max(1, workers - 1)
        self.admitted = 0  # running + waiting now
        self.screen = 0  # of which the kiosk screen's
        self.running = 0
        self._held: Counter[str] = Counter()  # places per client
        self._runs: Counter[str] = Counter()  # running slots per client
        self._waiting: OrderedDict[str, deque[asyncio.Future]] = OrderedDict()  # clients in round-robin order

    def held(self, client: str) -> int:
        """Places `client` holds now (running + waiting)."""
        return self._held[client]

    @contextlib.asynccontextmanager
    async def place(self, client: str = "", screen: bool = False):
        """A place in the queue for `client`, or at once Busy (all taken) or ClientBusy (it holds `per_client`).
        `screen`: the kiosk's own screen, which may also take the `reserve` places no other client can, so however
        many addresses hold places, the players at the kiosk still get theirs."""
        others = self.admitted - self.screen
        if self.admitted >= self.workers + self.queue or not screen and others >= self.workers + self.queue - \
                self.reserve:
            raise Busy(f"the kiosk is busy ({self.workers} scoring, {self.queue} waiting)")
        if self._held[client] >= self.per_client:
            raise ClientBusy(f"this address already has {self._held[client]} images in the kiosk's queue (at most "
                             f"{self.per_client} at once)")
        self.admitted += 1
        self.screen += screen
        self._held[client] += 1
        try:
            yield Place(self, client)
        finally:
            self.admitted -= 1
            self.screen -= screen
            self._held[client] -= 1
            if not self._held[client]:
                del self._held[client]

    @contextlib.asynccontextmanager
    async def slot(self, client: str = ""):
        """A place and then a running slot: `async with queue.slot(client):` (Busy / ClientBusy when refused)."""
        async with self.place(client) as place, place.running():
            yield

    async def _acquire(self, client: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(client, deque()).append(future)
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then cancelled before it ran
                self._release(client)
            else:
                self._forget(client, future)
            raise

    def _dispatch(self) -> None:
        """Grant free running slots to waiting clients in round-robin order (a served client goes to the back)."""
        while self.running < self.workers:
            client = next((c for c in self._waiting if self._runs[c] < self.run_per_client), None)
            if client is None:
                return
            waiters = self._waiting.pop(client)
            future = waiters.popleft()
            if waiters:
                self._waiting[client] = waiters  # to the back of the round
            self.running += 1
            self._runs[client] += 1
            future.set_result(None)

    def _forget(self, client: str, future: asyncio.Future) -> None:
        waiters = self._waiting.get(client)
        if waiters is not None and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiting[client]

    def _release(self, client: str) -> None:
        self.running -= 1
        self._runs[client] -= 1
        if not self._runs[client]:
            del self._runs[client]
        self._dispatch()


class Place:
    """A client's place in the WorkQueue (from `WorkQueue.place`): `async with place.running():` waits for its turn."""

    def __init__(self, queue: WorkQueue, client: str):
        self.queue, self.client = queue, client

    @contextlib.asynccontextmanager
    async def running(self):
        """A running slot, granted round-robin by client; released on exit."""
        await self.queue._acquire(self.client)
        try:
            yield
        finally:
            self.queue._release(self.client)


class Stats:
    """Event counters (accepted, blocked, rate_limited, duplicates, banned, busy, ...) and the submissions of the
    last minute, for the operator page."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.counts: Counter[str] = Counter()
        self.clock = clock
        self._recent: deque[float] = deque()

    def count(self, event: str) -> None:
        self.counts[event] += 1
        if event == "accepted":
            self._recent.append(self.clock())

    def per_minute(self) -> float:
        cutoff = self.clock() - 60.0
        while self._recent and self._recent[0] < cutoff:
            self._recent.popleft()
        return float(len(self._recent))


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
