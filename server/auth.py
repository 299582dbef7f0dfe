"""Accounts, sessions and the checking of JWTs on every request.

Podium issues a short-lived access JWT and an opaque refresh token per
session (``<session_id>.<secret>``; PostgreSQL keeps only sha256 of the
secret, and every refresh rotates it). Logout revokes the session row; every
node learns of it within ``revocation_poll_s`` through the catalog actor and
answers that session's tokens with 401 from then on.

Verifying a JWT costs ~0.1 ms, so verified claims are cached per token until
they expire; the cache is bounded, and revocation is checked on every use.
Password hashing (scrypt, ~50 ms) runs in worker threads, at most
:data:`_KDF_THREADS` at once, so it never stalls the event loop.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from actors.catalog import CatalogActor
from config import Settings
from protocol.errors import BadRequest, Forbidden, Unauthorized, Unprocessable
from protocol.jwt_keys import AccessClaims, JwtKeyring, public_key_kid_from_pem
from protocol.passwords import check_password_policy, hash_password, verify_password
from server.stores.pg_store import PostgresStore

_CACHE_MAX: Final = 100_000
_KDF_THREADS: Final = 2
_USERNAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{3,32}")
_DEVICE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{8,128}")
_EMAIL_RE: Final = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}")


@functools.cache
def _dummy_hash() -> str:
    # Checking a password against nobody's hash keeps unknown logins as slow
    # as wrong passwords, so timing does not tell which usernames exist.
    return hash_password("not-a-real-password")


def keyring_from_settings(settings: Settings) -> JwtKeyring:
    """The node's JWT keys, from the settings and the key files they name."""

    def read(path: Path) -> bytes:
        return path.read_bytes()

    extra = {}
    if settings.jwt_previous_public_key_files:
        for name in settings.jwt_previous_public_key_files.split(","):
            pem = read(Path(name.strip()))
            # The kid a token carries is derived from its key; keep it the same.
            extra[public_key_kid_from_pem(pem)] = pem
    jwks: dict[str, Any] | None = None
    if settings.jwt_external_jwks_file is not None:
        jwks = json.loads(read(settings.jwt_external_jwks_file))
    return JwtKeyring.from_config(
        hs256_secret=settings.jwt_secret if settings.jwt_algorithm == "HS256" else None,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        algorithm=settings.jwt_algorithm,
        private_key_pem=(
            read(settings.jwt_private_key_file) if settings.jwt_private_key_file else None
        ),
        extra_public_keys=extra,
        external_jwks=jwks,
        external_issuer=settings.jwt_external_issuer,
        external_audience=settings.jwt_external_audience,
        leeway_s=settings.jwt_leeway_s,
    )


@dataclass(frozen=True, slots=True)
class TokenReply:
    user_id: str
    username: str
    access_token: str
    refresh_token: str
    expires_in: int

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


