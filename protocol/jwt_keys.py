"""Access JWTs: issue Podium's own, verify them and an external issuer's, strictly.

A :class:`JwtKeyring` holds every key Podium trusts, each bound to exactly one
algorithm, issuer and audience, and is looked up by the token's ``kid``. One
of the keys signs what :meth:`JwtKeyring.issue` mints; the others are
verify-only: retired signing keys kept while their tokens run out (rotation),
and the public keys of an external issuer given as a JWKS.

:meth:`JwtKeyring.verify` never takes the algorithm from the token: the ``alg``
in its header must equal the algorithm configured for its ``kid``, which is
what defeats ``alg: none`` and the "HS256 signed with the RSA public key"
confusion. It raises :class:`~protocol.errors.Unauthorized` and nothing else
for anything a client can send, with one of these codes:

======================== ====================================================
``token_malformed``      not a JWT, over :data:`MAX_TOKEN_CHARS`, bad header,
                         ``sub``/``exp`` missing or of the wrong type; for
                         Podium's own tokens also ``sub`` not a canonical UUID
                         or ``sid`` missing
``token_unknown_key``    no ``kid`` in the header, or a ``kid`` not in the ring
``token_bad_algorithm``  ``alg`` is not the algorithm of that ``kid``
``token_bad_signature``  the signature does not verify
``token_expired``        ``exp + leeway < now``
``token_not_yet_valid``  ``nbf - leeway > now`` or ``iat - leeway > now``
``token_wrong_issuer``   ``iss`` missing or not the issuer of that key
``token_wrong_audience`` ``aud`` missing or not the audience of that key
======================== ====================================================

Time is the caller's: both :meth:`~JwtKeyring.issue` and
:meth:`~JwtKeyring.verify` take ``now`` in unix seconds. PyJWT checks only the
signature, issuer and audience; ``exp``/``nbf``/``iat`` are checked here against
``now``, because PyJWT reads the wall clock.

Messages are short sentences that never include the token or any key.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from protocol.errors import Unauthorized

MAX_TOKEN_CHARS: Final = 4096
SUPPORTED_ALGORITHMS: Final = frozenset({"HS256", "RS256", "ES256"})
#: HS256 secrets shorter than this are refused (RFC 7518 §3.2: at least the hash size).
MIN_HS256_SECRET_BYTES: Final = 32
MIN_RSA_KEY_BITS: Final = 2048

TOKEN_MALFORMED: Final = "token_malformed"
TOKEN_UNKNOWN_KEY: Final = "token_unknown_key"
TOKEN_BAD_ALGORITHM: Final = "token_bad_algorithm"
TOKEN_BAD_SIGNATURE: Final = "token_bad_signature"
TOKEN_EXPIRED: Final = "token_expired"
TOKEN_NOT_YET_VALID: Final = "token_not_yet_valid"
TOKEN_WRONG_ISSUER: Final = "token_wrong_issuer"
TOKEN_WRONG_AUDIENCE: Final = "token_wrong_audience"

# Three base64url segments; the signature may be empty so that an `alg: none`
# token is reported as a bad algorithm rather than as garbage.
_COMPACT_JWT_RE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_CANONICAL_UUID_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
# 9999-12-31T23:59:59Z. Bounding NumericDates keeps float arithmetic on them exact
# enough and stops a 3,000-digit integer from overflowing it.
_MAX_NUMERIC_DATE: Final = 253_402_300_799
_JWKS_ALGORITHMS: Final = frozenset({"RS256", "ES256"})


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says about its bearer."""

    user_id: str
    #: Podium's own tokens always carry their session; external ones never do.
    session_id: str | None
    issuer: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key Podium verifies with, and maybe signs with.

    ``verify_key`` and ``sign_key`` are bytes for HS256 and cryptography key
    objects (public, private) for RS256/ES256; ``sign_key`` is None for a
    verify-only key. A token verified with this key must carry exactly this
    ``issuer`` and ``audience``.
    """

    kid: str
    algorithm: str
    verify_key: Any
    sign_key: Any | None
    issuer: str
    audience: str


def _reject(code: str, message: str) -> NoReturn:
    raise Unauthorized(message, code=code)


def hs256_kid(secret: bytes) -> str:
    """The key id of an HS256 secret: ``"hs-"`` and 8 hex digits of its SHA-256."""
    return "hs-" + hashlib.sha256(secret).hexdigest()[:8]


def public_key_kid(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """The key id of an RSA or EC public key: ``"rs-"``/``"es-"`` and 8 hex digits.

    The digits are the start of the SHA-256 of the key's DER
    SubjectPublicKeyInfo, so every node (and every tool) derives the same kid
    from the same key, and a retired key's kid can be recomputed from its PEM.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    prefix = "rs-" if isinstance(public_key, rsa.RSAPublicKey) else "es-"
    return prefix + hashlib.sha256(der).hexdigest()[:8]


