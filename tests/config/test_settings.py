import dataclasses
import tomllib
from pathlib import Path

import pytest

from config import SettingInfo, Settings, SettingsError, describe

SECRET = "s3cret-value-0123456789-0123456789"  # 34 characters, over every minimum

# The table from the design brief, restated here so a changed default is a
# deliberate edit in two places rather than a silent drift.
EXPECTED_DEFAULTS: dict[str, object] = {
    "bind_host": "127.0.0.1",
    "http_port": 8000,
    "ws_port": 8001,
    "data_dir": Path(".podium"),
    "redis_url": None,
    "database_url": None,
    "jwt_secret": None,
    "service_key": None,
    "action_key": None,
    "admin_token": None,
    "jwt_algorithm": "HS256",
    "jwt_private_key_file": None,
    "jwt_previous_public_key_files": None,
    "jwt_issuer": "podium",
    "jwt_audience": "podium",
    "jwt_access_ttl_s": 900,
    "jwt_refresh_ttl_s": 2592000,
    "jwt_leeway_s": 5.0,
    "jwt_external_jwks_file": None,
    "jwt_external_issuer": None,
    "jwt_external_audience": None,
    "action_key_id": "k1",
    "action_retired_keys": None,
    "action_token_ttl_s": 300,
    "action_token_max_lifetime_s": 3600,
    "action_types": "score:1:10000",
    "allow_unknown_action_types": False,
    "ledger_batch_max": 500,
    "ledger_linger_s": 0.005,
    "ledger_queue_size": 10000,
    "submit_timeout_s": 5.0,
    "ranking_queue_size": 10000,
    "ranking_publish_top_n": 10,
    "redis_key_prefix": "podium",
    "read_max_limit": 100,
    "dev_mode": False,
    "ws_allow_spectators": True,
    "ws_allowed_origins": "*",
    "ws_max_subscriptions": 16,
    "ws_rate_per_s": 50.0,
    "ws_rate_burst": 100,
    "ws_tick_s": 0.1,
    "revocation_poll_s": 0.5,
    "node_id": None,
    "log_level": "info",
    "log_format": "json",
    "graceful_timeout_s": 10.0,
    "migrate_on_start": True,
    "pg_pool_min_size": 2,
    "pg_pool_max_size": 10,
    "pg_command_timeout_s": 5.0,
    "redis_timeout_s": 2.0,
    "ws_max_connections": 10000,
    "ws_max_message_bytes": 16384,
    "ws_heartbeat_s": 15.0,
    "ws_outbox_size": 64,
    "http_max_body_bytes": 16384,
    "actor_restart_max": 5,
    "actor_restart_window_s": 60.0,
    "actor_backoff_initial_s": 0.1,
    "actor_backoff_max_s": 5.0,
    "trusted_proxies": "",
    "fraud_enabled": True,
    "fraud_flag_threshold": 0.5,
    "fraud_block_threshold": 0.8,
    "fraud_params": "",
    "fraud_shadow_ban_blocks": 3,
    "fraud_shadow_ban_window_s": 86400.0,
    "fraud_webhook_url": None,
    "fraud_webhook_retries": 3,
    "fraud_queue_size": 10000,
    "rate_user_per_s": 5.0,
    "rate_user_burst": 20,
    "rate_ip_per_s": 50.0,
    "rate_ip_burst": 200,
    "rate_service_per_s": 2000.0,
    "rate_service_burst": 4000,
}
SECRET_FIELDS = {"jwt_secret", "service_key", "action_key", "admin_token", "action_retired_keys"}


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "podium.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_from(environ: dict[str, str], toml_path: Path | None = None) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.from_sources(environ, toml_path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults and precedence -------------------------------------------------


def test_defaults() -> None:
    settings = Settings.from_sources({})
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    assert values == EXPECTED_DEFAULTS
    assert settings == Settings()


