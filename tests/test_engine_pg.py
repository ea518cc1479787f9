"""The PostgreSQL + pgvector engine's own behaviour, against a real server (tests/pg_server.py):
schema and migrations, HNSW search, credentials and masking, concurrent writers (threads,
processes, two `facecli enroll` runs), `--to postgresql://` targets and `facecli collections copy`.
The scenarios shared with the SQLite engine are in test_engine_contract.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import facecli
from facecli.cli.app import app
from facecli.engine import (
    DatabaseUnavailable,
    Engine,
    EngineFace,
    EnginePerson,
    IncompatibleDatabase,
    PgEngine,
    export_persons,
    mask_url,
)
from facecli.engine import pg as pgmod
from facecli.errors import ConfigError
from facecli.sinks.factory import resolve_db_path, resolve_pg_url

from . import pg_server
from .conftest import DATASETS, SAMPLES, needs_models

DIM = 128
REPO_ROOT = str(Path(facecli.__file__).resolve().parent.parent)
runner = CliRunner()


def _unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _person(pid: str, vecs: np.ndarray, **kw: Any) -> EnginePerson:
    faces = [EngineFace(v, f"{pid}-{i}-{v[:2].tobytes().hex()}") for i, v in enumerate(vecs)]
    return EnginePerson(pid, pid.upper(), faces=faces, **kw)


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.fixture
def url() -> str:
    return pg_server.fresh_url()


@pytest.fixture
def pg(url: str):
    with PgEngine(url) as e:
        e.create_collection("c")
        yield e


# ------------------------------------------------------------------ URLs and targets (no server)


@pytest.mark.parametrize("raw,shown", [
    ("postgresql://alice:s3cr%40t@db.example:5432/faces", "postgresql://alice:***@db.example:5432/faces"),
    ("postgres://alice:p@ss@db/faces?sslmode=require", "postgres://alice:***@db/faces?sslmode=require"),
    ("postgresql://db/faces?user=bob&password=hunter2&sslmode=verify-full",
     "postgresql://db/faces?user=bob&password=***&sslmode=verify-full"),
    ("postgresql://alice@db/faces", "postgresql://alice@db/faces"),
    ("postgresql://postgres:@/postgres?host=/tmp/x", "postgresql://postgres:@/postgres?host=/tmp/x"),
    ("postgresql:///faces", "postgresql:///faces"),
])
def test_mask_url(raw: str, shown: str) -> None:
    assert mask_url(raw) == shown


def test_url_options_are_facecli_s_own() -> None:
    assert pgmod._split_url("postgresql://h/db?sslmode=require&schema=g2&ef_search=400") == (
        "postgresql://h/db?sslmode=require", pgmod.UrlOptions("g2", ef_search=400))
    assert pgmod._split_url("postgresql://h/db") == ("postgresql://h/db", pgmod.UrlOptions())
    assert pgmod._split_url(
        "postgresql://h/db?m=32&connect_timeout=5&ef_construction=128&maintenance_work_mem=4GB") == (
        "postgresql://h/db?connect_timeout=5",
        pgmod.UrlOptions(m=32, ef_construction=128, maintenance_work_mem="4GB"))
    for bad in ("schema=Bad-Name", "schema=x;drop", "ef_search=0", "ef_search=abc", "ef_search=5000",
                "m=1", "m=101", "ef_construction=3", "maintenance_work_mem=4GB;drop",
                "maintenance_work_mem=lots"):
        with pytest.raises(pgmod.InvalidInput):
            pgmod._split_url(f"postgresql://h/db?{bad}")


def _index_options(schema: str) -> list[str]:
    rows = pg_server.execute(
        "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname LIKE %s", schema, "faces_c%_hnsw")
    assert len(rows) == 1, rows
    return sorted(rows[0][0])


def test_hnsw_build_parameters_from_the_url(url: str) -> None:
    vecs = _unit(np.random.default_rng(5), 50)
    with PgEngine(url + "&m=24&ef_construction=80&maintenance_work_mem=256MB") as e:
        assert (e.m, e.ef_construction, e.maintenance_work_mem) == (24, 80, "256MB")
        e.create_collection("c")
        e.upsert_persons("c", [_person(f"p{i}", vecs[i : i + 1]) for i in range(50)])
        assert _index_options(e.schema) == ["ef_construction=80", "m=24"]
    with PgEngine(url, m=12, ef_construction=40) as e:  # a rebuild uses the engine's parameters
        e.rebuild_index("c")
        assert _index_options(e.schema) == ["ef_construction=40", "m=12"]
        assert e.search("c", vecs[3], k=1)[0][0].person_id == "p3"
        with pytest.raises(pgmod.InvalidInput):
            e.rebuild_index("c", maintenance_work_mem="1GB'; DROP TABLE faces; --")


def test_target_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = "postgresql://alice@db:5432/faces"
    assert resolve_pg_url(url, None) == url
    assert resolve_db_path(url, None) is None
    assert resolve_pg_url("local", url) == url
    assert resolve_pg_url("local", Path(url)) == url  # typer's Path folded the '//'
    assert resolve_db_path("local", Path(url)) is None
    monkeypatch.setenv("FACECLI_DB", url)
    assert resolve_pg_url(None, None) == url and resolve_db_path(None, None) is None
    assert resolve_pg_url("local", tmp_path / "x.db") is None  # --db beats the environment
    assert resolve_db_path("local", tmp_path / "x.db") == tmp_path / "x.db"
    monkeypatch.setenv("FACECLI_DB", str(tmp_path / "y.db"))
    assert resolve_pg_url(None, None) is None and resolve_db_path(None, None) == tmp_path / "y.db"
    with pytest.raises(ConfigError):
        resolve_pg_url(url, tmp_path / "x.db")
    assert resolve_pg_url("sqlite:///a.db", None) is None


def test_unknown_target_is_masked() -> None:
    res = runner.invoke(app, ["collections", "list", "--to", "postgresq://u:topsecret@h/db"])
    assert res.exit_code == 2
    assert "topsecret" not in res.output and "***" in res.output


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgmod, "_driver", None)
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)  # as if not installed
    with pytest.raises(pgmod.DatabaseError, match=r"facecli\[postgres\]"):
        PgEngine("postgresql://u:pw@h/db")
    res = runner.invoke(app, ["collections", "list", "--to", "postgresql://u:pw@h/db"])
    assert res.exit_code == 3 and "facecli[postgres]" in res.output and "pw@" not in res.output


# ------------------------------------------------------------------ schema


def test_schema_created_versioned_and_checked(url: str) -> None:
    schema = url.rsplit("schema=", 1)[1]
    with PgEngine(url) as e:
        assert e.schema == schema and e.pgvector_version >= (0, 5, 0)
        assert e.ef_search == pgmod.DEFAULT_EF_SEARCH
    with PgEngine(url + "&ef_search=250") as e:
        assert e.ef_search == 250
    rows = pg_server.execute(f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'")
    assert rows == [(str(pgmod.SCHEMA_VERSION),)]
    tables = {r[0] for r in pg_server.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", schema)}
    assert {"meta", "collections", "persons", "faces"} <= tables
    with PgEngine(url) as e:  # reopening migrates nothing
        e.create_collection("x")
    assert "persons_c1" in {r[0] for r in pg_server.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", schema)}
    pg_server.execute(f"UPDATE {schema}.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(IncompatibleDatabase, match="newer"):
        PgEngine(url)


def test_concurrent_openers_migrate_once(url: str) -> None:
    engines: list[PgEngine] = []
    errors: list[BaseException] = []

    def open_() -> None:
        try:
            engines.append(PgEngine(url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors and len(engines) == 4
        engines[0].create_collection("c")
        assert engines[3].counts("c") == (0, 0)
    finally:
        for e in engines:
            e.close()


def test_missing_extension_without_privilege_is_explained() -> None:
    password = "pw-ext-test"
    role = pg_server.password_role(password)
    db = f"d_{role}"
    pg_server.execute(f"CREATE DATABASE {db} OWNER {role}")
    base = pg_server.base_url()
    url = base.replace("postgres:@/postgres", f"{role}:{password}@/{db}")
    with pytest.raises(IncompatibleDatabase, match="CREATE EXTENSION vector") as info:
        PgEngine(url)
    assert password not in str(info.value)


# ------------------------------------------------------------------ credentials


def test_credentials_from_url_pgpassword_and_pgpass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password = "s3cr3t-Pa55"
    role = pg_server.password_role(password)
    base = pg_server.base_url()  # postgresql://postgres:@/postgres?host=/socket/dir
    socket_dir = base.split("host=", 1)[1]
    with_pw = base.replace("postgres:@", f"{role}:{password}@") + f"&schema=s_{role}"
    without = base.replace("postgres:@", f"{role}@") + f"&schema=s_{role}"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))

    with PgEngine(with_pw) as e:  # in the URL
        e.create_collection("c")
        assert password not in e.target and password not in repr(e)
    with pytest.raises(DatabaseUnavailable) as info:  # none given
        PgEngine(without, connect_timeout=5)
    wrong = base.replace("postgres:@", f"{role}:wrong-{password}@") + f"&schema=s_{role}"
    with pytest.raises(DatabaseUnavailable) as info:
        PgEngine(wrong, connect_timeout=5)
    assert password not in str(info.value) and "***" in str(info.value)

    monkeypatch.setenv("PGPASSWORD", password)
    with PgEngine(without) as e:
        assert e.counts("c") == (0, 0)
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{socket_dir}:*:*:{role}:{password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with PgEngine(without) as e:
        assert e.counts("c") == (0, 0)

    # the CLI: a refused password is a target error (exit 3) that never shows the password
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    res = runner.invoke(app, ["collections", "list", "--to", wrong])
    assert res.exit_code == 3, res.output
    assert password not in res.output and "***" in res.output
    res = runner.invoke(app, ["collections", "list", "--to", with_pw, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["count"] == 1


# ------------------------------------------------------------------ HNSW


def _brute(vecs: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    s = vecs @ q
    return [f"p{i}" for i in np.argsort(-s, kind="stable")[:k]]


def test_hnsw_search_recall_and_plan(url: str) -> None:
    rng = np.random.default_rng(3)
    n = 4000
    vecs = _unit(rng, n)
    with PgEngine(url, exact_max=0, ef_search=200, pool_size=1) as e:  # always through the index
        with e._pool.connection() as conn:  # at this size the planner would rather scan (exact)
            conn.execute("SET enable_seqscan = off")
        e.create_collection("big")
        # the first 1000 maintain the index (created with the first faces); the rest are bulk-loaded
        # and the index rebuilt once, as `collections copy` does
        e.upsert_persons("big", [_person(f"p{i}", vecs[i : i + 1]) for i in range(1000)])
        with e.deferred_index("big"):
            for start in range(1000, n, 1000):
                e.upsert_persons("big", [_person(f"p{i}", vecs[i : i + 1]) for i in range(start, start + 1000)])
        schema = e.schema
        indexes = pg_server.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE %s",
            schema, "%hnsw%")
        assert len(indexes) == 1 and "vector_cosine_ops" in indexes[0][1] and "vector(128)" in indexes[0][1]
        probes = vecs[rng.integers(0, n, 100)] + 0.02 * _unit(rng, 100)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        randoms = _unit(rng, 50)
        hits = e.search("big", probes, k=1, min_score=-1.0)
        near = np.mean([h[0].person_id == _brute(vecs, q, 1)[0] for q, h in zip(probes, hits, strict=True)])
        assert near == 1.0
        hits = e.search("big", randoms, k=5, min_score=-1.0)
        recall = np.mean([len({x.person_id for x in h} & set(_brute(vecs, q, 5))) / 5
                          for q, h in zip(randoms, hits, strict=True)])
        assert recall >= 0.98, recall
        for q, h in zip(randoms[:5], hits[:5], strict=True):  # scores are the exact cosines
            exact = {f"p{i}": float(vecs[i] @ q) for i in range(n)}
            np.testing.assert_allclose([x.score for x in h], [exact[x.person_id] for x in h], atol=1e-5)
        with e._tx() as conn:
            cid = e._coll(conn, "big").id
            plan = "\n".join(r[0] for r in conn.execute(
                f"EXPLAIN SELECT id FROM faces_c{cid} ORDER BY embedding::vector(128) <=> %s LIMIT 20",
                (vecs[0],)))
        assert "Index Scan using faces_c" in plan and "_hnsw" in plan, plan
        stats = e.load_index("big")
        assert stats.faces == n and stats.dim == DIM and stats.nbytes > 0
        # ef_search is a session setting of the pooled connection: each change must take effect
        for ef in (150, 150, 300, 40):
            e.ef_search = ef
            e.search("big", probes[:2], k=5)
            with e._pool.connection() as conn:  # pool_size=1: the connection the search used
                assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == str(max(ef, 21))


def test_a_read_survives_a_dropped_connection(url: str) -> None:
    """Pooled connections are not pinged: a read on one the server dropped is retried once."""
    with PgEngine(url, pool_size=1) as e:
        e.create_collection("c")
        with e._pool.connection() as conn:
            pid = conn.info.backend_pid
        pg_server.execute("SELECT pg_terminate_backend(%s)", pid)
        assert e.get_collection("c").name == "c"


def test_deferred_index_exact_meanwhile_then_rebuilt(url: str) -> None:
    rng = np.random.default_rng(4)
    vecs = _unit(rng, 600)
    with PgEngine(url, exact_max=0) as e:
        e.create_collection("c")
        with e.deferred_index("c"):
            e.upsert_persons("c", [_person(f"p{i}", vecs[i : i + 1]) for i in range(600)])
            assert e.load_index("c").nbytes == 0  # no index while loading
            assert e.search("c", vecs[7], k=3, min_score=-1.0)[0][0].person_id == "p7"
        assert e.load_index("c").nbytes > 0
        before = e.search("c", vecs[:20], k=3)
        assert e.rebuild_index("c") >= 0
        assert e.search("c", vecs[:20], k=3) == before
        assert [h[0].person_id for h in before] == [f"p{i}" for i in range(20)]


# ------------------------------------------------------------------ writes: atomicity and concurrency


def test_a_failing_batch_writes_nothing(pg: PgEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    pg.upsert_persons("c", [_person("keep", _unit(rng, 1))])
    before = (pg.counts("c"), pg.list_persons("c"), pg.load_index("c").generation)

    def boom(*args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(PgEngine, "_copy_faces", staticmethod(boom))
    with pytest.raises(pgmod.DatabaseError, match="disk on fire"):
        pg.upsert_persons("c", [_person("new", _unit(rng, 1)), _person("keep", _unit(rng, 2))])
    monkeypatch.undo()
    assert (pg.counts("c"), pg.list_persons("c"), pg.load_index("c").generation) == before


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from facecli.engine import PgEngine, EngineFace, EnginePerson
    url, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(300)]
    rng.shuffle(ids)
    with PgEngine(url) as e:
        e.create_collection("c", exist_ok=True)
        for start in range(0, 300, 25):
            batch = []
            for pid in ids[start : start + 25]:
                n = int(rng.integers(1, 3))
                emb = rng.standard_normal((n, 128)).astype(np.float32)
                batch.append(EnginePerson(pid, pid, {"writer": str(seed)},
                                          faces=[EngineFace(v, f"{pid}-{seed}-{j}") for j, v in enumerate(emb)]))
            e.upsert_persons("c", batch)
    print("ok", flush=True)
    """
)


