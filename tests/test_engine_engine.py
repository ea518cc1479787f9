"""The SQLite engine's own behaviour on real files: the DB file, index cache, file lock, crashes.

The scenarios every engine must pass (collections, upserts, search) are in test_engine_contract.py,
which runs each of them on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import facecli
from facecli.engine import (
    Engine,
    EngineClosed,
    EngineLocked,
    EnginePerson,
)

from .test_engine_contract import DIM, _face, _person, _unit  # one set of builders for both engine test files

REPO_ROOT = str(Path(facecli.__file__).resolve().parent.parent)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "gallery.db"


@pytest.fixture
def engine(db: Path) -> Iterator[Engine]:
    with Engine(db) as e:
        e.create_collection("c")
        yield e


# ------------------------------------------------------------------ collections


def test_open_creates_parents_and_file(db: Path) -> None:
    with Engine(db) as e:
        assert db.is_file()
        assert e.list_collections() == (0, [])
    with pytest.raises(EngineClosed):
        e.list_collections()


def test_delete_collection_cascades_and_drops_cache(db: Path) -> None:
    rng = np.random.default_rng(0)
    with Engine(db) as e:
        e.create_collection("c")
        e.create_collection("keep")
        e.upsert_persons("c", [_person(f"p{i}", _unit(rng, 2)) for i in range(5)])
        e.upsert_persons("keep", [_person("k", _unit(rng, 1))])
        e.search("c", _unit(rng, 1))
        assert any(e.index_dir.iterdir())
        e.delete_collection("c")
        # recreated under the same name: empty, never served from the old cache
        e.create_collection("c")
        assert e.search("c", _unit(rng, 1)) == [[]]
        assert e.counts("keep") == (1, 1)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 1
    conn.close()


# ------------------------------------------------------------------ upsert semantics


def test_embeddings_are_normalised_and_fields_stored(engine: Engine, db: Path) -> None:
    vec = np.arange(1, DIM + 1, dtype=np.float32)
    face = _face(
        vec * 7,
        "abc",
        quality={"sharpness": np.float32(3.5)},
        source_path="a/b.jpg",
        image=b"\xff\xd8jpeg",
        image_kind="full",
    )
    engine.upsert_persons("c", [EnginePerson("p", "P", {"k": "v"}, notes="n", faces=[face])])
    hit = engine.search("c", vec, k=1)[0][0]
    assert hit.score == pytest.approx(1.0, abs=1e-6)
    conn = sqlite3.connect(db)
    blob, quality, path, image, kind = conn.execute(
        "SELECT embedding, quality, source_path, image, image_kind FROM faces"
    ).fetchone()
    conn.close()
    assert np.linalg.norm(np.frombuffer(blob, "<f4")) == pytest.approx(1.0, abs=1e-6)
    assert (quality, path, image, kind) == ('{"sharpness":3.5}', "a/b.jpg", b"\xff\xd8jpeg", "full")


# ------------------------------------------------------------------ search


def _gallery(
    rng: np.random.Generator, n_persons: int
) -> tuple[list[EnginePerson], np.ndarray, np.ndarray]:
    persons, owners, vecs = [], [], []
    for i in range(n_persons):
        v = _unit(rng, int(rng.integers(1, 5)))
        persons.append(_person(f"id{i}", v, metadata={"i": str(i)}))
        owners += [i] * len(v)
        vecs.append(v)
    return persons, np.array(owners), np.concatenate(vecs)


# ------------------------------------------------------------------ index cache


def test_stale_index_rebuilt_after_write_from_another_engine(db: Path) -> None:
    rng = np.random.default_rng(9)
    v = _unit(rng, 3)
    with Engine(db) as reader, Engine(db) as writer:
        writer.create_collection("c")
        writer.upsert_persons("c", [_person("a", v[:1])])
        assert [h.person_id for h in reader.search("c", v[1], k=5)[0]] == ["a"]
        writer.upsert_persons("c", [_person("b", v[1:2])])
        hits = reader.search("c", v[1], k=5)[0]
        assert hits[0].person_id == "b" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        writer.delete_person("c", "b")
        assert [h.person_id for h in reader.search("c", v[1], k=5)[0]] == ["a"]
        # replaced faces: the old vector no longer matches
        writer.upsert_persons("c", [_person("a", v[2:3])])
        assert reader.search("c", v[0], k=1, min_score=-1.0)[0][0].score < 0.5


def test_index_cache_reused_and_deletable(db: Path) -> None:
    rng = np.random.default_rng(10)
    persons, _, vecs = _gallery(rng, 50)
    with Engine(db) as e:
        e.create_collection("c")
        e.upsert_persons("c", persons)
        assert e.load_index("c").source == "rebuilt"
        before = e.search("c", vecs[:4], k=3)
    with Engine(db) as e:
        stats = e.load_index("c")
        assert stats.source == "cache" and stats.faces == len(vecs) and stats.dim == DIM
        assert e.search("c", vecs[:4], k=3) == before
    shutil.rmtree(db.with_name(db.name + ".index"))
    with Engine(db) as e:
        assert e.search("c", vecs[:4], k=3) == before
        assert e.load_index("c").source == "memory"
    # a corrupted cache file is rebuilt, not trusted
    for f in db.with_name(db.name + ".index").glob("*.matrix.npy"):
        f.write_bytes(f.read_bytes()[:200])
    with Engine(db) as e:
        assert e.load_index("c").source == "rebuilt"
        assert e.search("c", vecs[:4], k=3) == before


def test_index_dir_deleted_while_open(engine: Engine) -> None:
    rng = np.random.default_rng(11)
    v = _unit(rng, 2)
    engine.upsert_persons("c", [_person("a", v[:1])])
    engine.search("c", v[0])
    shutil.rmtree(engine.index_dir)
    engine.upsert_persons("c", [_person("b", v[1:])])
    assert engine.search("c", v[1], k=1)[0][0].person_id == "b"
    assert engine.index_dir.is_dir()


# ------------------------------------------------------------------ concurrency


HOLDER = textwrap.dedent(
    """
    import sys
    from facecli.engine import Engine
    with Engine(sys.argv[1], writer=True):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_writer_lock_between_processes(db: Path) -> None:
    rng = np.random.default_rng(12)
    v = _unit(rng, 2)
    with Engine(db) as e:
        e.create_collection("c")
        e.upsert_persons("c", [_person("a", v[:1])])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with Engine(db, lock_timeout=0) as e:
            t0 = time.monotonic()
            with pytest.raises(EngineLocked, match="lock"):
                with e.writer_lock(wait=False):
                    pass
            with pytest.raises(EngineLocked):
                e.upsert_persons("c", [_person("b", v[1:])])
            assert time.monotonic() - t0 < 2.0  # immediate, not a timeout wait
            with pytest.raises(EngineLocked):
                Engine(db, writer=True, lock_timeout=0)
            # readers need no lock
            assert e.search("c", v[0], k=1)[0][0].person_id == "a"
            assert e.counts("c") == (1, 1)
            assert e.create_collection("c", exist_ok=True).num_persons == 1
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    with Engine(db, lock_timeout=0) as e:
        with e.writer_lock(wait=False):
            e.upsert_persons("c", [_person("b", v[1:])])  # reentrant inside the session
        assert e.counts("c") == (2, 2)


