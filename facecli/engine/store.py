"""SQLite schema, connection settings and migrations of the embedded engine.

Everything durable lives in one SQLite file so that a copy of it is a complete backup; the vector
index beside it is derived data (see ``index.py``). WAL mode lets searches read while a writer
commits, and one ``BEGIN IMMEDIATE`` transaction per upsert batch gives the "whole batches or
nothing" crash guarantee.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "EMBEDDING_DTYPE",
    "SchemaTooNew",
    "connect",
    "migrate",
    "transaction",
    "load_embeddings",
]

#: Embeddings are stored as raw little-endian float32 so the blob is portable across machines.
EMBEDDING_DTYPE = np.dtype("<f4")

#: How long SQLite itself waits on a locked database before raising ``database is locked``.
BUSY_TIMEOUT_S = 30.0


class SchemaTooNew(RuntimeError):
    """The file was written by a newer facecli; refusing to touch it protects its data."""


Migration = Callable[[sqlite3.Connection], None]


def _m001_initial(conn: sqlite3.Connection) -> None:
    """Collections, persons (one row per collection membership) and faces.

    ``collections.generation`` is bumped in the same transaction as every write to the collection's
    faces, so a cached index stamped with an older value is known to be stale. ``collections.uid``
    is random per collection so a cache of a deleted collection is never mistaken for one of a new
    collection that reuses its name or rowid.
    """
    _run_script(
        conn,
        """
        CREATE TABLE collections (
            id          INTEGER PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            uid         TEXT NOT NULL UNIQUE,
            generation  INTEGER NOT NULL DEFAULT 0,
            created     REAL NOT NULL,
            modified    REAL NOT NULL
        );
        CREATE TABLE persons (
            id             INTEGER PRIMARY KEY,
            collection_id  INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            person_id      TEXT NOT NULL,
            person_name    TEXT NOT NULL DEFAULT '',
            metadata       TEXT NOT NULL DEFAULT '{}',
            gender         TEXT,
            date_of_birth  TEXT,
            nationality    TEXT,
            notes          TEXT,
            created        REAL NOT NULL,
            modified       REAL NOT NULL,
            UNIQUE (collection_id, person_id)
        );
        CREATE TABLE faces (
            id            INTEGER PRIMARY KEY,
            person_pk     INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
            embedding     BLOB NOT NULL,
            image_sha256  TEXT NOT NULL,
            quality       TEXT NOT NULL DEFAULT '{}',
            source_path   TEXT NOT NULL DEFAULT '',
            image         BLOB,
            image_kind    TEXT CHECK (image_kind IN ('thumbnail', 'full')),
            created       REAL NOT NULL
        );
        CREATE INDEX faces_person_pk ON faces(person_pk);
        CREATE INDEX faces_image_sha256 ON faces(image_sha256);
        """,
    )


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ';'-separated DDL inside the caller's transaction (``executescript`` would COMMIT
    first and break the one-transaction-per-migration guarantee). No ';' inside statements."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


#: Ordered; position i upgrades ``user_version`` i to i+1. Append only, never edit a shipped one.
MIGRATIONS: tuple[Migration, ...] = (_m001_initial,)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the DB with the pragmas the engine relies on, then migrate it.

    ``isolation_level=None`` leaves transaction control to :func:`transaction`, so a batch is
    exactly one explicit transaction. ``check_same_thread=False`` because the engine guards the
    connection with its own lock and a server calls it from worker threads.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not enable WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction; return the resulting version.

    Idempotent and safe against a concurrent opener: the version is re-read after ``BEGIN
    IMMEDIATE`` so two processes opening a fresh file never both run the same step.
    """
    while True:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema version {version} is newer than this facecli supports "
                f"({SCHEMA_VERSION}); upgrade facecli"
            )
        if version == SCHEMA_VERSION:
            return version
        with transaction(conn):
            version = _user_version(conn)
            if version >= SCHEMA_VERSION:
                continue
            MIGRATIONS[version](conn)
            # PRAGMA does not take parameters; the value is our own int.
            conn.execute(f"PRAGMA user_version = {version + 1}")


@contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    """One explicit transaction: ``BEGIN IMMEDIATE`` for writes (take the write lock up front so a
    batch never fails half-way on a lock upgrade), plain ``BEGIN`` for a consistent read snapshot.
    """
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def load_embeddings(
    conn: sqlite3.Connection, collection_id: int, *, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """All face ids and embeddings of a collection as (int64[N], float32[N, D]).

    Call inside a read transaction so the rows match the generation read in the same snapshot.
    Rows are fetched in chunks and joined per chunk, which is several times faster than one
    ``frombuffer`` per row at a million faces.
    """
    where = "FROM faces f JOIN persons p ON p.id = f.person_pk WHERE p.collection_id = ?"
    n = int(conn.execute(f"SELECT COUNT(*) {where}", (collection_id,)).fetchone()[0])
    ids = np.empty(n, dtype=np.int64)
    if n == 0:
        return ids, np.empty((0, 0), dtype=np.float32)
    cur = conn.execute(f"SELECT f.id, f.embedding {where}", (collection_id,))
    matrix: np.ndarray | None = None
    dim = 0
    i = 0
    while rows := cur.fetchmany(chunk):
        if i + len(rows) > n:  # cannot happen inside one snapshot; guards misuse
            raise RuntimeError("faces changed while loading; call inside a read transaction")
        if matrix is None:
            dim = len(rows[0][1]) // EMBEDDING_DTYPE.itemsize
            matrix = np.empty((n, dim), dtype=np.float32)
        blob = b"".join(r[1] for r in rows)
        if len(blob) != len(rows) * dim * EMBEDDING_DTYPE.itemsize:
            raise ValueError(f"collection {collection_id} holds embeddings of different sizes")
        matrix[i : i + len(rows)] = np.frombuffer(blob, dtype=EMBEDDING_DTYPE).reshape(-1, dim)
        ids[i : i + len(rows)] = [r[0] for r in rows]
        i += len(rows)
    assert matrix is not None
    if i != n:
        raise RuntimeError("faces changed while loading; call inside a read transaction")
    return ids, matrix
