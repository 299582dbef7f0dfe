"""Access JWTs: issue and strict verification, synchronous, with the clock passed in."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import event, given, settings
from hypothesis import strategies as st

from protocol import errors
from protocol.jwt_keys import (
    MAX_TOKEN_CHARS,
    AccessClaims,
    JwtKeyring,
    SigningKey,
    hs256_kid,
    public_key_kid,
    public_key_kid_from_pem,
)

NOW = 1_800_000_000.0
SECRET = "a-test-secret-that-is-long-enough-for-hs256"
ISS = "podium"
AUD = "podium-players"
EXT_ISS = "https://auth.example.com/"
EXT_AUD = "leaderboards"
USER = str(uuid.UUID(int=42))
SESSION = "sess-1"


# ------------------------------------------------------------------- key material


@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hs_ring(**kwargs: Any) -> JwtKeyring:
    return JwtKeyring.from_config(hs256_secret=SECRET, issuer=ISS, audience=AUD, **kwargs)


def rs_ring(name: str = "a", **kwargs: Any) -> JwtKeyring:
    return JwtKeyring.from_config(
        hs256_secret=None,
        issuer=ISS,
        audience=AUD,
        algorithm="RS256",
        private_key_pem=private_pem(rsa_key(name)),
        **kwargs,
    )


def es_ring(name: str = "a", **kwargs: Any) -> JwtKeyring:
    return JwtKeyring.from_config(
        hs256_secret=None,
        issuer=ISS,
        audience=AUD,
        algorithm="ES256",
        private_key_pem=private_pem(ec_key(name)),
        **kwargs,
    )


def own_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": USER,
        "sid": SESSION,
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 600,
        "iss": ISS,
        "aud": AUD,
        "jti": "j1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed_segments(header: str, payload: str) -> str:
    mac = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(mac)}"


def hs_token(claims: dict[str, Any], *, kid: str | None = None) -> str:
    """A correctly signed HS256 token with any claims, even ones PyJWT would not encode."""
    header = b64url_json({"alg": "HS256", "kid": kid or hs_ring().signing_kid, "typ": "JWT"})
    return _signed_segments(header, b64url_json(claims))


def rejected(ring: JwtKeyring, token: str, *, now: float = NOW) -> str:
    with pytest.raises(errors.Unauthorized) as info:
        ring.verify(token, now=now)
    assert errors.http_status(info.value) == 401
    if len(token) > 3:
        assert token not in info.value.message
    return info.value.code


# ------------------------------------------------------------------- round trips


@pytest.mark.parametrize("make_ring", [hs_ring, rs_ring, es_ring], ids=["HS256", "RS256", "ES256"])
def test_issue_then_verify_round_trips(make_ring: Any) -> None:
    ring = make_ring()
    token = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=900)
    assert ring.verify(token, now=NOW + 10) == AccessClaims(
        user_id=USER, session_id=SESSION, issuer=ISS, expires_at=int(NOW) + 900
    )
    header = jwt.get_unverified_header(token)
    assert header["kid"] == ring.signing_kid
    assert header["alg"] == {"hs": "HS256", "rs": "RS256", "es": "ES256"}[ring.signing_kid[:2]]


def test_issued_token_carries_every_claim_and_a_fresh_jti() -> None:
    ring = hs_ring()
    first = ring.issue(user_id=USER, session_id=SESSION, now=NOW + 0.75, ttl_s=60)
    second = ring.issue(user_id=USER, session_id=SESSION, now=NOW + 0.75, ttl_s=60)
    claims = json.loads(unb64url(first.split(".")[1]))
    assert claims.keys() == {"sub", "sid", "iat", "nbf", "exp", "iss", "aud", "jti"}
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (int(NOW), int(NOW), int(NOW) + 60)
    assert (claims["iss"], claims["aud"], claims["sub"], claims["sid"]) == (ISS, AUD, USER, SESSION)
    assert claims["jti"] != json.loads(unb64url(second.split(".")[1]))["jti"]


def test_key_ids_are_derived_from_the_key() -> None:
    assert hs_ring().signing_kid == "hs-" + hashlib.sha256(SECRET.encode()).hexdigest()[:8]
    assert hs256_kid(SECRET.encode()) == hs_ring().signing_kid
    der = (
        rsa_key("a")
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert rs_ring().signing_kid == "rs-" + hashlib.sha256(der).hexdigest()[:8]
    assert es_ring().signing_kid.startswith("es-")
    assert es_ring().signing_kid == public_key_kid(ec_key("a").public_key())
    assert public_key_kid_from_pem(public_pem(rsa_key("a"))) == rs_ring().signing_kid


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"user_id": "not-a-uuid"}, "UUID"),
        ({"user_id": USER.upper()}, "UUID"),
        ({"session_id": ""}, "session"),
        ({"ttl_s": 0}, "lifetime"),
        ({"now": float("nan")}, "now"),
    ],
)
def test_issue_refuses_what_verify_would_reject(kwargs: dict[str, Any], fragment: str) -> None:
    arguments: dict[str, Any] = {"user_id": USER, "session_id": SESSION, "now": NOW, "ttl_s": 60}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        hs_ring().issue(**arguments)


# ------------------------------------------------------------------- algorithm attacks


@pytest.mark.parametrize("make_ring", [hs_ring, rs_ring], ids=["HS256", "RS256"])
@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_a_bad_algorithm(make_ring: Any, alg: str) -> None:
    ring = make_ring()
    header = b64url_json({"alg": alg, "kid": ring.signing_kid, "typ": "JWT"})
    token = f"{header}.{b64url_json(own_claims())}."
    assert rejected(ring, token) == "token_bad_algorithm"


@pytest.mark.parametrize("make_ring", [rs_ring, es_ring], ids=["RS256", "ES256"])
def test_hs256_signed_with_the_public_key_is_a_bad_algorithm(make_ring: Any) -> None:
    ring = make_ring()
    key = rsa_key("a") if ring.signing_kid.startswith("rs-") else ec_key("a")
    signing_input = (
        b64url_json({"alg": "HS256", "kid": ring.signing_kid, "typ": "JWT"})
        + "."
        + b64url_json(own_claims())
    )
    mac = hmac.new(public_pem(key), signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + b64url(mac)
    assert rejected(ring, token) == "token_bad_algorithm"


def test_another_asymmetric_algorithm_for_the_kid_is_a_bad_algorithm() -> None:
    ring = rs_ring()
    token = jwt.encode(
        own_claims(), rsa_key("a"), algorithm="PS256", headers={"kid": ring.signing_kid}
    )
    assert rejected(ring, token) == "token_bad_algorithm"


def test_a_key_embedded_in_the_header_is_not_trusted() -> None:
    ring = rs_ring()
    attacker = rsa_key("attacker")
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    token = jwt.encode(
        own_claims(), attacker, algorithm="RS256", headers={"kid": ring.signing_kid, "jwk": jwk}
    )
    assert rejected(ring, token) == "token_bad_signature"


# ------------------------------------------------------------------- time


def test_expiry_honours_the_leeway_boundary() -> None:
    ring = hs_ring(leeway_s=5.0)
    token = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    assert ring.verify(token, now=NOW + 60 + 5).expires_at == int(NOW) + 60
    assert rejected(ring, token, now=NOW + 60 + 5.001) == "token_expired"
    assert rejected(ring, token, now=NOW + 3600) == "token_expired"


def test_leeway_zero_is_exact() -> None:
    ring = hs_ring(leeway_s=0)
    token = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    assert ring.verify(token, now=NOW + 60).user_id == USER
    assert rejected(ring, token, now=NOW + 60.001) == "token_expired"
    assert rejected(ring, token, now=NOW - 0.001) == "token_not_yet_valid"


def test_not_yet_valid_honours_the_leeway_boundary() -> None:
    ring = hs_ring(leeway_s=5.0)
    token = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    assert ring.verify(token, now=NOW - 5).user_id == USER
    assert rejected(ring, token, now=NOW - 5.001) == "token_not_yet_valid"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_nbf_and_iat_each_count_for_not_yet_valid(claim: str) -> None:
    ring = hs_ring()
    token = hs_token(own_claims(**{"nbf": None, "iat": None, claim: int(NOW) + 100}))
    assert rejected(ring, token) == "token_not_yet_valid"
    assert ring.verify(token, now=NOW + 95).user_id == USER


def test_the_clock_is_the_callers_not_the_wall() -> None:
    ring = hs_ring()
    # Expired long ago by the wall clock, valid at the injected time.
    token = ring.issue(user_id=USER, session_id=SESSION, now=1_000_000_000, ttl_s=60)
    assert ring.verify(token, now=1_000_000_030).user_id == USER
    # Valid by the wall clock only.
    future = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    assert rejected(ring, future, now=1_000_000_030) == "token_not_yet_valid"


# ------------------------------------------------------------------- issuer, audience, key


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"iss": "someone-else"}, "token_wrong_issuer"),
        ({"iss": None}, "token_wrong_issuer"),
        ({"iss": 7}, "token_wrong_issuer"),
        ({"aud": "another-app"}, "token_wrong_audience"),
        ({"aud": None}, "token_wrong_audience"),
        ({"aud": ["another-app", "third"]}, "token_wrong_audience"),
    ],
)
def test_issuer_and_audience_must_be_the_keys(overrides: dict[str, Any], code: str) -> None:
    assert rejected(hs_ring(), hs_token(own_claims(**overrides))) == code


def test_an_audience_list_containing_ours_is_accepted() -> None:
    token = hs_token(own_claims(aud=["another-app", AUD]))
    assert hs_ring().verify(token, now=NOW).user_id == USER


def test_unknown_and_missing_kid() -> None:
    ring = hs_ring()
    assert rejected(ring, hs_token(own_claims(), kid="hs-00000000")) == "token_unknown_key"
    no_kid = jwt.encode(own_claims(), SECRET, algorithm="HS256")
    assert rejected(ring, no_kid) == "token_unknown_key"
    empty_kid = jwt.encode(own_claims(), SECRET, algorithm="HS256", headers={"kid": ""})
    assert rejected(ring, empty_kid) == "token_unknown_key"
    # Another ring's key is unknown here, even with the same issuer and audience.
    assert rejected(ring, rs_ring().issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)) == (
        "token_unknown_key"
    )


def test_a_non_string_kid_is_a_bad_header() -> None:
    header = b64url_json({"alg": "HS256", "kid": 12})
    assert rejected(hs_ring(), f"{header}.{b64url_json(own_claims())}.c2ln") == "token_malformed"


@pytest.mark.parametrize("make_ring", [hs_ring, rs_ring, es_ring], ids=["HS256", "RS256", "ES256"])
def test_tampering_breaks_the_signature(make_ring: Any) -> None:
    ring = make_ring()
    token = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    header, payload, signature = token.split(".")
    forged = json.loads(unb64url(payload))
    forged["sub"] = str(uuid.UUID(int=43))
    assert rejected(ring, f"{header}.{b64url_json(forged)}.{signature}") == "token_bad_signature"
    flipped = bytearray(unb64url(signature))
    flipped[0] ^= 1
    assert rejected(ring, f"{header}.{payload}.{b64url(bytes(flipped))}") == "token_bad_signature"
    assert rejected(ring, f"{header}.{payload}.") == "token_bad_signature"


# ------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"sub": None}, "no sub"),
        ({"sub": ""}, "empty sub"),
        ({"sub": 42}, "sub not a string"),
        ({"sub": "player-42"}, "own sub not a UUID"),
        ({"sub": USER.upper()}, "own sub not canonical"),
        ({"sub": "{" + USER + "}"}, "own sub in braces"),
        ({"sid": None}, "own token without sid"),
        ({"sid": ""}, "own token with empty sid"),
        ({"sid": 5}, "own token with sid not a string"),
        ({"exp": None}, "no exp"),
        ({"exp": "soon"}, "exp not a number"),
        ({"exp": True}, "exp a boolean"),
        ({"exp": 10**400}, "exp absurdly large"),
        ({"exp": -1}, "exp negative"),
        ({"nbf": "now"}, "nbf not a number"),
        ({"iat": [1]}, "iat not a number"),
        ({"jti": 5}, "jti not a string"),
    ],
)
def test_bad_claims_are_malformed(overrides: dict[str, Any], why: str) -> None:
    assert rejected(hs_ring(), hs_token(own_claims(**overrides))) == "token_malformed", why


def test_nan_times_are_malformed() -> None:
    # Python's json accepts NaN; a NaN exp would compare false to everything.
    ring = hs_ring()
    header = b64url_json({"alg": "HS256", "kid": ring.signing_kid})
    body = json.dumps(own_claims()).replace(str(int(NOW) + 600), "NaN")
    signing_input = f"{header}.{b64url(body.encode())}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert rejected(ring, f"{signing_input}.{b64url(mac)}") == "token_malformed"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "..",
        "Bearer abc.def.ghi",
        "abc.def.ghi",
        "é.é.é",
        "abc.def.gh i",
        "abc.def.ghi\n",
        "\x00.\x00.\x00",
        b64url(b"[1,2]") + "." + b64url_json({"sub": USER}) + ".c2ln",
        b64url(b"not json") + "." + b64url_json({"sub": USER}) + ".c2ln",
        b64url(b"\xff\xfe") + "." + b64url_json({"sub": USER}) + ".c2ln",
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    assert rejected(hs_ring(), token) == "token_malformed"


def test_a_correctly_signed_payload_that_is_not_an_object_is_malformed() -> None:
    header = b64url_json({"alg": "HS256", "kid": hs_ring().signing_kid})
    assert rejected(hs_ring(), _signed_segments(header, b64url(b"[1,2,3]"))) == "token_malformed"
    assert rejected(hs_ring(), _signed_segments(header, b64url(b"{nope"))) == "token_malformed"


def test_oversize_tokens_are_malformed_even_when_signed() -> None:
    ring = hs_ring()

    def padded(size: int) -> str:
        return hs_token(own_claims(pad="x" * size))

    fits = max(
        (padded(size) for size in range(2800, 3200) if len(padded(size)) <= MAX_TOKEN_CHARS),
        key=len,
    )
    assert len(fits) > MAX_TOKEN_CHARS - 4
    assert ring.verify(fits, now=NOW).user_id == USER
    too_big = padded(3200)
    assert len(too_big) > MAX_TOKEN_CHARS
    assert rejected(ring, too_big) == "token_malformed"
    assert rejected(ring, "a" * 100_000) == "token_malformed"


# ------------------------------------------------------------------- rotation


def test_rotation_verifies_tokens_of_the_new_and_the_old_key() -> None:
    old = rs_ring("old")
    old_token = old.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=600)
    new = es_ring(
        "new",
        extra_public_keys={
            public_key_kid_from_pem(public_pem(rsa_key("old"))): public_pem(rsa_key("old"))
        },
    )
    new_token = new.issue(user_id=USER, session_id="sess-2", now=NOW, ttl_s=600)
    assert jwt.get_unverified_header(new_token)["kid"] == new.signing_kid != old.signing_kid
    assert new.verify(old_token, now=NOW).session_id == SESSION
    assert new.verify(new_token, now=NOW).session_id == "sess-2"
    assert rejected(old, new_token) == "token_unknown_key"


def test_a_retired_key_still_expires_and_cannot_sign_for_other_claims() -> None:
    old = rs_ring("old")
    new = es_ring("new", extra_public_keys={old.signing_kid: public_pem(rsa_key("old"))})
    stale = old.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    assert rejected(new, stale, now=NOW + 120) == "token_expired"
    foreign = jwt.encode(
        own_claims(aud="elsewhere"), rsa_key("old"), "RS256", headers={"kid": old.signing_kid}
    )
    assert rejected(new, foreign) == "token_wrong_audience"


def test_switching_from_hs256_to_rs256_keeps_the_secret_for_verification() -> None:
    before = hs_ring()
    hs_token_ = before.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=600)
    after = JwtKeyring.from_config(
        hs256_secret=SECRET,
        issuer=ISS,
        audience=AUD,
        algorithm="RS256",
        private_key_pem=private_pem(rsa_key("a")),
    )
    assert after.signing_kid == rs_ring().signing_kid
    assert after.verify(hs_token_, now=NOW).user_id == USER
    assert jwt.get_unverified_header(
        after.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    )["alg"] == ("RS256")


# ------------------------------------------------------------------- external issuer


def external_jwks() -> dict[str, Any]:
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key("ext").public_key(), as_dict=True)
    es_jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec_key("ext").public_key(), as_dict=True)
    return {
        "keys": [
            {**rsa_jwk, "kid": "ext-rsa", "alg": "RS256", "use": "sig"},
            {**es_jwk, "kid": "ext-ec", "alg": "ES256"},
        ]
    }


def ext_ring(jwks: dict[str, Any] | None = None) -> JwtKeyring:
    return hs_ring(
        external_jwks=external_jwks() if jwks is None else jwks,
        external_issuer=EXT_ISS,
        external_audience=EXT_AUD,
    )


def ext_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": "auth0|player-42",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "iss": EXT_ISS,
        "aud": EXT_AUD,
        "sid": "their-session",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("kid", "alg", "key"),
    [("ext-rsa", "RS256", lambda: rsa_key("ext")), ("ext-ec", "ES256", lambda: ec_key("ext"))],
)
def test_external_tokens_verify_without_a_session(kid: str, alg: str, key: Any) -> None:
    token = jwt.encode(ext_claims(), key(), algorithm=alg, headers={"kid": kid})
    assert ext_ring().verify(token, now=NOW) == AccessClaims(
        user_id="auth0|player-42", session_id=None, issuer=EXT_ISS, expires_at=int(NOW) + 300
    )


def test_external_tokens_are_held_to_their_own_issuer_and_audience() -> None:
    ring = ext_ring()
    sign = functools.partial(jwt.encode, key=rsa_key("ext"), algorithm="RS256")
    headers = {"kid": "ext-rsa"}
    assert rejected(ring, sign(ext_claims(iss=ISS), headers=headers)) == "token_wrong_issuer"
    assert rejected(ring, sign(ext_claims(aud=AUD), headers=headers)) == "token_wrong_audience"
    assert rejected(ring, sign(ext_claims(sub=""), headers=headers)) == "token_malformed"
    assert rejected(ring, sign(ext_claims(exp=None), headers=headers)) == "token_malformed"
    assert rejected(ring, sign(ext_claims(), headers=headers), now=NOW + 400) == "token_expired"
    # Podium's key cannot vouch for the external issuer, nor the other way round.
    assert rejected(ring, hs_token(ext_claims())) == "token_wrong_issuer"
    assert rejected(ring, sign(own_claims(), headers=headers)) == "token_wrong_issuer"
    # Podium's own tokens still work beside them.
    own = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    assert ring.verify(own, now=NOW).session_id == SESSION


def test_external_key_with_hs256_presented_is_a_bad_algorithm() -> None:
    ring = ext_ring()
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key("ext").public_key())
    signing_input = (
        b64url_json({"alg": "HS256", "kid": "ext-rsa"}) + "." + b64url_json(ext_claims())
    )
    mac = hmac.new(rsa_jwk.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert rejected(ring, f"{signing_input}.{b64url(mac)}") == "token_bad_algorithm"


def test_encryption_keys_in_the_jwks_are_skipped() -> None:
    jwks = external_jwks()
    enc = {**jwks["keys"][0], "kid": "ext-enc", "alg": "RSA-OAEP", "use": "enc"}
    ring = ext_ring({"keys": [*jwks["keys"], enc]})
    token = jwt.encode(ext_claims(), rsa_key("ext"), algorithm="RS256", headers={"kid": "ext-enc"})
    assert rejected(ring, token) == "token_unknown_key"


def _jwks_with(**changes: Any) -> dict[str, Any]:
    first = {**external_jwks()["keys"][0], **changes}
    return {"keys": [{k: v for k, v in first.items() if v is not None}]}


@pytest.mark.parametrize(
    ("jwks", "fragment"),
    [
        (
            {"keys": [{"kty": "oct", "k": b64url(b"s" * 32), "kid": "sym", "alg": "HS256"}]},
            "HS256",
        ),
        (_jwks_with(alg="HS256"), "HS256"),
        (_jwks_with(alg="none"), "none"),
        (_jwks_with(alg=None), "alg"),
        (_jwks_with(kid=None), "kid"),
        (_jwks_with(kid=""), "kid"),
        (_jwks_with(alg="ES256"), "ES256"),
        (_jwks_with(n="!!!"), "RS256"),
        ({"keys": "nope"}, "keys"),
        ({"not_keys": []}, "keys"),
        ({"keys": []}, "no signing keys"),
        ({"keys": [42]}, "object"),
    ],
)
def test_bad_jwks_is_refused_at_start_up(jwks: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ext_ring(jwks)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"external_jwks": {"keys": []}, "external_issuer": EXT_ISS},
        {"external_jwks": {"keys": []}, "external_audience": EXT_AUD},
        {"external_issuer": EXT_ISS, "external_audience": EXT_AUD},
        {"external_jwks": external_jwks(), "external_issuer": ISS, "external_audience": EXT_AUD},
    ],
)
def test_external_issuer_settings_must_come_together(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="external"):
        hs_ring(**kwargs)


# ------------------------------------------------------------------- misconfiguration


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"algorithm": "ES256", "private_key_pem": private_pem(rsa_key("a"))}, "RS256"),
        ({"algorithm": "RS256", "private_key_pem": private_pem(ec_key("a"))}, "ES256"),
        ({"algorithm": "RS256"}, "PEM private key"),
        ({"algorithm": "RS256", "private_key_pem": b"-----BEGIN nonsense"}, "PEM"),
        ({"algorithm": "RS256", "private_key_pem": public_pem(rsa_key("a"))}, "PEM"),
        ({"algorithm": "HS512"}, "HS512"),
        ({"algorithm": "none"}, "none"),
        ({"private_key_pem": private_pem(rsa_key("a"))}, "HS256"),
        ({"hs256_secret": None}, "secret"),
        ({"hs256_secret": "too-short-16-chr"}, "at least 32"),
        ({"hs256_secret": public_pem(rsa_key("a")).decode()}, "usable"),
        ({"issuer": ""}, "issuer"),
        ({"audience": ""}, "audience"),
        ({"extra_public_keys": {"old": b"not a pem"}}, "'old'"),
        ({"extra_public_keys": {"old": private_pem(rsa_key("a"))}}, "'old'"),
        ({"extra_public_keys": {hs_ring().signing_kid: public_pem(rsa_key("a"))}}, "share"),
        ({"leeway_s": -1.0}, "leeway"),
        ({"leeway_s": float("inf")}, "leeway"),
    ],
)
def test_from_config_refuses_misconfiguration(kwargs: dict[str, Any], fragment: str) -> None:
    arguments: dict[str, Any] = {"hs256_secret": SECRET, "issuer": ISS, "audience": AUD}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        JwtKeyring.from_config(**arguments)


def test_from_config_refuses_small_rsa_keys_and_other_curves() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        JwtKeyring.from_config(
            hs256_secret=None,
            issuer=ISS,
            audience=AUD,
            algorithm="RS256",
            private_key_pem=private_pem(small),
        )
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        JwtKeyring.from_config(
            hs256_secret=None,
            issuer=ISS,
            audience=AUD,
            algorithm="ES256",
            private_key_pem=private_pem(p384),
        )


def _key(**changes: Any) -> SigningKey:
    fields: dict[str, Any] = {
        "kid": "k1",
        "algorithm": "RS256",
        "verify_key": rsa_key("a").public_key(),
        "sign_key": rsa_key("a"),
        "issuer": ISS,
        "audience": AUD,
    }
    fields.update(changes)
    return SigningKey(**fields)


@pytest.mark.parametrize(
    ("keys", "signing_kid", "fragment"),
    [
        ([_key()], "k2", "not among"),
        ([_key(sign_key=None)], "k1", "verify-only"),
        ([_key(), _key()], "k1", "share"),
        ([_key(algorithm="ES256")], "k1", "RS256"),
        ([_key(algorithm="PS256")], "k1", "PS256"),
        ([_key(sign_key=rsa_key("other"))], "k1", "not its public key"),
        ([_key(verify_key=rsa_key("a"))], "k1", "P-256"),
        ([_key(algorithm="HS256", verify_key="text", sign_key=None)], "k1", "bytes"),
        ([_key(algorithm="HS256", verify_key=b"k" * 32, sign_key=b"j" * 32)], "k1", "secret"),
        ([_key(kid="")], "", "key id"),
    ],
)
def test_the_constructor_checks_every_key(
    keys: list[SigningKey], signing_kid: str, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        JwtKeyring(keys, signing_kid=signing_kid)


def test_the_constructor_accepts_hand_built_keys() -> None:
    ring = JwtKeyring([_key()], signing_kid="k1", leeway_s=0)
    token = ring.issue(user_id=USER, session_id=SESSION, now=NOW, ttl_s=60)
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    assert ring.verify(token, now=NOW).user_id == USER


# ------------------------------------------------------------------- properties


@functools.cache
def mixed_ring() -> JwtKeyring:
    return ext_ring()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=5000))
def test_any_text_gives_claims_or_unauthorized(token: str) -> None:
    try:
        result = mixed_ring().verify(token, now=NOW)
    except errors.Unauthorized as exc:
        assert exc.code.startswith("token_")
    else:
        assert isinstance(result, AccessClaims)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_claim_names = st.sampled_from(["sub", "sid", "iat", "nbf", "exp", "iss", "aud", "jti", "x"])


@settings(max_examples=300, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jwk"]),
        st.sampled_from(["HS256", "RS256", "ES256", "none", "PS256", "ext-rsa", "ext-ec"]) | _json,
        max_size=4,
    ),
    use_real_key=st.booleans(),
    payload=st.one_of(
        st.dictionaries(_claim_names, _json, max_size=8),
        st.builds(lambda extra: {**own_claims(), **extra}, st.dictionaries(_claim_names, _json)),
        _json,
    ),
    signature=st.binary(max_size=300),
    sign_with_secret=st.booleans(),
)
def test_structured_tokens_give_claims_or_unauthorized(
    header: dict[str, Any],
    use_real_key: bool,
    payload: Any,
    signature: bytes,
    sign_with_secret: bool,
) -> None:
    ring = mixed_ring()
    if use_real_key:
        header = {**header, "kid": ring.signing_kid, "alg": "HS256"}
    header_segment = b64url(json.dumps(header).encode())
    payload_segment = b64url(json.dumps(payload).encode())
    if sign_with_secret:
        token = _signed_segments(header_segment, payload_segment)
    else:
        token = f"{header_segment}.{payload_segment}.{b64url(signature)}"
    try:
        result = ring.verify(token, now=NOW)
    except errors.Unauthorized as exc:
        event(exc.code)
        assert exc.code.startswith("token_")
    else:
        event("accepted")
        assert isinstance(result, AccessClaims)
        assert result.user_id == payload["sub"]