def public_key_kid_from_pem(pem: bytes) -> str:
    """:func:`public_key_kid` of a PEM public key; ValueError if it is not RSA or EC P-256."""
    key = _load_public_pem(pem, what="the public key")
    _algorithm_of_public_key(key, what="the public key")
    return public_key_kid(key)


class JwtKeyring:
    """The keys Podium trusts, one signing key among them; issues and verifies access JWTs.

    Build it once at start-up (usually with :meth:`from_config`) and share it:
    it is immutable. The constructor validates every key against its algorithm
    and raises ValueError on any misconfiguration.

    Tokens whose key has the signing key's issuer are Podium's own: their
    ``sub`` must be a canonical UUID and they must carry a ``sid``.
    """

    def __init__(
        self, keys: Sequence[SigningKey], *, signing_kid: str, leeway_s: float = 5.0
    ) -> None:
        if not math.isfinite(leeway_s) or leeway_s < 0:
            raise ValueError("the JWT leeway must be a finite number of seconds, zero or more")
        by_kid: dict[str, SigningKey] = {}
        for key in keys:
            _check_key(key)
            if key.kid in by_kid:
                raise ValueError(f"two JWT keys share the key id {key.kid!r}")
            by_kid[key.kid] = key
        signing = by_kid.get(signing_kid)
        if signing is None:
            raise ValueError(f"the signing key id {signing_kid!r} is not among the JWT keys")
        if signing.sign_key is None:
            raise ValueError(f"the JWT key {signing_kid!r} is verify-only and cannot sign")
        self._keys: Final = by_kid
        self._signing: Final = signing
        self._sign_key: Final[Any] = signing.sign_key
        self._leeway_s: Final = float(leeway_s)

    @classmethod
    def from_config(
        cls,
        *,
        hs256_secret: str | None,
        issuer: str,
        audience: str,
        private_key_pem: bytes | None = None,
        algorithm: str = "HS256",
        extra_public_keys: Mapping[str, bytes] = {},
        external_jwks: Mapping[str, Any] | None = None,
        external_issuer: str | None = None,
        external_audience: str | None = None,
        leeway_s: float = 5.0,
    ) -> JwtKeyring:
        """Build the keyring from settings; ValueError says what is wrong with them.

        Podium signs with HS256 from ``hs256_secret`` (kid :func:`hs256_kid`; at
        least :data:`MIN_HS256_SECRET_BYTES` bytes of UTF-8), or with RS256/ES256
        from the unencrypted ``private_key_pem`` (kid :func:`public_key_kid`);
        ``algorithm`` must match the key. When signing with RS256/ES256, a
        ``hs256_secret`` given too stays as a verify-only key, so tokens issued
        before the switch keep working until they expire.

        ``extra_public_keys`` maps kid to PEM public key: retired signing keys,
        verify-only, with Podium's issuer and audience; their algorithm follows
        from the key type. The kid must be the one the key signed with, which
        for a key Podium generated is :func:`public_key_kid_from_pem` of it.

        ``external_jwks`` is a JWKS (``{"keys": [...]}``) of another issuer,
        whose tokens must carry ``external_issuer`` and ``external_audience``;
        each key needs a ``kid`` and an ``alg`` of RS256 or ES256. Keys marked
        ``"use": "enc"`` are skipped, being encryption keys.
        """
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise ValueError(
                f"the JWT algorithm must be one of HS256, RS256, ES256, not {algorithm!r}"
            )
        _check_claim_value(issuer, "the JWT issuer")
        _check_claim_value(audience, "the JWT audience")
        keys: list[SigningKey] = []

        secret = None if hs256_secret is None else hs256_secret.encode("utf-8")
        if secret is not None:
            keys.append(
                SigningKey(
                    kid=hs256_kid(secret),
                    algorithm="HS256",
                    verify_key=secret,
                    sign_key=secret if algorithm == "HS256" else None,
                    issuer=issuer,
                    audience=audience,
                )
            )
        if algorithm == "HS256":
            if secret is None:
                raise ValueError("JWT algorithm HS256 needs a secret (PODIUM_JWT_SECRET)")
            if private_key_pem is not None:
                raise ValueError(
                    "a JWT private key is set but the JWT algorithm is HS256; "
                    "set the algorithm to RS256 or ES256 to sign with it"
                )
            signing_kid = keys[0].kid
        else:
            if private_key_pem is None:
                raise ValueError(f"JWT algorithm {algorithm} needs a PEM private key")
            private = _load_private_pem(private_key_pem)
            public = private.public_key()
            key_algorithm = _algorithm_of_public_key(public, what="the JWT private key")
            if key_algorithm != algorithm:
                raise ValueError(
                    f"the JWT algorithm is {algorithm} but the private key is for {key_algorithm}"
                )
            signing_kid = public_key_kid(public)
            keys.append(
                SigningKey(
                    kid=signing_kid,
                    algorithm=algorithm,
                    verify_key=public,
                    sign_key=private,
                    issuer=issuer,
                    audience=audience,
                )
            )

        for kid, pem in extra_public_keys.items():
            what = f"the previous JWT public key {kid!r}"
            public = _load_public_pem(pem, what=what)
            keys.append(
                SigningKey(
                    kid=kid,
                    algorithm=_algorithm_of_public_key(public, what=what),
                    verify_key=public,
                    sign_key=None,
                    issuer=issuer,
                    audience=audience,
                )
            )

        if external_jwks is None:
            if external_issuer is not None or external_audience is not None:
                raise ValueError("an external JWT issuer or audience is set without its JWKS")
        else:
            if external_issuer is None or external_audience is None:
                raise ValueError("an external JWKS needs both the external issuer and audience")
            _check_claim_value(external_issuer, "the external JWT issuer")
            _check_claim_value(external_audience, "the external JWT audience")
            if external_issuer == issuer:
                raise ValueError(
                    "the external JWT issuer must differ from Podium's own issuer, "
                    "or its tokens would be held to Podium's rules"
                )
            keys.extend(_keys_from_jwks(external_jwks, external_issuer, external_audience))

        return cls(keys, signing_kid=signing_kid, leeway_s=leeway_s)

    @property
    def signing_kid(self) -> str:
        """The kid of the key :meth:`issue` signs with."""
        return self._signing.kid

    def issue(self, *, user_id: str, session_id: str, now: float, ttl_s: int) -> str:
        """A new access JWT for ``user_id`` in ``session_id``, valid ``ttl_s`` seconds from ``now``.

        Claims: ``sub``, ``sid``, ``iat``, ``nbf``, ``exp``, ``iss``, ``aud`` and a
        random ``jti``; the header carries the signing key's ``kid`` and ``alg``.
        ``user_id`` must be a canonical (lower-case, hyphenated) UUID.
        """
        if not isinstance(user_id, str) or not _CANONICAL_UUID_RE.fullmatch(user_id):
            raise ValueError("the user id of an access token must be a canonical UUID")
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("the session id of an access token must be a non-empty string")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
            raise ValueError("the lifetime of an access token must be a positive integer")
        issued_at = _whole_seconds(now)
        key = self._signing
        claims = {
            "sub": user_id,
            "sid": session_id,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + ttl_s,
            "iss": key.issuer,
            "aud": key.audience,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self._sign_key, algorithm=key.algorithm, headers={"kid": key.kid})

    def verify(self, token: str, *, now: float) -> AccessClaims:
        """The claims of ``token`` if it is valid at ``now``; :class:`Unauthorized` otherwise.

        Costs one signature check (about 90 µs for HS256, 175 µs for ES256), so
        callers verify once per connection or cache claims until they expire.
        """
        if not math.isfinite(now):
            raise ValueError("now must be a finite unix time")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            _reject(TOKEN_MALFORMED, "the access token is not a well-formed JWT")
        if not _COMPACT_JWT_RE.fullmatch(token):
            _reject(TOKEN_MALFORMED, "the access token is not a well-formed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.exceptions.PyJWTError:
            _reject(TOKEN_MALFORMED, "the access token's header is not valid")

        kid = header.get("kid")
        if not kid:
            _reject(TOKEN_UNKNOWN_KEY, "the access token does not name its signing key")
        key = self._keys.get(kid)
        if key is None:
            _reject(
                TOKEN_UNKNOWN_KEY,
                "the access token was signed with a key this server does not know",
            )
        if header.get("alg") != key.algorithm:
            _reject(TOKEN_BAD_ALGORITHM, "the access token's algorithm is not the one of its key")

        payload = self._decode(token, key)
        expires_at = _numeric_date(payload, "exp")
        if expires_at is None:
            _reject(TOKEN_MALFORMED, "the access token has no 'exp' claim")
        not_before = _numeric_date(payload, "nbf")
        issued_at = _numeric_date(payload, "iat")
        user_id = payload.get("sub")
        if not isinstance(user_id, str) or not user_id:
            _reject(TOKEN_MALFORMED, "the access token does not say whose it is")
        session_id: str | None = None
        if key.issuer == self._signing.issuer:
            if not _CANONICAL_UUID_RE.fullmatch(user_id):
                _reject(TOKEN_MALFORMED, "the access token's subject is not a user id")
            sid = payload.get("sid")
            if not isinstance(sid, str) or not sid:
                _reject(TOKEN_MALFORMED, "the access token does not name its session")
            session_id = sid
        # An external issuer's "sid" means nothing in Podium's USER_SESSIONS, so it is
        # not passed on: session_id None says "no Podium session to check for revocation".

        leeway = self._leeway_s
        if expires_at + leeway < now:
            _reject(TOKEN_EXPIRED, "the access token has expired")
        if (not_before is not None and not_before - leeway > now) or (
            issued_at is not None and issued_at - leeway > now
        ):
            _reject(TOKEN_NOT_YET_VALID, "the access token is not valid yet")
        return AccessClaims(
            user_id=user_id,
            session_id=session_id,
            issuer=key.issuer,
            expires_at=math.floor(expires_at),
        )

    def _decode(self, token: str, key: SigningKey) -> dict[str, Any]:
        """Check the signature, issuer and audience with PyJWT; times are ours to check."""
        try:
            return jwt.decode(
                token,
                key.verify_key,
                algorithms=[key.algorithm],
                audience=key.audience,
                issuer=key.issuer,
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_iss": True,
                    "verify_aud": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    "require": ["iss", "aud", "sub", "exp"],
                },
            )
        except jwt.exceptions.InvalidSignatureError:
            _reject(TOKEN_BAD_SIGNATURE, "the access token's signature is not valid")
        except jwt.exceptions.InvalidAlgorithmError:
            _reject(TOKEN_BAD_ALGORITHM, "the access token's algorithm is not the one of its key")
        except jwt.exceptions.InvalidIssuerError:
            _reject(
                TOKEN_WRONG_ISSUER,
                "the access token comes from an issuer this server does not trust",
            )
        except jwt.exceptions.InvalidAudienceError:
            _reject(TOKEN_WRONG_AUDIENCE, "the access token is meant for another audience")
        except jwt.exceptions.MissingRequiredClaimError as exc:
            if exc.claim == "iss":
                _reject(TOKEN_WRONG_ISSUER, "the access token does not name its issuer")
            if exc.claim == "aud":
                _reject(TOKEN_WRONG_AUDIENCE, "the access token does not name its audience")
            _reject(TOKEN_MALFORMED, f"the access token is missing its {exc.claim!r} claim")
        except jwt.exceptions.InvalidTokenError:
            _reject(TOKEN_MALFORMED, "the access token is not a well-formed JWT")