def test_environment_overrides_toml_overrides_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'http_port = 9000\nws_port = 9001\nlog_level = "debug"\n')
    settings = Settings.from_sources({"PODIUM_HTTP_PORT": "9100"}, path)
    assert settings.http_port == 9100  # environment
    assert settings.ws_port == 9001  # file
    assert settings.log_level == "debug"  # file
    assert settings.redis_timeout_s == 2.0  # default


def test_toml_accepts_native_types_and_strings(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "migrate_on_start = false\n"
        "graceful_timeout_s = 3\n"
        'http_port = "9000"\n'
        "pg_pool_max_size = 20\n"
        'data_dir = "/var/lib/podium"\n'
        'redis_url = ""\n',
    )
    settings = Settings.from_sources({}, path)
    assert settings.migrate_on_start is False
    assert settings.graceful_timeout_s == 3.0
    assert isinstance(settings.graceful_timeout_s, float)
    assert settings.http_port == 9000
    assert settings.pg_pool_max_size == 20
    assert settings.data_dir == Path("/var/lib/podium")
    assert settings.redis_url is None


def test_non_podium_environment_variables_are_ignored() -> None:
    environ = {
        "HOME": "/root",
        "PATH": "/usr/bin",
        "podium_http_port": "not-a-port",
        "XPODIUM_HTTP_PORT": "not-a-port",
        "PODIUMHTTP_PORT": "not-a-port",
    }
    assert Settings.from_sources(environ) == Settings()


# --- parsers: accepted values --------------------------------------------------


