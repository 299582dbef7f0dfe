"""Serve the hot v1 routes straight from ASGI; hand everything else to Quart.

Score updates and leaderboard reads are most of a node's traffic, and
Quart's per-request machinery (request context, signals, a nursery and
tasks per request) costs as much CPU as the work itself. :class:`FastPath`
matches the routes marked ``fast`` in :data:`server.http_api.ROUTES`, builds
an :class:`~server.http_api.ApiRequest` from the ASGI scope, and calls the
**same** handler the Quart route calls — the behaviour is defined once. Any
other request, and every non-HTTP scope (lifespan), goes to Quart unchanged.

*Error handling*: as in :mod:`server.http_app` — a PodiumError becomes its
status and the shared error body; anything else is logged with its
traceback and answered with a bare 500.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qsl

from protocol.errors import (
    INTERNAL_ERROR_CODE,
    INTERNAL_ERROR_MESSAGE,
    PayloadTooLarge,
    PodiumError,
    error_body,
    error_reply,
)
from server.http_api import ROUTES, ApiRequest, Route, V1Api

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
# Loose on purpose: hypercorn's and Quart's precise ASGI types do not unify.
ASGIApp = Callable[..., Awaitable[None]]

_JSON_HEADERS: Final = [(b"content-type", b"application/json")]


def _compile(rule: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", rule) + "$")


class FastPath:
    """An ASGI app: the fast v1 routes here, the rest to ``app``."""

    def __init__(self, app: ASGIApp, api: V1Api, *, max_body_bytes: int) -> None:
        self.app = app
        self._api = api
        self._max_body = max_body_bytes
        self._routes: list[tuple[str, re.Pattern[str], Route, Callable[..., Any]]] = [
            (route.method, _compile(route.rule), route, getattr(api, route.handler))
            for route in ROUTES
            if route.fast
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            for route_method, pattern, route, handler in self._routes:
                if route_method == method and (match := pattern.match(path)):
                    await self._serve(scope, receive, send, route, handler, match.groupdict())
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        handler: Callable[[ApiRequest], Awaitable[dict[str, Any]]],
        params: dict[str, str],
    ) -> None:
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        content_type = headers.get("content-type")
        length = headers.get("content-length")
        client = scope.get("client")

        async def body() -> bytes:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self._max_body:
                    raise PayloadTooLarge(
                        f"the body is larger than {self._max_body} bytes", code="body_too_large"
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            return b"".join(chunks)

        request = ApiRequest(
            headers=headers,
            query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
            params=params,
            remote_addr=client[0] if client else None,
            content_type=content_type.split(";", 1)[0].strip().lower() if content_type else None,
            content_length=int(length) if length and length.isdigit() else None,
            body=body,
        )
        extra: dict[str, str] = {}
        payload: dict[str, Any]
        try:
            status, payload = route.status, await handler(request)
        except PodiumError as exc:
            status, payload, extra = error_reply(exc)
        except Exception as exc:
            log.error("unhandled error in request", exc_info=exc, extra={"path": scope["path"]})
            status = 500
            payload = error_body(INTERNAL_ERROR_CODE, INTERNAL_ERROR_MESSAGE)
        data = json.dumps(payload, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *_JSON_HEADERS,
                    (b"content-length", str(len(data)).encode()),
                    *((name.lower().encode(), value.encode()) for name, value in extra.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})