def test_writer_lock_between_engines_in_one_process(db: Path) -> None:
    with Engine(db, writer=True) as first, Engine(db, lock_timeout=0.05) as second:
        first.create_collection("c")
        with pytest.raises(EngineLocked):
            second.create_collection("d")
        assert second.list_collections()[0] == 1
    with Engine(db, lock_timeout=0) as e:
        e.create_collection("d")


def test_reader_searches_while_a_write_transaction_is_open(db: Path) -> None:
    rng = np.random.default_rng(13)
    v = _unit(rng, 1)
    with Engine(db) as e:
        e.create_collection("c")
        e.upsert_persons("c", [_person("a", v)])
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("DELETE FROM faces")
    try:
        with Engine(db) as reader:
            assert reader.search("c", v[0], k=1)[0][0].person_id == "a"
    finally:
        raw.execute("ROLLBACK")
        raw.close()


CRASHER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from facecli.engine import Engine, EngineFace, EnginePerson
    db, size = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    with Engine(db) as e:
        e.create_collection("c", exist_ok=True)
        for b in range(10**6):
            emb = rng.standard_normal((size, 128)).astype(np.float32)
            e.upsert_persons("c", [
                EnginePerson(f"b{b}-{i}", faces=[EngineFace(emb[i], f"{b}-{i}", image=bytes(500),
                                                             image_kind="thumbnail")])
                for i in range(size)
            ])
            print(b, flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_run_leaves_whole_batches(db: Path) -> None:
    # Batches big enough (~0.1 s) that a kill timed at 30-80% of the batch interval lands inside
    # a write; with per-person commits this test fails nearly every run.
    size = 1000
    db.parent.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(db), str(size)],
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        assert proc.stdout is not None
        stamps = []
        for _ in range(4):
            assert proc.stdout.readline() != ""
            stamps.append(time.monotonic())
        gap = float(min(np.diff(stamps)))
        time.sleep(gap * float(np.random.default_rng().uniform(0.3, 0.8)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    persons = conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0]
    faces = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
    conn.close()
    assert persons >= 4 * size and persons % size == 0 and faces == persons
    with Engine(db, lock_timeout=0) as e:  # the dead writer's lock went with it
        assert e.counts("c") == (persons, faces)
        e.upsert_persons("c", [_person("after", _unit(np.random.default_rng(1), 1))])
        assert e.search("c", _unit(np.random.default_rng(1), 1), k=1)[0][0].person_id == "after"