@pytest.mark.parametrize(
    ("env", "raw", "field", "expected"),
    [
        ("PODIUM_HTTP_PORT", "0", "http_port", 0),
        ("PODIUM_HTTP_PORT", "65535", "http_port", 65535),
        ("PODIUM_WS_OUTBOX_SIZE", "10000", "ws_outbox_size", 10000),
        ("PODIUM_MIGRATE_ON_START", "off", "migrate_on_start", False),
        ("PODIUM_MIGRATE_ON_START", "No", "migrate_on_start", False),
        ("PODIUM_MIGRATE_ON_START", "0", "migrate_on_start", False),
        ("PODIUM_MIGRATE_ON_START", "TRUE", "migrate_on_start", True),
        ("PODIUM_LOG_LEVEL", "WARNING", "log_level", "warning"),
        ("PODIUM_LOG_FORMAT", "text", "log_format", "text"),
        ("PODIUM_REDIS_URL", "rediss://cache:6380/0", "redis_url", "rediss://cache:6380/0"),
        ("PODIUM_REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
        ("PODIUM_REDIS_URL", "", "redis_url", None),
        ("PODIUM_DATABASE_URL", "postgres://u@db/podium", "database_url", "postgres://u@db/podium"),
        ("PODIUM_JWT_SECRET", "x" * 32, "jwt_secret", "x" * 32),
        ("PODIUM_SERVICE_KEY", "x" * 16, "service_key", "x" * 16),
        ("PODIUM_JWT_SECRET", "", "jwt_secret", None),
        ("PODIUM_GRACEFUL_TIMEOUT_S", "0.5", "graceful_timeout_s", 0.5),
        ("PODIUM_GRACEFUL_TIMEOUT_S", "300", "graceful_timeout_s", 300.0),
        ("PODIUM_GRACEFUL_TIMEOUT_S", "1e2", "graceful_timeout_s", 100.0),
        ("PODIUM_WS_HEARTBEAT_S", "1", "ws_heartbeat_s", 1.0),
        ("PODIUM_DATA_DIR", "/var/lib/podium", "data_dir", Path("/var/lib/podium")),
        ("PODIUM_NODE_ID", "eu-west.node_7", "node_id", "eu-west.node_7"),
        ("PODIUM_NODE_ID", "n" * 64, "node_id", "n" * 64),
        ("PODIUM_BIND_HOST", "::", "bind_host", "::"),
    ],
)
def test_parser_accepts(env: str, raw: str, field: str, expected: object) -> None:
    settings = Settings.from_sources({env: raw})
    assert getattr(settings, field) == expected
    assert type(getattr(settings, field)) is type(expected)


# --- parsers: rejected values --------------------------------------------------

PORT = "expected an integer from 0 to 65535"
TIMEOUT = "expected a number greater than 0 and at most 300"
SECRET_RULE = "expected a secret of at least 16 characters with no surrounding whitespace"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PODIUM_HTTP_PORT": "abc"}, f"PODIUM_HTTP_PORT='abc' is invalid: {PORT}"),
        ({"PODIUM_HTTP_PORT": "70000"}, f"PODIUM_HTTP_PORT='70000' is invalid: {PORT}"),
        ({"PODIUM_HTTP_PORT": "-1"}, f"PODIUM_HTTP_PORT='-1' is invalid: {PORT}"),
        ({"PODIUM_HTTP_PORT": "80.0"}, f"PODIUM_HTTP_PORT='80.0' is invalid: {PORT}"),
        ({"PODIUM_HTTP_PORT": " 80"}, f"PODIUM_HTTP_PORT=' 80' is invalid: {PORT}"),
        ({"PODIUM_HTTP_PORT": ""}, f"PODIUM_HTTP_PORT='' is invalid: {PORT}"),
        (
            {"PODIUM_MIGRATE_ON_START": "maybe"},
            "PODIUM_MIGRATE_ON_START='maybe' is invalid: "
            "expected one of 1, 0, true, false, yes, no, on, off",
        ),
        (
            {"PODIUM_LOG_LEVEL": "loud"},
            "PODIUM_LOG_LEVEL='loud' is invalid: expected one of debug, info, warning, error",
        ),
        (
            {"PODIUM_REDIS_URL": "http://x"},
            "PODIUM_REDIS_URL='http://x' is invalid: "
            "expected a URL starting with redis://, rediss:// or unix://",
        ),
        (
            {"PODIUM_REDIS_URL": "redis://"},
            "PODIUM_REDIS_URL='redis://' is invalid: "
            "expected a URL starting with redis://, rediss:// or unix://",
        ),
        (
            # The rejected URL is echoed with its password hidden.
            {"PODIUM_DATABASE_URL": "mysql://u:hunter2@h/db"},
            "PODIUM_DATABASE_URL='mysql://u:***@h/db' is invalid: "
            "expected a URL starting with postgresql:// or postgres://",
        ),
        (
            # A rejected secret is never echoed, not even a short one.
            {"PODIUM_JWT_SECRET": "x" * 31},
            "PODIUM_JWT_SECRET=<hidden, 31 characters> is invalid: expected a secret of at "
            "least 32 characters with no surrounding whitespace",
        ),
        (
            {"PODIUM_SERVICE_KEY": "short"},
            f"PODIUM_SERVICE_KEY=<hidden, 5 characters> is invalid: {SECRET_RULE}",
        ),
        (
            {"PODIUM_ADMIN_TOKEN": f" {SECRET}"},
            f"PODIUM_ADMIN_TOKEN=<hidden, 35 characters> is invalid: {SECRET_RULE}",
        ),
        (
            {"PODIUM_GRACEFUL_TIMEOUT_S": "nan"},
            f"PODIUM_GRACEFUL_TIMEOUT_S='nan' is invalid: {TIMEOUT}",
        ),
        (
            {"PODIUM_GRACEFUL_TIMEOUT_S": "inf"},
            f"PODIUM_GRACEFUL_TIMEOUT_S='inf' is invalid: {TIMEOUT}",
        ),
        (
            {"PODIUM_GRACEFUL_TIMEOUT_S": "1e999"},
            f"PODIUM_GRACEFUL_TIMEOUT_S='1e999' is invalid: {TIMEOUT}",
        ),
        (
            {"PODIUM_GRACEFUL_TIMEOUT_S": "0"},
            f"PODIUM_GRACEFUL_TIMEOUT_S='0' is invalid: {TIMEOUT}",
        ),
        (
            {"PODIUM_GRACEFUL_TIMEOUT_S": "300.5"},
            f"PODIUM_GRACEFUL_TIMEOUT_S='300.5' is invalid: {TIMEOUT}",
        ),
        (
            {"PODIUM_WS_HEARTBEAT_S": "0.5"},
            "PODIUM_WS_HEARTBEAT_S='0.5' is invalid: expected a number from 1 to 300",
        ),
        (
            {"PODIUM_WS_MAX_MESSAGE_BYTES": "255"},
            "PODIUM_WS_MAX_MESSAGE_BYTES='255' is invalid: expected an integer from 256 to 1048576",
        ),
        (
            {"PODIUM_PG_POOL_MIN_SIZE": "0"},
            "PODIUM_PG_POOL_MIN_SIZE='0' is invalid: expected an integer from 1 to 100",
        ),
        (
            {"PODIUM_NODE_ID": "node 1"},
            "PODIUM_NODE_ID='node 1' is invalid: "
            "expected 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        ),
        (
            {"PODIUM_NODE_ID": "n" * 65},
            f"PODIUM_NODE_ID='{'n' * 65}' is invalid: "
            "expected 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        ),
        (
            {"PODIUM_BIND_HOST": ""},
            "PODIUM_BIND_HOST='' is invalid: expected a non-empty host name or IP address",
        ),
        ({"PODIUM_DATA_DIR": ""}, "PODIUM_DATA_DIR='' is invalid: expected a non-empty path"),
        (
            # Newlines in a value stay escaped, so the message is still one line.
            {"PODIUM_LOG_FORMAT": "json\nextra"},
            "PODIUM_LOG_FORMAT='json\\nextra' is invalid: expected one of json, text",
        ),
        (
            {"PODIUM_PG_POOL_MIN_SIZE": "5", "PODIUM_PG_POOL_MAX_SIZE": "4"},
            "PODIUM_PG_POOL_MAX_SIZE=4 is invalid: expected at least PODIUM_PG_POOL_MIN_SIZE (5)",
        ),
        (
            {"PODIUM_ACTOR_BACKOFF_INITIAL_S": "2", "PODIUM_ACTOR_BACKOFF_MAX_S": "1.5"},
            "PODIUM_ACTOR_BACKOFF_MAX_S=1.5 is invalid: "
            "expected at least PODIUM_ACTOR_BACKOFF_INITIAL_S (2.0)",
        ),
        (
            {"PODIUM_HTTP_PORT": "9000", "PODIUM_WS_PORT": "9000"},
            "PODIUM_WS_PORT=9000 is invalid: "
            "expected 0 or a port other than PODIUM_HTTP_PORT (9000)",
        ),
    ],
)
def test_invalid_environment_value(environ: dict[str, str], message: str) -> None:
    assert error_from(environ) == message


def test_secret_value_never_appears_in_errors() -> None:
    almost = "hunter2-hunter2"  # 15 characters, one short
    message = error_from({"PODIUM_SERVICE_KEY": almost})
    assert almost not in message
    assert message.startswith("PODIUM_SERVICE_KEY=")


def test_cross_field_rules_allow_equal_values() -> None:
    settings = Settings.from_sources(
        {
            "PODIUM_PG_POOL_MIN_SIZE": "7",
            "PODIUM_PG_POOL_MAX_SIZE": "7",
            "PODIUM_ACTOR_BACKOFF_INITIAL_S": "3",
            "PODIUM_ACTOR_BACKOFF_MAX_S": "3",
            "PODIUM_HTTP_PORT": "0",
            "PODIUM_WS_PORT": "0",
        }
    )
    assert (settings.pg_pool_min_size, settings.pg_pool_max_size) == (7, 7)
    assert settings.actor_backoff_max_s == settings.actor_backoff_initial_s == 3.0
    assert settings.http_port == settings.ws_port == 0


# --- unknown names -------------------------------------------------------------


def test_unknown_environment_variable_suggests_the_closest() -> None:
    message = error_from({"PODIUM_HTTP_PROT": "9000"})
    assert message == "PODIUM_HTTP_PROT is not a known setting; did you mean PODIUM_HTTP_PORT?"


def test_unknown_environment_variable_without_a_close_match() -> None:
    assert error_from({"PODIUM_ZZZ": "1"}) == "PODIUM_ZZZ is not a known setting"


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "htp_port = 9000\n")
    message = error_from({}, path)
    assert message == f"htp_port in {path} is not a known setting; did you mean http_port?"


