"""The kiosk's HTTP server: uvicorn with its h11 protocol, plus the connection limits it lacks, so slow, half-open
or too many sockets cannot starve the kiosk.

    from dkit.edge.kiosk.config import KioskConfig
    from dkit.edge.kiosk.serving import serve

    serve(app, host="0.0.0.0", port=8000, cfg=KioskConfig())

uvicorn (0.54) closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that never sends
a request, or sends its headers a byte at a time, is held forever: each costs a file descriptor, and at the
process's limit new visitors (and /healthz) are refused. `GuardedH11` adds:
- a header deadline: from connecting (or from the end of the previous response) to a request's complete headers,
  at most `header_timeout` seconds, else the connection is closed;
- caps: a connection beyond `max_connections` in all, or `max_connections_per_client` from one address, is closed
  as soon as it is accepted;
and keeps uvicorn's own bounds (headers at most 16 KiB, `timeout_keep_alive`). The body deadline is the app's
(dkit.edge.kiosk.bodies.BodyLimit), because only the app knows when it reads a body.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter

from uvicorn.protocols.http.h11_impl import H11Protocol

from dkit.edge.kiosk.config import KioskConfig

log = logging.getLogger(__name__)


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and connection caps (class attributes, see `guarded`)."""

    header_timeout = 10.0
    max_connections = 512
    max_per_client = 32
    closed: Counter[str] = Counter()  # connections closed, by reason (each guarded() class has its own)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        host = self.client[0] if self.client else None
        if len(self.connections) > self.max_connections:
            return self._refuse("max_connections")
        if host is not None and sum(1 for c in self.connections if c.client and c.client[0] == host) > \
                self.max_per_client:
            return self._refuse("max_per_client")
        self._arm()

    def _refuse(self, why: str) -> None:
        self.closed[why] += 1
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._in_request() and not self.transport.is_closing():
            self.closed["header_timeout"] += 1
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self._in_request():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._in_request() and not self.transport.is_closing():
            self._arm()  # the next request on this keep-alive connection has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded(cfg: KioskConfig, closed: Counter[str] | None = None) -> type[GuardedH11]:
    """A GuardedH11 subclass with `cfg`'s limits, counting the connections it closes into `closed` (the kiosk's
    stats counters, so the operator page shows them)."""
    return type("KioskH11", (GuardedH11,), {
        "header_timeout": cfg.header_timeout, "max_connections": cfg.max_connections,
        "max_per_client": cfg.max_connections_per_client, "closed": Counter() if closed is None else closed})


def server_config(app, *, host: str, port: int, cfg: KioskConfig, closed: Counter[str] | None = None,
                  log_level: str = "warning"):
    """The uvicorn Config of a kiosk: the guarded h11 protocol and the kit's keep-alive timeout."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=guarded(cfg, closed), timeout_keep_alive=max(1, round(
        cfg.keep_alive)), log_level=log_level, backlog=max(128, cfg.max_connections), lifespan="on")


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
          sock: socket.socket | None = None) -> None:
    """Run the kiosk app (create_app) until Ctrl-C / SIGTERM; closed connections count into its stats. `sock`: a
    socket `listen` bound already (else uvicorn binds host:port itself)."""
    import uvicorn

    closed = app.state.kiosk.stats.counts
    server = uvicorn.Server(server_config(app, host=host, port=port, cfg=cfg, closed=closed, log_level=log_level))
    server.run(sockets=[sock] if sock is not None else None)
