"""The README stays true: the two commands first, every setting documented as the code has it."""

from __future__ import annotations

from pathlib import Path

from config import markdown_table

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["scripts/dev", "scripts/test"]
    for script in commands:
        assert (Path(__file__).parents[1] / script).stat().st_mode & 0o111


def test_readme_settings_table_matches_the_code() -> None:
    table = markdown_table()
    assert table in README, "README's settings table is stale; replace it with:\n" + table