def test_toml_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nhttp_port = 9000\n")
    assert error_from({}, path) == f"server in {path} is not a known setting"


# --- TOML values and files -------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('http_port = "abc"', "'abc'"),
        ("http_port = true", "True"),  # a bool is not an integer
        ("http_port = 80.0", "80.0"),
        ("http_port = [80]", "[80]"),
    ],
)
def test_invalid_toml_value_names_key_variable_and_file(
    tmp_path: Path, line: str, shown: str
) -> None:
    path = write_toml(tmp_path, line + "\n")
    assert error_from({}, path) == (
        f"http_port (PODIUM_HTTP_PORT)={shown} in {path} is invalid: {PORT}"
    )


def test_invalid_toml_bool_rejects_integers(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "migrate_on_start = 1\n")
    assert error_from({}, path).startswith(
        f"migrate_on_start (PODIUM_MIGRATE_ON_START)=1 in {path} is invalid: expected one of"
    )


def test_toml_nan_is_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "redis_timeout_s = nan\n")
    assert error_from({}, path) == (
        f"redis_timeout_s (PODIUM_REDIS_TIMEOUT_S)=nan in {path} is invalid: "
        "expected a number greater than 0 and at most 60"
    )


def test_toml_path_with_nul_is_rejected(tmp_path: Path) -> None:
    # Environment variables can't hold NUL, but TOML strings can.
    path = write_toml(tmp_path, 'data_dir = "a\\u0000b"\n')
    assert error_from({}, path) == (
        f"data_dir (PODIUM_DATA_DIR)='a\\x00b' in {path} is invalid: expected a non-empty path"
    )


