"""Rules every route of the HTTP API follows: how errors look, and who may ask.

- **Errors** have one body, :class:`Problem` (Litestar's own shape: ``status_code``, ``detail``,
  ``extra``). A parameter or body that fails validation is **422 Unprocessable Content** on every
  endpoint, with ``detail`` naming each bad parameter and what it must be; Litestar's default
  for that is 400, which clients cannot tell apart from a malformed request.
- **Authentication** is optional: with a token configured, every route except ``/healthz``
  (which load balancers probe without credentials and which reveals nothing) needs
  ``Authorization: Bearer <token>``, and answers 401 without it. A browser cannot put that
  header on the live page's ``EventSource``, so the page signs in once (``POST /v1/session``
  with the header) and gets :data:`SESSION_COOKIE`: HttpOnly, same-site only, holding a key
  derived from the token (never the token), which the guard admits in its place.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY
from litestar.types import Guard

__all__ = [
    "ERROR_RESPONSES",
    "PUBLIC",
    "SESSION_COOKIE",
    "Problem",
    "bearer_guard",
    "session_key",
    "unprocessable",
]

PUBLIC = {"public": True}  # ``opt`` of a route that needs no token
SESSION_COOKIE = "workledger_session"


def session_key(token: str) -> str:
    """The cookie's value for ``token``: it admits a browser, and reveals nothing of the
    token if the cookie leaks (a file on disk, a proxy's log)."""
    return hmac.new(token.encode(), b"workledger page session", hashlib.sha256).hexdigest()


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """An error: the HTTP status again, what was wrong, and per-parameter details if any."""

    status_code: int
    detail: str
    extra: list[dict[str, Any]] | dict[str, Any] | None = None


ERROR_RESPONSES = {
    422: ResponseSpec(
        data_container=Problem,
        description="A parameter or the body is malformed or out of range; detail says which.",
    ),
    401: ResponseSpec(
        data_container=Problem,
        description="The daemon requires a bearer token (--api-token); none or another came.",
    ),
}


def unprocessable(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    """Validation errors as 422, naming each bad parameter (``limit: Expected `int` <= 10000``)."""
    extra = exc.extra if isinstance(exc.extra, list | dict) else None
    problem = Problem(
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
        detail=_describe(exc.detail, extra),
        extra=extra,
    )
    return Response(problem, status_code=HTTP_422_UNPROCESSABLE_ENTITY)


def _describe(detail: str, extra: list[dict[str, Any]] | dict[str, Any] | None) -> str:
    """One line a person can act on: Litestar's detail is only "Validation failed for GET …"."""
    if not isinstance(extra, list) or not extra:
        return detail
    parts = [f"{e.get('key') or 'body'}: {e.get('message', 'invalid')}" for e in extra]
    return "; ".join(parts)


def bearer_guard(token: str) -> Guard:
    """A guard admitting requests that carry ``token`` (or the page's session cookie for it),
    compared in constant time."""
    expected = f"Bearer {token}".encode()
    cookie = session_key(token).encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if handler.opt.get("public"):
            return
        given = connection.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return
        session = connection.cookies.get(SESSION_COOKIE, "").encode()
        if session and hmac.compare_digest(session, cookie):
            return
        raise NotAuthorizedException(
            detail="missing or wrong bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="workledger"'},
        )

    return guard
