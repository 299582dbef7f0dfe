"""Podium's settings: one frozen object, built once, passed explicitly.

Every tunable of a node is a field of :class:`Settings`. The entry point builds
it with :meth:`Settings.from_sources` and hands it down; nothing else in Podium
reads ``os.environ``, so tests construct whatever settings they need.

Values come from three places, the first that has one wins:

1. ``PODIUM_*`` environment variables (always strings),
2. a TOML file whose keys are the field names (``http_port = 9000``),
3. the defaults declared on the fields.

Each field declares its environment variable, parser, one-line description and
whether it is secret exactly once, in its ``metadata``; :func:`describe` exposes
that table so ``podium config``, ``--help`` and the README are generated from
it rather than kept in step by hand.

A :class:`Settings` instance is always valid: construction, :meth:`~Settings.replace`
and :meth:`~Settings.from_sources` all run the same per-field parsers and the
cross-field rules. Everything wrong is reported as a :exc:`SettingsError`
whose message is one line naming the variable and what it accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

__all__ = ["SettingInfo", "Settings", "SettingsError", "describe"]

_ENV_PREFIX: Final = "PODIUM_"
_META_KEY: Final = "podium.setting"
# Error messages echo the offending value so the operator can see the typo;
# a pasted certificate or similar should not flood the log line.
_MAX_SHOWN_CHARS: Final = 100


class SettingsError(Exception):
    """The environment or settings file asks for something Podium can't do.

    ``str(err)`` is a single line naming the variable (and the file, for TOML
    keys) and what it accepts, suitable for printing before exiting. Secret
    values never appear in it.
    """


class _Invalid(Exception):
    """Raised by a converter; the caller knows what was expected and where."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one kind of setting is parsed.

    ``convert`` takes an environment string or a native TOML/Python value and
    returns the typed value, or raises :exc:`_Invalid`. It must be idempotent:
    converting an already converted value returns an equal value, because
    ``Settings.__post_init__`` re-validates what ``from_sources`` parsed.
    """

    type_name: str
    expected: str
    convert: Callable[[object], object]


@dataclass(frozen=True, slots=True)
class _Spec:
    env: str
    kind: _Kind
    doc: str
    secret: bool
    # Applied to the value in redacted() output and error messages; None for
    # most fields, which are shown as they are.
    redact: Callable[[str], str] | None


def _setting(
    *,
    env: str,
    parse: _Kind,
    doc: str,
    secret: bool = False,
    redact: Callable[[str], str] | None = None,
) -> Mapping[str, _Spec]:
    """Build a field's ``metadata``: the single place a setting is described."""
    if "\n" in doc:
        raise ValueError(f"description of {env} must be one line")
    return {_META_KEY: _Spec(env=env, kind=parse, doc=doc, secret=secret, redact=redact)}


# --- parsers ----------------------------------------------------------------

_INT_RE: Final = re.compile(r"-?[0-9]+")
# Plain decimal notation only: float() would also take "nan", "inf", "1_0" and
# surrounding whitespace, none of which an operator means on purpose.
_FLOAT_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOL_WORDS: Final[Mapping[str, bool]] = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SECRET_MIN_CHARS: Final = 16


def _integer(low: int, high: int) -> _Kind:
    def convert(raw: object) -> int:
        # bool is an int subclass; `http_port = true` in TOML is a mistake.
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and _INT_RE.fullmatch(raw):
            try:
                value = int(raw)
            except ValueError:  # longer than int()'s digit limit
                raise _Invalid from None
        else:
            raise _Invalid
        if not low <= value <= high:
            raise _Invalid
        return value

    return _Kind("int", f"an integer from {low} to {high}", convert)


def _number(low: float, high: float, *, low_exclusive: bool = False) -> _Kind:
    def convert(raw: object) -> float:
        if isinstance(raw, str):
            if not _FLOAT_RE.fullmatch(raw):
                raise _Invalid
            value = float(raw)
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        else:
            raise _Invalid
        too_low = value <= low if low_exclusive else value < low
        if not math.isfinite(value) or too_low or value > high:
            raise _Invalid
        return value

    if low_exclusive:
        expected = f"a number greater than {low:g} and at most {high:g}"
    else:
        expected = f"a number from {low:g} to {high:g}"
    return _Kind("float", expected, convert)