def test_toml_value_is_validated_even_when_environment_overrides_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http_port = 70000\n")
    message = error_from({"PODIUM_HTTP_PORT": "9000"}, path)
    assert message.startswith("http_port (PODIUM_HTTP_PORT)=70000 in ")


def test_toml_cross_field_rule(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "pg_pool_min_size = 50\n")
    assert error_from({}, path) == (
        "PODIUM_PG_POOL_MAX_SIZE=10 is invalid: expected at least PODIUM_PG_POOL_MIN_SIZE (50)"
    )
    # The environment can repair what the file breaks.
    settings = Settings.from_sources({"PODIUM_PG_POOL_MAX_SIZE": "60"}, path)
    assert (settings.pg_pool_min_size, settings.pg_pool_max_size) == (50, 60)


def test_unparsable_toml_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http_port = = 9000\n")
    message = error_from({}, path)
    assert message.startswith(f"settings file {path} is not valid TOML: ")
    assert "line 1" in message  # tomllib's own message, with its position


def test_toml_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "podium.toml"
    path.write_bytes(b'bind_host = "\xff"\n')
    assert error_from({}, path).startswith(f"settings file {path} is not valid TOML: ")


def test_missing_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert error_from({}, path) == f"cannot read settings file {path}: No such file or directory"


def test_toml_path_that_is_a_directory(tmp_path: Path) -> None:
    assert error_from({}, tmp_path).startswith(f"cannot read settings file {tmp_path}: ")


# --- redaction ---------------------------------------------------------------------


