"""Password hashing with scrypt, and the password policy.

A hash is stored as one ASCII string, ``scrypt$n$r$p$salt$key``, where salt and
key are standard base64 (with padding) of a 16-byte random salt and a 32-byte
derived key. The cost parameters travel with the hash, so raising them later
only needs :func:`needs_rehash` at the next successful login.

Passwords are NFKC-normalised before hashing and before the length check, so
the same password typed on two keyboards that compose accents differently
(``é`` as one code point or as ``e`` and a combining accent) is the same password.
Text that is not valid Unicode (lone surrogates from a JSON ``\\ud800``) is
hashed as it is rather than rejected, so no input makes these functions raise.

*Cost*: :func:`hash_password` and :func:`verify_password` take about 50 ms of
CPU and 16 MiB of memory with the default parameters. They never touch the
event loop; callers run them in a worker thread (``trio.to_thread.run_sync``),
bounded by a limiter, never directly in a task.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Final

from protocol.errors import Unprocessable

DEFAULT_N: Final = 2**14
DEFAULT_R: Final = 8
DEFAULT_P: Final = 1
SALT_BYTES: Final = 16
KEY_BYTES: Final = 32
MIN_PASSWORD_CHARS: Final = 8
MAX_PASSWORD_CHARS: Final = 256

# Limits on what a stored hash may ask for, so a corrupt or hostile row cannot
# make one verification allocate gigabytes or spin for minutes.
_MAX_N: Final = 2**20
_MAX_R: Final = 32
_MAX_P: Final = 16
_MAX_MEMORY_BYTES: Final = 256 * 1024 * 1024
_MAX_ENCODED_CHARS: Final = 512
_INT_RE: Final = re.compile(r"[1-9][0-9]{0,9}")
_B64_RE: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True, slots=True)
class _Parsed:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _check_params(n: int, r: int, p: int) -> None:
    for name, value in (("n", n), ("r", r), ("p", p)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"scrypt parameter {name} must be an integer")
    if n < 2 or n & (n - 1) or n > _MAX_N:
        raise ValueError(f"scrypt parameter n must be a power of two from 2 to {_MAX_N}")
    if not 1 <= r <= _MAX_R:
        raise ValueError(f"scrypt parameter r must be from 1 to {_MAX_R}")
    if not 1 <= p <= _MAX_P:
        raise ValueError(f"scrypt parameter p must be from 1 to {_MAX_P}")
    if _memory_bytes(n, r, p) > _MAX_MEMORY_BYTES:
        raise ValueError("scrypt parameters n and r together need more than 256 MiB")


def _memory_bytes(n: int, r: int, p: int) -> int:
    # What OpenSSL allocates: the V array of n+2 blocks plus p blocks of B.
    return 128 * r * (n + 2 + p)


def _secret_bytes(password: str) -> bytes:
    # "surrogatepass" keeps lone surrogates hashable, and distinct from "\ufffd".
    return unicodedata.normalize("NFKC", password).encode("utf-8", "surrogatepass")


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        _secret_bytes(password),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_memory_bytes(n, r, p) + 1024 * 1024,
        dklen=length,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    if not _B64_RE.fullmatch(text):
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    # Only the canonical spelling, so one hash has exactly one encoding.
    return data if _b64(data) == text else None


def _parse(encoded: object) -> _Parsed | None:
    if not isinstance(encoded, str) or len(encoded) > _MAX_ENCODED_CHARS:
        return None
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    _, n_text, r_text, p_text, salt_text, key_text = parts
    if not all(_INT_RE.fullmatch(text) for text in (n_text, r_text, p_text)):
        return None
    n, r, p = int(n_text), int(r_text), int(p_text)
    try:
        _check_params(n, r, p)
    except ValueError:
        return None
    salt = _unb64(salt_text)
    key = _unb64(key_text)
    if salt is None or key is None or not 8 <= len(salt) <= 64 or not 16 <= len(key) <= 64:
        return None
    return _Parsed(n=n, r=r, p=p, salt=salt, key=key)


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """The scrypt hash of ``password`` with a fresh random salt, as ``scrypt$n$r$p$salt$key``.

    CPU-bound (about 50 ms with the defaults): run it in a worker thread.
    Raises ValueError if the cost parameters are out of range; it does not
    apply the policy, which is :func:`check_password_policy`'s job.
    """
    _check_params(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, n, r, p, KEY_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` is the one ``encoded`` was made from.

    The comparison takes constant time. A malformed or unsupported ``encoded``
    gives False, never an exception. CPU-bound like :func:`hash_password`:
    run it in a worker thread.
    """
    parsed = _parse(encoded)
    if parsed is None:
        return False
    try:
        candidate = _derive(password, parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.key))
    except ValueError:
        # OpenSSL refuses some in-range combinations (n >= 2**(16 r)); such a
        # hash cannot have been made by hash_password, so nothing matches it.
        return False
    return hmac.compare_digest(candidate, parsed.key)


def needs_rehash(
    encoded: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> bool:
    """Whether ``encoded`` should be replaced by a fresh :func:`hash_password` result.

    True when its parameters or sizes differ from the given ones, or when it
    is malformed. Cheap: it parses, it does not hash. Call it after a
    successful :func:`verify_password`, while the plain password is at hand.
    """
    parsed = _parse(encoded)
    if parsed is None:
        return True
    return (parsed.n, parsed.r, parsed.p, len(parsed.salt), len(parsed.key)) != (
        n,
        r,
        p,
        SALT_BYTES,
        KEY_BYTES,
    )


def check_password_policy(password: str) -> None:
    """Raise :class:`Unprocessable` (code ``weak_password``) unless ``password`` is acceptable.

    Acceptable means 8 to 256 characters after NFKC normalisation. Cheap;
    call it before hashing on registration and password change, not on login.
    """
    length = len(unicodedata.normalize("NFKC", password))
    if length < MIN_PASSWORD_CHARS:
        raise Unprocessable(
            f"the password must be at least {MIN_PASSWORD_CHARS} characters long",
            code="weak_password",
        )
    if length > MAX_PASSWORD_CHARS:
        raise Unprocessable(
            f"the password must be at most {MAX_PASSWORD_CHARS} characters long",
            code="weak_password",
        )
