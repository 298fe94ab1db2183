"""The kiosk's HTTP server: uvicorn with its h11 protocol, plus the connection limits it lacks, so slow, half-open,
non-reading or too many sockets cannot starve the kiosk.

    from dkit.edge.bundle.kiosk_config import KioskConfig
    from dkit.edge.kiosk.serving import serve

    serve(app, host="0.0.0.0", port=8000, cfg=KioskConfig(), proxies=["10.0.0.2"])

uvicorn (0.55) closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that never sends
a request, sends its headers or its body a byte at a time, or never reads its responses, is held forever: each
costs a file descriptor and a connection slot. `GuardedH11` gives every state of a connection a deadline:
- waiting for a request's headers (from connecting, or from the end of the previous response): `header_timeout`;
- a request's body (from its headers, whatever the app does with it): `body_timeout`, then 408 (JSON) and close;
- writing (the client not reading, so the socket's buffers fill and asyncio pauses our writes): each pause must end
  within `write_timeout`, else the connection is reset (`reset`: the kernel's unsent bytes are dropped too). A
  pause ends when the client has read WRITE_HIGH - WRITE_LOW bytes (48 KiB), so this is a minimum read rate of
  48 KiB / write_timeout (4.8 KiB/s at 10 s) for as long as there is something to send: a non-reader and a
  trickle-reader are both cut off, a slow phone is not;
- closing with bytes still unsent (a close waits for them to flush): `write_timeout`, then reset;
- in the app (scoring): the app's own bounds (the work queue, the decode budget).
A connection closed for a header, body or write deadline is a strike against its client (`client_key`; a trusted
proxy and the kiosk's own screen excepted; a connection that never sent a byte is no strike: browsers open spare
ones; nor is a body cut off after its answer was sent, the drain of a refused upload; and at most one strike per
client per `header_timeout` s counts, so one wifi stall during several downloads is one strike): `strikes` of them
within `strike_window` s and its new connections are refused at accept for `strike_window` s
(dkit.edge.kiosk.connections). The caps are per client, keyed like the rate limits (an IPv6 client by its /64, but
by its whole address when link-local or in the server's own /64: the venue's LAN): `max_connections_per_client`,
and at `max_connections` the client holding the most gives up its idlest connection to a newcomer from a client
holding fewer. Each request's scope carries its TCP peer (`PEER`), from which guard.is_screen tells the kiosk's
own screen from a forwarded request.

The request line and headers may be `max_header_bytes` long in all (431 beyond, whether they arrive in pieces or
in one packet), and every answer of the HTTP layer itself (a malformed request, headers too large, a body too
slow) is JSON `{"error": ...}` like the app's. `X-Forwarded-For` is honoured only from the proxies named
(`dkit serve --proxy`); by default it is ignored (uvicorn would trust it from 127.0.0.1, so a same-host proxy
would let every visitor pick the address its limits and bans see). Connections closed by reason count into
`closed` (the kiosk's stats counters): header_timeout, body_timeout, write_timeout, struck, max_per_client,
max_connections, displaced, bad_request, headers_too_large.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import ipaddress
import json
import logging
import socket
import struct
from collections import Counter
from collections.abc import Sequence

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from dkit.edge.bundle.kiosk_config import KioskConfig
from dkit.edge.kiosk.connections import Registry
from dkit.edge.kiosk.limits import client_key, is_kiosk_screen

log = logging.getLogger(__name__)

PEER = "kiosk.peer"  # the request scope's (TCP peer host, whether it is a named proxy): see guard.is_screen
WRITE_HIGH = 64 * 1024  # asyncio pauses our writes when this much waits unsent ...
WRITE_LOW = 16 * 1024  # ... and resumes them below this: a pause lasts until the client read the difference

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_networks(proxies: Sequence[str]) -> tuple[Network, ...]:
    """The proxies allowed to set X-Forwarded-For (addresses or networks, e.g. `10.0.0.2`, `10.0.0.0/24`);
    ValueError naming a bad one."""
    nets = []
    for text in proxies:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"{text!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/24)") from e
    return tuple(nets)


def _in(host: str, nets: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    addr = getattr(addr, "ipv4_mapped", None) or addr
    return any(addr in net for net in nets)


def _local_host(transport: asyncio.BaseTransport) -> str:
    """The server's own address a connection came in on (its sockname), "" when unknown."""
    sockname = transport.get_extra_info("sockname")
    return str(sockname[0]) if isinstance(sockname, tuple) and sockname else ""