def test_redacted_hides_secrets_and_url_passwords() -> None:
    settings = Settings.from_sources(
        {
            "PODIUM_JWT_SECRET": SECRET,
            "PODIUM_ADMIN_TOKEN": SECRET + "-admin",
            "PODIUM_DATABASE_URL": "postgresql://u:hunter2@h/db",
            "PODIUM_REDIS_URL": "redis://:hunter2@cache:6379/0",
        }
    )
    shown = settings.redacted()
    assert shown["jwt_secret"] == "***"
    assert shown["admin_token"] == "***"
    assert shown["service_key"] is None
    assert shown["action_key"] is None
    assert shown["database_url"] == "postgresql://u:***@h/db"
    assert shown["redis_url"] == "redis://:***@cache:6379/0"
    # Everything that isn't secret is shown as is.
    for name, value in EXPECTED_DEFAULTS.items():
        if name not in SECRET_FIELDS | {"database_url", "redis_url"}:
            assert shown[name] == value
    # The object itself still holds the real values.
    assert settings.jwt_secret == SECRET
    assert settings.database_url == "postgresql://u:hunter2@h/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("postgresql://u:p%40ss@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        (
            "postgres://h/db?sslmode=require&password=hunter2",
            "postgres://h/db?sslmode=require&password=***",
        ),
    ],
)
def test_url_password_redaction(url: str, shown: str) -> None:
    settings = Settings(database_url=url)
    assert settings.redacted()["database_url"] == shown


def test_repr_hides_secrets() -> None:
    settings = Settings(service_key=SECRET, database_url="postgresql://u:hunter2@h/db")
    text = repr(settings)
    assert SECRET not in text
    assert "hunter2" not in text
    assert "service_key='***'" in text


# --- to_toml -------------------------------------------------------------------------


def test_to_toml_parses_back_with_comments_and_redaction() -> None:
    settings = Settings(
        jwt_secret=SECRET,
        database_url="postgresql://u:hunter2@h/db",
        node_id="node-1",
        http_port=9000,
    )
    text = settings.to_toml()
    parsed = tomllib.loads(text)
    assert SECRET not in text
    assert "hunter2" not in text
    assert parsed["jwt_secret"] == "***"
    assert parsed["database_url"] == "postgresql://u:***@h/db"
    # Unset settings are comments, so they are absent from the parsed table.
    for name in ("redis_url", "service_key", "action_key", "admin_token"):
        assert name not in parsed
        assert f"# {name} = (unset)" in text.splitlines()
    # Every set non-secret value comes back as written.
    for name, value in settings.redacted().items():
        if value is not None and name not in SECRET_FIELDS:
            assert parsed[name] == (str(value) if isinstance(value, Path) else value)


def test_to_toml_has_a_comment_with_env_and_description_above_each_key() -> None:
    lines = Settings().to_toml().splitlines()
    for info in describe():
        key_line = next(
            i
            for i, line in enumerate(lines)
            if line.startswith((f"{info.name} = ", f"# {info.name} = "))
        )
        assert lines[key_line - 1] == f"# {info.env}: {info.description}"


def test_to_toml_round_trips_through_from_sources(tmp_path: Path) -> None:
    settings = Settings(
        bind_host="0.0.0.0",
        data_dir=Path('C:\\podium "data"\tdir'),
        redis_url="redis://cache:6379/2",
        log_format="text",
        migrate_on_start=False,
        graceful_timeout_s=2.5,
        actor_backoff_initial_s=1e-05,
        ws_max_connections=1_000_000,
    )
    path = write_toml(tmp_path, settings.to_toml())
    assert Settings.from_sources({}, path) == settings


def test_redacted_to_toml_cannot_be_loaded_as_real_secrets(tmp_path: Path) -> None:
    # Someone pasting `podium config` output into a file must not end up with
    # "***" as their JWT secret.
    path = write_toml(tmp_path, Settings(jwt_secret=SECRET).to_toml())
    assert error_from({}, path).startswith("jwt_secret (PODIUM_JWT_SECRET)=<hidden, 3 characters>")


# --- the object ----------------------------------------------------------------------


