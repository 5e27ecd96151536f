"""The catalogue app's guards (serve): access token off localhost, cross-site request protection, limits.

- Bound to a loopback address, the app trusts the machine's users; bound elsewhere, every request must
  carry the access token (the ?token= link sets a cookie; API clients send `Authorization: Bearer`).
- State-changing requests (POST) must come from the app's own pages: the Origin (or Referer) must be the
  app's host, and the per-session CSRF token from the page's cookie must come back in a header or field.
- The Host header must name this server (loopback names, the --host value, --allowed-host names): a
  DNS-rebinding page controls both Host and Origin, so the Origin check alone does not stop it.
- Cookies are not port-scoped by browsers: their names carry the port, so apps on other ports of the same
  host neither receive nor overwrite them.
- Request bodies are counted as they arrive (chunked ones too) and cut off at the limit.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

TOKEN_COOKIE = "tfwhale_token"
CSRF_COOKIE = "tfwhale_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024  # the upload plus its form fields
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


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


def host_name(host_header: str) -> str:
    """The name part of a Host header, lower case: 'Example:8000' -> 'example', '[::1]:80' -> '[::1]'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_host_names(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names a server bound to `bound` answers: loopback names, `bound` itself, and `extra`."""
    names = {*LOOPBACK_NAMES, *extra}
    if bound:
        names.add(f"[{bound.strip('[]')}]" if ":" in bound else bound)
    return frozenset(host_name(name) for name in names)


def cookie_names(port: int | None) -> tuple[str, str]:
    """(token cookie, CSRF cookie): suffixed with the port, since browsers send cookies to every port."""
    suffix = "" if port is None else f"_{port}"
    return TOKEN_COOKIE + suffix, CSRF_COOKIE + suffix


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _origin_ok(request: Request) -> bool:
    """The request comes from a page of this app: Origin (or, without it, Referer) names this host."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parts = urlsplit(source)
    return parts.netloc.lower() == request.headers.get("host", "").lower()


def _too_large() -> str:
    return f"upload too large: at most {MAX_UPLOAD_BYTES // 2**20} MiB; nothing was stored"


class BodyLimitMiddleware:
    """Counts request body bytes as they arrive and stops at `limit` with a 413 (chunked bodies too), so
    nothing over the limit is ever spooled to disk: past the limit the app reads a disconnect, its own
    answer is dropped, and the 413 goes out instead."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen, refused, started = 0, False, False

        async def counted():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def answer(message) -> None:
            nonlocal started
            if not refused:
                started = True
                await send(message)

        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await PlainTextResponse(_too_large(), status_code=413)(scope, receive, send)


class GuardMiddleware(BaseHTTPMiddleware):
    def __init__(
        self, app, token: str | None, hosts: frozenset[str] = frozenset(), port: int | None = None
    ) -> None:
        super().__init__(app)
        self.token = token
        self.hosts = hosts or allowed_host_names("")
        self.token_cookie, self.csrf_cookie = cookie_names(port)

    async def dispatch(self, request: Request, call_next) -> Response:
        host = host_name(request.headers.get("host", ""))
        if host not in self.hosts:
            return PlainTextResponse(
                f"unknown Host {host!r}: this server answers only {', '.join(sorted(self.hosts))}; "
                "start it with --allowed-host NAME to add a name",
                status_code=400,
            )
        if self.token is not None:
            denied = self._check_token(request)
            if denied is not None:
                return denied
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return PlainTextResponse(_too_large(), status_code=413)
        if request.method not in SAFE_METHODS:
            if not _origin_ok(request):
                return PlainTextResponse("cross-site request refused: bad or missing Origin", status_code=403)
            # the pages send every change with fetch(), so the token travels in a header
            if not _same(request.headers.get(CSRF_HEADER), request.cookies.get(self.csrf_cookie)):
                return PlainTextResponse(
                    "cross-site request refused: missing or wrong CSRF token", status_code=403
                )
        csrf = request.cookies.get(self.csrf_cookie) or secrets.token_urlsafe(24)
        request.state.csrf = csrf
        response = await call_next(request)
        if request.cookies.get(self.csrf_cookie) != csrf:
            # the pages read the token from their meta tag: scripts never need the cookie
            response.set_cookie(self.csrf_cookie, csrf, httponly=True, samesite="strict")
        return response

    def _check_token(self, request: Request) -> Response | None:
        query = request.query_params.get("token")
        if _same(query, self.token):
            # move the token from the address bar into a cookie, so it is not left in history/links
            clean = request.url.remove_query_params("token")
            response = RedirectResponse(str(clean), status_code=303)
            response.set_cookie(self.token_cookie, self.token, httponly=True, samesite="strict")
            return response if request.method in SAFE_METHODS else None
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if _same(request.cookies.get(self.token_cookie), self.token) or _same(bearer, self.token):
            return None
        return PlainTextResponse(
            "access token required: open the link with ?token=... that tfwhale.serve printed at start",
            status_code=401,
        )
