"""Shared fixtures: real Redis and PostgreSQL for the session, clean state per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from tests.harness import TestServices


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServices]:
    """Private Redis and PostgreSQL for the whole test session."""
    running = TestServices(tmp_path_factory.mktemp("services"))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def database(services: TestServices) -> Iterator[str]:
    """The DSN of a fresh, migrated database, dropped after the test."""
    name, dsn = services.new_database()
    yield dsn
    services.drop_database(name)


@pytest.fixture
def empty_database(services: TestServices) -> Iterator[str]:
    """The DSN of a fresh database without Podium's schema, dropped after the test."""
    name, dsn = services.empty_database()
    yield dsn
    services.drop_database(name)


@pytest.fixture
def redis_url(services: TestServices) -> str:
    """The session's Redis, emptied for this test."""
    services.flush_redis()
    return services.urls.redis_url


def _offline(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        redis_url="redis://unused",
        database_url="postgresql://unused/unused",
        jwt_secret="test-jwt-secret-0123456789-0123456789",
        service_key="test-service-key-0123456789",
        action_key="test-action-key-0123456789",
        admin_token="test-admin-token-0123456789",
    )


@pytest.fixture
def offline_settings(tmp_path: Path) -> Settings:
    """Settings for parts tested without Redis or PostgreSQL (their URLs lead nowhere)."""
    return _offline(tmp_path)


@pytest.fixture
def settings(database: str, redis_url: str, tmp_path: Path) -> Settings:
    """Settings for a node on free ports against this test's Redis and database."""
    return _offline(tmp_path).replace(
        http_port=0,
        ws_port=0,
        redis_url=redis_url,
        database_url=database,
        node_id="test-node",
        graceful_timeout_s=5.0,
        # Tests drive one machine's traffic as fast as it goes: the fraud checks
        # and rate limits are off here and on in the tests that are about them.
        fraud_enabled=False,
        rate_user_per_s=100_000,
        rate_user_burst=1_000_000,
        rate_ip_per_s=100_000,
        rate_ip_burst=1_000_000,
    )
