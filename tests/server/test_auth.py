"""Accounts, sessions and strict JWT checks, through the HTTP API of real nodes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config import Settings
from protocol.jwt_keys import hs256_kid
from tests.api import Player
from tests.harness import node_api


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(player: Player, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    session = jwt.decode(player.access_token, options={"verify_signature": False})["sid"]
    return {
        "sub": player.user_id,
        "sid": session,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "iss": "podium",
        "aud": "podium",
    } | changes


async def history_status(api: Any, player: Player, token: str) -> tuple[int, str | None]:
    reply = await api.http.get(
        f"/v1/users/{player.user_id}/history", headers={"Authorization": f"Bearer {token}"}
    )
    code = reply.json().get("error", {}).get("code") if reply.status_code != 200 else None
    return reply.status_code, code


async def test_register_login_refresh_and_logout(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        body = {"username": "ann", "email": "Ann@Example.com", "password": "correct horse"}
        created = await api.http.post("/v1/auth/register", json=body)
        assert created.status_code == 201, created.text
        tokens = created.json()
        assert set(tokens) >= {"user_id", "username", "access_token", "refresh_token", "expires_in"}
        assert tokens["expires_in"] == settings.jwt_access_ttl_s

        again = await api.http.post("/v1/auth/register", json=body | {"email": "b@example.com"})
        assert (again.status_code, again.json()["error"]["code"]) == (409, "username_taken")
        weak = await api.http.post(
            "/v1/auth/register", json={"username": "bob", "email": "b@x.io", "password": "short"}
        )
        assert (weak.status_code, weak.json()["error"]["code"]) == (422, "weak_password")

        by_name = await api.http.post(
            "/v1/auth/login", json={"username": "ann", "password": "correct horse"}
        )
        assert by_name.status_code == 200
        by_email = await api.http.post(
            "/v1/auth/login", json={"email": "ann@example.com", "password": "correct horse"}
        )
        assert by_email.json()["user_id"] == tokens["user_id"]
        for wrong in ({"username": "ann", "password": "wrong horse"},
                      {"username": "nobody", "password": "correct horse"}):  # fmt: skip
            denied = await api.http.post("/v1/auth/login", json=wrong)
            assert (denied.status_code, denied.json()["error"]["code"]) == (401, "bad_credentials")

        refreshed = await api.http.post(
            "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 200
        assert refreshed.json()["refresh_token"] != tokens["refresh_token"]
        # Refresh tokens rotate: the old one is spent.
        stale = await api.http.post(
            "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert (stale.status_code, stale.json()["error"]["code"]) == (401, "refresh_invalid")

        access = refreshed.json()["access_token"]
        bye = await api.http.post("/v1/auth/logout", headers={"Authorization": f"Bearer {access}"})
        assert bye.status_code == 200
        player = Player(tokens["user_id"], "ann", access, "")
        assert await history_status(api, player, access) == (401, "session_revoked")
        after = await api.http.post(
            "/v1/auth/refresh", json={"refresh_token": refreshed.json()["refresh_token"]}
        )
        assert after.status_code == 401


async def test_device_auth_finds_the_same_user_again(settings: Settings) -> None:
    async with node_api(settings) as (api, _, _):
        first = await api.http.post("/v1/auth/device", json={"device_id": "device-0001"})
        second = await api.http.post("/v1/auth/device", json={"device_id": "device-0001"})
        assert first.json()["user_id"] == second.json()["user_id"]
        assert first.json()["username"].startswith("player-")
        bad = await api.http.post("/v1/auth/device", json={"device_id": "x"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_value")


async def test_logout_reaches_another_node_within_a_second(settings: Settings) -> None:
    other = settings.replace(node_id="test-node-b")
    async with node_api(settings) as (api_a, _, _), node_api(other) as (api_b, _, _):
        ann = await api_a.player()
        assert await history_status(api_b, ann, ann.access_token) == (200, None)
        assert (await api_a.http.post("/v1/auth/logout", headers=ann.auth)).status_code == 200
        began = trio.current_time()
        with trio.fail_after(1.0):
            while await history_status(api_b, ann, ann.access_token) == (200, None):  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert await history_status(api_b, ann, ann.access_token) == (401, "session_revoked")
        assert trio.current_time() - began < 1.0


async def test_tampered_and_foreign_jwts_get_401(settings: Settings) -> None:
    assert settings.jwt_secret is not None
    secret = settings.jwt_secret.encode()
    kid = hs256_kid(secret)
    async with node_api(settings) as (api, _, _):
        ann = await api.player()

        def hs256(claims: dict[str, Any], **header: Any) -> str:
            return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid} | header)

        header = b64(json.dumps({"alg": "none", "kid": kid, "typ": "JWT"}).encode())
        alg_none = f"{header}.{b64(json.dumps(claims_for(ann)).encode())}."
        now = int(time.time())
        cases = {
            "token_bad_algorithm": alg_none,
            "token_expired": hs256(claims_for(ann, exp=now - 60, iat=now - 400, nbf=now - 400)),
            "token_not_yet_valid": hs256(claims_for(ann, nbf=now + 600, iat=now + 600)),
            "token_wrong_issuer": hs256(claims_for(ann, iss="someone-else")),
            "token_wrong_audience": hs256(claims_for(ann, aud="another-game")),
            "token_unknown_key": hs256(claims_for(ann), kid="hs-00000000"),
            "token_bad_signature": jwt.encode(
                claims_for(ann), b"x" * 32, algorithm="HS256", headers={"kid": kid}
            ),
        }
        for code, token in cases.items():
            assert await history_status(api, ann, token) == (401, code), code
        # The genuine token still works.
        assert await history_status(api, ann, ann.access_token) == (200, None)


@pytest.fixture
def rsa_key_file(tmp_path: Path) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwt-key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, public


async def test_hs256_signed_with_the_public_key_is_refused(
    settings: Settings, rsa_key_file: tuple[Path, bytes]
) -> None:
    path, public_pem = rsa_key_file
    rs256 = settings.replace(jwt_algorithm="RS256", jwt_private_key_file=path)
    async with node_api(rs256) as (api, _, _):
        ann = await api.player()
        header = jwt.get_unverified_header(ann.access_token)
        assert header["alg"] == "RS256"
        # The classic confusion attack: HMAC keyed with the public key, RS256's kid.
        forged_header = b64(json.dumps({"alg": "HS256", "kid": header["kid"]}).encode())
        payload = b64(json.dumps(claims_for(ann)).encode())
        signature = hmac.new(public_pem, f"{forged_header}.{payload}".encode(), hashlib.sha256)
        forged = f"{forged_header}.{payload}.{b64(signature.digest())}"
        assert await history_status(api, ann, forged) == (401, "token_bad_algorithm")
        assert await history_status(api, ann, ann.access_token) == (200, None)


async def test_tokens_for_unknown_users_cannot_score(settings: Settings) -> None:
    assert settings.jwt_secret is not None
    async with node_api(settings) as (api, _, _):
        ann = await api.player()
        ghost = Player(str(uuid.uuid4()), "ghost", "", "")
        claims = claims_for(ann, sub=ghost.user_id)
        ghost.access_token = jwt.encode(
            claims,
            settings.jwt_secret.encode(),
            algorithm="HS256",
            headers={"kid": hs256_kid(settings.jwt_secret.encode())},
        )
        token = await api.mint(ghost, 5)
        reply = await api.submit(ghost, token)
        assert (reply.status_code, reply.json()["error"]["code"]) == (401, "unknown_user")