def test_concurrent_writer_processes_store_every_person_once(url: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_child_env()) for seed in range(3)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    with PgEngine(url) as e:
        total, persons = e.list_persons("c")
        assert total == 300 and len({p.person_id for p in persons}) == 300
        schema = e.schema
        n_persons, n_faces = e.counts("c")
    # the counters agree with the rows, and each person holds exactly the faces of one writer
    rows = pg_server.execute(f"SELECT count(*) FROM {schema}.persons")
    faces = pg_server.execute(
        f"SELECT p.person_id, p.num_faces, count(f.id), count(DISTINCT split_part(f.image_sha256, '-', 2)), "
        f"p.metadata->>'writer' FROM {schema}.persons p LEFT JOIN {schema}.faces f "
        "ON f.collection_id = p.collection_id AND f.person_pk = p.id GROUP BY p.collection_id, p.id")
    assert rows[0][0] == n_persons == 300
    assert sum(r[2] for r in faces) == n_faces
    for pid, num, count, writers, meta_writer in faces:
        assert num == count and writers == 1, pid
        assert meta_writer is not None


# ------------------------------------------------------------------ CLI


def _invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_gallery_commands_on_postgres(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _invoke("collections", "create", "staff", "--to", url).exit_code == 0
    with PgEngine(url) as e:
        rng = np.random.default_rng(6)
        e.upsert_persons("staff", [_person(f"E{i}", _unit(rng, 1), metadata={"dept": "x"}) for i in range(3)])
    res = _invoke("collections", "list", "--to", url, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["collections"][0] | {"created": 0, "modified": 0} == {
        "name": "staff", "num_persons": 3, "num_faces": 1 * 3, "created": 0, "modified": 0}
    monkeypatch.setenv("FACECLI_DB", url)  # the URL from the environment, no --to
    res = _invoke("persons", "list", "-c", "staff", "--json", "--limit", "2")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["count"] == 3 and [p["person_id"] for p in body["persons"]] == ["E0", "E1"]
    assert _invoke("persons", "get", "E1", "-c", "staff", "--json").exit_code == 0
    assert _invoke("persons", "delete", "E1", "E9", "-c", "staff").exit_code == 1
    assert _invoke("persons", "get", "E1", "-c", "staff").exit_code == 1
    assert _invoke("collections", "delete", "staff", "--yes").exit_code == 0
    res = _invoke("persons", "list", "-c", "staff")
    assert res.exit_code == 3 and "does not exist" in res.output


def test_collections_copy_sqlite_postgres_sqlite(url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    src = tmp_path / "a.db"
    with Engine(src) as e:
        for name in ("staff", "visitors"):
            e.create_collection(name)
            e.upsert_persons(name, [
                EnginePerson(f"{name}{i}", f"N{i}", {"k": str(i)}, gender="F" if i % 2 else None, faces=[
                    EngineFace(v, f"{name}{i}-{j}", quality={"q": 0.5}, source_path=f"x/{i}.jpg",
                               image=b"\xff\xd8" + bytes([i, j]) if j == 0 else None,
                               image_kind="thumbnail" if j == 0 else None)
                    for j, v in enumerate(_unit(rng, 1 + i % 3))])
                for i in range(30)])
    res = _invoke("collections", "copy", "staff", "--from", f"sqlite:///{src}", "--to", url, "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["collections"][0] | {"seconds": 0} == {
        "collection": "staff", "to_collection": "staff", "persons": 30, "created": 30, "updated": 0,
        "unchanged": 0, "faces": sum(1 + i % 3 for i in range(30)), "seconds": 0}
    # again: nothing changes; then every collection, then back into a new SQLite file
    res = _invoke("collections", "copy", "--from", f"sqlite:///{src}", "--to", url, "--json")
    assert [(c["collection"], c["created"], c["unchanged"]) for c in json.loads(res.stdout)["collections"]] == [
        ("staff", 0, 30), ("visitors", 30, 0)]
    back = tmp_path / "b.db"
    res = _invoke("collections", "copy", "staff", "--from", url, "--to", f"sqlite:///{back}", "--as", "staff2")
    assert res.exit_code == 0 and "30 created" in res.output, res.output
    with Engine(src) as a, Engine(back) as b, PgEngine(url) as p:
        want = [x for batch in export_persons(a, "staff") for x in batch]
        for engine, name in ((p, "staff"), (b, "staff2")):
            got = [x for batch in export_persons(engine, name, batch_size=7) for x in batch]
            assert len(got) == len(want) == 30
            for w, g in zip(want, got, strict=True):
                assert (w.person_id, w.person_name, w.metadata, w.gender) == (g.person_id, g.person_name, g.metadata, g.gender)
                assert [(f.image_sha256, f.embedding.tobytes(), dict(f.quality), f.source_path, f.image, f.image_kind)
                        for f in w.faces] == [(f.image_sha256, f.embedding.tobytes(), dict(f.quality), f.source_path,
                                                f.image, f.image_kind) for f in g.faces]
        q = want[4].faces[0].embedding
        assert p.search("staff", q, k=1)[0][0].person_id == b.search("staff2", q, k=1)[0][0].person_id == want[4].person_id
        assert p.load_index("staff").nbytes > 0  # built after the bulk copy
    # refusals: missing collection (3), same collection (2), a server target (2), missing file (2)
    assert _invoke("collections", "copy", "nope", "--from", url, "--to", f"sqlite:///{back}").exit_code == 3
    assert _invoke("collections", "copy", "staff", "--from", url, "--to", url).exit_code == 2
    assert _invoke("collections", "copy", "staff", "--from", url, "--to", "http://127.0.0.1:9").exit_code == 2
    assert _invoke("collections", "copy", "--from", f"sqlite:///{tmp_path / 'none.db'}", "--to", url).exit_code == 2
    assert not (tmp_path / "none.db").exists()


@needs_models
def test_two_concurrent_enroll_processes_into_one_collection(tmp_path: Path) -> None:
    """Two `facecli enroll` runs at once on overlapping folders: every person exactly once, and
    the password in --to shows up nowhere (summary, report, journal, output)."""
    password = "enroll-Pw-42"
    role = pg_server.password_role(password)
    url = pg_server.base_url().replace("postgres:@", f"{role}:{password}@") + f"&schema=s_{role}"
    images = [SAMPLES / "grace_hopper.jpg", SAMPLES / "astronaut.jpg"]
    images += sorted((DATASETS / "compreface-samples").glob("00[1-9]_*.jpg"))[:4] if DATASETS.is_dir() else []
    folders = [tmp_path / "a", tmp_path / "b"]
    ids = [f"emp{i:02d}" for i in range(24)]
    for folder, chosen in zip(folders, (ids[:16], ids[8:]), strict=True):
        for i, pid in enumerate(chosen):
            (folder / pid).mkdir(parents=True)
            shutil.copy(images[(i * 5 + len(pid)) % len(images)], folder / pid / "photo.jpg")
    procs = []
    for n, folder in enumerate(folders):
        cmd = [sys.executable, "-m", "facecli", "enroll", str(folder), "--to", url, "-c", "staff",
               "--create-collection", "--on-duplicate", "warn", "--on-identity-mismatch", "warn",
               "--batch-size", "3", "--threads", "1", "--json", "--report", str(tmp_path / f"r{n}.jsonl"),
               "--journal", str(tmp_path / f"j{n}.db")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_child_env(PGPASSFILE=str(tmp_path / "none"))))
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
        summary = json.loads(stdout)
        assert summary["persons"]["enrolled"] == 16
        assert summary["target"] == mask_url(url) and "***" in summary["target"]
        assert password not in stdout + stderr
    for n in range(2):
        assert password not in (tmp_path / f"r{n}.jsonl").read_text()
        assert password.encode() not in (tmp_path / f"j{n}.db").read_bytes()
    with PgEngine(url) as e:
        total, persons = e.list_persons("staff")
        assert total == 24 and [p.person_id for p in persons] == ids
        assert all(p.faces == 1 for p in persons)
        assert e.counts("staff") == (24, 24)
        first = next(iter(export_persons(e, "staff")))[0]
        hits = e.search("staff", first.faces[0].embedding, k=30, min_score=-1.0)[0]
        assert len(hits) == 24 and hits[0].score == pytest.approx(1.0, abs=1e-5)


@needs_models
def test_server_app_over_postgres(checker: Any, url: str) -> None:
    """`facecli serve`'s app works over PgEngine through the same engine interface: the
    OpenCV FR client enrolls, lists and searches through it."""
    from facecli.server.app import create_app
    from facecli.sinks.base import FacePayload, PersonPayload, SearchProbe
    from facecli.sinks.opencv_fr import OpenCVFRSink

    from .live_server import LiveServer

    photos = {"grace": SAMPLES / "grace_hopper.jpg", "astro": SAMPLES / "astronaut.jpg"}
    with PgEngine(url) as engine, LiveServer(create_app(engine, checker, ["k"])) as server:
        sink = OpenCVFRSink(server.url, "k")
        try:
            sink.ensure_collection("staff", create=True)
            outcomes = sink.upsert("staff", [
                PersonPayload(pid, pid.title(), [FacePayload("sha", str(path), jpeg=path.read_bytes())], {"src": pid})
                for pid, path in photos.items()])
            assert [o.status.value for o in outcomes] == ["enrolled", "enrolled"], outcomes
            assert sink.list_persons("staff", None, 0)[0] == 2
            matches = sink.search("staff", SearchProbe(jpeg=(SAMPLES / "grace_hopper_2.jpg").read_bytes()), 2, 0.0)
            assert matches[0].person_id == "grace" and matches[0].metadata == {"src": "grace"}
        finally:
            sink.close()
        assert engine.counts("staff") == (2, 2)
