"""Resolve the one target setting (`--to`) to a Sink (DESIGN.md section 3).

``local`` (the default) or ``sqlite:///path/to.db``: the embedded engine (``--db`` / FACECLI_DB
choose the file for ``local``). ``http(s)://host[:port]``: an OpenCV FR Server (remote issue).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facecli.errors import ConfigError
from facecli.sinks.local import DB_ENV, LocalSink, default_db_path


def resolve_db_path(target: str | None, db: str | Path | None) -> Path | None:
    """The SQLite path a local target means, or None for a non-local target."""
    target = target or "local"
    if target == "local":
        return Path(db or os.environ.get(DB_ENV) or default_db_path()).expanduser()
    if target.startswith("sqlite:///"):
        if db:
            raise ConfigError("give the database either in --to sqlite:///PATH or with --db, not both")
        return Path(target[len("sqlite:///"):]).expanduser()
    return None


def open_sink(target: str | None, db: str | Path | None = None, writer: bool = False, wait: bool = True,
              face_storage_type: str = "NoStorage", on_wait: Callable[[str], None] | None = None,
              **remote: Any):
    path = resolve_db_path(target, db)
    if path is not None:
        return LocalSink(path, writer=writer, wait=wait, face_storage_type=face_storage_type, on_wait=on_wait)
    if target and target.startswith(("http://", "https://")):
        raise ConfigError(f"remote targets ({target}) are not available yet in this version",
                          hint="use --to local or --to sqlite:///PATH")
    raise ConfigError(f"unknown target {target!r}", hint="use local, sqlite:///PATH or http(s)://HOST[:PORT]")
