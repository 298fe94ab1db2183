"""Security headers on every kiosk response (a pure ASGI middleware), and the page's Content-Security-Policy.

    app.add_middleware(SecurityHeaders, csp=page_csp(page))

The policy allows only the kiosk's own origin, and the page's one inline <script> and <style> by their sha256
(no 'unsafe-inline'): an injected script or style never runs. Framing is refused (clickjacking), MIME sniffing
off, no referrer leaves the kiosk. The camera's stream is a MediaStream (srcObject), which needs no source.
"""

from __future__ import annotations

import base64
import hashlib
import re

_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S), "style": re.compile(r"<style>(.*?)</style>", re.S)}


def _hashes(page: str, tag: str) -> str:
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                    for body in _INLINE[tag].findall(page))


def page_csp(page: str) -> str:
    """The Content-Security-Policy for `page` (the kiosk HTML): self only, its inline blocks by hash."""
    return (f"default-src 'self'; script-src 'self' {_hashes(page, 'script')}; "
            f"style-src 'self' {_hashes(page, 'style')}; img-src 'self' data: blob:; connect-src 'self'; "
            "media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


class SecurityHeaders:
    def __init__(self, app, csp: str):
        self.app = app
        self.headers = [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
                        (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        return await self.app(scope, receive, with_headers)
