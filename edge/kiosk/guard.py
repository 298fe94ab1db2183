"""Who is asking, and may they: the client key of a request (its address; an IPv6 client by its /64, which one
household or phone gets whole), the ban check (403) and the client's token bucket (429 + Retry-After), each
refusal counted for the operator page. Checked before the upload is read, so a refused client costs no decode.

    from dkit.edge.kiosk.guard import client_of, admit

    client = client_of(request)
    admit(state, client, state.submit_buckets)     # raises ApiError(403 or 429)
"""

from __future__ import annotations

from fastapi import Request

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.limits import Buckets, client_key
from dkit.edge.kiosk.state import KioskState


def client_of(request: Request) -> str:
    """The key rate limits and bans use: the peer address (IPv6: its /64 network)."""
    return client_key(request.client.host if request.client else "")


def admit(state: KioskState, client: str, buckets: Buckets) -> None:
    """Refuse a banned client (403) or one over its rate (429 with the seconds to wait)."""
    if state.store.is_banned(client):
        state.stats.count("banned")
        raise ApiError(403, "this device may not take part any more (ask the operator)")
    wait = buckets.take(client)
    if wait > 0:
        state.stats.count("rate_limited")
        raise ApiError(429, f"too many requests: try again in {max(1, round(wait))} s", retry_after=wait)
