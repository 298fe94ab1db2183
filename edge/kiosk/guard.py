"""Who is asking, and may they: the client key of a request (its address; an IPv6 client by its /64, which one
household or phone gets whole), the ban check (403) and the client's token bucket (429 + Retry-After), each
refusal counted for the operator page. Checked before the upload is read, so a refused client costs no decode.

    from dkit.edge.kiosk.guard import client_of, admit, ban_key

    client = client_of(request)
    admit(state, client, state.submit_buckets)     # raises ApiError(403 or 429)
    ban_key("2001:db8::7/64")                       # -> "2001:db8::/64": the key a ban is stored and checked under

The kiosk's own screen (loopback, limits.is_kiosk_screen) is never refused as banned: every player at the event
screen shares it, and the operator API refuses to ban it (an older database may still hold such a ban).
"""

from __future__ import annotations

import ipaddress

from fastapi import Request

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.limits import IPV6_PREFIX, Buckets, client_key, is_kiosk_screen
from dkit.edge.kiosk.serving import PEER
from dkit.edge.kiosk.state import KioskState


def client_of(request: Request) -> str:
    """The key rate limits and bans use: the client's address (IPv6: its /64 network, but the whole address on the
    kiosk's own link, limits.client_key). Only the kiosk's own screen (`is_screen`) gets a screen key (127.0.0.1 or
    ::1): a forwarded request naming a loopback address is keyed "127.0.0.1 (forwarded)", an ordinary client."""
    server = request.scope.get("server") or ("", 0)
    key = client_key(request.client.host if request.client else "", server[0] or "")
    if is_kiosk_screen(key) and not is_screen(request):
        return f"{key} (forwarded)"
    return key


def is_screen(request: Request) -> bool:
    """Whether `request` comes from the kiosk's own screen (never banned, no scoring budget): its TCP peer is
    loopback and it carries no forwarded address, i.e. it did not come through a named proxy with X-Forwarded-For
    (a visitor can write `X-Forwarded-For: 127.0.0.1` that a proxy passes on). Without the server's record of the
    TCP peer (another server, a test client) the ASGI client address stands for it."""
    host, proxied = request.scope.get(PEER) or (request.client.host if request.client else "", False)
    if proxied and any(name == b"x-forwarded-for" for name, _ in request.scope.get("headers", ())):
        return False
    return is_kiosk_screen(client_key(host))


def banned(bans: list[str], client: str) -> bool:
    """Whether `client` (a client key) is banned by one of `bans` (ban keys, ban_key): the same key, or an address
    or network that overlaps it (a ban of a phone's whole IPv6 address refuses the /64 client it is inside, and a ban
    of a /64 refuses a phone of it keyed by its whole address on the kiosk's own link).

        banned(["2001:db8::/64"], "2001:db8::7")     # True
    """
    if client in bans:
        return True
    key = _network(client)
    return key is not None and any((net := _network(b)) is not None and net.version == key.version and
                                   net.overlaps(key) for b in bans)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def admit(state: KioskState, client: str, buckets: Buckets) -> None:
    """Refuse a banned client (403) or one over its rate (429 with the seconds to wait)."""
    if not is_kiosk_screen(client) and banned([b["client"] for b in state.store.bans()], client):
        state.stats.count("banned")
        raise ApiError(403, "this device may not take part any more (ask the operator)")
    wait = buckets.take(client)
    if wait > 0:
        state.stats.count("rate_limited")
        raise ApiError(429, f"too many requests: try again in {max(1, round(wait))} s", retry_after=wait)


def ban_key(text: str) -> str:
    """The key a ban of `text` (as the operator typed it) is stored under, which `admit` matches (`banned`): an IPv6
    address whole (it refuses the /64 client it is in, or the phone on the kiosk's link keyed by it), an IPv4 one as
    client_key makes it, an IPv6 network of prefix 64 or
    longer as its /64, an IPv4 /32 as its address; other text (no address) as typed. ApiError(400) for a network
    wider than one client (an IPv4 range, an IPv6 prefix shorter than /64)."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text
    if "/" not in text and net.version == 6 and not net.network_address.ipv4_mapped:
        return str(net.network_address)  # one phone's address, as the kiosk's own link keys it (`banned` matches it)
    if "/" not in text or net.num_addresses == 1:
        return client_key(str(net.network_address))
    if net.version == 6 and net.prefixlen >= IPV6_PREFIX:
        return str(net.supernet(new_prefix=IPV6_PREFIX))
    raise ApiError(400, f"cannot ban {text!r}: a ban names one client, an IPv4 address or an IPv6 address or /64 "
                        "network (a wider range would also shut out other visitors)")
