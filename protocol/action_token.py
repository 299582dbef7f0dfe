"""Action tokens: signed, single-use proofs that a player did something.

The game's trusted backend mints one when a player finishes an action; the
player hands it to Podium with their JWT. A token reads::

    pat1.<kid>.<payload>.<sig>

``<payload>`` is unpadded base64url of seven newline-joined fields (user id,
leaderboard, action type, delta, nonce, issued-at, expires-at) and ``<sig>``
is unpadded base64url of HMAC-SHA256 over everything before the last dot,
keyed with the secret known by ``<kid>``. ``docs/action-tokens.md`` is the
byte-for-byte reference, with test vectors, for minting in any language.

Everything here is pure: the clock is an argument and nothing is stored.
:func:`verify` proves a token genuine and current; it does *not* know whether
the nonce was used before, which user holds the JWT, or which leaderboards
exist — the caller checks those (and the action type's delta bounds, with
:func:`check_delta`).

Error handling: :func:`verify` raises :class:`~protocol.errors.BadRequest` for
any token it refuses, whatever the text, and nothing else; the ``code`` says
why (:data:`MALFORMED`, :data:`UNKNOWN_KEY`, :data:`BAD_SIGNATURE`,
:data:`NOT_YET_VALID`, :data:`EXPIRED`). :func:`sign`, :func:`mint` and
:func:`parse_action_types` serve trusted callers and configuration, so bad
input there is a :class:`ValueError`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from protocol.errors import BadRequest, Unprocessable

#: The first part of every token; a new format gets a new tag.
VERSION: Final = "pat1"
#: The longest token :func:`verify` reads. A valid token is at most 429 characters.
MAX_TOKEN_CHARS: Final = 512
#: Default tolerance for clock skew between the minting server and Podium, in seconds.
DEFAULT_LEEWAY_S: Final = 5

MALFORMED: Final = "action_token_malformed"
UNKNOWN_KEY: Final = "action_token_unknown_key"
BAD_SIGNATURE: Final = "action_token_bad_signature"
NOT_YET_VALID: Final = "action_token_not_yet_valid"
EXPIRED: Final = "action_token_expired"
ACTION_TYPE_UNKNOWN: Final = "action_type_unknown"
DELTA_OUT_OF_RANGE: Final = "delta_out_of_range"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_SIGNATURE_BYTES: Final = 32  # SHA-256

# Explicit ASCII classes throughout: \d and \w would admit non-ASCII digits and letters.
_KID: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_USER_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LEADERBOARD: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ACTION_TYPE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_INTEGER: Final = re.compile(r"0|-?[1-9][0-9]{0,18}")
_TIMESTAMP: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_CONFIG_INTEGER: Final = re.compile(r"-?[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class ActionClaims:
    """What an action token says: who did what, where, and when it may be used.

    ``issued_at`` and ``expires_at`` are unix seconds. ``nonce`` is unique per
    token; Podium accepts each nonce once.
    """

    user_id: str
    leaderboard: str
    action_type: str
    delta: int
    nonce: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class ActionTypeRule:
    """The deltas a configured action type may carry: ``min_delta <= delta <= max_delta``."""

    name: str
    min_delta: int
    max_delta: int


# ---------------------------------------------------------------- minting


def new_nonce() -> str:
    """A fresh random nonce: 24 base64url characters (144 bits)."""
    return secrets.token_urlsafe(18)


def sign(claims: ActionClaims, *, kid: str, key: str) -> str:
    """The token for ``claims``, signed with ``key`` under the key id ``kid``.

    Deterministic: the same arguments give the same token. Raises
    :class:`ValueError` if a claim would not pass :func:`verify`'s format
    checks, if ``expires_at`` is not after ``issued_at``, or if ``kid`` or
    ``key`` is unusable. It does not check the lifetime cap, which is the
    verifier's setting.
    """
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError("kid must be 1 to 32 characters of A-Z a-z 0-9 _ -")
    if not isinstance(key, str) or not key:
        raise ValueError("the signing key must be a non-empty string")
    for name in ("user_id", "leaderboard", "action_type", "nonce"):
        if not isinstance(getattr(claims, name), str):
            raise ValueError(f"{name} must be a string")
    for name in ("delta", "issued_at", "expires_at"):
        value = getattr(claims, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
    fields = [
        claims.user_id,
        claims.leaderboard,
        claims.action_type,
        str(claims.delta),
        claims.nonce,
        str(claims.issued_at),
        str(claims.expires_at),
    ]
    _parse_fields(fields)
    if claims.expires_at <= claims.issued_at:
        raise ValueError("expires_at must be after issued_at")
    payload = _b64encode("\n".join(fields).encode("utf-8"))
    signing_input = f"{VERSION}.{kid}.{payload}"
    return f"{signing_input}.{_b64encode(_mac(key, signing_input))}"


def mint(
    *,
    user_id: str,
    leaderboard: str,
    action_type: str,
    delta: int,
    kid: str,
    key: str,
    now: float,
    ttl_s: int,
) -> tuple[str, ActionClaims]:
    """Mint a token with a fresh nonce, valid from ``int(now)`` for ``ttl_s`` seconds.

    Returns the token and the claims it carries. Raises :class:`ValueError`
    on any claim :func:`sign` would refuse, or a ``ttl_s`` that is not a
    positive integer. The delta bounds of ``action_type`` are the caller's to
    check, with :func:`check_delta`.
    """
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
        raise ValueError("ttl_s must be a positive whole number of seconds")
    if not math.isfinite(now) or now < 0:
        raise ValueError("now must be a finite, non-negative unix time")
    issued_at = int(now)
    claims = ActionClaims(
        user_id=user_id,
        leaderboard=leaderboard,
        action_type=action_type,
        delta=delta,
        nonce=new_nonce(),
        issued_at=issued_at,
        expires_at=issued_at + ttl_s,
    )
    return sign(claims, kid=kid, key=key), claims


def token_hash(token: str) -> bytes:
    """SHA-256 of the token's ASCII text: what score history stores instead of the token.

    Call it on a token that :func:`verify` accepted; other text may raise
    :class:`UnicodeEncodeError`.
    """
    return hashlib.sha256(token.encode("ascii")).digest()


# ---------------------------------------------------------------- verifying


def verify(
    token: str,
    *,
    keys: Mapping[str, str],
    now: float,
    max_lifetime_s: int,
    leeway_s: float = DEFAULT_LEEWAY_S,
) -> ActionClaims:
    """The claims of ``token`` if it is well-formed, genuine and current at ``now``.

    ``keys`` maps every accepted key id to its secret (several during a key
    rotation). A token is refused when it lives longer than
    ``max_lifetime_s``, is issued more than ``leeway_s`` seconds after
    ``now``, or expired more than ``leeway_s`` seconds before it.

    Raises :class:`~protocol.errors.BadRequest` for any token refused, and
    nothing else whatever the text; the first failing check gives the code:
    :data:`MALFORMED` (layout, encoding, a field's format),
    :data:`UNKNOWN_KEY`, :data:`BAD_SIGNATURE`, :data:`MALFORMED` (expiry not
    after issue, or lifetime over the cap), :data:`NOT_YET_VALID`,
    :data:`EXPIRED`. A bad ``now``, ``max_lifetime_s`` or ``leeway_s`` is the
    caller's bug and raises :class:`ValueError`.
    """
    if not math.isfinite(now):
        raise ValueError("now must be a finite unix time")
    if max_lifetime_s < 1 or not 0 <= leeway_s < math.inf:
        raise ValueError("max_lifetime_s must be positive and leeway_s finite and not negative")

    if not isinstance(token, str):
        _refuse(MALFORMED, "an action token must be a string")
    if len(token) > MAX_TOKEN_CHARS:
        _refuse(MALFORMED, f"an action token is at most {MAX_TOKEN_CHARS} characters long")
    parts = token.split(".")
    if len(parts) != 4:
        _refuse(MALFORMED, "an action token has the form pat1.<kid>.<payload>.<signature>")
    tag, kid, payload_text, signature_text = parts
    if tag != VERSION:
        _refuse(MALFORMED, f"unsupported action token version; expected {VERSION!r}")
    if not _KID.fullmatch(kid):
        _refuse(MALFORMED, "the action token's key id must be 1 to 32 of A-Z a-z 0-9 _ -")
    payload = _b64decode(payload_text)
    if payload is None:
        _refuse(MALFORMED, "the action token's payload is not unpadded, canonical base64url")
    signature = _b64decode(signature_text)
    if signature is None or len(signature) != _SIGNATURE_BYTES:
        _refuse(
            MALFORMED,
            "the action token's signature is not an unpadded base64url HMAC-SHA256",
        )
    try:
        fields = payload.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        _refuse(MALFORMED, "the action token's payload is not valid UTF-8")
    if len(fields) != 7:
        _refuse(MALFORMED, "the action token's payload must have exactly 7 fields")

    # The MAC is computed before any field is inspected, so the time taken
    # does not depend on which field (if any) is wrong.
    key = keys.get(kid)
    expected = None if key is None else _mac(key, token[: token.rindex(".")])
    try:
        claims = _parse_fields(fields)
    except ValueError as exc:
        _refuse(MALFORMED, f"the action token's {exc}")
    if expected is None:
        _refuse(UNKNOWN_KEY, f"the action token is signed with an unknown key id {kid!r}")
    if not hmac.compare_digest(expected, signature):
        _refuse(BAD_SIGNATURE, "the action token's signature does not match")

    lifetime_s = claims.expires_at - claims.issued_at
    if lifetime_s <= 0:
        _refuse(MALFORMED, "the action token expires no later than it is issued")
    if lifetime_s > max_lifetime_s:
        _refuse(
            MALFORMED,
            f"the action token's lifetime of {lifetime_s} s exceeds the maximum of "
            f"{max_lifetime_s} s",
        )
    if claims.issued_at > now + leeway_s:
        _refuse(
            NOT_YET_VALID,
            "the action token is not valid yet; the minting server's clock may be ahead",
        )
    if now > claims.expires_at + leeway_s:
        _refuse(EXPIRED, "the action token has expired; mint a new one")
    return claims


# ---------------------------------------------------------------- action types


def parse_action_types(spec: str) -> dict[str, ActionTypeRule]:
    """Parse ``"score:1:10000,kill:1:5,penalty:-100:-1"`` into rules by name.

    Each comma-separated entry is ``name:min_delta:max_delta``, bounds
    inclusive; spaces around entries and separators are ignored. Raises
    :class:`ValueError` naming the problem for an empty spec, a malformed
    entry or name, a bound outside signed 64-bit, ``min_delta > max_delta``,
    or a name given twice.
    """
    if not spec.strip():
        raise ValueError("no action types given; expected name:min:max, e.g. 'score:1:10000'")
    rules: dict[str, ActionTypeRule] = {}
    for entry in spec.split(","):
        parts = [part.strip() for part in entry.split(":")]
        if len(parts) != 3:
            raise ValueError(f"action type entry {entry.strip()!r} is not name:min:max")
        name, low, high = parts
        if not _ACTION_TYPE.fullmatch(name):
            raise ValueError(
                f"action type name {name!r} must be a lower-case letter followed by up to 31 "
                "of a-z 0-9 _"
            )
        bounds = []
        for bound in (low, high):
            value = int(bound) if _CONFIG_INTEGER.fullmatch(bound) else None
            if value is None or not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(
                    f"action type {name!r}: bound {bound!r} is not a signed 64-bit integer"
                )
            bounds.append(value)
        min_delta, max_delta = bounds
        if min_delta > max_delta:
            raise ValueError(
                f"action type {name!r}: min delta {min_delta} is greater than max delta {max_delta}"
            )
        if name in rules:
            raise ValueError(f"action type {name!r} is given more than once")
        rules[name] = ActionTypeRule(name=name, min_delta=min_delta, max_delta=max_delta)
    return rules


def check_delta(
    claims: ActionClaims, rules: Mapping[str, ActionTypeRule], *, allow_unknown: bool
) -> None:
    """Check that the claims' delta is within the bounds of its action type.

    Raises :class:`~protocol.errors.BadRequest` (``action_type_unknown``) for
    a type not in ``rules`` unless ``allow_unknown``, which lets any delta
    through for such types; raises :class:`~protocol.errors.Unprocessable`
    (``delta_out_of_range``) for a delta outside its type's bounds.
    """
    rule = rules.get(claims.action_type)
    if rule is None:
        if allow_unknown:
            return
        raise BadRequest(
            f"action type {claims.action_type!r} is not configured on this server",
            code=ACTION_TYPE_UNKNOWN,
        )
    if not rule.min_delta <= claims.delta <= rule.max_delta:
        raise Unprocessable(
            f"delta {claims.delta} is outside the range {rule.min_delta} to {rule.max_delta} "
            f"allowed for action type {rule.name!r}",
            code=DELTA_OUT_OF_RANGE,
        )


# ---------------------------------------------------------------- internals


def _refuse(code: str, message: str) -> NoReturn:
    raise BadRequest(message, code=code)


def _mac(key: str, signing_input: str) -> bytes:
    return hmac.digest(key.encode("utf-8"), signing_input.encode("ascii"), "sha256")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict unpadded base64url, or None: no padding, no stray bits, one spelling per value."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Unused low bits in the last character must be zero; re-encoding finds them.
    return raw if _b64encode(raw) == text else None


def _parse_fields(fields: Sequence[str]) -> ActionClaims:
    """The claims spelled by the seven payload fields; ValueError names the first bad one."""
    user_id, leaderboard, action_type, delta, nonce, issued_at, expires_at = fields
    if not _USER_ID.fullmatch(user_id):
        raise ValueError("user_id is not a lower-case canonical UUID")
    if not _LEADERBOARD.fullmatch(leaderboard):
        raise ValueError("leaderboard must be 1 to 64 of a-z 0-9 _ - starting with a-z or 0-9")
    if not _ACTION_TYPE.fullmatch(action_type):
        raise ValueError("action_type must be 1 to 32 of a-z 0-9 _ starting with a-z")
    if not _INTEGER.fullmatch(delta) or not _INT64_MIN <= int(delta) <= _INT64_MAX:
        raise ValueError("delta is not a canonical signed 64-bit decimal integer")
    if not _NONCE.fullmatch(nonce):
        raise ValueError("nonce must be 16 to 64 of A-Z a-z 0-9 _ -")
    for name, value in (("issued_at", issued_at), ("expires_at", expires_at)):
        if not _TIMESTAMP.fullmatch(value) or int(value) > _INT64_MAX:
            raise ValueError(f"{name} is not a canonical non-negative decimal unix time")
    return ActionClaims(
        user_id=user_id,
        leaderboard=leaderboard,
        action_type=action_type,
        delta=int(delta),
        nonce=nonce,
        issued_at=int(issued_at),
        expires_at=int(expires_at),
    )
