"""Settings: CLI flags > FACECLI_* environment > config file (TOML) > defaults.

One resolver for every command, so the precedence is the same everywhere and testable in one
place. The config file is ``$FACECLI_CONFIG`` or ``<user config dir>/facecli/config.toml``.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable
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


#: Every key the config file may hold, with what it sets: one list, so a typo is an error with a
#: did-you-mean instead of a setting silently ignored. Names of the ``[thresholds]`` table are
#: checked by ``Thresholds.with_overrides``.
CONFIG_KEYS: dict[str, str] = {
    "to": "the target (--to)",
    "server": "an OpenCV FR / facecli serve URL (--to http://...)",
    "db": "the local engine database (--db)",
    "collection": "the collection (--collection)",
    "journal": "the run ledger file (--journal)",
    "no_cache": "keep no check results or face crops in the ledger (--no-cache)",
    "preset": "a threshold preset (--preset)",
    "thresholds": "a table of threshold overrides (--threshold NAME=VALUE)",
    "models_dir": "where model files are (--models-dir)",
    "threads": "onnxruntime threads (--threads)",
    "device": "cpu or cuda (--device)",
    "max_megapixels": "the largest image decoded (--max-megapixels)",
    "max_megapixels_unreduced": "the largest PNG/TIFF/WebP/... image (decoded at full size; default 50)",
    "multi_face": "reject | largest (--multi-face)",
    "duplicate_budget": "--duplicate-budget",
    "review_budget": "--review-budget",
    "duplicate_min_score": "--duplicate-min-score",
    "match_threshold": "the 1:1 match score of `facecli compare` and the fixed search bar of a target without a score model (`facecli calibrate --write-config` writes it)",
    "search_min_score": "a fixed bar for `facecli search` instead of the score model's (--min-score)",
    "api_key": "the API key of a remote target (--api-key)",
    "api_key_env": "the name of an environment variable holding the API key",
    "ca_bundle": "a CA bundle file for https:// targets",
    "insecure": "skip TLS verification (--insecure)",
    "retries": "--retries",
    "retry_budget": "seconds all retries of a run may wait in total",
    "retry_initial_s": "the first retry's backoff in seconds",
    "retry_max_wait_s": "the longest single backoff in seconds",
    "timeout": "--timeout",
    "concurrency": "--concurrency",
    "max_batch_bytes": "--max-batch-bytes",
}

#: How the user names a setting at each level (for messages): flag, environment, config file.
_FLAG_NAMES = {"models_dir": "--models-dir", "db": "--db", "journal": "--journal", "to": "--to"}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "preset"?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_config_keys(table: dict[str, Any], where: Path) -> None:
    """Unknown keys are a usage error naming the file and the closest known key."""
    unknown = [k for k in table if k not in CONFIG_KEYS]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{where}: unknown setting {k!r}{did_you_mean(k, CONFIG_KEYS)}",
                          hint=f"known settings: {', '.join(sorted(CONFIG_KEYS))}")


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("facecli")) / "config.toml"


def load_config_file(path: str | Path | None = None, missing_ok: bool = False) -> dict[str, Any]:
    """The config file's table, or {} when there is none (an explicit path must exist, unless
    ``missing_ok``: a command that is about to write it)."""
    explicit = path or os.environ.get(CONFIG_ENV)
    p = config_path(path)
    if not p.exists():
        if explicit and not missing_ok:
            raise ConfigError(f"config file not found: {p}")
        return {}
    try:
        with p.open("rb") as f:
            table = tomllib.load(f)
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None
    check_config_keys(table, p)
    return table


class Settings:
    """Resolved settings for one command invocation."""

    def __init__(self, flags: dict[str, Any] | None = None, config_path: str | Path | None = None,
                 missing_ok: bool = False) -> None:
        self.flags = {k: v for k, v in (flags or {}).items() if v is not None}
        self.file = load_config_file(config_path, missing_ok)

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.flags:
            return self.flags[name]
        env = ENV_VARS.get(name)
        if env and os.environ.get(env):
            return os.environ[env]
        if name in self.file:
            return self.file[name]
        return default

    def source(self, name: str) -> str:
        """How the user gave ``name``: '--models-dir', 'FACECLI_MODELS_DIR' or 'config models_dir'."""
        lv = self.level(name)
        if lv == 0:
            return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if lv == 1:
            return ENV_VARS[name]
        return f"config file {name}"

    def existing_dir(self, name: str, hint: str | None = None) -> str | None:
        """A directory setting that must exist when given (a typo must not be silently ignored)."""
        value = self.get(name)
        if value is None or value == "":
            return None
        if not Path(str(value)).expanduser().is_dir():
            raise ConfigError(f"{self.source(name)}: no such directory: {value}", hint=hint)
        return str(Path(str(value)).expanduser())

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


def config_path(path: str | Path | None = None) -> Path:
    """The config file a command reads: ``path``, else $FACECLI_CONFIG, else the default."""
    explicit = path or os.environ.get(CONFIG_ENV)
    return Path(explicit) if explicit else default_config_path()


def write_config_values(values: dict[str, float | int | str | bool], path: str | Path | None = None) -> Path:
    """Set top-level keys of the config file (created when absent), keeping every other line and
    comment as it is: a key already set is replaced in place, a new one goes before the first
    ``[table]``. The result is parsed back before it replaces the file (atomically)."""
    unknown = [k for k in values if k not in CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    p = config_path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines() if p.exists() else []
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), len(lines))
    for key, value in values.items():
        text = f"{key} = {_toml_value(value)}"
        at = next((i for i in range(first_table) if lines[i].split("=", 1)[0].strip() == key), None)
        if at is not None:
            lines[at] = text
        else:
            lines.insert(first_table, text)
            first_table += 1
    body = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: cannot update the config file ({exc}); edit it by hand") from None
    if any(parsed.get(k) != v for k, v in values.items()):
        raise ConfigError(f"{p}: cannot update the config file; edit it by hand")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, p)
    except OSError as exc:
        raise ConfigError(f"cannot write config file {p}: {exc.strerror or exc}") from None
    return p


def _toml_value(value: float | int | str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