class AuthService:
    """Sign-up, sign-in, refresh, logout, and :meth:`authenticate` for every request."""

    def __init__(
        self,
        settings: Settings,
        *,
        keyring: JwtKeyring,
        postgres: PostgresStore,
        catalog: CatalogActor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._keyring = keyring
        self._postgres = postgres
        self._catalog = catalog
        self._clock = clock
        self._verified: dict[str, AccessClaims] = {}
        self._kdf = trio.CapacityLimiter(_KDF_THREADS)

    # ---- every request

    def authenticate(self, authorization: str | None) -> AccessClaims:
        """The claims of ``Authorization: Bearer <jwt>``, or :class:`Unauthorized`."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized(
                "send the access token as 'Authorization: Bearer <token>'", code="token_missing"
            )
        return self.verify(authorization[7:].strip())

    def verify(self, token: str) -> AccessClaims:
        now = self._clock()
        claims = self._verified.get(token)
        if claims is None:
            claims = self._keyring.verify(token, now=now)
            if len(self._verified) >= _CACHE_MAX:
                self._verified.clear()
            self._verified[token] = claims
        elif now > claims.expires_at + self._settings.jwt_leeway_s:
            del self._verified[token]
            raise Unauthorized("the access token has expired", code="token_expired")
        if claims.session_id is not None and self._catalog.is_revoked(claims.session_id):
            raise Unauthorized("this session was logged out", code="session_revoked")
        return claims

    # ---- sign-up and sign-in

    async def device(self, body: dict[str, Any], *, meta: dict[str, Any]) -> TokenReply:
        device_id = _string(body, "device_id", _DEVICE_RE, "8-128 characters: A-Z a-z 0-9 _ . : -")
        username = body.get("username")
        if username is not None:
            username = _string(body, "username", _USERNAME_RE, "3-32 characters: A-Z a-z 0-9 _ . -")
        user_id, name = await self._postgres.device_user(device_id, username)
        return await self._new_session(user_id, name, meta | {"via": "device"})

    async def register(self, body: dict[str, Any], *, meta: dict[str, Any]) -> TokenReply:
        username = _string(body, "username", _USERNAME_RE, "3-32 characters: A-Z a-z 0-9 _ . -")
        email = _string(body, "email", _EMAIL_RE, "an email address").lower()
        password = body.get("password")
        if not isinstance(password, str):
            raise Unprocessable('"password" must be a string', code="invalid_value")
        check_password_policy(password)
        async with self._kdf:
            hashed = await trio.to_thread.run_sync(hash_password, password)
        user_id = await self._postgres.create_user(username, email, hashed)
        return await self._new_session(user_id, username, meta | {"via": "password"})

    async def login(self, body: dict[str, Any], *, meta: dict[str, Any]) -> TokenReply:
        login = body.get("username", body.get("email"))
        password = body.get("password")
        if not isinstance(login, str) or not isinstance(password, str) or len(login) > 254:
            raise Unprocessable(
                'send "username" (or "email") and "password" as strings', code="invalid_value"
            )
        user = await self._postgres.login_candidate(login)
        encoded = user["password_hash"] if user and user["password_hash"] else _dummy_hash()
        async with self._kdf:
            good = await trio.to_thread.run_sync(verify_password, password, encoded)
        if user is None or not user["password_hash"] or not good:
            raise Unauthorized("wrong username, email or password", code="bad_credentials")
        if user["status"] == "banned":
            raise Forbidden("this account is banned", code="user_banned")
        return await self._new_session(user["id"], user["username"], meta | {"via": "password"})

    async def refresh(self, body: dict[str, Any]) -> TokenReply:
        token = body.get("refresh_token")
        if not isinstance(token, str) or "." not in token or len(token) > 200:
            raise Unauthorized("the refresh token is not valid", code="refresh_invalid")
        session_id, _, secret = token.partition(".")
        if not re.fullmatch(r"[0-9a-f-]{36}", session_id):
            raise Unauthorized("the refresh token is not valid", code="refresh_invalid")
        new_secret = secrets.token_urlsafe(32)
        owner = await self._postgres.rotate_refresh(
            session_id, _sha256(secret), _sha256(new_secret)
        )
        if owner is None:
            raise Unauthorized(
                "the refresh token is not valid, expired or logged out", code="refresh_invalid"
            )
        user_id, username = owner
        return self._reply(user_id, username, session_id, new_secret)

    async def logout(self, claims: AccessClaims) -> None:
        if claims.session_id is None:
            raise BadRequest("tokens of an external issuer have no session", code="no_session")
        await self._postgres.revoke_session(claims.session_id)
        self._catalog.revoke_nowait(claims.session_id, float(claims.expires_at))

    async def _new_session(self, user_id: str, username: str, meta: dict[str, Any]) -> TokenReply:
        secret = secrets.token_urlsafe(32)
        session_id = await self._postgres.create_session(
            user_id,
            ttl_s=self._settings.jwt_refresh_ttl_s,
            refresh_hash=_sha256(secret),
            metadata=meta,
        )
        return self._reply(user_id, username, session_id, secret)

    def _reply(self, user_id: str, username: str, session_id: str, secret: str) -> TokenReply:
        ttl = self._settings.jwt_access_ttl_s
        access = self._keyring.issue(
            user_id=user_id, session_id=session_id, now=self._clock(), ttl_s=ttl
        )
        return TokenReply(
            user_id=user_id,
            username=username,
            access_token=access,
            refresh_token=f"{session_id}.{secret}",
            expires_in=ttl,
        )


def is_bearer(authorization: str | None, expected: str | None) -> bool:
    """Whether ``authorization`` is ``Bearer <expected>`` (compared in constant time)."""
    if expected is None or not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), expected.encode())


def check_bearer(authorization: str | None, expected: str | None, *, what: str) -> None:
    """Require ``Authorization: Bearer <expected>`` (service key, admin token)."""
    if not is_bearer(authorization, expected):
        raise Unauthorized(f"send the {what} as 'Authorization: Bearer <key>'", code="bad_key")


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _string(body: dict[str, Any], name: str, pattern: re.Pattern[str], expected: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Unprocessable(f'"{name}" must be {expected}', code="invalid_value")
    return value