def _whole_seconds(now: float) -> int:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError("now must be a finite unix time")
    return math.floor(now)


def _numeric_date(payload: Mapping[str, Any], claim: str) -> float | None:
    """The NumericDate ``claim`` as a float, None if absent; token_malformed if not a time."""
    value = payload.get(claim)
    if value is None:
        return None
    # The range check also refuses NaN and infinity, and compares a huge int
    # exactly instead of overflowing on its way to float.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= _MAX_NUMERIC_DATE
    ):
        _reject(TOKEN_MALFORMED, f"the access token's {claim!r} claim is not a valid time")
    return float(value)


def _check_claim_value(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")


def _load_private_pem(pem: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            "the JWT private key could not be read as an unencrypted PEM private key"
        ) from None
    if not isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("the JWT private key must be an RSA or EC P-256 key")
    return private


def _load_public_pem(pem: bytes, *, what: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError(f"{what} could not be read as a PEM public key") from None
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"{what} must be an RSA or EC P-256 key")
    return public


def _algorithm_of_public_key(public: object, *, what: str) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError(f"{what} must be an RSA or EC P-256 key")


def _keys_from_jwks(jwks: Mapping[str, Any], issuer: str, audience: str) -> list[SigningKey]:
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError('the external JWKS must be an object with a "keys" list')
    keys: list[SigningKey] = []
    for index, entry in enumerate(entries):
        where = f"key {index} of the external JWKS"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} is not an object")
        if entry.get("use") == "enc":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f'{where} has no "kid"')
        alg = entry.get("alg")
        if alg not in _JWKS_ALGORITHMS:
            raise ValueError(
                f'{where} ({kid!r}) must have "alg" RS256 or ES256, not {alg!r}; '
                "symmetric and unsigned algorithms are never accepted from a JWKS"
            )
        try:
            jwk = jwt.PyJWK.from_dict(dict(entry), algorithm=alg)
        except (jwt.exceptions.PyJWTError, ValueError, TypeError):
            raise ValueError(f"{where} ({kid!r}) is not a valid {alg} key") from None
        public = jwk.key.public_key() if hasattr(jwk.key, "private_numbers") else jwk.key
        if _algorithm_of_public_key(public, what=f"{where} ({kid!r})") != alg:
            raise ValueError(f"{where} ({kid!r}) is not a {alg} key")
        keys.append(
            SigningKey(
                kid=kid,
                algorithm=alg,
                verify_key=public,
                sign_key=None,
                issuer=issuer,
                audience=audience,
            )
        )
    if not keys:
        raise ValueError("the external JWKS has no signing keys")
    return keys


