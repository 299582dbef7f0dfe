"""The Quart HTTP surface: health, readiness, metrics, and (later) the v1 API.

Every error leaves as the shared body ``{"error": {"code", "message"}}``
with the status from :data:`protocol.errors.HTTP_STATUS`; an unexpected
exception is logged with its traceback and answered with a bare 500
``internal_error`` — the client never sees a traceback.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio
from quart import Response, jsonify, request, send_from_directory
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from protocol.errors import (
    INTERNAL_ERROR_CODE,
    INTERNAL_ERROR_MESSAGE,
    PodiumError,
    error_body,
    error_reply,
)

if TYPE_CHECKING:
    from server.node import NodeServices

log = logging.getLogger(__name__)

_READY_CHECK_TIMEOUT_S = 2.0

#: The live leaderboard page: plain files, packaged with the server.
STATIC_DIR: Final = Path(__file__).parent / "static"
_WS_URL_PLACEHOLDER: Final = "{{WS_URL}}"
# A Host header we are willing to echo into the page: a name, IPv4 or [IPv6],
# optionally with a port (dropped: the WebSocket has its own).
_HOST_RE: Final = re.compile(r"(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")

# The admin page holds the admin token: it talks to its own origin only, runs
# only its own script, and is never framed or leaks its URL.
_ADMIN_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# Werkzeug's HTTP errors, renamed into our codes.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _error_response(status: int, code: str, message: str) -> Response:
    response = jsonify(error_body(code, message))
    response.status_code = status
    return response


def create_app(services: NodeServices) -> QuartTrio:
    """The Quart app of one node, bound to its services."""
    # No automatic static route: the page's own view below serves /static/.
    app = QuartTrio("podium", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=services.settings.http_max_body_bytes,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.errorhandler(PodiumError)
    async def _podium_error(error: PodiumError) -> Response:
        status, body, headers = error_reply(error)
        response = jsonify(body)
        response.status_code = status
        response.headers.update(headers)
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = (error.description or error.name).strip()
        return _error_response(status, code, message)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.error("unhandled error in request", exc_info=error)
        return _error_response(500, INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "node_id": services.node_id}

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, Any], int]:
        """Readiness: Redis answers, PostgreSQL answers, migrations are current."""
        checks = await services.readiness()
        ready = all(check == "ok" for check in checks.values())
        services.metrics.ready.set(1 if ready else 0)
        body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
        if not ready:
            failing = ", ".join(
                f"{name}: {value}" for name, value in checks.items() if value != "ok"
            )
            body |= error_body("not_ready", f"node is not ready ({failing})")
        return body, 200 if ready else 503

    from server.openapi import openapi_document

    @app.get("/openapi.json")
    async def openapi() -> dict[str, Any]:
        """This API, described in OpenAPI 3.1."""
        return openapi_document(max_limit=services.settings.read_max_limit)

    from server.http_api import register_api

    # The fast path (server.fast_http) serves the hot routes with these handlers.
    app.extensions["podium.v1"] = register_api(app, services)

    @app.get("/metrics")
    async def metrics() -> Response:
        from server.metrics import CONTENT_TYPE

        return Response(services.metrics.render(), content_type=CONTENT_TYPE)

    # The page and its files share the "static" endpoint: they are not part of
    # the API, so the OpenAPI document (and its route test) leave them out.
    @app.get("/", endpoint="static", defaults={"filename": "index.html"})
    @app.get("/admin", endpoint="static", defaults={"filename": "admin.html"})
    @app.get("/static/<path:filename>", endpoint="static")
    async def static_file(filename: str) -> Response:
        """The live leaderboard page (``/``), the admin page (``/admin``), their files."""
        if filename != "index.html":
            response = await send_from_directory(STATIC_DIR, filename)
            response.headers["Cache-Control"] = "no-cache"
            if filename == "admin.html":
                response.headers.update(_ADMIN_PAGE_HEADERS)
            return response
        ws_url = page_ws_url(request.host, services.settings.bind_host, services.ws_port)
        page = await trio.Path(STATIC_DIR / "index.html").read_text("utf-8")
        page = page.replace(_WS_URL_PLACEHOLDER, html.escape(ws_url, quote=True))
        response = Response(page, content_type="text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' {ws_url}; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return app


def page_ws_url(host_header: str, bind_host: str, ws_port: int) -> str:
    """The WebSocket URL the page should use: the host it was loaded from, our WS port.

    A Host header that is not a plain host name or address is ignored in
    favour of ``bind_host``, so nothing odd is echoed into the page.
    """
    match = _HOST_RE.fullmatch(host_header or "")
    host = match["host"] if match else bind_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 bind address
    return f"ws://{host}:{ws_port}/v1/ws"


async def check_with_timeout(check: Any) -> str:
    """Run one readiness probe; "ok", or a short reason."""
    try:
        with trio.fail_after(_READY_CHECK_TIMEOUT_S):
            result = await check()
    except trio.TooSlowError:
        return f"timed out after {_READY_CHECK_TIMEOUT_S:g} s"
    except PodiumError as exc:
        return exc.message
    return "ok" if result is None else str(result)
