"""Security headers on every kiosk response (a pure ASGI middleware), and the pages' Content-Security-Policy.

    from dkit.edge.kiosk.headers import page_csp

    app.add_middleware(SecurityHeaders, csp=page_csp(page))

The kiosk's pages (the event screen and the operator page, edge/kiosk/static/) hold no inline script or style: their
scripts and style sheets are /static files of the kiosk's own origin, so the policy is `script-src 'self';
style-src 'self'` with no hash and no 'unsafe-inline': an injected script or style never runs. Images come from
the kiosk (thumbnails) or are data:/blob: URLs; fetches go to the kiosk only. Framing is refused (clickjacking),
MIME sniffing off, no referrer leaves the kiosk. The camera's stream is a MediaStream (srcObject), which needs no
source.
"""

from __future__ import annotations

import re

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "media-src 'self' blob: mediastream:; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")

# what the policy would refuse in a page: an inline <script> with a body, a <style> block, a style="" attribute,
# an on...="" handler, a javascript: URL
_INLINE = re.compile(r"<script\b[^>]*>\s*[^<\s]|<style\b|\sstyle\s*=|\son[a-z]+\s*=|javascript:", re.I)


def page_csp(page: str = "") -> str:
    """The Content-Security-Policy for the kiosk's pages; ValueError when `page` (HTML) holds something inline
    that the policy would refuse (a page bug: it would break silently in the browser)."""
    found = _INLINE.search(page)
    if found:
        raise ValueError(f"the kiosk page has inline code the CSP refuses (near {found.group(0)!r}): move it to a "
                         "/static/*.js or *.css file")
    return CSP


class SecurityHeaders:
    def __init__(self, app, csp: str = CSP):
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
