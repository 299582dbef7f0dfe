"""Action tokens, sans-IO: synchronous tests, no event loop, the clock passed in.

``_forge`` below is a second, independent implementation of the documented
format in plain stdlib, so these tests pin the bytes on the wire and not just
agreement of :mod:`protocol.action_token` with itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import errors
from protocol.action_token import (
    ACTION_TYPE_UNKNOWN,
    BAD_SIGNATURE,
    DELTA_OUT_OF_RANGE,
    EXPIRED,
    MALFORMED,
    MAX_TOKEN_CHARS,
    NOT_YET_VALID,
    UNKNOWN_KEY,
    ActionClaims,
    ActionTypeRule,
    check_delta,
    mint,
    new_nonce,
    parse_action_types,
    sign,
    token_hash,
    verify,
)
from protocol.errors import BadRequest, Unprocessable

ROOT = Path(__file__).parents[2]
VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "action_token_vectors.json").read_text("utf-8")
)
DOCS = (ROOT / "docs" / "action-tokens.md").read_text("utf-8")

KEY = "podium-test-key-0123456789"
OTHER_KEY = "podium-test-key-abcdefghij"
KEYS = {"k1": KEY}
NOW = 1_700_000_000
LIFETIME_S = 300
LEEWAY_S = 5
CLAIMS = ActionClaims(
    user_id="3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    leaderboard="global",
    action_type="score",
    delta=250,
    nonce="abcdefghijklmnopqrstuvwx",
    issued_at=NOW,
    expires_at=NOW + LIFETIME_S,
)
VERIFY_CODES = {MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE, NOT_YET_VALID, EXPIRED}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _fields(claims: ActionClaims) -> list[str]:
    return [
        claims.user_id,
        claims.leaderboard,
        claims.action_type,
        str(claims.delta),
        claims.nonce,
        str(claims.issued_at),
        str(claims.expires_at),
    ]


def _forge(fields: list[str] | bytes, *, kid: str = "k1", key: str = KEY, tag: str = "pat1") -> str:
    """A correctly signed token for any payload, valid or not, by the documented recipe."""
    raw = fields if isinstance(fields, bytes) else "\n".join(fields).encode("utf-8")
    signing_input = f"{tag}.{kid}.{_b64(raw)}"
    mac = hmac.digest(key.encode("utf-8"), signing_input.encode("ascii"), "sha256")
    return f"{signing_input}.{_b64(mac)}"


def _verify(token: Any, *, now: float = NOW, keys: dict[str, str] = KEYS, **kw: Any) -> Any:
    kw.setdefault("max_lifetime_s", LIFETIME_S)
    kw.setdefault("leeway_s", LEEWAY_S)
    return verify(token, keys=keys, now=now, **kw)


def _code(token: Any, **kw: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        _verify(token, **kw)
    assert type(caught.value) is BadRequest
    assert KEY not in caught.value.message and OTHER_KEY not in caught.value.message
    return caught.value.code


def _claims(vector: dict[str, Any]) -> ActionClaims:
    return ActionClaims(**vector["claims"])


# ---------------------------------------------------------------- test vectors


def test_vectors_cover_what_they_must() -> None:
    valid, invalid = VECTORS["valid"], VECTORS["invalid"]
    assert len(valid) >= 4 and len(invalid) >= 6
    assert any(v["claims"]["delta"] < 0 for v in valid)
    assert any({"_", "-"} <= set(v["claims"]["leaderboard"]) for v in valid)
    assert {v["expected_code"] for v in invalid} == VERIFY_CODES


@pytest.mark.parametrize(
    "vector", VECTORS["valid"], ids=lambda v: f"{v['kid']}-{v['claims']['action_type']}"
)
def test_sign_reproduces_every_valid_vector(vector: dict[str, Any]) -> None:
    claims = _claims(vector)
    token = sign(claims, kid=vector["kid"], key=vector["key"])
    assert token == vector["token"]
    assert token == _forge(_fields(claims), kid=vector["kid"], key=vector["key"])
    assert token.rpartition(".")[0] == vector["signing_input"]


@pytest.mark.parametrize(
    "vector", VECTORS["valid"], ids=lambda v: f"{v['kid']}-{v['claims']['action_type']}"
)
def test_verify_returns_the_claims_of_every_valid_vector(vector: dict[str, Any]) -> None:
    claims = verify(
        vector["token"],
        keys={vector["kid"]: vector["key"]},
        now=vector["claims"]["issued_at"],
        **VECTORS["verify"],
    )
    assert claims == _claims(vector)


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["description"])
def test_every_invalid_vector_gives_its_code(vector: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        verify(
            vector["token"],
            keys={vector["kid"]: vector["key"]},
            now=vector["now"],
            **VECTORS["verify"],
        )
    assert caught.value.code == vector["expected_code"]


# ---------------------------------------------------------------- the docs stay true


def _snippet(language: str) -> str:
    found = re.search(rf"<!-- snippet: {language} -->\n```\w+\n(.*?)```", DOCS, re.DOTALL)
    assert found, f"docs/action-tokens.md has no {language} snippet"
    return found.group(1)


def test_docs_show_the_vectors_in_full() -> None:
    shown = [v for v in VECTORS["valid"] if json.dumps(v, indent=2, ensure_ascii=False) in DOCS]
    assert len(shown) >= 2
    first = VECTORS["valid"][0]
    mac = hmac.new(
        first["key"].encode("utf-8"), first["signing_input"].encode("ascii"), hashlib.sha256
    )
    for step in (first["signing_input"].split(".")[2], mac.hexdigest(), first["token"]):
        assert step in DOCS
    payload_text = "\n".join(str(value) for value in first["claims"].values())
    assert f"```\n{payload_text}\n```" in DOCS.replace("\n   ", "\n")


def test_docs_list_every_error_code_with_its_status() -> None:
    statuses = {code: 400 for code in VERIFY_CODES | {ACTION_TYPE_UNKNOWN}}
    statuses[DELTA_OUT_OF_RANGE] = 422
    for code, status in statuses.items():
        assert f"| `{code}` | {status} |" in DOCS


def test_python_snippet_mints_the_vectors() -> None:
    namespace: dict[str, Any] = {}
    exec(_snippet("python"), namespace)
    for v in VECTORS["valid"]:
        c = v["claims"]
        token = namespace["mint_action_token"](
            v["key"],
            v["kid"],
            c["user_id"],
            c["leaderboard"],
            c["action_type"],
            c["delta"],
            c["expires_at"] - c["issued_at"],
            now=c["issued_at"],
            nonce=c["nonce"],
        )
        assert token == v["token"]


# Node.js, openssl and coreutils are on every machine this project runs on
# (see the env notes); a missing tool is a failure here, not a skip.
def test_node_snippet_mints_the_vectors() -> None:
    calls = []
    for v in VECTORS["valid"]:
        c = v["claims"]
        calls.append(
            "console.log(mintActionToken({"
            f"key: {json.dumps(v['key'])}, kid: {json.dumps(v['kid'])}, "
            f"userId: {json.dumps(c['user_id'])}, leaderboard: {json.dumps(c['leaderboard'])}, "
            f"actionType: {json.dumps(c['action_type'])}, delta: {c['delta']}n, "
            f"ttlS: {c['expires_at'] - c['issued_at']}n, now: {c['issued_at']}n, "
            f"nonce: {json.dumps(c['nonce'])}}}));"
        )
    script = _snippet("node") + "\n".join(calls)
    done = subprocess.run(
        ["node", "-e", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == [v["token"] for v in VECTORS["valid"]]


def test_shell_snippet_mints_the_vectors() -> None:
    for v in VECTORS["valid"]:
        c = v["claims"]
        env = {
            "PATH": os.environ["PATH"],
            "LC_ALL": "C.UTF-8",
            "KEY": v["key"],
            "KID": v["kid"],
            "USER_ID": c["user_id"],
            "LEADERBOARD": c["leaderboard"],
            "ACTION_TYPE": c["action_type"],
            "DELTA": str(c["delta"]),
            "TTL_S": str(c["expires_at"] - c["issued_at"]),
            "NOW": str(c["issued_at"]),
            "NONCE": c["nonce"],
        }
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _snippet("sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert done.stdout.strip() == v["token"]


# ---------------------------------------------------------------- tampering


def test_a_good_token_verifies() -> None:
    assert _verify(sign(CLAIMS, kid="k1", key=KEY)) == CLAIMS


@pytest.mark.parametrize("tag", ["pat2", "PAT1", "pat", "", "pat1 "])
def test_another_version_tag_is_malformed(tag: str) -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    assert _code(tag + token[4:]) == MALFORMED
    assert _code(_forge(_fields(CLAIMS), tag=tag)) == MALFORMED


def test_a_changed_kid_fails_as_unknown_or_bad_signature() -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    rotated = {"k1": KEY, "k2": OTHER_KEY}
    assert _code(token.replace("pat1.k1.", "pat1.k2.", 1), keys=rotated) == BAD_SIGNATURE
    assert _code(token.replace("pat1.k1.", "pat1.k9.", 1), keys=rotated) == UNKNOWN_KEY
    for kid in ["", "k 1", "k1!", "ķ1", "k" * 33]:
        assert _code(token.replace("pat1.k1.", f"pat1.{kid}.", 1)) == MALFORMED


def test_a_changed_payload_fails_as_bad_signature() -> None:
    tag, kid, _, sig = sign(CLAIMS, kid="k1", key=KEY).split(".")
    for changed in [
        replace(CLAIMS, delta=2500),
        replace(CLAIMS, user_id="3f2504e0-4f89-41d3-9a0c-0305e82c3302"),
        replace(CLAIMS, leaderboard="weekly"),
        replace(CLAIMS, expires_at=NOW + 299),
    ]:
        payload = _b64("\n".join(_fields(changed)).encode())
        assert _code(f"{tag}.{kid}.{payload}.{sig}") == BAD_SIGNATURE


def test_a_payload_in_another_base64_spelling_is_malformed() -> None:
    tag, kid, payload, sig = sign(CLAIMS, kid="k1", key=KEY).split(".")
    assert len(payload) % 4 != 0  # so that padding and unused bits exist
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    stray_bits = payload[:-1] + alphabet[alphabet.index(payload[-1]) + 1]
    padded = payload + "=" * (-len(payload) % 4)
    standard = base64.b64encode(base64.urlsafe_b64decode(padded)).decode().rstrip("=")
    for spelling in [padded, stray_bits, payload + "A", payload[:-1], " " + payload, ""]:
        assert _code(f"{tag}.{kid}.{spelling}.{sig}") == MALFORMED
    if standard != payload:
        assert _code(f"{tag}.{kid}.{standard}.{sig}") == MALFORMED


def test_a_changed_signature_fails() -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    body, _, sig = token.rpartition(".")
    assert len(sig) == 43
    flipped = sig[:20] + ("A" if sig[20] != "A" else "B") + sig[21:]
    assert _code(f"{body}.{flipped}") == BAD_SIGNATURE
    assert _code(_forge(_fields(CLAIMS), key=OTHER_KEY)) == BAD_SIGNATURE
    # Not 32 bytes of canonical unpadded base64url: malformed before any MAC is compared.
    for not_base64 in [sig[:-1], sig + "AA", sig + "=", "", sig[:10] + "+" + sig[11:]]:
        assert _code(f"{body}.{not_base64}") == MALFORMED


@pytest.mark.parametrize(
    "token",
    [
        "",
        "pat1",
        "pat1.k1",
        "pat1.k1.payload",
        "pat1.k1.a.b.c",
        "pat1..AAAA.AAAA",
        "....",
    ],
)
def test_a_token_with_the_wrong_layout_is_malformed(token: str) -> None:
    assert _code(token) == MALFORMED


@pytest.mark.parametrize("token", [None, b"pat1.k1.a.b", 123, ["pat1"], object()])
def test_a_token_that_is_not_a_string_is_malformed(token: Any) -> None:
    assert _code(token) == MALFORMED


@given(
    index=st.integers(min_value=0),
    char=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \n\x00é"
    ),
)
def test_no_single_character_change_verifies(index: int, char: str) -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    index %= len(token)
    if token[index] == char:
        return
    assert _code(token[:index] + char + token[index + 1 :]) in VERIFY_CODES


# ---------------------------------------------------------------- fields


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", "3F2504E0-4F89-41D3-9A0C-0305E82C3301"),
        ("user_id", "3f2504e04f8941d39a0c0305e82c3301"),
        ("user_id", "{3f2504e0-4f89-41d3-9a0c-0305e82c3301}"),
        ("user_id", "3f2504e0-4f89-41d3-9a0c-0305e82c330g"),
        ("leaderboard", ""),
        ("leaderboard", "Global"),
        ("leaderboard", "_global"),
        ("leaderboard", "-global"),
        ("leaderboard", "a" * 65),
        ("leaderboard", "glöbal"),
        ("action_type", ""),
        ("action_type", "1score"),
        ("action_type", "Score"),
        ("action_type", "sco-re"),
        ("action_type", "s" * 33),
        ("delta", ""),
        ("delta", "+1"),
        ("delta", "01"),
        ("delta", "-0"),
        ("delta", "-"),
        ("delta", "1.0"),
        ("delta", " 1"),
        ("delta", "1_000"),
        ("delta", "١٢٣"),
        ("delta", str(2**63)),
        ("delta", str(-(2**63) - 1)),
        ("nonce", "a" * 15),
        ("nonce", "a" * 65),
        ("nonce", "abcdefghijklmno="),
        ("nonce", "abcdefghijklmno p"),
        ("issued_at", "-1"),
        ("issued_at", "01700000000"),
        ("issued_at", "1700000000.5"),
        ("issued_at", str(2**63)),
        ("expires_at", "1e9"),
        ("expires_at", "-1700000300"),
        ("expires_at", "1700000300\r"),
    ],
)
def test_a_bad_field_is_malformed_even_when_signed(field: str, value: str) -> None:
    fields = _fields(CLAIMS)
    fields[list(asdict(CLAIMS)).index(field)] = value
    assert _code(_forge(fields)) == MALFORMED
    # sign() refuses the same value where a typed claim can carry it at all.
    typed: Any = value
    if field in ("delta", "issued_at", "expires_at"):
        if not re.fullmatch(r"-?[0-9]+", value):
            return
        typed = int(value)
        if str(typed) != value:
            return
    with pytest.raises(ValueError):
        sign(replace(CLAIMS, **{field: typed}), kid="k1", key=KEY)


def test_timestamps_stay_within_64_bits() -> None:
    beyond = replace(CLAIMS, issued_at=2**63, expires_at=2**63 + 1)
    assert _code(_forge(_fields(beyond)), now=2**63) == MALFORMED
    with pytest.raises(ValueError, match="issued_at"):
        sign(beyond, kid="k1", key=KEY)


@pytest.mark.parametrize(
    "changes",
    [
        {"delta": 2**63 - 1},
        {"delta": -(2**63)},
        {"delta": 0},
        {"leaderboard": "a" * 64},
        {"leaderboard": "0"},
        {"action_type": "s" * 32},
        {"action_type": "a"},
        {"nonce": "a" * 16},
        {"nonce": "-_" * 32},
    ],
)
def test_the_edges_of_each_field_are_accepted(changes: dict[str, Any]) -> None:
    claims = replace(CLAIMS, **changes)
    assert _verify(sign(claims, kid="k1", key=KEY)) == claims


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe" + "\n".join(_fields(CLAIMS)).encode(),
        "\n".join(_fields(CLAIMS)[:6]).encode(),
        "\n".join([*_fields(CLAIMS), "extra"]).encode(),
        "\n".join(_fields(CLAIMS)).encode() + b"\n",
        "\r\n".join(_fields(CLAIMS)).encode(),
        b"",
    ],
)
def test_a_payload_with_the_wrong_shape_is_malformed_even_when_signed(payload: bytes) -> None:
    assert _code(_forge(payload)) == MALFORMED


def test_the_checks_come_in_the_documented_order() -> None:
    bad_field = _fields(CLAIMS)
    bad_field[0] = bad_field[0].upper()
    # A bad field outranks an unknown key and a bad signature.
    assert _code(_forge(bad_field, kid="k9")) == MALFORMED
    assert _code(_forge(bad_field, key=OTHER_KEY)) == MALFORMED
    # An unknown key outranks everything after it.
    stale_and_unknown = _forge(_fields(CLAIMS), kid="k9", key=OTHER_KEY)
    assert _code(stale_and_unknown, now=NOW + 10_000) == UNKNOWN_KEY
    # A bad signature outranks the lifetime and the clock.
    too_long = _fields(replace(CLAIMS, expires_at=NOW + 10_000))
    assert _code(_forge(too_long, key=OTHER_KEY), now=NOW + 20_000) == BAD_SIGNATURE
    # The lifetime cap outranks the clock.
    assert _code(_forge(too_long), now=NOW + 20_000) == MALFORMED


# ---------------------------------------------------------------- time


def test_issue_time_boundary() -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    assert _verify(token, now=NOW - LEEWAY_S) == CLAIMS
    assert _code(token, now=NOW - LEEWAY_S - 0.001) == NOT_YET_VALID
    assert _verify(token, now=NOW, leeway_s=0) == CLAIMS
    assert _code(token, now=NOW - 0.001, leeway_s=0) == NOT_YET_VALID


def test_expiry_boundary() -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    expires_at = CLAIMS.expires_at
    assert _verify(token, now=expires_at + LEEWAY_S) == CLAIMS
    assert _code(token, now=expires_at + LEEWAY_S + 0.001) == EXPIRED
    assert _verify(token, now=expires_at, leeway_s=0) == CLAIMS
    assert _code(token, now=expires_at + 0.001, leeway_s=0) == EXPIRED
    assert _code(token, now=expires_at + 86_400) == EXPIRED


def test_lifetime_cap() -> None:
    for lifetime_s in (1, LIFETIME_S):
        claims = replace(CLAIMS, expires_at=NOW + lifetime_s)
        assert _verify(sign(claims, kid="k1", key=KEY)) == claims
    over = replace(CLAIMS, expires_at=NOW + LIFETIME_S + 1)
    assert _code(sign(over, kid="k1", key=KEY)) == MALFORMED
    assert _verify(sign(over, kid="k1", key=KEY), max_lifetime_s=LIFETIME_S + 1) == over
    for expires_at in (NOW, NOW - 1, 0):
        assert _code(_forge(_fields(replace(CLAIMS, expires_at=expires_at)))) == MALFORMED


def test_bad_verify_arguments_are_the_callers_bug() -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    for kw in (
        {"now": float("nan")},
        {"now": float("inf")},
        {"max_lifetime_s": 0},
        {"leeway_s": -1},
        {"leeway_s": float("nan")},
    ):
        with pytest.raises(ValueError):
            _verify(token, **kw)


# ---------------------------------------------------------------- length


def test_length_cap() -> None:
    assert _code("A" * (MAX_TOKEN_CHARS + 1)) == MALFORMED
    token = sign(CLAIMS, kid="k1", key=KEY)
    with pytest.raises(BadRequest, match=str(MAX_TOKEN_CHARS)):
        _verify(token + "A" * (MAX_TOKEN_CHARS + 1 - len(token)))


def test_the_longest_valid_token_fits_the_cap() -> None:
    longest = ActionClaims(
        user_id="ffffffff-ffff-ffff-ffff-ffffffffffff",
        leaderboard="l" * 64,
        action_type="a" * 32,
        delta=-(2**63),
        nonce="n" * 64,
        issued_at=2**63 - 2,
        expires_at=2**63 - 1,
    )
    kid = "k" * 32
    token = sign(longest, kid=kid, key=KEY)
    assert len(token) == 429 <= MAX_TOKEN_CHARS
    assert _verify(token, keys={kid: KEY}, now=2**63 - 2) == longest


# ---------------------------------------------------------------- keys


def test_unknown_kid() -> None:
    token = sign(CLAIMS, kid="k2", key=KEY)
    with pytest.raises(BadRequest, match="'k2'") as caught:
        _verify(token)
    assert caught.value.code == UNKNOWN_KEY
    assert _code(token, keys={}) == UNKNOWN_KEY


def test_key_rotation_accepts_every_listed_key() -> None:
    old = sign(CLAIMS, kid="k1", key=KEY)
    new = sign(replace(CLAIMS, nonce="ZYXWVUTSRQPONMLKJIHGFEDC"), kid="k2", key=OTHER_KEY)
    both = {"k1": KEY, "k2": OTHER_KEY}
    assert _verify(old, keys=both) == CLAIMS
    assert _verify(new, keys=both).nonce == "ZYXWVUTSRQPONMLKJIHGFEDC"
    assert _code(old, keys={"k2": OTHER_KEY}) == UNKNOWN_KEY
    assert _code(new, keys={"k1": KEY}) == UNKNOWN_KEY
    # A kid bound to another secret is a bad signature, not a match on the other key.
    assert _code(old, keys={"k1": OTHER_KEY, "k2": KEY}) == BAD_SIGNATURE


def test_the_key_is_its_utf8_bytes() -> None:
    key = "clé-secrète-✓"
    token = sign(CLAIMS, kid="k1", key=key)
    assert token == _forge(_fields(CLAIMS), key=key)
    assert _verify(token, keys={"k1": key}) == CLAIMS
    assert _code(token, keys={"k1": key.encode().decode("latin-1")}) == BAD_SIGNATURE


# ---------------------------------------------------------------- minting


def test_mint() -> None:
    token, claims = mint(
        user_id=CLAIMS.user_id,
        leaderboard="global",
        action_type="score",
        delta=10,
        kid="k1",
        key=KEY,
        now=NOW + 0.9,
        ttl_s=120,
    )
    assert (claims.issued_at, claims.expires_at) == (NOW, NOW + 120)
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", claims.nonce)
    assert token == sign(claims, kid="k1", key=KEY)
    assert _verify(token) == claims
    again, other = mint(
        user_id=CLAIMS.user_id,
        leaderboard="global",
        action_type="score",
        delta=10,
        kid="k1",
        key=KEY,
        now=NOW,
        ttl_s=120,
    )
    assert other.nonce != claims.nonce and again != token


@pytest.mark.parametrize(
    "changes",
    [
        {"user_id": "3F2504E0-4F89-41D3-9A0C-0305E82C3301"},
        {"user_id": 1},
        {"leaderboard": "Global"},
        {"action_type": "score!"},
        {"delta": True},
        {"delta": 1.0},
        {"delta": 2**63},
        {"kid": "k.1"},
        {"kid": ""},
        {"key": ""},
        {"now": -1.0},
        {"now": float("nan")},
        {"ttl_s": 0},
        {"ttl_s": 1.5},
        {"ttl_s": True},
    ],
)
def test_mint_refuses_bad_input(changes: dict[str, Any]) -> None:
    kw: dict[str, Any] = {
        "user_id": CLAIMS.user_id,
        "leaderboard": "global",
        "action_type": "score",
        "delta": 10,
        "kid": "k1",
        "key": KEY,
        "now": NOW,
        "ttl_s": 300,
    }
    with pytest.raises(ValueError):
        mint(**{**kw, **changes})


def test_sign_refuses_expiry_not_after_issue() -> None:
    for expires_at in (NOW, NOW - 1):
        with pytest.raises(ValueError, match="expires_at"):
            sign(replace(CLAIMS, expires_at=expires_at), kid="k1", key=KEY)


def test_sign_is_deterministic() -> None:
    assert sign(CLAIMS, kid="k1", key=KEY) == sign(CLAIMS, kid="k1", key=KEY)


def test_new_nonce() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{24}", nonce) for nonce in nonces)


def test_token_hash() -> None:
    token = sign(CLAIMS, kid="k1", key=KEY)
    assert token_hash(token) == hashlib.sha256(token.encode("ascii")).digest()
    assert len(token_hash(token)) == 32
    assert token_hash(token) != token_hash(sign(CLAIMS, kid="k1", key=OTHER_KEY))


# ---------------------------------------------------------------- action types


RULES = parse_action_types("score:1:10000,kill:1:5,penalty:-100:-1")


def test_parse_action_types() -> None:
    assert parse_action_types("score:1:10000,kill:1:5,penalty:-100:-1") == {
        "score": ActionTypeRule("score", 1, 10000),
        "kill": ActionTypeRule("kill", 1, 5),
        "penalty": ActionTypeRule("penalty", -100, -1),
    }
    assert parse_action_types(" score : 1 : 10000 , bonus:0:0 ") == {
        "score": ActionTypeRule("score", 1, 10000),
        "bonus": ActionTypeRule("bonus", 0, 0),
    }
    assert parse_action_types(f"x:{-(2**63)}:{2**63 - 1}")["x"].max_delta == 2**63 - 1


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("", "no action types"),
        ("   ", "no action types"),
        ("score", "not name:min:max"),
        ("score:1", "not name:min:max"),
        ("score:1:2:3", "not name:min:max"),
        ("score:1:2,", "not name:min:max"),
        (",score:1:2", "not name:min:max"),
        ("Score:1:2", "name 'Score'"),
        ("1score:1:2", "name '1score'"),
        (":1:2", "name ''"),
        ("score:a:2", "bound 'a'"),
        ("score:1:", "bound ''"),
        ("score:1.5:2", "bound '1.5'"),
        ("score:+1:2", "bound '+1'"),
        (f"score:1:{2**63}", "64-bit"),
        ("score:5:1", "min delta 5 is greater than max delta 1"),
        ("score:1:2,kill:1:2,score:3:4", "'score' is given more than once"),
    ],
)
def test_parse_action_types_refuses_bad_specs(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_action_types(spec)


@pytest.mark.parametrize(
    ("action_type", "delta"),
    [("score", 1), ("score", 10000), ("kill", 3), ("penalty", -100), ("penalty", -1)],
)
def test_check_delta_accepts_the_bounds(action_type: str, delta: int) -> None:
    check_delta(replace(CLAIMS, action_type=action_type, delta=delta), RULES, allow_unknown=False)


@pytest.mark.parametrize(
    ("action_type", "delta"),
    [("score", 0), ("score", 10001), ("kill", 6), ("penalty", 0), ("penalty", -101)],
)
def test_check_delta_refuses_outside_the_bounds(action_type: str, delta: int) -> None:
    claims = replace(CLAIMS, action_type=action_type, delta=delta)
    rule = RULES[action_type]
    for allow_unknown in (False, True):
        with pytest.raises(Unprocessable) as caught:
            check_delta(claims, RULES, allow_unknown=allow_unknown)
        assert caught.value.code == DELTA_OUT_OF_RANGE
        assert f"{rule.min_delta} to {rule.max_delta}" in caught.value.message
        assert errors.http_status(caught.value) == 422


def test_check_delta_and_unknown_types() -> None:
    claims = replace(CLAIMS, action_type="bonus", delta=-(2**63))
    with pytest.raises(BadRequest) as caught:
        check_delta(claims, RULES, allow_unknown=False)
    assert caught.value.code == ACTION_TYPE_UNKNOWN
    assert "'bonus'" in caught.value.message
    assert errors.http_status(caught.value) == 400
    check_delta(claims, RULES, allow_unknown=True)
    with pytest.raises(BadRequest):
        check_delta(CLAIMS, {}, allow_unknown=False)


# ---------------------------------------------------------------- properties


_TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_near_tokens = st.builds(
    lambda tag, kid, payload, sig: f"{tag}.{kid}.{payload}.{sig}",
    st.sampled_from(["pat1", "pat1", "pat2", ""]),
    st.sampled_from(["k1", "k1", "k2", ""]),
    st.binary(max_size=300).map(_b64) | st.text(_TOKEN_ALPHABET + "=+/", max_size=400),
    st.binary(min_size=32, max_size=32).map(_b64) | st.text(_TOKEN_ALPHABET, max_size=50),
)
_signed_junk = st.lists(st.text(max_size=40), min_size=5, max_size=9).map(_forge)
_signed_near_valid = st.lists(
    st.sampled_from(_fields(CLAIMS)) | st.from_regex(r"-?[0-9]{0,21}", fullmatch=True),
    min_size=7,
    max_size=7,
).map(_forge)


@given(st.text(max_size=600) | _near_tokens | _signed_junk | _signed_near_valid)
def test_verify_returns_claims_or_raises_bad_request(token: str) -> None:
    try:
        claims = _verify(token)
    except BadRequest as exc:
        assert type(exc) is BadRequest and exc.code in VERIFY_CODES
        assert KEY not in exc.message
    else:
        assert isinstance(claims, ActionClaims)
        assert sign(claims, kid="k1", key=KEY) == token


@st.composite
def _valid_claims(draw: st.DrawFn) -> ActionClaims:
    issued_at = draw(st.integers(0, 2**63 - 2))
    return ActionClaims(
        user_id=str(draw(st.uuids())),
        leaderboard=draw(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)),
        action_type=draw(st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)),
        delta=draw(st.integers(-(2**63), 2**63 - 1)),
        nonce=draw(st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True)),
        issued_at=issued_at,
        expires_at=draw(st.integers(issued_at + 1, min(issued_at + 86_400, 2**63 - 1))),
    )


@given(
    _valid_claims(),
    st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
    st.text(min_size=1, max_size=64),
)
def test_verify_inverts_sign(claims: ActionClaims, kid: str, key: str) -> None:
    token = sign(claims, kid=kid, key=key)
    assert len(token) <= MAX_TOKEN_CHARS
    # An integer clock keeps arithmetic exact at any timestamp.
    verified = verify(
        token,
        keys={kid: key},
        now=claims.issued_at,
        max_lifetime_s=86_400,
    )
    assert verified == claims