def _boolean() -> _Kind:
    def convert(raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[raw.lower()]
        raise _Invalid

    return _Kind("bool", "one of 1, 0, true, false, yes, no, on, off", convert)


def _choice(*options: str) -> _Kind:
    def convert(raw: object) -> str:
        if isinstance(raw, str) and raw.lower() in options:
            return raw.lower()
        raise _Invalid

    return _Kind("str", "one of " + ", ".join(options), convert)


def _url(*schemes: str) -> _Kind:
    prefixes = tuple(f"{scheme}://" for scheme in schemes)

    def convert(raw: object) -> str:
        if (
            isinstance(raw, str)
            and raw.startswith(prefixes)
            and raw not in prefixes
            and raw.isprintable()
            and not any(ch.isspace() for ch in raw)
        ):
            return raw
        raise _Invalid

    *rest, last = prefixes
    listed = f"{', '.join(rest)} or {last}" if rest else last
    return _Kind("str", f"a URL starting with {listed}", convert)


def _path() -> _Kind:
    def convert(raw: object) -> Path:
        if isinstance(raw, Path):
            return raw
        # NUL can't be in a file name; better to say so now than at first open().
        if isinstance(raw, str) and raw and "\x00" not in raw:
            return Path(raw)
        raise _Invalid

    return _Kind("Path", "a non-empty path", convert)


def _secret(min_chars: int = _SECRET_MIN_CHARS) -> _Kind:
    def convert(raw: object) -> str:
        # Surrounding whitespace is almost always a copy-paste accident, and a
        # secret that silently differs between two nodes is miserable to debug.
        if isinstance(raw, str) and len(raw) >= min_chars and raw == raw.strip():
            return raw
        raise _Invalid

    return _Kind(
        "str",
        f"a secret of at least {min_chars} characters with no surrounding whitespace",
        convert,
    )


def _host() -> _Kind:
    def convert(raw: object) -> str:
        if (
            isinstance(raw, str)
            and raw
            and raw.isprintable()
            and not any(ch.isspace() for ch in raw)
        ):
            return raw
        raise _Invalid

    return _Kind("str", "a non-empty host name or IP address", convert)


def _node_id() -> _Kind:
    def convert(raw: object) -> str:
        if isinstance(raw, str) and _NODE_ID_RE.fullmatch(raw):
            return raw
        raise _Invalid

    return _Kind("str", "1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'", convert)


def _pattern(regex: str, expected: str) -> _Kind:
    compiled = re.compile(regex)

    def convert(raw: object) -> str:
        if isinstance(raw, str) and compiled.fullmatch(raw):
            return raw
        raise _Invalid

    return _Kind("str", expected, convert)


def _action_types() -> _Kind:
    def convert(raw: object) -> str:
        # The one parser of the format lives with the action-token code.
        from protocol.action_token import parse_action_types

        if not isinstance(raw, str):
            raise _Invalid
        try:
            parse_action_types(raw)
        except ValueError:
            raise _Invalid from None
        return raw

    return _Kind(
        "str",
        "comma-separated TYPE:MIN:MAX rules, e.g. score:1:10000,penalty:-100:-1",
        convert,
    )


def _paths() -> _Kind:
    def convert(raw: object) -> str:
        if isinstance(raw, str) and raw and all(part.strip() for part in raw.split(",")):
            return raw
        raise _Invalid

    return _Kind("str", "comma-separated file paths", convert)


def _networks() -> _Kind:
    def convert(raw: object) -> str:
        if not isinstance(raw, str):
            raise _Invalid
        try:
            for part in raw.split(","):
                if part.strip():
                    ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            raise _Invalid from None
        return raw

    return _Kind("str", "comma-separated IP networks, e.g. 10.0.0.0/8,127.0.0.1/32", convert)


def _fraud_params() -> _Kind:
    def convert(raw: object) -> str:
        from protocol.fraud import parse_params

        if not isinstance(raw, str):
            raise _Invalid
        try:
            parse_params(raw)
        except ValueError:
            raise _Invalid from None
        return raw

    return _Kind(
        "str",
        "comma-separated NAME=NUMBER pairs naming fields of protocol.fraud.FraudParams "
        "(docs/fraud.md, Tuning), within their ranges",
        convert,
    )


def _retired_keys() -> _Kind:
    entry = re.compile(r"[A-Za-z0-9_-]{1,32}=\S{16,}")

    def convert(raw: object) -> str:
        if isinstance(raw, str) and all(entry.fullmatch(part) for part in raw.split(",")):
            return raw
        raise _Invalid

    return _Kind("str", "comma-separated KID=SECRET pairs, secrets of 16+ characters", convert)


# --- redaction ----------------------------------------------------------------

_HIDDEN: Final = "***"
_QUERY_PASSWORD_RE: Final = re.compile(r"([?&]password=)[^&#]*")


def _hide_url_password(url: str) -> str:
    """Replace the password in ``url``'s userinfo and ``?password=`` query with ``***``.

    Works on the text rather than through urllib so that a malformed URL (the
    kind that ends up in an error message) is still redacted, not rejected.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _QUERY_PASSWORD_RE.sub(rf"\g<1>{_HIDDEN}", url)
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        if colon:
            authority = f"{user}:{_HIDDEN}@{hostport}"
    tail = _QUERY_PASSWORD_RE.sub(rf"\g<1>{_HIDDEN}", tail)
    return f"{scheme}://{authority}{tail}"


# --- the settings ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a Podium node can be configured with.

    Build it with :meth:`from_sources` at start-up; construct it directly (all
    fields have defaults) in tests. Every instance is valid: the constructor
    parses each field and checks the cross-field rules, raising
    :exc:`SettingsError` otherwise. Values given in the wrong but parseable
    form are normalized (``log_level="INFO"`` becomes ``"info"``, a ``str``
    ``data_dir`` becomes a :class:`~pathlib.Path`).

    ``repr()`` hides secrets; use :meth:`redacted` or :meth:`to_toml` to show
    settings to a human.
    """

    bind_host: str = field(
        default="127.0.0.1",
        metadata=_setting(
            env="PODIUM_BIND_HOST",
            parse=_host(),
            doc="Address the HTTP and WebSocket listeners bind",
        ),
    )
    http_port: int = field(
        default=8000,
        metadata=_setting(
            env="PODIUM_HTTP_PORT",
            parse=_integer(0, 65535),
            doc="TCP port of the HTTP listener; 0 picks a free port",
        ),
    )
    ws_port: int = field(
        default=8001,
        metadata=_setting(
            env="PODIUM_WS_PORT",
            parse=_integer(0, 65535),
            doc="TCP port of the WebSocket listener; 0 picks a free port",
        ),
    )
    data_dir: Path = field(
        default=Path(".podium"),
        metadata=_setting(
            env="PODIUM_DATA_DIR",
            parse=_path(),
            doc="Where `podium dev` keeps its Redis/PostgreSQL data and generated secrets",
        ),
    )
    redis_url: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_REDIS_URL",
            parse=_url("redis", "rediss", "unix"),
            doc="Redis to use; unset under `podium dev` means an embedded Redis",
            redact=_hide_url_password,
        ),
    )
    database_url: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_DATABASE_URL",
            parse=_url("postgresql", "postgres"),
            doc="PostgreSQL to use; unset under `podium dev` means an embedded PostgreSQL",
            redact=_hide_url_password,
        ),
    )
    jwt_secret: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_JWT_SECRET",
            # RFC 7518 3.2: an HS256 key is at least as long as the hash (32 bytes).
            parse=_secret(32),
            doc="Key that verifies players' JWTs",
            secret=True,
        ),
    )
    service_key: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_SERVICE_KEY",
            parse=_secret(),
            doc="Shared secret identifying trusted server-side callers",
            secret=True,
        ),
    )
    action_key: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_ACTION_KEY",
            parse=_secret(),
            doc="Key that signs and verifies single-use action tokens",
            secret=True,
        ),
    )
    admin_token: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_ADMIN_TOKEN",
            parse=_secret(),
            doc="Bearer token for the admin endpoints",
            secret=True,
        ),
    )
    jwt_algorithm: str = field(
        default="HS256",
        metadata=_setting(
            env="PODIUM_JWT_ALGORITHM",
            parse=_pattern(r"HS256|RS256|ES256", "one of HS256, RS256, ES256"),
            doc="Algorithm of the JWTs Podium issues; RS256 and ES256 need a private key file",
        ),
    )
    jwt_private_key_file: Path | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_JWT_PRIVATE_KEY_FILE",
            parse=_path(),
            doc="PEM private key signing Podium's JWTs when PODIUM_JWT_ALGORITHM is RS256 or ES256",
        ),
    )
    jwt_previous_public_key_files: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_JWT_PREVIOUS_PUBLIC_KEY_FILES",
            parse=_paths(),
            doc="PEM public keys of retired signing keys, still accepted while rotating",
        ),
    )
    jwt_issuer: str = field(
        default="podium",
        metadata=_setting(
            env="PODIUM_JWT_ISSUER",
            parse=_host(),
            doc="The iss claim of the JWTs Podium issues and expects",
        ),
    )
    jwt_audience: str = field(
        default="podium",
        metadata=_setting(
            env="PODIUM_JWT_AUDIENCE",
            parse=_host(),
            doc="The aud claim of the JWTs Podium issues and expects",
        ),
    )
    jwt_access_ttl_s: int = field(
        default=900,
        metadata=_setting(
            env="PODIUM_JWT_ACCESS_TTL_S",
            parse=_integer(60, 86400),
            doc="Lifetime of an access JWT in seconds",
        ),
    )
    jwt_refresh_ttl_s: int = field(
        default=30 * 86400,
        metadata=_setting(
            env="PODIUM_JWT_REFRESH_TTL_S",
            parse=_integer(300, 365 * 86400),
            doc="Lifetime of a session (and its refresh token) in seconds",
        ),
    )
    jwt_leeway_s: float = field(
        default=5.0,
        metadata=_setting(
            env="PODIUM_JWT_LEEWAY_S",
            parse=_number(0, 300),
            doc="Clock skew tolerated when checking exp, nbf and iat of JWTs and action tokens",
        ),
    )
    jwt_external_jwks_file: Path | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_JWT_EXTERNAL_JWKS_FILE",
            parse=_path(),
            doc="JWKS file of an external issuer whose RS256/ES256 JWTs are also accepted",
        ),
    )
    jwt_external_issuer: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_JWT_EXTERNAL_ISSUER",
            parse=_host(),
            doc="Required iss of external JWTs (with PODIUM_JWT_EXTERNAL_JWKS_FILE)",
        ),
    )
    jwt_external_audience: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_JWT_EXTERNAL_AUDIENCE",
            parse=_host(),
            doc="Required aud of external JWTs (with PODIUM_JWT_EXTERNAL_JWKS_FILE)",
        ),
    )
    action_key_id: str = field(
        default="k1",
        metadata=_setting(
            env="PODIUM_ACTION_KEY_ID",
            parse=_pattern(
                r"[A-Za-z0-9_-]{1,32}", "1 to 32 characters from A-Z, a-z, 0-9, _ and -"
            ),
            doc="Key id of PODIUM_ACTION_KEY, written into every action token it signs",
        ),
    )
    action_retired_keys: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_ACTION_RETIRED_KEYS",
            parse=_retired_keys(),
            doc="Older action-token keys still accepted while rotating",
            secret=True,
        ),
    )
    action_token_ttl_s: int = field(
        default=300,
        metadata=_setting(
            env="PODIUM_ACTION_TOKEN_TTL_S",
            parse=_integer(10, 86400),
            doc="Lifetime of the action tokens Podium mints, in seconds",
        ),
    )
    action_token_max_lifetime_s: int = field(
        default=3600,
        metadata=_setting(
            env="PODIUM_ACTION_TOKEN_MAX_LIFETIME_S",
            parse=_integer(10, 86400),
            doc="Longest lifetime accepted in an action token (expires_at - issued_at)",
        ),
    )
    action_types: str = field(
        default="score:1:10000",
        metadata=_setting(
            env="PODIUM_ACTION_TYPES",
            parse=_action_types(),
            doc="Action types and the score delta each may carry",
        ),
    )
    allow_unknown_action_types: bool = field(
        default=False,
        metadata=_setting(
            env="PODIUM_ALLOW_UNKNOWN_ACTION_TYPES",
            parse=_boolean(),
            doc="Accept action types not in PODIUM_ACTION_TYPES (with any delta)",
        ),
    )
    ledger_batch_max: int = field(
        default=500,
        metadata=_setting(
            env="PODIUM_LEDGER_BATCH_MAX",
            parse=_integer(1, 10000),
            doc="Most score submissions committed in one PostgreSQL transaction",
        ),
    )
    ledger_linger_s: float = field(
        default=0.005,
        metadata=_setting(
            env="PODIUM_LEDGER_LINGER_S",
            parse=_number(0, 1),
            doc="Longest wait for more submissions before committing a batch while another "
            "batch is being committed (an idle ledger commits at once)",
        ),
    )
    ledger_queue_size: int = field(
        default=10000,
        metadata=_setting(
            env="PODIUM_LEDGER_QUEUE_SIZE",
            parse=_integer(1, 1_000_000),
            doc="Submissions waiting for the ledger before new ones get 503",
        ),
    )
    submit_timeout_s: float = field(
        default=5.0,
        metadata=_setting(
            env="PODIUM_SUBMIT_TIMEOUT_S",
            parse=_number(0, 60, low_exclusive=True),
            doc="Longest a score submission waits for its commit before answering 503",
        ),
    )
    ranking_queue_size: int = field(
        default=10000,
        metadata=_setting(
            env="PODIUM_RANKING_QUEUE_SIZE",
            parse=_integer(1, 1_000_000),
            doc="Requests waiting for the ranking actor before new ones get 503",
        ),
    )
    ranking_publish_top_n: int = field(
        default=10,
        metadata=_setting(
            env="PODIUM_RANKING_PUBLISH_TOP_N",
            parse=_integer(1, 1000),
            doc="How many top entries each leaderboard update publishes",
        ),
    )
    redis_key_prefix: str = field(
        default="podium",
        metadata=_setting(
            env="PODIUM_REDIS_KEY_PREFIX",
            parse=_pattern(
                r"[A-Za-z0-9_.-]{1,32}", "1 to 32 characters from A-Z, a-z, 0-9, _, . and -"
            ),
            doc="Prefix of every Redis key and channel, so deployments can share a Redis",
        ),
    )
    read_max_limit: int = field(
        default=100,
        metadata=_setting(
            env="PODIUM_READ_MAX_LIMIT",
            parse=_integer(1, 1000),
            doc="Most entries one leaderboard read returns (limit, 2 x radius + 1, user_ids)",
        ),
    )
    dev_mode: bool = field(
        default=False,
        metadata=_setting(
            env="PODIUM_DEV_MODE",
            parse=_boolean(),
            doc="Development only: players may mint their own action tokens (podium dev sets it)",
        ),
    )
    ws_allow_spectators: bool = field(
        default=True,
        metadata=_setting(
            env="PODIUM_WS_ALLOW_SPECTATORS",
            parse=_boolean(),
            doc="Let WebSocket clients subscribe without authenticating",
        ),
    )
    ws_allowed_origins: str = field(
        default="*",
        metadata=_setting(
            env="PODIUM_WS_ALLOWED_ORIGINS",
            parse=_pattern(r"\*|[^,\s]+(,[^,\s]+)*", "* or comma-separated origins"),
            doc="Origins a browser WebSocket may come from; * for any (other clients send none)",
        ),
    )
    ws_max_subscriptions: int = field(
        default=16,
        metadata=_setting(
            env="PODIUM_WS_MAX_SUBSCRIPTIONS",
            parse=_integer(1, 1000),
            doc="Leaderboards one WebSocket may watch at once",
        ),
    )
    ws_rate_per_s: float = field(
        default=50.0,
        metadata=_setting(
            env="PODIUM_WS_RATE_PER_S",
            parse=_number(1, 100_000),
            doc="Messages per second a WebSocket client may send on average",
        ),
    )
    ws_rate_burst: int = field(
        default=100,
        metadata=_setting(
            env="PODIUM_WS_RATE_BURST",
            parse=_integer(1, 100_000),
            doc="Messages a WebSocket client may send in a burst above its rate",
        ),
    )
    ws_tick_s: float = field(
        default=0.1,
        metadata=_setting(
            env="PODIUM_WS_TICK_S",
            parse=_number(0.005, 5),
            doc="How often leaderboard updates are coalesced and pushed to WebSockets",
        ),
    )
    revocation_poll_s: float = field(
        default=0.5,
        metadata=_setting(
            env="PODIUM_REVOCATION_POLL_S",
            parse=_number(0.05, 10),
            doc="How often a node picks up sessions revoked on any node",
        ),
    )
    node_id: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_NODE_ID",
            parse=_node_id(),
            doc="Names this node in logs, metrics and the WebSocket welcome; unset = hostname-pid",
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_setting(
            env="PODIUM_LOG_LEVEL",
            parse=_choice("debug", "info", "warning", "error"),
            doc="Least severe log level written",
        ),
    )
    log_format: str = field(
        default="json",
        metadata=_setting(
            env="PODIUM_LOG_FORMAT",
            parse=_choice("json", "text"),
            doc="Log line format: one JSON object per line, or text for humans",
        ),
    )
    graceful_timeout_s: float = field(
        default=10.0,
        metadata=_setting(
            env="PODIUM_GRACEFUL_TIMEOUT_S",
            parse=_number(0, 300, low_exclusive=True),
            doc="Seconds a stopping node waits for in-flight work before cancelling it",
        ),
    )
    migrate_on_start: bool = field(
        default=True,
        metadata=_setting(
            env="PODIUM_MIGRATE_ON_START",
            parse=_boolean(),
            doc="Apply pending database migrations when the node starts",
        ),
    )
    pg_pool_min_size: int = field(
        default=2,
        metadata=_setting(
            env="PODIUM_PG_POOL_MIN_SIZE",
            parse=_integer(1, 100),
            doc="PostgreSQL connections kept open even when idle",
        ),
    )
    pg_pool_max_size: int = field(
        default=10,
        metadata=_setting(
            env="PODIUM_PG_POOL_MAX_SIZE",
            parse=_integer(1, 200),
            doc="Most PostgreSQL connections open at once; at least PODIUM_PG_POOL_MIN_SIZE",
        ),
    )
    pg_command_timeout_s: float = field(
        default=5.0,
        metadata=_setting(
            env="PODIUM_PG_COMMAND_TIMEOUT_S",
            parse=_number(0, 120, low_exclusive=True),
            doc="Seconds one PostgreSQL command may take before it fails",
        ),
    )
    redis_timeout_s: float = field(
        default=2.0,
        metadata=_setting(
            env="PODIUM_REDIS_TIMEOUT_S",
            parse=_number(0, 60, low_exclusive=True),
            doc="Seconds one Redis command may take before it fails",
        ),
    )
    ws_max_connections: int = field(
        default=10000,
        metadata=_setting(
            env="PODIUM_WS_MAX_CONNECTIONS",
            parse=_integer(1, 1_000_000),
            doc="WebSocket connections this node accepts before refusing new ones",
        ),
    )
    ws_max_message_bytes: int = field(
        default=16384,
        metadata=_setting(
            env="PODIUM_WS_MAX_MESSAGE_BYTES",
            parse=_integer(256, 1_048_576),
            doc="Largest WebSocket message accepted from a client",
        ),
    )
    ws_heartbeat_s: float = field(
        default=15.0,
        metadata=_setting(
            env="PODIUM_WS_HEARTBEAT_S",
            parse=_number(1, 300),
            doc="Seconds between WebSocket pings",
        ),
    )
    ws_outbox_size: int = field(
        default=64,
        metadata=_setting(
            env="PODIUM_WS_OUTBOX_SIZE",
            parse=_integer(1, 10_000),
            doc="Frames queued per WebSocket before it is closed as too slow",
        ),
    )
    http_max_body_bytes: int = field(
        default=16384,
        metadata=_setting(
            env="PODIUM_HTTP_MAX_BODY_BYTES",
            parse=_integer(256, 1_048_576),
            doc="Largest HTTP request body accepted",
        ),
    )
    actor_restart_max: int = field(
        default=5,
        metadata=_setting(
            env="PODIUM_ACTOR_RESTART_MAX",
            parse=_integer(0, 1000),
            doc="Actor restarts allowed within the restart window before the node stops",
        ),
    )
    actor_restart_window_s: float = field(
        default=60.0,
        metadata=_setting(
            env="PODIUM_ACTOR_RESTART_WINDOW_S",
            parse=_number(0, 3600, low_exclusive=True),
            doc="Length in seconds of the window PODIUM_ACTOR_RESTART_MAX counts over",
        ),
    )
    actor_backoff_initial_s: float = field(
        default=0.1,
        metadata=_setting(
            env="PODIUM_ACTOR_BACKOFF_INITIAL_S",
            parse=_number(0, 60, low_exclusive=True),
            doc="Seconds before the first restart of a crashed actor",
        ),
    )
    actor_backoff_max_s: float = field(
        default=5.0,
        metadata=_setting(
            env="PODIUM_ACTOR_BACKOFF_MAX_S",
            parse=_number(0, 600, low_exclusive=True),
            doc="Longest wait before restarting an actor; at least PODIUM_ACTOR_BACKOFF_INITIAL_S",
        ),
    )

    trusted_proxies: str = field(
        default="",
        metadata=_setting(
            env="PODIUM_TRUSTED_PROXIES",
            parse=_networks(),
            doc="Networks of proxies (HAProxy) whose X-Forwarded-For names the client; empty: none",
        ),
    )
    fraud_enabled: bool = field(
        default=True,
        metadata=_setting(
            env="PODIUM_FRAUD_ENABLED",
            parse=_boolean(),
            doc="Score every submission for fraud before it is committed (docs/fraud.md)",
        ),
    )
    fraud_flag_threshold: float = field(
        default=0.5,
        metadata=_setting(
            env="PODIUM_FRAUD_FLAG_THRESHOLD",
            parse=_number(0, 1),
            doc="Risk from which a submission is allowed but logged for review",
        ),
    )
    fraud_block_threshold: float = field(
        default=0.8,
        metadata=_setting(
            env="PODIUM_FRAUD_BLOCK_THRESHOLD",
            parse=_number(0, 1),
            doc="Risk from which a submission is refused (403 fraud_blocked); above the flag one",
        ),
    )
    fraud_params: str = field(
        default="",
        metadata=_setting(
            env="PODIUM_FRAUD_PARAMS",
            parse=_fraud_params(),
            doc="Fraud model tuning, e.g. identity_weight=0.5,frequency_user_limit=20; "
            "empty: the defaults",
        ),
    )
    fraud_shadow_ban_blocks: int = field(
        default=3,
        metadata=_setting(
            env="PODIUM_FRAUD_SHADOW_BAN_BLOCKS",
            parse=_integer(0, 1000),
            doc="Blocks within the shadow-ban window that shadow-ban a player; 0: never",
        ),
    )
    fraud_shadow_ban_window_s: float = field(
        default=86400.0,
        metadata=_setting(
            env="PODIUM_FRAUD_SHADOW_BAN_WINDOW_S",
            parse=_number(1, 30 * 86400),
            doc="Seconds over which PODIUM_FRAUD_SHADOW_BAN_BLOCKS counts blocks",
        ),
    )
    fraud_webhook_url: str | None = field(
        default=None,
        metadata=_setting(
            env="PODIUM_FRAUD_WEBHOOK_URL",
            parse=_url("http", "https"),
            doc="Where fraud alerts (blocks, shadow bans) are POSTed as JSON; unset: none",
            redact=_hide_url_password,
        ),
    )
    fraud_webhook_retries: int = field(
        default=3,
        metadata=_setting(
            env="PODIUM_FRAUD_WEBHOOK_RETRIES",
            parse=_integer(0, 10),
            doc="Retries of a failed alert POST, with backoff, before it is dropped and counted",
        ),
    )
    fraud_queue_size: int = field(
        default=10000,
        metadata=_setting(
            env="PODIUM_FRAUD_QUEUE_SIZE",
            parse=_integer(1, 1_000_000),
            doc="Submissions waiting for the fraud actor, and fraud log rows waiting to be written",
        ),
    )
    rate_user_per_s: float = field(
        default=5.0,
        metadata=_setting(
            env="PODIUM_RATE_USER_PER_S",
            parse=_number(0.01, 100_000),
            doc="Score submissions per second one player may make on average (429 above)",
        ),
    )
    rate_user_burst: int = field(
        default=20,
        metadata=_setting(
            env="PODIUM_RATE_USER_BURST",
            parse=_integer(1, 1_000_000),
            doc="Score submissions one player may make at once above the rate",
        ),
    )
    rate_ip_per_s: float = field(
        default=50.0,
        metadata=_setting(
            env="PODIUM_RATE_IP_PER_S",
            parse=_number(0.01, 100_000),
            doc="Score submissions and sign-ins per second from one client IP on average",
        ),
    )
    rate_ip_burst: int = field(
        default=200,
        metadata=_setting(
            env="PODIUM_RATE_IP_BURST",
            parse=_integer(1, 1_000_000),
            doc="Score submissions and sign-ins from one client IP at once above the rate",
        ),
    )
    rate_service_per_s: float = field(
        default=2000.0,
        metadata=_setting(
            env="PODIUM_RATE_SERVICE_PER_S",
            parse=_number(0.01, 1_000_000),
            doc="Action tokens per second a game server (the service key) may mint on average",
        ),
    )
    rate_service_burst: int = field(
        default=4000,
        metadata=_setting(
            env="PODIUM_RATE_SERVICE_BURST",
            parse=_integer(1, 10_000_000),
            doc="Action tokens a game server may mint at once above the rate",
        ),
    )

    def __post_init__(self) -> None:
        for name, row in _TABLE.items():
            raw = getattr(self, name)
            value = _parse(row, raw, context=f"{name} ({row.spec.env})")
            if value is not raw:
                # Frozen: the only way to store the normalized value.
                object.__setattr__(self, name, value)
        self._check_cross_field_rules()

    def _check_cross_field_rules(self) -> None:
        _require_at_least(self, "pg_pool_max_size", "pg_pool_min_size")
        _require_at_least(self, "actor_backoff_max_s", "actor_backoff_initial_s")
        _require_at_least(self, "action_token_max_lifetime_s", "action_token_ttl_s")
        if self.fraud_block_threshold <= self.fraud_flag_threshold:
            raise _error(
                f"PODIUM_FRAUD_BLOCK_THRESHOLD={self.fraud_block_threshold:g} is invalid: "
                "expected it above PODIUM_FRAUD_FLAG_THRESHOLD "
                f"({self.fraud_flag_threshold:g})"
            )
        if self.jwt_algorithm != "HS256" and self.jwt_private_key_file is None:
            raise _error(
                f"PODIUM_JWT_ALGORITHM={self.jwt_algorithm} is invalid: "
                "expected PODIUM_JWT_PRIVATE_KEY_FILE to be set as well"
            )
        if self.jwt_external_jwks_file is not None and (
            self.jwt_external_issuer is None or self.jwt_external_audience is None
        ):
            raise _error(
                "PODIUM_JWT_EXTERNAL_JWKS_FILE is set: expected PODIUM_JWT_EXTERNAL_ISSUER "
                "and PODIUM_JWT_EXTERNAL_AUDIENCE as well"
            )
        # Both listeners bind bind_host; the same fixed port would only fail
        # later, at bind time, with a less helpful message.
        if self.ws_port != 0 and self.ws_port == self.http_port:
            ws, http = _TABLE["ws_port"].spec.env, _TABLE["http_port"].spec.env
            raise _error(
                f"{ws}={self.ws_port} is invalid: expected 0 or a port other than "
                f"{http} ({self.http_port})"
            )

    @classmethod
    def from_sources(cls, environ: Mapping[str, str], toml_path: Path | None = None) -> Self:
        """Build settings from ``environ``, then ``toml_path``, then the defaults.

        ``environ`` is usually ``os.environ``; only keys starting with
        ``PODIUM_`` are looked at, and every one of them must be a known
        setting. ``toml_path``, if given, must exist and hold a flat table whose
        keys are field names. Every value present in either source is
        validated, including TOML values the environment overrides.

        Raises:
          SettingsError: if a source has an unknown key, an invalid value, the
            values break a cross-field rule, or the file can't be read or parsed.
        """
        by_env = {row.spec.env: name for name, row in _TABLE.items()}
        for key in sorted(environ):
            if key.startswith(_ENV_PREFIX) and key not in by_env:
                known = [env.removeprefix(_ENV_PREFIX) for env in by_env]
                raise _error(
                    f"{key} is not a known setting"
                    + _suggest(key.removeprefix(_ENV_PREFIX), known, prefix=_ENV_PREFIX)
                )

        values: dict[str, Any] = {}
        if toml_path is not None:
            for key, raw in _load_toml(Path(toml_path)).items():
                if key not in _TABLE:
                    raise _error(
                        f"{key} in {toml_path} is not a known setting" + _suggest(key, _TABLE)
                    )
                row = _TABLE[key]
                values[key] = _parse(row, raw, context=f"{key} ({row.spec.env})", where=toml_path)
        for name, row in _TABLE.items():
            if row.spec.env in environ:
                values[name] = _parse(row, environ[row.spec.env], context=row.spec.env)
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        """Return a copy with ``changes`` applied and validated like a fresh instance.

        Raises:
          SettingsError: if a new value is invalid or breaks a cross-field rule.
          TypeError: if a keyword is not a field name.
        """
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, object]:
        """Return field name → value, safe to log or print.

        Secret fields are ``"***"`` when set and ``None`` when unset; passwords
        inside URLs are replaced by ``***``. Other values keep their types
        (``data_dir`` stays a :class:`~pathlib.Path`).
        """
        shown: dict[str, object] = {}
        for name, row in _TABLE.items():
            value = getattr(self, name)
            if value is not None and row.spec.secret:
                value = _HIDDEN
            elif isinstance(value, str) and row.spec.redact is not None:
                value = row.spec.redact(value)
            shown[name] = value
        return shown

    def to_toml(self) -> str:
        """Return the redacted settings as a commented TOML document.

        This is what ``podium config`` prints. Each key has a comment line above
        it naming its environment variable and saying what it does; unset
        optional settings appear as ``# key = (unset)`` so the output is still
        valid TOML. When no secrets or URL passwords are set, feeding the output
        back through :meth:`from_sources` gives equal settings.
        """
        lines = [
            "# Podium settings. Secrets and URL passwords are shown as ***.",
            "# PODIUM_* environment variables override the values in this file.",
        ]
        for name, value in self.redacted().items():
            lines.append("")
            spec = _TABLE[name].spec
            lines.append(f"# {spec.env}: {spec.doc}")
            if value is None:
                lines.append(f"# {name} = (unset)")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def to_environ(self) -> dict[str, str]:
        """Every setting that differs from its default, as ``PODIUM_*`` variables.

        Secrets included: this is for starting a child process with these
        settings (``from_sources`` on the result gives equal settings).
        """
        return {
            row.spec.env: _env_text(getattr(self, name))
            for name, row in _TABLE.items()
            if getattr(self, name) is not None and getattr(self, name) != row.default
        }

    def __repr__(self) -> str:
        # The generated repr would print secrets into any log or traceback.
        shown = ", ".join(f"{name}={value!r}" for name, value in self.redacted().items())
        return f"{type(self).__name__}({shown})"


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One row of the settings table, for generating docs and ``--help``.

    ``type_name`` is the field's Python type (``"int"``, ``"str | None"``);
    ``accepts`` says which values parse (``"an integer from 0 to 65535"``);
    ``default_repr`` is the default as you would write it in the environment,
    or ``"(unset)"``.
    """

    name: str
    env: str
    type_name: str
    default_repr: str
    description: str
    secret: bool
    accepts: str


def describe() -> list[SettingInfo]:
    """Return every setting, in declaration order."""
    return [
        SettingInfo(
            name=name,
            env=row.spec.env,
            type_name=row.spec.kind.type_name + (" | None" if row.optional else ""),
            default_repr="(unset)" if row.optional else _env_text(row.default),
            description=row.spec.doc,
            secret=row.spec.secret,
            accepts=row.spec.kind.expected,
        )
        for name, row in _TABLE.items()
    ]


def markdown_table() -> str:
    """The settings as the Markdown table in README.md (a test keeps the two equal)."""
    lines = ["| variable | default | what it sets |", "| --- | --- | --- |"]
    for info in describe():
        secret = " Secret." if info.secret else ""
        lines.append(
            f"| `{info.env}` | `{info.default_repr}` | {info.description}. "
            f"Accepts {info.accepts}.{secret} |"
        )
    return "\n".join(lines) + "\n"


# --- helpers ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    spec: _Spec
    default: object
    # Optional settings default to None and take "" to mean unset.
    optional: bool


# Field name -> row, in declaration order; built from the dataclass itself so
# the field list exists exactly once.
_TABLE: Final[Mapping[str, _Row]] = {
    f.name: _Row(spec=f.metadata[_META_KEY], default=f.default, optional=f.default is None)
    for f in dataclasses.fields(Settings)
}


def _parse(row: _Row, raw: object, *, context: str, where: Path | None = None) -> object:
    """Convert one raw value, or raise a :exc:`SettingsError` naming ``context``."""
    # An empty environment variable is the usual way to unset something
    # without editing the deployment's variable list.
    if row.optional and (raw is None or raw == ""):
        return None
    try:
        return row.spec.kind.convert(raw)
    except _Invalid:
        location = f" in {where}" if where is not None else ""
        raise _error(
            f"{context}={_show(row.spec, raw)}{location} is invalid: "
            f"expected {row.spec.kind.expected}"
        ) from None


def _show(spec: _Spec, raw: object) -> str:
    """Render a rejected value for an error message without leaking secrets."""
    if spec.secret:
        return f"<hidden, {len(raw)} characters>" if isinstance(raw, str) else "<hidden>"
    if isinstance(raw, str) and spec.redact is not None:
        raw = spec.redact(raw)
    shown = repr(str(raw) if isinstance(raw, Path) else raw)
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[: _MAX_SHOWN_CHARS - 3] + "..."
    return shown


def _require_at_least(settings: Settings, name: str, lower_name: str) -> None:
    value, lower = getattr(settings, name), getattr(settings, lower_name)
    if value < lower:
        raise _error(
            f"{_TABLE[name].spec.env}={value!r} is invalid: expected at least "
            f"{_TABLE[lower_name].spec.env} ({lower!r})"
        )


def _suggest(word: str, candidates: Iterable[str], *, prefix: str = "") -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return f"; did you mean {prefix}{matches[0]}?" if matches else ""


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise _error(f"cannot read settings file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _error(f"settings file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise _error(f"settings file {path} is not valid TOML: not UTF-8 ({exc.reason})") from exc


def _error(message: str) -> SettingsError:
    # Callers print str(err) as one line; a path or value with a newline in it
    # must not break that.
    return SettingsError(message.replace("\r", "\\r").replace("\n", "\\n"))


def _env_text(value: object) -> str:
    """``value`` as it would be written in a ``PODIUM_*`` variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # repr of a finite float is valid TOML ("10.0", "1e-05", "1e+20").
        return repr(value)
    if isinstance(value, str | Path):
        return _toml_string(str(value))
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
