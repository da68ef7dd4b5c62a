"""The live fleet page at ``/`` and ``/fleet``: one HTML file, one stylesheet, one script.

No build step and nothing loaded from elsewhere: the files ship in the package
(``workledger/static``) and are read once, when the app is built. The Content-Security-Policy
holds the page to that: scripts, styles and connections to this origin only, so a value in
the data can never run as code even if some future change forgot to escape it.

The three files hold no data, so they need no API token; the data they fetch does. Behind a
token the page asks for it once and signs in (``POST /v1/session``): the answer sets an
HttpOnly, same-site cookie that the API admits in place of the header, which a browser's
``EventSource`` cannot send (:mod:`workledger.http_rules`).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from litestar import Request, Response, Router, delete, get, post
from litestar.datastructures import Cookie

from workledger.http_rules import PUBLIC, SESSION_COOKIE, session_key

__all__ = ["page_router", "session_router"]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TYPES = {
    "fleet.html": "text/html",
    "fleet.css": "text/css",
    "fleet.js": "text/javascript",
}


def _read(name: str) -> bytes:
    return resources.files("workledger").joinpath("static", name).read_bytes()


def _responder(name: str) -> tuple[bytes, str]:
    return _read(name), _TYPES[name]


def page_router() -> Router:
    """Routes for the page and its two assets, each served from memory."""
    html, css, js = (_responder(name) for name in _TYPES)

    @get(["/", "/fleet"], include_in_schema=False, sync_to_thread=False, opt=PUBLIC)
    def fleet() -> Response[bytes]:
        return Response(html[0], media_type=html[1], headers=_HEADERS)

    @get("/static/fleet.css", include_in_schema=False, sync_to_thread=False, opt=PUBLIC)
    def stylesheet() -> Response[bytes]:
        return Response(css[0], media_type=css[1], headers=_HEADERS)

    @get("/static/fleet.js", include_in_schema=False, sync_to_thread=False, opt=PUBLIC)
    def script() -> Response[bytes]:
        return Response(js[0], media_type=js[1], headers=_HEADERS)

    return Router(path="/", route_handlers=[fleet, stylesheet, script])


def session_router(api_token: str | None) -> Router:
    """``POST /v1/session`` signs a browser in (the guard has checked its bearer token);
    ``DELETE /v1/session`` signs it out. Without a token there is nothing to sign in to."""

    @post("/session", status_code=204, summary="Sign a browser in: a cookie for the live page")
    async def sign_in(request: Request[Any, Any, Any]) -> Response[None]:
        if api_token is None:
            return Response(None, status_code=204)
        cookie = Cookie(
            key=SESSION_COOKIE,
            value=session_key(api_token),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return Response(None, status_code=204, cookies=[cookie])

    @delete("/session", status_code=204, opt=PUBLIC, summary="Sign a browser out")
    async def sign_out() -> Response[None]:
        gone = Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True)
        return Response(None, status_code=204, cookies=[gone])

    return Router(path="/v1", route_handlers=[sign_in, sign_out])
