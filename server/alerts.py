"""Fraud alerts to an operator's webhook: a JSON POST per alert.

The fraud actor calls a :class:`Webhook` from its own alert task, with
bounded retries, so a slow or failing endpoint never slows a submission.
"""

from __future__ import annotations

from typing import Any

import httpx

_TIMEOUT_S = 5.0


class Webhook:
    """POSTs alerts as JSON to ``url``; raises if the endpoint does not answer 2xx."""

    def __init__(self, url: str, *, node_id: str) -> None:
        self._url = url
        self._node_id = node_id

    async def __call__(self, alert: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=_TIMEOUT_S) as client:
            reply = await client.post(
                self._url,
                json={"source": "podium", "node_id": self._node_id, **alert},
                headers={"User-Agent": "podium-alerts/1"},
            )
            reply.raise_for_status()
