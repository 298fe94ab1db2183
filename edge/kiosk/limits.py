"""Abuse limits of the kiosk: per-client token buckets (429 + Retry-After) and the bounded work queue (503 +
Retry-After), with the counters the operator page shows.

    from dkit.edge.kiosk.limits import Buckets

    buckets = Buckets(rate=0.2, burst=5)           # one bucket per client address
    wait = buckets.take("10.0.0.7")                 # 0.0: allowed; else seconds until the next token
    async with queue.slot():                        # raises Busy when `workers` run and `queue` more wait
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


def client_key(host: str) -> str:
    """The key every per-client limit and ban uses for a peer address: the address itself, an IPv6 one by its /64
    network, an IPv4-mapped IPv6 one (::ffff:a.b.c.d, from a dual-stack socket) as the IPv4 address.

        client_key("2001:db8::1")   # -> "2001:db8::/64"
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/{IPV6_PREFIX}", strict=False))
    return str(addr)


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


class WorkQueue:
    """At most `workers` images scored at once and `queue` more waiting; beyond that `slot()` raises Busy."""

    def __init__(self, workers: int, queue: int):
        self.workers, self.queue = workers, queue
        self._running = asyncio.Semaphore(workers)
        self.admitted = 0  # running + waiting now

    @contextlib.asynccontextmanager
    async def slot(self):
        if self.admitted >= self.workers + self.queue:
            raise Busy(f"the kiosk is busy ({self.workers} scoring, {self.queue} waiting)")
        self.admitted += 1
        try:
            async with self._running:
                yield
        finally:
            self.admitted -= 1


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
