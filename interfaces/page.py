"""The live fleet page at ``/`` and ``/fleet``: one HTML file, one stylesheet, one script.

No build step and nothing loaded from elsewhere: the files ship in the package
(``workledger/static``) and are read once, when the app is built. The Content-Security-Policy
holds the page to that: scripts, styles and connections to this origin only, so a value in
the data can never run as code even if some future change forgot to escape it.

The three files hold no data, so they need no API token; the data they fetch does.
"""

from __future__ import annotations

from importlib import resources

from litestar import Response, Router, get

from workledger.http_rules import PUBLIC

__all__ = ["page_router"]

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
