"""Versioned SQL migrations: ``server/migrations/NNNN_name.sql``, applied in order.

This module only finds and describes migrations; the PostgreSQL adapter
applies them (:meth:`server.stores.pg_store.PostgresStore.apply_migrations`),
each in its own transaction, under an advisory lock so that nodes starting
together take turns and every migration runs exactly once. A migration that
was applied is never edited: its checksum is recorded, and a mismatch stops
start-up.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """What the database holds compared with the code."""

    applied: tuple[int, ...]
    pending: tuple[int, ...]
    mismatched: tuple[int, ...]

    @property
    def current(self) -> bool:
        return not self.pending and not self.mismatched


def load_migrations() -> tuple[Migration, ...]:
    """The migrations shipped with this version of Podium, oldest first."""
    found: list[Migration] = []
    for entry in resources.files("server").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return tuple(found)


def status(migrations: tuple[Migration, ...], applied: dict[int, str]) -> MigrationStatus:
    """Compare the code's migrations with ``applied`` (version → checksum)."""
    return MigrationStatus(
        applied=tuple(sorted(applied)),
        pending=tuple(m.version for m in migrations if m.version not in applied),
        mismatched=tuple(
            m.version for m in migrations if applied.get(m.version, m.checksum) != m.checksum
        ),
    )
