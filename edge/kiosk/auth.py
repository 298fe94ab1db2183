"""The operator's token check for admin routes: `require_admin` (403 when no token was given at start, 401 when
it is missing or wrong, compared in constant time; after 10 wrong tokens from one client, 429 for a while, so
the token cannot be guessed by brute force)."""

import hmac

from fastapi import Request

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.guard import client_of
from dkit.edge.kiosk.state import KioskState


def require_admin(state: KioskState, request: Request) -> None:
    """Raise unless `request` carries `Authorization: Bearer TOKEN` with the kiosk's admin token."""
    if not state.admin_token:
        raise ApiError(403, "admin routes are disabled: start `dkit serve` with DKIT_ADMIN_TOKEN or "
                            "--admin-token-file to enable them")
    given = request.headers.get("authorization", "")
    if hmac.compare_digest(given.encode(), f"Bearer {state.admin_token}".encode()):
        return
    wait = state.auth_failures.take(client_of(request))
    if wait > 0:
        raise ApiError(429, "too many wrong admin tokens: try again later", retry_after=wait)
    raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer TOKEN'")
