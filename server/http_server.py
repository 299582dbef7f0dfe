"""The HTTP server actor: hypercorn's Trio worker serving the Quart app."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from config import Settings
from server.fast_http import ASGIApp

log = logging.getLogger(__name__)


class HttpServer:
    """Serves ``app`` on ``settings.http_port``; ``started()`` reports the bound port.

    :meth:`drain_nowait` stops accepting connections and lets in-flight
    requests finish; hypercorn cancels what is left after the graceful timeout.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._drain = trio.Event()

    def drain_nowait(self) -> None:
        self._drain.set()

    def _config(self) -> HypercornConfig:
        config = HypercornConfig()
        host = self._settings.bind_host
        config.bind = [
            f"[{host}]:{self._settings.http_port}"
            if ":" in host
            else f"{host}:{self._settings.http_port}"
        ]
        config.graceful_timeout = self._settings.graceful_timeout_s
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        # Bounded buffers: a request line and headers fit in 16 KiB, and
        # bodies are capped by the app (MAX_CONTENT_LENGTH).
        config.h11_max_incomplete_size = 16 * 1024
        config.keep_alive_timeout = 30
        return config

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        class _Status:
            def started(self, binds: list[str] | None = None) -> None:
                port = int((binds or ["0"])[0].rsplit(":", 1)[-1])
                log.info("http server ready", extra={"port": port})
                task_status.started(port)

        await serve(
            self._app,
            self._config(),
            shutdown_trigger=self._drain.wait,
            task_status=_Status(),
        )
