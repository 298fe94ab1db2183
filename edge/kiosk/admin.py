"""Admin: `require_admin` (the bearer-token check: 403 when no token was given at start, 401 when it is missing or
wrong) and the moderation route DELETE /api/submissions/{id}."""

import hmac

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import KioskState, StateDep

router = APIRouter()
MAX_ID = 2**63 - 1  # SQLite's largest rowid: a bigger id is a 400, not an overflow inside the database driver


def require_admin(state: KioskState, request: Request) -> None:
    """Raise unless `request` carries `Authorization: Bearer TOKEN` with the kiosk's admin token."""
    if not state.admin_token:
        raise ApiError(403, "admin routes are disabled: start `dkit serve` with --admin-token (or "
                            "DKIT_ADMIN_TOKEN) to enable them")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {state.admin_token}".encode()):
        raise ApiError(401, "admin token missing or wrong: send 'Authorization: Bearer TOKEN'")


@router.delete("/api/submissions/{sid}", status_code=204)
async def delete(state: StateDep, request: Request, sid: int = Path(ge=1, le=MAX_ID)):
    require_admin(state, request)
    if not state.store.delete(sid):
        raise ApiError(404, f"no submission {sid}")
    return Response(status_code=204)