def json_answer(status: int, error: str) -> bytes:
    """A whole HTTP/1.1 response `{"error": error}` that closes the connection (written below the app)."""
    body = json.dumps({"error": error}).encode()
    phrase = http.HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


def header_bytes(request: h11.Request) -> int:
    """The size of a request's request line and headers as sent (CRLFs included)."""
    return (len(request.method) + len(request.target) + 12
            + sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items()))


def reset(transport: asyncio.BaseTransport) -> None:
    """Abort a connection with a TCP reset: what the kernel still holds to send is dropped too (a plain close hands
    it to an orphaned socket that keeps trickling it to a slow reader)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Parser(h11.Connection):
    """h11's server side that also refuses headers over `max_header_bytes` arriving whole (h11's own bound, its
    max_incomplete_event_size, holds only while they are incomplete), keeping the last parse error for the answer."""

    def __init__(self, max_header_bytes: int):
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.error: h11.RemoteProtocolError | None = None

    def next_event(self):
        """h11's next event; RemoteProtocolError (hint 431) for headers over the limit."""
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as e:
            self.error = e
            raise
        if isinstance(event, h11.Request) and header_bytes(event) > self.max_header_bytes:
            self.error = h11.RemoteProtocolError("headers too large", error_status_hint=431)
            raise self.error
        return event