def _check_key(key: SigningKey) -> None:
    """ValueError unless ``key``'s material fits its algorithm (and its sign key its verify key)."""
    if not isinstance(key.kid, str) or not key.kid:
        raise ValueError("every JWT key needs a non-empty key id")
    where = f"the JWT key {key.kid!r}"
    if key.algorithm not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"{where} has algorithm {key.algorithm!r}; use HS256, RS256 or ES256")
    _check_claim_value(key.issuer, f"the issuer of {where}")
    _check_claim_value(key.audience, f"the audience of {where}")
    if key.algorithm == "HS256":
        if not isinstance(key.verify_key, bytes):
            raise ValueError(f"{where} is HS256, so its key must be bytes")
        if len(key.verify_key) < MIN_HS256_SECRET_BYTES:
            raise ValueError(
                f"{where} is an HS256 secret of {len(key.verify_key)} bytes; "
                f"it needs at least {MIN_HS256_SECRET_BYTES}"
            )
        if key.sign_key is not None and key.sign_key != key.verify_key:
            raise ValueError(f"{where} is HS256, so it must sign with the secret it verifies with")
    else:
        expected = _algorithm_of_public_key(key.verify_key, what=where)
        if expected != key.algorithm:
            raise ValueError(f"{where} is configured for {key.algorithm} but is a {expected} key")
        if (
            isinstance(key.verify_key, rsa.RSAPublicKey)
            and key.verify_key.key_size < MIN_RSA_KEY_BITS
        ):
            raise ValueError(f"{where} is an RSA key under {MIN_RSA_KEY_BITS} bits")
        if key.sign_key is not None:
            public = getattr(key.sign_key, "public_key", None)
            if public is None or public_key_kid(public()) != public_key_kid(key.verify_key):
                raise ValueError(f"{where} signs with a private key that is not its public key's")
    try:
        # The same preparation PyJWT does on every call, so a key it would refuse
        # (a PEM used as an HMAC secret, an EC key on the wrong curve) fails now.
        jwt.get_algorithm_by_name(key.algorithm).prepare_key(key.verify_key)
    except (jwt.exceptions.PyJWTError, ValueError, TypeError):
        raise ValueError(f"{where} is not usable for {key.algorithm}") from None
