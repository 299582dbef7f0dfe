"""The ``podium`` command line, run as a real process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from config import describe
from protocol import action_token
from server.migrations import load_migrations

ROOT = Path(__file__).parents[2]


def podium(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env=clean | (env or {}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_command_and_setting() -> None:
    result = podium("--help")
    assert result.returncode == 0
    for command in ("dev", "serve", "migrate", "mint-action-token", "config"):
        assert re.search(rf"^    {command}\b", result.stdout, re.MULTILINE), command
    for info in describe():
        assert info.env in result.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PODIUM_HTTP_PORT": "abc"}, "PODIUM_HTTP_PORT"),
        ({"PODIUM_LOG_LEVEL": "loud"}, "PODIUM_LOG_LEVEL"),
        ({"PODIUM_HTTP_PROT": "1"}, "PODIUM_HTTP_PORT"),  # the suggestion
    ],
)
def test_a_bad_setting_exits_2_with_one_line(env: dict[str, str], variable: str) -> None:
    result = podium("dev", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("podium: error: ")
    assert variable in lines[0]


def test_a_bad_config_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "podium.toml"
    bad.write_text("http_port = 'abc'\n")
    result = podium("--config", str(bad), "config")
    assert result.returncode == 2
    assert "http_port" in result.stderr and str(bad) in result.stderr


def test_config_prints_effective_settings_with_secrets_redacted(tmp_path: Path) -> None:
    file = tmp_path / "podium.toml"
    file.write_text("ws_port = 9001\nlog_level = 'debug'\n")
    result = podium(
        "--config",
        str(file),
        "config",
        env={
            "PODIUM_ADMIN_TOKEN": "a-very-secret-admin-token",
            "PODIUM_DATABASE_URL": "postgresql://app:hunter2hunter2@db/podium",
            "PODIUM_LOG_LEVEL": "warning",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "a-very-secret-admin-token" not in result.stdout
    assert "hunter2" not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert printed["ws_port"] == 9001  # from the file
    assert printed["log_level"] == "warning"  # the environment wins
    assert printed["admin_token"] == "***"
    assert printed["database_url"] == "postgresql://app:***@db/podium"


def test_serve_names_what_it_is_missing() -> None:
    result = podium("serve", env={"PODIUM_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert "PODIUM_DATABASE_URL" in result.stderr
    assert "PODIUM_JWT_SECRET" in result.stderr
    assert "PODIUM_REDIS_URL" not in result.stderr


def test_migrate_applies_then_reports_up_to_date(empty_database: str) -> None:
    first = podium("migrate", env={"PODIUM_DATABASE_URL": empty_database})
    assert first.returncode == 0, first.stderr
    versions = [m.version for m in load_migrations()]
    assert first.stdout.strip() == f"applied {len(versions)} migration(s): {versions}"
    again = podium("migrate", env={"PODIUM_DATABASE_URL": empty_database})
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "up to date"


def test_migrate_against_nothing_fails_with_a_clear_line() -> None:
    result = podium(
        "migrate",
        env={"PODIUM_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
    )
    assert result.returncode == 1
    assert "podium stopped: cannot connect to PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr


def test_mint_action_token_prints_a_token_that_verifies() -> None:
    key = "cli-action-key-0123456789"
    user = "7d3c9a52-1f0e-4b6a-9c2d-5e8f01a2b3c4"
    result = podium(
        "mint-action-token", "--user-id", user, "--delta", "42", "--json",
        env={"PODIUM_ACTION_KEY": key, "PODIUM_ACTION_KEY_ID": "k9"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    claims = action_token.verify(
        printed["action_token"], keys={"k9": key}, now=time.time(), max_lifetime_s=3600
    )
    assert (claims.user_id, claims.delta, claims.leaderboard) == (user, 42, "global")
    assert claims.expires_at - claims.issued_at == 300


def test_mint_action_token_refuses_bad_input() -> None:
    result = podium(
        "mint-action-token", "--user-id", "not-a-uuid", "--delta", "1",
        env={"PODIUM_ACTION_KEY": "cli-action-key-0123456789"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("podium: error: ")
