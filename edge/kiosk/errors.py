"""The kiosk's errors: `ApiError` (a status, a message, and a Retry-After for 429/503) and the handlers that
answer every error as JSON `{"error": "..."}`, request validation errors included (as 400), a write the disk refused
as 507."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dkit.edge.kiosk.limits import retry_after
from dkit.edge.kiosk.store import StorageFull

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success: `status`, the message, and for 429/503 the seconds to wait (Retry-After)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


async def api_error(request: Request, exc: ApiError):
    if exc.retry_after is None:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    wait = retry_after(exc.retry_after)
    return JSONResponse({"error": exc.message, "retry_after": int(wait)}, status_code=exc.status,
                        headers={"Retry-After": wait})


async def storage_full(request: Request, exc: StorageFull):
    """507 for a write the disk refused (full, read-only): any route, operator actions included."""
    return JSONResponse({"error": f"{exc}: the operator must make room"}, status_code=507)


async def invalid(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=400)


async def internal(request: Request, exc: Exception):
    """Anything unexpected: logged with its traceback, answered as JSON (no plain-text 500, no details leaked)."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error (logged on the kiosk)"}, status_code=500)


def add_handlers(app: FastAPI) -> None:
    """Answer ApiError, request validation errors and anything unexpected as JSON."""
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StorageFull, storage_full)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)
