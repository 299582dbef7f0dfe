"""Podium's configuration: one frozen :class:`Settings`, built once at start-up.

See :mod:`config.settings` for where values come from and how they are checked.
"""

from config.settings import SettingInfo, Settings, SettingsError, describe, markdown_table

__all__ = ["SettingInfo", "Settings", "SettingsError", "describe", "markdown_table"]
