"""Resolve the one target setting (`--to`) to a Sink (DESIGN.md section 3).

``local`` (the default) or ``sqlite:///path/to.db``: the embedded engine (``--db`` / FACECLI_DB
choose the file for ``local``). ``postgresql://USER@HOST:PORT/DB`` (``--to``, or ``--db`` /
FACECLI_DB holding such a URL): the same engine on PostgreSQL + pgvector (sinks/local.py PgSink).
``http(s)://host[:port][/path]``: an OpenCV FR Server, or `facecli serve` (sinks/opencv_fr.py);
``remote`` keyword options (api_key, insecure, batch_size,
max_batch_bytes, concurrency, timeout, policy, verify) go to that client.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facecli.errors import ConfigError, TargetError
from facecli.engine.pg import is_postgres_url, mask_url
from facecli.sinks.local import DB_ENV, LocalSink, PgSink, default_db_path


def _url(value: str | Path | None) -> str | None:
    """``value`` as a postgresql:// URL, or None. A ``--db`` option typed as a path has lost one
    slash of ``postgresql://`` (pathlib folds ``//``): it is put back."""
    if value is None:
        return None
    text = str(value)
    if isinstance(value, Path) and re.match(r"(?i)postgres(ql)?:/[^/]", text):
        text = text.replace(":/", "://", 1)
    return text if is_postgres_url(text) else None


def names_database(target: str) -> bool:
    """A target that names its own database (``sqlite:///PATH``, ``postgresql://...``)."""
    return target.startswith("sqlite:///") or is_postgres_url(target)


def resolve_pg_url(target: str | None, db: str | Path | None) -> str | None:
    """The postgresql:// URL a target means: ``--to URL``, or ``local`` with ``--db`` /
    FACECLI_DB holding one; None otherwise."""
    target = target or "local"
    if is_postgres_url(target):
        if db:
            raise ConfigError("give the database either in --to postgresql://... or with --db, not both")
        return target
    if target == "local":
        return _url(db) or (None if db else _url(os.environ.get(DB_ENV)))
    return None


def resolve_db_path(target: str | None, db: str | Path | None) -> Path | None:
    """The SQLite path a local target means, or None for a non-local (or PostgreSQL) target."""
    target = target or "local"
    if target == "local":
        if resolve_pg_url(target, db):
            return None
        return Path(db or os.environ.get(DB_ENV) or default_db_path()).expanduser()
    if target.startswith("sqlite:///"):
        if db:
            raise ConfigError("give the database either in --to sqlite:///PATH or with --db, not both")
        return Path(target[len("sqlite:///"):]).expanduser()
    return None


def open_sink(target: str | None, db: str | Path | None = None, writer: bool = False, wait: bool = True,
              face_storage_type: str = "NoStorage", on_wait: Callable[[str], None] | None = None,
              create: bool | None = None, **remote: Any):
    """The Sink a target means. ``create`` (default: ``writer``): may a missing SQLite file be
    created? Readers (search, listings) get a TargetError instead of a new empty database."""
    url = resolve_pg_url(target, db)
    if url is not None:
        return PgSink(url, writer=writer, wait=wait, face_storage_type=face_storage_type, on_wait=on_wait)
    path = resolve_db_path(target, db)
    if path is not None:
        if not (writer if create is None else create) and not path.exists():
            raise TargetError(f"no database at {path}: nothing is enrolled there",
                              hint="check --db / --to / FACECLI_DB; `facecli enroll PATH --create-collection` "
                                   "creates one")
        return LocalSink(path, writer=writer, wait=wait, face_storage_type=face_storage_type, on_wait=on_wait)
    if target and target.lower().startswith(("http://", "https://")):
        from facecli.sinks.opencv_fr import OpenCVFRSink

        # Options left unset (None) take the client's defaults; local-only ones do not apply.
        return OpenCVFRSink(target, face_storage_type=face_storage_type,
                            **{k: v for k, v in remote.items() if v is not None})
    seed = _seed_sink(target, remote)
    if seed is not None:
        return seed
    raise ConfigError(f"unknown target {mask_url(str(target))!r}",
                      hint="use local, sqlite:///PATH, postgresql://USER@HOST:PORT/DB, http(s)://HOST[:PORT], "
                           "opencv-fr-cloud://us|eu|sg, verifik:// or persona://LIST_ID")


def _seed_sink(target: str | None, remote: dict[str, Any]):
    """The seed-API adapters: ``opencv-fr-cloud://REGION``, ``verifik://``, ``persona://LIST_ID``
    (base URLs overridable with FACECLI_OPENCV_FR_CLOUD_URL / FACECLI_VERIFIK_URL / FACECLI_PERSONA_URL)."""
    if not target or "://" not in target:
        return None
    scheme, _, rest = target.partition("://")
    opts = {k: v for k, v in remote.items() if v is not None}
    scheme = scheme.lower()
    if scheme == "opencv-fr-cloud":
        from facecli.sinks.opencv_fr_cloud import OpenCVFRCloudSink

        return OpenCVFRCloudSink(rest, **opts)
    if scheme == "verifik":
        if rest.strip("/"):
            raise ConfigError("verifik:// takes no host or path", hint="use --to verifik://")
        from facecli.sinks.verifik import VerifikSink

        return VerifikSink(**opts)
    if scheme == "persona":
        from facecli.sinks.persona import PersonaSink

        return PersonaSink(rest, **opts)
    return None
