"""Schema, pragmas and migrations of the engine's SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from facecli.engine import Engine, IncompatibleDatabase, store


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _collection(conn: sqlite3.Connection, name: str) -> int:
    sql = "INSERT INTO collections (name, uid, created, modified) VALUES (?, ?, 0, 0)"
    return int(conn.execute(sql, (name, name + "-uid")).lastrowid or 0)


def _person(conn: sqlite3.Connection, cid: int, pid: str) -> int:
    sql = "INSERT INTO persons (collection_id, person_id, created, modified) VALUES (?, ?, 0, 0)"
    return int(conn.execute(sql, (cid, pid)).lastrowid or 0)


def _face(conn: sqlite3.Connection, pk: int, blob: bytes = b"\0") -> None:
    sql = "INSERT INTO faces (person_pk, embedding, image_sha256, created) VALUES (?, ?, 's', 0)"
    conn.execute(sql, (pk, blob))


def test_connect_sets_wal_foreign_keys_and_synchronous(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "sub" / "f.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        assert _columns(conn, "collections")[:2] == ["id", "name"]
        assert {
            "collection_id",
            "person_id",
            "person_name",
            "metadata",
            "gender",
            "date_of_birth",
            "nationality",
            "notes",
            "created",
            "modified",
        } <= set(_columns(conn, "persons"))
        assert {
            "person_pk",
            "embedding",
            "image_sha256",
            "quality",
            "source_path",
            "image",
            "image_kind",
            "created",
        } <= set(_columns(conn, "faces"))
    finally:
        conn.close()


def test_foreign_keys_cascade_and_unique_person_per_collection(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "f.db")
    with store.transaction(conn):
        cid = _collection(conn, "c")
        _face(conn, _person(conn, cid, "p"))
        _person(conn, cid, "P")  # case-sensitive ids: 'P' is another person
    with pytest.raises(sqlite3.IntegrityError), store.transaction(conn):
        _person(conn, cid, "p")
    with pytest.raises(sqlite3.IntegrityError), store.transaction(conn):
        _face(conn, 999)  # FK enforced: no such person
    with store.transaction(conn):
        conn.execute("DELETE FROM collections WHERE id = ?", (cid,))
    assert conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 0
    conn.close()


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "f.db")
    with pytest.raises(RuntimeError), store.transaction(conn):
        _collection(conn, "c")
        raise RuntimeError("boom")
    assert not conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM collections").fetchone()[0] == 0
    conn.close()


def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    with Engine(db) as e:
        e.create_collection("c")
    for _ in range(2):
        conn = store.connect(db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        assert store.migrate(conn) == store.SCHEMA_VERSION
        assert conn.execute("SELECT name FROM collections").fetchall() == [("c",)]
        conn.close()


def test_new_migration_applied_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "f.db"
    store.connect(db).close()
    calls: list[int] = []

    def m2(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE persons ADD COLUMN extra TEXT")

    monkeypatch.setattr(store, "MIGRATIONS", (*store.MIGRATIONS, m2))
    monkeypatch.setattr(store, "SCHEMA_VERSION", len(store.MIGRATIONS))
    for _ in range(3):
        conn = store.connect(db)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        assert "extra" in _columns(conn, "persons")
        conn.close()
    assert calls == [1]


def test_failed_migration_leaves_version_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "f.db"
    store.connect(db).close()

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE persons ADD COLUMN half TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store, "MIGRATIONS", (*store.MIGRATIONS, bad))
    monkeypatch.setattr(store, "SCHEMA_VERSION", len(store.MIGRATIONS))
    with pytest.raises(RuntimeError):
        store.connect(db)
    monkeypatch.undo()
    conn = store.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert "half" not in _columns(conn, "persons")
    conn.close()


def test_newer_schema_and_foreign_files_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    conn = store.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(IncompatibleDatabase, match="newer"):
        Engine(db)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IncompatibleDatabase):
        Engine(junk)


def test_load_embeddings_roundtrip(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "f.db")
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((7, 16)).astype(np.float32)
    with store.transaction(conn):
        cid = _collection(conn, "c")
        other = _collection(conn, "d")
        for i, v in enumerate(emb):
            _face(conn, _person(conn, cid, f"p{i}"), v.astype("<f4").tobytes())
        _face(conn, _person(conn, other, "x"), np.ones(16, np.float32).tobytes())
    with store.transaction(conn, immediate=False):
        ids, matrix = store.load_embeddings(conn, cid, chunk=3)  # several chunks
    order = np.argsort(ids)
    np.testing.assert_array_equal(matrix[order], emb)
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous
    with store.transaction(conn, immediate=False):
        ids, matrix = store.load_embeddings(conn, 12345)
    assert ids.shape == (0,) and matrix.shape[0] == 0
    conn.close()
