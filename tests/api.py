"""A small HTTP client for Podium's v1 API, used by the tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from config import Settings


@dataclass
class Player:
    user_id: str
    username: str
    access_token: str
    refresh_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Api:
    """Calls one node's HTTP API with the test settings' secrets."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self.http = http
        self.settings = settings

    async def player(self, name: str | None = None) -> Player:
        device = f"device-{uuid.uuid4().hex}"
        body: dict[str, Any] = {"device_id": device}
        if name is not None:
            body["username"] = name
        reply = await self.http.post("/v1/auth/device", json=body)
        assert reply.status_code == 200, reply.text
        data = reply.json()
        return Player(
            data["user_id"], data["username"], data["access_token"], data["refresh_token"]
        )

    async def mint(
        self, player: Player, delta: int, *, leaderboard: str = "global", action_type: str = "score"
    ) -> str:
        reply = await self.http.post(
            "/v1/actions",
            json={
                "user_id": player.user_id,
                "leaderboard": leaderboard,
                "action_type": action_type,
                "delta": delta,
            },
            headers={"Authorization": f"Bearer {self.settings.service_key}"},
        )
        assert reply.status_code == 200, reply.text
        token: str = reply.json()["action_token"]
        return token

    async def submit(self, player: Player, token: str) -> httpx.Response:
        return await self.http.post(
            "/v1/scores/update", json={"action_token": token}, headers=player.auth
        )

    async def score(
        self, player: Player, delta: int, *, leaderboard: str = "global"
    ) -> dict[str, Any]:
        reply = await self.submit(player, await self.mint(player, delta, leaderboard=leaderboard))
        assert reply.status_code == 200, reply.text
        data: dict[str, Any] = reply.json()
        return data

    async def create_board(self, board_id: str, **fields: Any) -> httpx.Response:
        return await self.http.post(
            "/v1/admin/leaderboards",
            json={"id": board_id, **fields},
            headers={"Authorization": f"Bearer {self.settings.admin_token}"},
        )

    async def top(self, board: str = "global", **params: Any) -> dict[str, Any]:
        reply = await self.http.get(f"/v1/leaderboards/{board}/top", params=params)
        assert reply.status_code == 200, reply.text
        data: dict[str, Any] = reply.json()
        return data