def test_settings_is_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.http_port = 9000  # type: ignore[misc]
    assert not hasattr(settings, "__dict__")  # slots: no stray attributes either


def test_direct_construction_is_validated() -> None:
    with pytest.raises(SettingsError) as info:
        Settings(http_port=70000)
    assert str(info.value) == f"http_port (PODIUM_HTTP_PORT)=70000 is invalid: {PORT}"
    with pytest.raises(SettingsError, match="PODIUM_PG_POOL_MAX_SIZE=1 is invalid"):
        Settings(pg_pool_max_size=1)


def test_construction_normalizes_values() -> None:
    settings = Settings(log_level="DEBUG", data_dir="/srv/podium", jwt_secret="")  # type: ignore[arg-type]
    assert settings.log_level == "debug"
    assert settings.data_dir == Path("/srv/podium")
    assert settings.jwt_secret is None


def test_replace_returns_a_validated_copy() -> None:
    original = Settings()
    changed = original.replace(http_port=9000, log_level="warning")
    assert (changed.http_port, changed.log_level) == (9000, "warning")
    assert original.http_port == 8000
    with pytest.raises(SettingsError, match=r"^ws_outbox_size \(PODIUM_WS_OUTBOX_SIZE\)=0 "):
        original.replace(ws_outbox_size=0)
    with pytest.raises(SettingsError, match=r"PODIUM_ACTOR_BACKOFF_MAX_S=0\.05 is invalid"):
        original.replace(actor_backoff_max_s=0.05)
    with pytest.raises(TypeError):
        original.replace(htp_port=9000)


def test_settings_equal_and_hashable() -> None:
    assert Settings(http_port=9000) == Settings.from_sources({"PODIUM_HTTP_PORT": "9000"})
    assert hash(Settings()) == hash(Settings())


# --- describe ----------------------------------------------------------------------------


def test_describe_covers_every_field_in_order() -> None:
    infos = describe()
    assert [info.name for info in infos] == list(EXPECTED_DEFAULTS)
    assert all(isinstance(info, SettingInfo) for info in infos)
    for info in infos:
        assert info.env == "PODIUM_" + info.name.upper()
        assert info.description and "\n" not in info.description
        assert info.accepts and "\n" not in info.accepts
    assert {info.name for info in infos if info.secret} == SECRET_FIELDS


def test_describe_rows() -> None:
    rows = {info.name: info for info in describe()}
    assert rows["http_port"] == SettingInfo(
        name="http_port",
        env="PODIUM_HTTP_PORT",
        type_name="int",
        default_repr="8000",
        description="TCP port of the HTTP listener; 0 picks a free port",
        secret=False,
        accepts=PORT.removeprefix("expected "),
    )
    assert rows["redis_url"].type_name == "str | None"
    assert rows["redis_url"].default_repr == "(unset)"
    assert rows["migrate_on_start"].default_repr == "true"
    assert rows["data_dir"].default_repr == ".podium"
    assert rows["data_dir"].type_name == "Path"
    assert rows["graceful_timeout_s"].type_name == "float"


def test_describe_type_names_match_annotations() -> None:
    annotations = {f.name: f.type for f in dataclasses.fields(Settings)}
    for info in describe():
        assert info.type_name == annotations[info.name]


def test_to_environ_round_trips_the_settings_that_differ(tmp_path: Path) -> None:
    settings = Settings(
        http_port=9100,
        data_dir=tmp_path,
        fraud_enabled=False,
        rate_user_per_s=12.5,
        jwt_secret="j" * 40,
        trusted_proxies="10.0.0.0/8",
    )
    environ = settings.to_environ()
    assert environ["PODIUM_HTTP_PORT"] == "9100"
    assert environ["PODIUM_FRAUD_ENABLED"] == "false"
    assert environ["PODIUM_JWT_SECRET"] == "j" * 40
    assert "PODIUM_WS_PORT" not in environ  # the default is left out
    assert Settings.from_sources(environ) == settings