class BoundedClose:
    """A transport whose close() has a deadline: `on_close` is called after it (to arm one), since a close waits
    for the unsent bytes to flush, forever for a client that does not read."""

    def __init__(self, transport: asyncio.Transport, on_close):
        self._transport, self._on_close = transport, on_close

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def close(self) -> None:
        """Close (after the unsent bytes) and arm the closing deadline."""
        if not self._transport.is_closing():
            self._transport.close()
            self._on_close()


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline in every state, fair connection caps, strikes, the header limit and
    JSON answers (class attributes: see `guarded`)."""

    header_timeout = KioskConfig.header_timeout  # (KioskConfig's defaults; guarded() sets a server's own)
    body_timeout = KioskConfig.body_timeout
    write_timeout = KioskConfig.write_timeout
    max_header_bytes = KioskConfig.max_header_bytes
    trusted: tuple[Network, ...] = ()  # proxies: no per-client cap, no strikes
    registry = Registry(KioskConfig.max_connections, KioskConfig.max_connections_per_client, KioskConfig.strikes,
                        KioskConfig.strike_window, strike_gap=KioskConfig.header_timeout)
    closed: Counter[str] = Counter()  # connections closed, by reason (each guarded() class has its own)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conn = Parser(self.max_header_bytes)
        self.opened = self.loop.time()
        self.key, self.strikable, self.peer = "unknown", False, ("", False)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ended: set[str] = set()
        self._struck = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = BoundedClose(transport, self._closing)  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        host = self.client[0] if self.client else ""
        self.key, trusted = client_key(host, _local_host(transport)), _in(host, self.trusted)
        self.peer = (host, trusted)  # for the app: guard.is_screen decides the kiosk's own screen from it
        self.strikable = not trusted and not is_kiosk_screen(self.key)
        why, victim = self.registry.admit(self.key, self, capped=not trusted)
        if why is not None:
            self.closed[why] += 1
            return transport.close()
        if victim is not None:
            self.closed["displaced"] += 1
            reset(victim.transport)
        self._arm("header", self.header_timeout, self._headers_late)

    def phase(self) -> str:
        """closing, idle, headers (part of a request came), body, writing (paused) or app (connections.PHASES)."""
        if self.transport.is_closing():
            return "closing"
        if not self._in_request():
            return "headers" if self.conn.trailing_data[0] else "idle"
        if self.conn.their_state is h11.SEND_BODY:
            return "body"
        return "writing" if self.flow.write_paused else "app"

    def _arm(self, name: str, seconds: float, callback) -> None:
        self._disarm(name)
        self._timers[name] = self.loop.call_later(seconds, callback)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _deadline(self, reason: str, *, strike: bool = True, abort: bool = False) -> None:
        """Close (or abort: nothing more will be flushed) for a deadline, counted once per reason, a strike once."""
        if reason not in self._ended:
            self._ended.add(reason)
            self.closed[reason] += 1
        if strike and self.strikable and not self._struck:
            self._struck = True
            if self.registry.strike(self.key):
                log.warning("client %s: %d connections closed for deadlines within %g s: refused for %g s",
                            self.key, self.registry.strikes, self.registry.strike_window, self.registry.strike_window)
        if abort:
            reset(self.transport)
        else:
            self.transport.close()

    def _headers_late(self) -> None:
        self._timers.pop("header", None)
        if not self._in_request() and not self.transport.is_closing():
            self._deadline("header_timeout", strike=bool(self.conn.trailing_data[0]))

    def _body_late(self) -> None:
        self._timers.pop("body", None)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answered = cycle is not None and cycle.response_started
        if cycle is not None and not answered:  # answer it here: the app's answer is not written
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(json_answer(408, f"the request body did not arrive within {self.body_timeout:g} s: "
                                                  "send it faster"))
        self._deadline("body_timeout", strike=not answered)  # answered: the drain of a refused body (a 413), no strike

    def _write_late(self) -> None:
        self._timers.pop("write", None)
        self._deadline("write_timeout", abort=True)

    def _closing(self) -> None:
        if self.transport.get_write_buffer_size():
            self._arm("closing", self.write_timeout, self._write_late)

    def handle_events(self) -> None:
        scope = self.scope
        super().handle_events()
        if self.scope is not scope:  # a new request: its app task has not run yet
            self.scope[PEER] = self.peer  # type: ignore[literal-required]
        if self.transport.is_closing():
            return
        if self._in_request():
            self._disarm("header")
        if self.conn.their_state is h11.SEND_BODY:
            if "body" not in self._timers:
                self._arm("body", self.body_timeout, self._body_late)
        else:
            self._disarm("body")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, as JSON: 431 for headers too large, else 400."""
        error = self.conn.error
        status = error.error_status_hint if error is not None and 400 <= error.error_status_hint < 600 else 400
        if status == 431:
            self.closed["headers_too_large"] += 1
            text = f"the request's headers are over {self.max_header_bytes:,} bytes"
        else:
            self.closed["bad_request"] += 1
            text = f"malformed HTTP request: {error or msg}"
        self.transport.write(json_answer(status, text))
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm("write", self.write_timeout, self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm("write")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._in_request() and not self.transport.is_closing():
            self._arm("header", self.header_timeout, self._headers_late)  # the next request has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        for name in list(self._timers):
            self._disarm(name)
        self.registry.leave(self)
        super().connection_lost(exc)


def guarded(cfg: KioskConfig, closed: Counter[str] | None = None, proxies: Sequence[str] = ()) -> type[GuardedH11]:
    """A GuardedH11 subclass with `cfg`'s limits and a connection registry of its own, counting the connections it
    closes into `closed` (the kiosk's stats counters, so the operator page shows them). `proxies`: addresses or
    networks of trusted proxies (no per-client cap, no strikes: their clients are told apart by the app)."""
    return type("KioskH11", (GuardedH11,), {
        "header_timeout": cfg.header_timeout, "body_timeout": cfg.body_timeout, "write_timeout": cfg.write_timeout,
        "max_header_bytes": cfg.max_header_bytes, "trusted": proxy_networks(proxies),
        "registry": Registry(cfg.max_connections, cfg.max_connections_per_client, cfg.strikes, cfg.strike_window,
                             strike_gap=cfg.header_timeout),
        "closed": Counter() if closed is None else closed})


def server_config(app, *, host: str, port: int, cfg: KioskConfig, closed: Counter[str] | None = None,
                  proxies: Sequence[str] = (), log_level: str = "warning"):
    """The uvicorn Config of a kiosk: the guarded h11 protocol, the kit's keep-alive timeout, and X-Forwarded-For
    honoured only from `proxies` (none: ignored)."""
    import uvicorn

    nets = proxy_networks(proxies)
    return uvicorn.Config(app, host=host, port=port, http=guarded(cfg, closed, proxies),
                          timeout_keep_alive=max(1, round(cfg.keep_alive)), log_level=log_level,
                          backlog=max(128, cfg.max_connections), lifespan="on", h11_max_incomplete_event_size=
                          cfg.max_header_bytes, proxy_headers=bool(nets),
                          forwarded_allow_ips=[str(n) for n in nets] if nets else None)


LISTEN_BACKLOG = 128  # until uvicorn starts and sets its own (server_config's backlog)


class ListenError(OSError):
    """The kiosk cannot listen on the address asked for (a port in use, an address not of this machine)."""


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) the way uvicorn binds one (SO_REUSEADDR; IPv6 for an address with ':'), so
    `dkit serve` knows it can listen before it says where, and hands it to `serve`. Raises ListenError, one line
    naming the address, the reason and what to do (another --port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # listening at once: with SO_REUSEADDR a bound socket that does not listen yet does not hold the port, so a
        # second `dkit serve` on it would bind too while this one loads its model, and fail only inside uvicorn
        # (uvicorn's own listen() sets its backlog later; connections wait in this one until it accepts)
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        hint = (f"another program (another `dkit serve`?) listens on port {port}: stop it, or choose another port, "
                f"e.g. --port {port + 1 if port < 65535 else 8000}" if e.errno == errno.EADDRINUSE else
                f"port {port} below 1024 needs root: choose --port 1024 or above (e.g. 8000)"
                if e.errno == errno.EACCES else "check --host (an address of this machine, or 0.0.0.0) and --port")
        raise ListenError(e.errno, f"cannot listen on {where} ({e.strerror or e}): {hint}") from e
    sock.set_inheritable(True)
    return sock


def serve(app, *, host: str, port: int, cfg: KioskConfig, log_level: str = "warning",
          sock: socket.socket | None = None, proxies: Sequence[str] = ()) -> None:
    """Run the kiosk app (create_app) until Ctrl-C / SIGTERM; closed connections count into its stats. `sock`: a
    socket `listen` bound already (else uvicorn binds host:port itself); `proxies`: who may set X-Forwarded-For.
    StartupError when the app's startup failed (uvicorn logs why, then exits 3 itself: not the CLI's code)."""
    import uvicorn

    closed = app.state.kiosk.stats.counts
    server = uvicorn.Server(server_config(app, host=host, port=port, cfg=cfg, closed=closed, proxies=proxies,
                                          log_level=log_level))
    try:
        server.run(sockets=[sock] if sock is not None else None)
    except SystemExit as e:  # uvicorn exits 3 itself when the app's startup fails (no decoder could start, ...)
        raise StartupError(f"the kiosk did not start: see the error above (its startup failed, {e.code})") from e
    if not server.started:
        raise StartupError("the kiosk did not start: see the error above (its startup failed)")


class StartupError(RuntimeError):
    """The kiosk's server did not start (its app's startup failed): `dkit serve` exits 1."""
