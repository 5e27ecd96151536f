"""The catalogue app's guards (serve): access token off localhost, cross-site request protection, limits.

- Bound to a loopback address, the app trusts the machine's users; bound elsewhere, every request must
  carry the access token (the ?token= link sets a cookie; API clients send `Authorization: Bearer`).
- State-changing requests (POST) must come from the app's own pages: the Origin (or Referer) must be the
  app's host, and the per-session CSRF token from the page's cookie must come back in a header or field.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

TOKEN_COOKIE = "tfwhale_token"
CSRF_COOKIE = "tfwhale_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_UPLOAD_BYTES = 25 * 1024 * 1024


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_token(host: str, given: str | None) -> str | None:
    """The token requests must carry: the given one, a fresh one off loopback, else None (not needed)."""
    if given:
        return given
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _origin_ok(request: Request) -> bool:
    """The request comes from a page of this app: Origin (or, without it, Referer) names this host."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parts = urlsplit(source)
    return parts.netloc.lower() == request.headers.get("host", "").lower()


class GuardMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next) -> Response:
        if self.token is not None:
            denied = self._check_token(request)
            if denied is not None:
                return denied
        if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES + 64 * 1024:
            return PlainTextResponse(
                f"upload too large: at most {MAX_UPLOAD_BYTES // 2**20} MiB", status_code=413
            )
        if request.method not in SAFE_METHODS:
            if not _origin_ok(request):
                return PlainTextResponse("cross-site request refused: bad or missing Origin", status_code=403)
            # the pages send every change with fetch(), so the token travels in a header
            if not _same(request.headers.get(CSRF_HEADER), request.cookies.get(CSRF_COOKIE)):
                return PlainTextResponse(
                    "cross-site request refused: missing or wrong CSRF token", status_code=403
                )
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        request.state.csrf = csrf
        response = await call_next(request)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            # the pages read the token from their meta tag: scripts never need the cookie
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response

    def _check_token(self, request: Request) -> Response | None:
        query = request.query_params.get("token")
        if _same(query, self.token):
            # move the token from the address bar into a cookie, so it is not left in history/links
            clean = request.url.remove_query_params("token")
            response = RedirectResponse(str(clean), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response if request.method in SAFE_METHODS else None
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if _same(request.cookies.get(TOKEN_COOKIE), self.token) or _same(bearer, self.token):
            return None
        return PlainTextResponse(
            "access token required: open the link with ?token=... that tfwhale.serve printed at start",
            status_code=401,
        )
