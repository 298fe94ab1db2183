"""Who holds the kiosk's connections: the per-client connection table (keyed like the rate limits, an IPv6 client by
its /64), the fair share of the total cap, and strikes (a client whose connections keep running into deadlines is
refused at accept for a while).

    from dkit.edge.kiosk.connections import Registry

    reg = Registry(max_connections=512, max_per_client=16, strikes=4, strike_window=60, strike_gap=10)
    why, victim = reg.admit("10.0.0.7", conn)   # why: None (admitted) or the reason it is refused
    if victim is not None:
        serving.reset(victim.transport)         # displaced: the newcomer took its place
    ...
    reg.leave(conn)
    if reg.strike("10.0.0.7"):                  # a deadline closed one of its connections
        ...                                     # its new connections are refused for `strike_window` s

The rules, in order, for a new connection of client C:
1. C struck (`strikes` of its connections closed for a deadline within `strike_window` s, counted from the last
   one that crossed the line; at most one strike counted per `strike_gap` s, so a phone whose wifi stalls during
   several downloads at once, or whose slow upload is cut off, collects one, not one per connection): refused
   ("struck") until `strike_window` s after that strike.
2. C holds `max_per_client` already: refused ("max_per_client"); a trusted proxy (`capped=False`) has no such cap.
3. All `max_connections` are held: the client holding the most connections gives one up, if it holds more than C
   will (its idlest first: idle or waiting for headers, then a body, then a paused write, then one in the app; the
   oldest of those); if no client holds more, C is refused ("max_connections"). So a few addresses holding many
   sockets cannot keep a player with one or two out: the player takes a slot from the biggest holder.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

from dkit.edge.kiosk.limits import MAX_CLIENTS, is_kiosk_screen

# a connection's state, from the cheapest to displace to the dearest (GuardedH11.phase)
PHASES = ("closing", "idle", "headers", "body", "writing", "app")


class Held(Protocol):
    """What the registry needs of a connection: its state (one of PHASES) and when it was opened."""

    opened: float

    def phase(self) -> str: ...


class Registry:
    """The connection table, the fair share of the total cap and the strikes of one server (see the module)."""

    def __init__(self, max_connections: int, max_per_client: int, strikes: int, strike_window: float, *,
                 strike_gap: float = 0.0, clock: Callable[[], float] = time.monotonic, max_clients: int = MAX_CLIENTS):
        self.max_connections, self.max_per_client = max_connections, max_per_client
        self.strikes, self.strike_window, self.strike_gap = strikes, strike_window, strike_gap
        self.clock, self.max_clients = clock, max_clients
        self.by_client: dict[str, set[Held]] = {}
        self.key_of: dict[Held, str] = {}
        self._strikes: OrderedDict[str, deque[float]] = OrderedDict()  # client -> times of its recent strikes
        self._refused_until: OrderedDict[str, float] = OrderedDict()
        self._uncapped: set[str] = set()  # keys admitted without the per-client cap (trusted proxies): never displaced

    @property
    def total(self) -> int:
        """Connections held now."""
        return len(self.key_of)

    def admit(self, key: str, conn: Held, *, capped: bool = True) -> tuple[str | None, Held | None]:
        """Admit `conn` of client `key`: (None, the connection it displaced or None), or (why it is refused, None).
        `capped=False` (a trusted proxy) lifts the per-client cap."""
        if self.refused(key):
            return "struck", None
        mine = len(self.by_client.get(key, ()))
        if not capped:
            self._uncapped.add(key)
        if capped and mine >= self.max_per_client:
            return "max_per_client", None
        victim = None
        if self.total >= self.max_connections:
            victim = self._victim(mine + 1)
            if victim is None:
                return "max_connections", None
            self.leave(victim)
        self.by_client.setdefault(key, set()).add(conn)
        self.key_of[conn] = key
        return None, victim

    def _victim(self, theirs: int) -> Held | None:
        """The idlest connection of the client holding the most, if it holds more than `theirs`: never one of the
        kiosk's own screen or of a trusted proxy (every player is behind those), never one inside the app (a request
        being answered)."""
        for key, held in sorted(self.by_client.items(), key=lambda kv: -len(kv[1])):
            if len(held) <= theirs:
                return None
            if is_kiosk_screen(key) or key in self._uncapped:
                continue
            idle = [c for c in held if c.phase() != "app"]
            if idle:
                return min(idle, key=lambda c: (PHASES.index(c.phase()), c.opened))
        return None

    def leave(self, conn: Held) -> None:
        """Forget `conn` (closed, or displaced); a connection never admitted is ignored."""
        key = self.key_of.pop(conn, None)
        if key is None:
            return
        held = self.by_client[key]
        held.discard(conn)
        if not held:
            del self.by_client[key]

    def strike(self, key: str) -> bool:
        """Count a connection of `key` closed for a deadline (not within `strike_gap` s of its last counted one: one
        stall closes several connections at once); True when this strike gets the client refused."""
        now = self.clock()
        times = self._strikes.pop(key, deque())
        if times and now - times[-1] < self.strike_gap:
            self._strikes[key] = times
            return False
        times.append(now)
        while times and times[0] < now - self.strike_window:
            times.popleft()
        self._strikes[key] = times
        while len(self._strikes) > self.max_clients:
            self._strikes.popitem(last=False)
        if len(times) < self.strikes or self.refused(key):
            return False
        times.clear()
        self._refused_until.pop(key, None)
        self._refused_until[key] = now + self.strike_window
        while len(self._refused_until) > self.max_clients:
            self._refused_until.popitem(last=False)
        return True

    def refused(self, key: str) -> bool:
        """Whether `key` is struck now."""
        until = self._refused_until.get(key)
        if until is None:
            return False
        if self.clock() >= until:
            del self._refused_until[key]
            return False
        return True
