"""scrypt password hashes and the password policy."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import errors
from protocol.passwords import (
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)

FAST = {"n": 2**10, "r": 8, "p": 1}
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def encoded() -> str:
    return hash_password(PASSWORD, **FAST)


def test_round_trip(encoded: str) -> None:
    assert verify_password(PASSWORD, encoded) is True


@pytest.mark.parametrize(
    "attempt", ["", "correct horse battery stapl", "Correct horse battery staple", PASSWORD + " "]
)
def test_wrong_password_is_false(encoded: str, attempt: str) -> None:
    assert verify_password(attempt, encoded) is False


def test_encoding_has_the_documented_shape(encoded: str) -> None:
    scheme, n, r, p, salt, key = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "1024", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(key, validate=True)) == 32


def test_salts_differ_per_hash() -> None:
    first, second = (hash_password(PASSWORD, **FAST) for _ in range(2))
    assert first.split("$")[4] != second.split("$")[4]
    assert first != second
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)


def test_defaults_are_n_2_14_r_8_p_1() -> None:
    encoded = hash_password(PASSWORD)
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password(PASSWORD, encoded)
    assert not verify_password("not the password", encoded)
    assert needs_rehash(encoded) is False


def _replace_field(encoded: str, index: int, value: str) -> str:
    parts = encoded.split("$")
    parts[index] = value
    return "$".join(parts)


def _flip_key_bit(encoded: str) -> str:
    key = bytearray(base64.b64decode(encoded.split("$")[5]))
    key[0] ^= 1
    return _replace_field(encoded, 5, base64.b64encode(bytes(key)).decode())


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: "",
        lambda e: "scrypt",
        lambda e: e.replace("scrypt$", "bcrypt$", 1),
        lambda e: e + "$extra",
        lambda e: e.rsplit("$", 1)[0],
        lambda e: e.replace("$", ":"),
        lambda e: _replace_field(e, 1, "1000"),  # n not a power of two
        lambda e: _replace_field(e, 1, "01024"),
        lambda e: _replace_field(e, 1, "+1024"),
        lambda e: _replace_field(e, 1, "1_024"),
        lambda e: _replace_field(e, 1, " 1024"),
        lambda e: _replace_field(e, 1, "0"),
        lambda e: _replace_field(e, 1, str(2**30)),  # would need a terabyte
        lambda e: _replace_field(e, 1, "99999999999999999999"),
        lambda e: _replace_field(e, 2, "0"),
        lambda e: _replace_field(e, 2, "1000"),
        lambda e: _replace_field(e, 3, "-1"),
        lambda e: _replace_field(e, 4, ""),
        lambda e: _replace_field(e, 4, "not*base64"),
        lambda e: _replace_field(e, 4, e.split("$")[4].rstrip("=")),  # not canonical
        lambda e: _replace_field(e, 5, ""),
        lambda e: _replace_field(e, 5, e.split("$")[5][:8]),  # key too short
        lambda e: _replace_field(e, 5, "é" * 44),
        lambda e: e + "\n",
        lambda e: e + "=" * 600,
    ],
)
def test_malformed_or_damaged_encodings_are_false(encoded: str, damage: object) -> None:
    assert callable(damage)
    bad = damage(encoded)
    assert bad != encoded
    assert verify_password(PASSWORD, bad) is False
    assert needs_rehash(bad, **FAST) is True


def test_a_damaged_key_is_false_but_well_formed(encoded: str) -> None:
    damaged = _flip_key_bit(encoded)
    assert verify_password(PASSWORD, damaged) is False
    assert needs_rehash(damaged, **FAST) is False


def test_needs_rehash_compares_parameters(encoded: str) -> None:
    assert needs_rehash(encoded, **FAST) is False
    assert needs_rehash(encoded) is True  # defaults are stronger
    assert needs_rehash(encoded, n=2**10, r=8, p=2) is True
    assert needs_rehash(encoded, n=2**10, r=16, p=1) is True
    assert needs_rehash(hash_password(PASSWORD, n=2**11, r=8, p=1), **FAST) is True


@pytest.mark.parametrize(("n", "r", "p"), [(1000, 8, 1), (1, 8, 1), (2**10, 0, 1), (2**10, 8, 0)])
def test_hash_password_refuses_bad_parameters(n: int, r: int, p: int) -> None:
    with pytest.raises(ValueError, match="scrypt"):
        hash_password(PASSWORD, n=n, r=r, p=p)


def test_composed_and_decomposed_accents_are_the_same_password() -> None:
    composed, decomposed = "mot de passe caf\u00e9", "mot de passe cafe\u0301"
    assert verify_password(decomposed, hash_password(composed, **FAST))
    assert verify_password(composed, hash_password(decomposed, **FAST))
    assert not verify_password("mot de passe cafe", hash_password(composed, **FAST))


def test_lone_surrogates_are_hashed_not_refused() -> None:
    encoded = hash_password("pass\ud800word", **FAST)
    assert verify_password("pass\ud800word", encoded)
    assert not verify_password("pass\ufffdword", encoded)


@settings(max_examples=100, deadline=None)
@given(password=st.text(max_size=50), encoded=st.text(max_size=200))
def test_verify_never_raises(password: str, encoded: str) -> None:
    assert verify_password(password, encoded) is False


@pytest.mark.parametrize("password", ["", "a", "1234567", "\u00e9" * 7, "x" * 257])
def test_policy_refuses_short_and_long(password: str) -> None:
    with pytest.raises(errors.Unprocessable) as info:
        check_password_policy(password)
    assert info.value.code == "weak_password"
    assert errors.http_status(info.value) == 422


@pytest.mark.parametrize("password", ["12345678", "x" * 256, "\u00e9" * 8, PASSWORD])
def test_policy_accepts_8_to_256_characters(password: str) -> None:
    check_password_policy(password)


def test_policy_counts_characters_after_normalisation() -> None:
    # Each "é" arrives as a base letter plus a combining accent: 14 code points
    # as sent are 7 characters once composed, too few.
    check_password_policy("e\u0301" * 8)
    with pytest.raises(errors.Unprocessable):
        check_password_policy("e\u0301" * 7)
