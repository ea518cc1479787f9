"""Settings: CLI flags > FACECLI_* environment > config file (TOML) > defaults.

One resolver for every command, so the precedence is the same everywhere and testable in one
place. The config file is ``$FACECLI_CONFIG`` or ``<user config dir>/facecli/config.toml``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs

from facecli.errors import ConfigError

CONFIG_ENV = "FACECLI_CONFIG"

#: Settings that may also come from the environment, and their variable names.
ENV_VARS: dict[str, str] = {
    "models_dir": "FACECLI_MODELS_DIR",
    "preset": "FACECLI_PRESET",
    "threads": "FACECLI_THREADS",
    "device": "FACECLI_DEVICE",
    "db": "FACECLI_DB",
    "server": "FACECLI_SERVER",
    "collection": "FACECLI_COLLECTION",
    "to": "FACECLI_TARGET",
    "journal": "FACECLI_JOURNAL",
}


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("facecli")) / "config.toml"


def load_config_file(path: str | Path | None = None) -> dict[str, Any]:
    """The config file's table, or {} when there is none (an explicit path must exist)."""
    explicit = path or os.environ.get(CONFIG_ENV)
    p = Path(explicit) if explicit else default_config_path()
    if not p.exists():
        if explicit:
            raise ConfigError(f"config file not found: {p}")
        return {}
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None


class Settings:
    """Resolved settings for one command invocation."""

    def __init__(self, flags: dict[str, Any] | None = None, config_path: str | Path | None = None) -> None:
        self.flags = {k: v for k, v in (flags or {}).items() if v is not None}
        self.file = load_config_file(config_path)

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.flags:
            return self.flags[name]
        env = ENV_VARS.get(name)
        if env and os.environ.get(env):
            return os.environ[env]
        if name in self.file:
            return self.file[name]
        return default

    def level(self, name: str) -> int | None:
        """Where a setting comes from: 0 flag, 1 environment, 2 config file, None unset (lower wins)."""
        if name in self.flags:
            return 0
        env = ENV_VARS.get(name)
        if env and os.environ.get(env):
            return 1
        return 2 if name in self.file else None

    def thresholds(self, cli_overrides: dict[str, Any]) -> dict[str, Any]:
        """Threshold overrides: config file ``[thresholds]`` table, then flags on top."""
        table = self.file.get("thresholds", {})
        if not isinstance(table, dict):
            raise ConfigError("config: [thresholds] must be a table")
        return {**table, **cli_overrides}
