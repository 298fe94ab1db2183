"""Request bodies: the size limit (a Content-Length gate, and a byte count while the body is read, so a chunked
upload without a length is cut off at the limit instead of being spooled whole) and the body deadline (a body still
arriving `body_timeout` seconds after the app began to read it is cut off with a 408), as ASGI middleware with the
JSON answers for both.

A body announced over the limit is answered 413 (`Connection: close`) at once, before a byte of it is read: with
`Expect: 100-continue` the body is never asked for (uvicorn sends `100 Continue` only when the app first reads), so
the client never sends it; without, the 413 is sent first and then up to DRAIN_FACTOR limits of the body are read
and dropped for at most the body deadline (so a client still sending can read the answer; closing on a client
mid-send resets the connection), then the connection closes. The server's own body deadline
(dkit.edge.kiosk.serving) bounds every body on every path as well, whether the app reads it or not.
"""

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse

from dkit.edge.kiosk.state import kiosk_state

FORM_SLACK = 65536  # bytes of multipart framing and text fields allowed beyond the image itself


class BodyTooLarge(Exception):
    """Raised by the receive channel of BodyLimit once a request body passes its limit."""

    def __init__(self, limit: int):
        super().__init__(f"the request body is over {limit:,} bytes")
        self.limit = limit


class BodyTimeout(Exception):
    """Raised by the receive channel of BodyLimit when a body is still incomplete at its deadline."""

    def __init__(self, seconds: float, why: str = ""):
        super().__init__(f"the request body did not arrive within {seconds:g} s{why}")
        self.seconds = seconds


BODY_GRACE = 5.0  # seconds every body has before its minimum rate (BodyLimit's min_rate) counts
DRAIN_FACTOR = 2  # a refused body is read and dropped up to this many limits, then the connection is closed
DRAIN_SECONDS = 30.0  # ... for at most this long (the body deadline, when there is one)


async def _drain(receive, most: int, seconds: float) -> None:
    """Read and drop up to `most` bytes of a refused body for at most `seconds`, so a client still sending it can
    read the 413 (closing on a client mid-send resets the connection before it sees the answer); a bigger or slower
    body is cut off there."""
    loop = asyncio.get_running_loop()
    seen, deadline = 0, loop.time() + seconds
    while seen <= most:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _expects_continue(scope) -> bool:
    return any(k == b"expect" and v.strip().lower() == b"100-continue" for k, v in scope["headers"])


class BodyLimit:
    """ASGI middleware for the upload limit (`max_upload` bytes of image plus FORM_SLACK of form): a body announced
    over it is answered 413 at once (`refuse`); any other body's bytes are counted as the app receives them, and
    past the limit the read raises BodyTooLarge (answered 413 by `too_large`), so no route reads or spools more than
    that, whatever the client announced (a chunked upload has no Content-Length at all)."""

    def __init__(self, app, max_upload: int, slack: int = FORM_SLACK, body_timeout: float | None = None,
                 min_rate: float = 0.0):
        self.app, self.max_upload, self.limit = app, max_upload, max_upload + slack
        self.body_timeout, self.min_rate = body_timeout, min_rate
        self.drain_seconds = DRAIN_SECONDS if body_timeout is None else body_timeout

    async def refuse(self, scope, receive, send, length: int) -> None:
        """The 413 for a body announced over the limit, at once (see the module: no 100 Continue, a bounded drain)."""
        refused = JSONResponse({"error": f"the upload is {length:,} bytes; at most {self.max_upload:,} are accepted"},
                               status_code=413, headers={"Connection": "close"})
        await send({"type": "http.response.start", "status": 413, "headers": refused.raw_headers})
        if _expects_continue(scope):  # never receive(): that would send 100 Continue
            return await send({"type": "http.response.body", "body": refused.body})
        await send({"type": "http.response.body", "body": refused.body, "more_body": True})
        await _drain(receive, DRAIN_FACTOR * self.limit, self.drain_seconds)
        await send({"type": "http.response.body", "body": b""})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self.refuse(scope, receive, send, int(length))
        seen, done, started = 0, False, None

        async def counted():
            nonlocal seen, done, started
            if done or self.body_timeout is None:
                message = await receive()
            else:  # the body is still arriving: it has until the deadline, and must keep up the minimum rate
                now = asyncio.get_running_loop().time()
                started = started if started is not None else now
                due, why = self._due(started, seen)
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, due - now))
                except (TimeoutError, asyncio.TimeoutError) as e:  # distinct classes before Python 3.11
                    raise BodyTimeout(round(due - started, 1), why) from e
            done = done or message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_FACTOR * self.limit - seen, self.drain_seconds)
                    raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, counted, send)

    def _due(self, started: float, seen: int) -> tuple[float, str]:
        """When the next bytes of a body begun at `started` with `seen` bytes so far must have arrived: at the body
        deadline, and (`min_rate`) by the time the bytes counted so far, plus one, are due at that rate after
        BODY_GRACE seconds, the bytes actually received, not the length announced. (when, why for the 408)."""
        due, why = started + self.body_timeout, ""
        if self.min_rate > 0:
            by_rate = started + BODY_GRACE + (seen + 1) / self.min_rate
            if by_rate < due:
                due, why = by_rate, f" (it came slower than {self.min_rate / 1024:g} KiB/s after {BODY_GRACE:g} s)"
        return due, why


async def too_large(request: Request, exc: BodyTooLarge):
    """The 413 for a body cut off while it was read (any route)."""
    return JSONResponse({"error": f"{exc}; at most {kiosk_state(request).max_upload:,} bytes of image are "
                                  "accepted"}, status_code=413, headers={"Connection": "close"})


async def too_slow(request: Request, exc: BodyTimeout):
    """The 408 for a body that did not arrive in time (a slow-loris upload)."""
    return JSONResponse({"error": f"{exc}: send it faster"}, status_code=408, headers={"Connection": "close"})
