"""The engine contract: the same scenarios on the SQLite engine and on PostgreSQL + pgvector.

Every test here runs once per backend and must give the same answers on both. Backend-specific
behaviour lives in test_engine_engine.py (SQLite: index cache, file lock, crash) and
test_engine_pg.py (PostgreSQL: schema, HNSW, credentials, concurrent writers, copy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facecli.engine import (
    CollectionExists,
    CollectionNotFound,
    Engine,
    EngineClosed,
    EngineFace,
    EnginePerson,
    InvalidCollectionName,
    InvalidInput,
    PersonNotFound,
)
from facecli.engine.pg import export_persons

from . import pg_server

DIM = 128
BACKENDS = ["sqlite", "postgres"]


def _unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _face(vec: np.ndarray, sha: str, **kw: object) -> EngineFace:
    return EngineFace(embedding=vec, image_sha256=sha, **kw)  # type: ignore[arg-type]


def _person(pid: str, vecs: np.ndarray, name: str | None = None, **kw: object) -> EnginePerson:
    faces = [_face(v, f"{pid}-{i}-{v[:2].tobytes().hex()}") for i, v in enumerate(vecs)]
    return EnginePerson(person_id=pid, person_name=name or pid.upper(), faces=faces, **kw)  # type: ignore[arg-type]


Opener = Callable[[], Any]


def _opener(kind: str, tmp_path: Path) -> Opener:
    """A function opening a new engine on one fresh store of the given backend."""
    if kind == "sqlite":
        db = tmp_path / "data" / "gallery.db"
        return lambda: Engine(db)
    from facecli.engine.pg import PgEngine

    url = pg_server.fresh_url()
    return lambda: PgEngine(url)


@pytest.fixture(params=BACKENDS)
def open_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Any] = []

    def open_() -> Any:
        e = factory()
        opened.append(e)
        return e

    factory = _opener(request.param, tmp_path)
    yield open_
    for e in opened:
        e.close()


@pytest.fixture
def engine(open_engine: Opener) -> Any:
    e = open_engine()
    e.create_collection("c")
    return e


# ------------------------------------------------------------------ collections


def test_open_empty_then_closed(open_engine: Opener) -> None:
    e = open_engine()
    assert e.list_collections() == (0, [])
    e.close()
    e.close()  # idempotent
    assert e.closed
    with pytest.raises(EngineClosed):
        e.list_collections()


def test_collections_create_list_delete(open_engine: Opener) -> None:
    e = open_engine()
    info = e.create_collection("b-1.x_y")
    assert (info.name, info.num_persons, info.num_faces) == ("b-1.x_y", 0, 0)
    assert info.created.endswith("Z")
    with pytest.raises(CollectionExists):
        e.create_collection("b-1.x_y")
    assert e.create_collection("b-1.x_y", exist_ok=True).created == info.created
    e.create_collection("a")
    e.create_collection("c")
    e.create_collection("B")  # byte order: upper case first
    total, page = e.list_collections(limit=2, offset=1)
    assert total == 4 and [c.name for c in page] == ["a", "b-1.x_y"]
    e.delete_collection("a")
    assert [c.name for c in e.list_collections()[1]] == ["B", "b-1.x_y", "c"]
    with pytest.raises(CollectionNotFound):
        e.delete_collection("a")
    with pytest.raises(CollectionNotFound):
        e.get_collection("a")


@pytest.mark.parametrize("name", ["", "a b", "a/b", "é", "x;y", "../up", "a\n", "c'); drop table x; --"])
def test_invalid_collection_names(open_engine: Opener, name: str) -> None:
    e = open_engine()
    with pytest.raises(InvalidCollectionName):
        e.create_collection(name)
    with pytest.raises(ValueError):  # also a ValueError for generic callers
        e.search(name, np.ones(DIM, np.float32))


def test_missing_collection_everywhere(engine: Any) -> None:
    q = np.ones(DIM, np.float32)
    for call in (
        lambda: engine.upsert_persons("nope", [EnginePerson("p")]),
        lambda: engine.upsert_persons("nope", []),
        lambda: engine.search("nope", q),
        lambda: engine.list_persons("nope"),
        lambda: engine.get_person("nope", "p"),
        lambda: engine.delete_person("nope", "p"),
        lambda: engine.counts("nope"),
        lambda: engine.get_collection("nope"),
        lambda: engine.load_index("nope"),
    ):
        with pytest.raises(CollectionNotFound):
            call()


def test_delete_collection_cascades(open_engine: Opener) -> None:
    rng = np.random.default_rng(0)
    e = open_engine()
    e.create_collection("c")
    e.create_collection("keep")
    e.upsert_persons("c", [_person(f"p{i}", _unit(rng, 2)) for i in range(5)])
    e.upsert_persons("keep", [_person("k", _unit(rng, 1))])
    e.search("c", _unit(rng, 1))
    e.delete_collection("c")
    # recreated under the same name: empty, never answered from the old data
    e.create_collection("c")
    assert e.search("c", _unit(rng, 1), min_score=-1.0) == [[]]
    assert e.counts("c") == (0, 0) and e.list_persons("c") == (0, [])
    assert e.counts("keep") == (1, 1)
    assert [p.person_id for p in e.list_persons("keep")[1]] == ["k"]


# ------------------------------------------------------------------ upsert semantics


def test_upsert_create_update_unchanged(engine: Any) -> None:
    rng = np.random.default_rng(1)
    v = _unit(rng, 3)
    p = _person("alice", v[:2], name="Alice", metadata={"dept": "x"}, gender="F")
    assert [r.action for r in engine.upsert_persons("c", [p])] == ["created"]
    first = engine.get_person("c", "alice")
    assert first is not None and first.faces == 2 and first.gender == "F"
    assert first.created == first.modified and first.created.endswith("Z")
    gen0 = engine.load_index("c").generation

    time.sleep(0.002)
    assert [r.action for r in engine.upsert_persons("c", [p])] == ["unchanged"]
    same = engine.get_person("c", "alice")
    assert same == first  # modified not bumped
    assert engine.load_index("c").generation == gen0  # nothing written

    # faces in another order are still the same set
    p_rev = _person("alice", v[:2], name="Alice", metadata={"dept": "x"}, gender="F")
    p_rev.faces.reverse()
    assert engine.upsert_persons("c", [p_rev])[0].action == "unchanged"

    # new faces replace the old ones; created kept, modified bumped
    p2 = _person("alice", v[2:], name="Alice B", metadata={"dept": "y"})
    assert engine.upsert_persons("c", [p2])[0].action == "updated"
    after = engine.get_person("c", "alice")
    assert after is not None
    assert (after.person_name, after.metadata, after.faces, after.gender) == ("Alice B", {"dept": "y"}, 1, None)
    assert after.created == first.created and after.modified > first.modified
    assert engine.counts("c") == (1, 1)
    assert engine.load_index("c").generation > gen0
    hit = engine.search("c", v[2], k=1)[0][0]
    assert (hit.person_id, hit.person_name) == ("alice", "Alice B")
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert engine.search("c", v[0], k=1, min_score=-1.0)[0][0].score < 0.5  # old face gone


def test_metadata_only_change_keeps_faces_and_index(engine: Any) -> None:
    rng = np.random.default_rng(2)
    v = _unit(rng, 2)
    engine.upsert_persons("c", [_person("bob", v)])
    engine.search("c", v[0])
    gen = engine.load_index("c").generation
    ids = sorted(h[0].face_id for h in engine.search("c", v, k=1))
    r = engine.upsert_persons("c", [_person("bob", v, metadata={"a": "1"})])
    assert r[0].action == "updated"
    assert engine.load_index("c").generation == gen  # no face write, index still valid
    assert sorted(h[0].face_id for h in engine.search("c", v, k=1)) == ids
    assert engine.search("c", v[0], k=1)[0][0].metadata == {"a": "1"}


def test_person_ids_case_sensitive_and_repeats_in_batch(engine: Any) -> None:
    rng = np.random.default_rng(3)
    v = _unit(rng, 4)
    res = engine.upsert_persons(
        "c",
        [_person("Bob", v[:1]), _person("bob", v[1:2]), _person("Bob", v[2:3]), _person("Bob", v[2:3])],
    )
    assert [r.action for r in res] == ["created", "created", "updated", "unchanged"]
    assert engine.counts("c") == (2, 2)
    total, persons = engine.list_persons("c")
    assert total == 2 and [p.person_id for p in persons] == ["Bob", "bob"]
    assert engine.search("c", v[2], k=1)[0][0].person_id == "Bob"
    assert engine.search("c", v[0], k=1, min_score=-1.0)[0][0].score < 0.5  # Bob's first face was replaced in the batch
    # an existing person repeated: changed, then changed back within one batch
    res = engine.upsert_persons("c", [_person("bob", v[3:4]), _person("bob", v[1:2], name="BOB")])
    assert [r.action for r in res] == ["updated", "updated"]
    assert engine.get_person("c", "bob").faces == 1
    assert engine.search("c", v[1], k=1)[0][0].person_id == "bob"
    assert engine.counts("c") == (2, 2)


def test_invalid_input_writes_nothing(engine: Any) -> None:
    rng = np.random.default_rng(4)
    good = _person("ok", _unit(rng, 1))
    for vec in (np.full(DIM, np.nan, np.float32), np.zeros(DIM, np.float32), np.ones((2, DIM), np.float32)):
        with pytest.raises(InvalidInput):
            engine.upsert_persons("c", [good, EnginePerson("bad", faces=[_face(vec, "s")])])
    with pytest.raises(InvalidInput):
        engine.upsert_persons("c", [good, EnginePerson("bad", metadata={"a": 1})])  # type: ignore[dict-item]
    with pytest.raises(InvalidInput):
        engine.upsert_persons("c", [EnginePerson("")])
    with pytest.raises(InvalidInput, match="different dimensions"):
        engine.upsert_persons("c", [good, _person("small", _unit(rng, 1, 64))])
    assert engine.counts("c") == (0, 0)
    engine.upsert_persons("c", [good])
    with pytest.raises(InvalidInput, match="dimension"):  # collection already holds 128-d faces
        engine.upsert_persons("c", [_person("other", _unit(rng, 1)), _person("small", _unit(rng, 1, 64))])
    with pytest.raises(InvalidInput, match="dimension"):
        engine.upsert_persons("c", [_person("small", _unit(rng, 1, 64))])
    assert engine.counts("c") == (1, 1)
    assert engine.get_person("c", "other") is None


def test_persons_without_faces_and_unicode(engine: Any) -> None:
    res = engine.upsert_persons("c", [EnginePerson("ß-1", "Zoë ☃", {"clé": "välue", "n": ""}, notes="x")])
    assert res[0].action == "created"
    p = engine.get_person("c", "ß-1")
    assert (p.person_name, p.metadata, p.faces, p.notes) == ("Zoë ☃", {"clé": "välue", "n": ""}, 0, "x")
    assert engine.search("c", np.ones(DIM, np.float32), min_score=-1.0) == [[]]
    assert engine.upsert_persons("c", [EnginePerson("ß-1", "Zoë ☃", {"n": "", "clé": "välue"}, notes="x")])[0].action == "unchanged"
    assert engine.counts("c") == (1, 0)


def test_embeddings_are_normalised_and_fields_stored(engine: Any) -> None:
    vec = np.arange(1, DIM + 1, dtype=np.float32)
    face = _face(vec * 7, "abc", quality={"sharpness": np.float32(3.5)}, source_path="a/b.jpg",
                 image=b"\xff\xd8jpeg", image_kind="full")
    engine.upsert_persons("c", [EnginePerson("p", "P", {"k": "v"}, notes="n", faces=[face])])
    hit = engine.search("c", vec, k=1)[0][0]
    assert hit.score == pytest.approx(1.0, abs=1e-6)
    [[stored]] = list(export_persons(engine, "c"))
    assert (stored.person_id, stored.person_name, stored.metadata, stored.notes) == ("p", "P", {"k": "v"}, "n")
    [f] = stored.faces
    assert np.linalg.norm(f.embedding) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(f.embedding, vec / np.linalg.norm(vec), atol=1e-7)
    assert (dict(f.quality), f.source_path, f.image, f.image_kind) == ({"sharpness": 3.5}, "a/b.jpg", b"\xff\xd8jpeg", "full")
    # what was exported re-upserts as unchanged (bit-exact embeddings)
    assert engine.upsert_persons("c", [stored])[0].action == "unchanged"


def test_list_get_delete_persons(engine: Any) -> None:
    rng = np.random.default_rng(5)
    engine.upsert_persons("c", [_person(f"p{i:02d}", _unit(rng, i % 3 + 1)) for i in range(12)])
    total, page = engine.list_persons("c", limit=5, offset=5)
    assert total == 12 and [p.person_id for p in page] == [f"p{i:02d}" for i in range(5, 10)]
    assert [p.faces for p in page] == [i % 3 + 1 for i in range(5, 10)]
    assert engine.list_persons("c", limit=0)[1] == []
    assert [p.person_id for p in engine.list_persons("c", offset=10)[1]] == ["p10", "p11"]
    with pytest.raises(InvalidInput):
        engine.list_persons("c", limit=-1)
    assert engine.get_person("c", "zz") is None
    engine.delete_person("c", "p03")
    with pytest.raises(PersonNotFound):
        engine.delete_person("c", "p03")
    assert engine.get_person("c", "p03") is None
    assert engine.counts("c") == (11, sum(i % 3 + 1 for i in range(12)) - 1)
    info = engine.get_collection("c")
    assert (info.num_persons, info.num_faces) == engine.counts("c")


# ------------------------------------------------------------------ search


def _gallery(rng: np.random.Generator, n_persons: int) -> tuple[list[EnginePerson], np.ndarray, np.ndarray]:
    persons, owners, vecs = [], [], []
    for i in range(n_persons):
        v = _unit(rng, int(rng.integers(1, 5)))
        persons.append(_person(f"id{i}", v, metadata={"i": str(i)}))
        owners += [i] * len(v)
        vecs.append(v)
    return persons, np.array(owners), np.concatenate(vecs)


def _expected(q: np.ndarray, owners: np.ndarray, vecs: np.ndarray, n_persons: int, k: int,
              min_score: float) -> list[tuple[str, float]]:
    s = vecs.astype(np.float64) @ q.astype(np.float64)
    best = np.full(n_persons, -np.inf)
    np.maximum.at(best, owners, s)
    order = np.argsort(-best, kind="stable")
    return [(f"id{i}", float(best[i])) for i in order[:k] if best[i] >= min_score]


@pytest.mark.parametrize("k,min_score", [(1, 0.0), (5, 0.0), (20, -1.0), (10, 0.15)])
def test_search_matches_brute_force(engine: Any, k: int, min_score: float) -> None:
    rng = np.random.default_rng(k)
    persons, owners, vecs = _gallery(rng, 300)
    for start in range(0, 300, 100):
        engine.upsert_persons("c", persons[start : start + 100])
    queries = np.concatenate([vecs[rng.integers(0, len(vecs), 5)] + 0.05 * _unit(rng, 5), _unit(rng, 5)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results = engine.search("c", queries, k=k, min_score=min_score)
    assert len(results) == len(queries)
    for q, hits in zip(queries, results, strict=True):
        want = _expected(q, owners, vecs, 300, k, min_score)
        assert [h.person_id for h in hits] == [w[0] for w in want]
        np.testing.assert_allclose([h.score for h in hits], [w[1] for w in want], atol=1e-5)
        assert len({h.person_id for h in hits}) == len(hits)
        assert all(h.score >= min_score for h in hits)
        for h in hits:
            assert h.metadata == {"i": h.person_id[2:]}
    single = engine.search("c", queries[0], k=k, min_score=min_score)
    assert [h.person_id for h in single[0]] == [h.person_id for h in results[0]]


def test_search_widens_when_one_person_floods_the_candidates(engine: Any) -> None:
    rng = np.random.default_rng(7)
    q = _unit(rng, 1)[0]
    near = q + 0.01 * _unit(rng, 200)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    others = _unit(rng, 10)
    engine.upsert_persons("c", [_person("flood", near)] + [_person(f"o{i}", others[i : i + 1]) for i in range(10)])
    hits = engine.search("c", q, k=5, min_score=-1.0)[0]
    assert hits[0].person_id == "flood"
    assert len(hits) == 5 and len({h.person_id for h in hits}) == 5
    want = np.sort(others @ q)[::-1][:4]
    np.testing.assert_allclose([h.score for h in hits[1:]], want, atol=1e-5)


def test_search_edge_cases(engine: Any) -> None:
    rng = np.random.default_rng(8)
    assert engine.search("c", _unit(rng, 3), k=3) == [[], [], []]  # empty collection
    engine.upsert_persons("c", [_person("a", _unit(rng, 1))])
    assert engine.search("c", _unit(rng, 1), k=0) == [[]]
    with pytest.raises(InvalidInput):
        engine.search("c", np.ones(64, np.float32))
    with pytest.raises(InvalidInput):
        engine.search("c", np.zeros(DIM, np.float32))
    with pytest.raises(InvalidInput):
        engine.search("c", np.ones(DIM, np.float32), k=-1)
    with pytest.raises(InvalidInput):
        engine.search("c", np.ones(DIM, np.float32), min_score=float("nan"))
    assert len(engine.search("c", _unit(rng, 1)[0], k=10, min_score=-1.0)[0]) == 1
    assert engine.search("c", _unit(rng, 1)[0], k=10, min_score=1.01) == [[]]


def test_a_second_engine_sees_every_write(open_engine: Opener) -> None:
    rng = np.random.default_rng(9)
    v = _unit(rng, 3)
    reader, writer = open_engine(), open_engine()
    writer.create_collection("c")
    writer.upsert_persons("c", [_person("a", v[:1])])
    assert [h.person_id for h in reader.search("c", v[1], k=5, min_score=-1.0)[0]] == ["a"]
    writer.upsert_persons("c", [_person("b", v[1:2])])
    hits = reader.search("c", v[1], k=5)[0]
    assert hits[0].person_id == "b" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    writer.delete_person("c", "b")
    assert [h.person_id for h in reader.search("c", v[1], k=5, min_score=-1.0)[0]] == ["a"]
    writer.upsert_persons("c", [_person("a", v[2:3])])  # replaced faces: the old vector is gone
    assert reader.search("c", v[0], k=1, min_score=-1.0)[0][0].score < 0.5
    assert reader.counts("c") == (1, 1)


def test_threads_share_one_engine(engine: Any) -> None:
    rng = np.random.default_rng(14)
    vecs = _unit(rng, 80)
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            for i in range(10):
                engine.upsert_persons("c", [_person(f"t{t}-{i}", vecs[t * 10 + i : t * 10 + i + 1])])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(30):
                engine.search("c", vecs[:3], k=3)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=read) for _ in range(3)]
    with engine.writer_lock():  # a session opened on this thread covers the workers' writes
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
    assert not errors
    assert engine.counts("c") == (40, 40)
    hits = engine.search("c", vecs[:40], k=1)
    assert [h[0].person_id for h in hits] == [f"t{i // 10}-{i % 10}" for i in range(40)]


# ------------------------------------------------------------------ both at once


def test_both_backends_give_the_same_answers(tmp_path: Path) -> None:
    """One scenario, both engines side by side: every answer compared."""
    rng = np.random.default_rng(21)
    persons, _, vecs = _gallery(rng, 200)
    q = np.concatenate([vecs[:10] + 0.1 * _unit(rng, 10), _unit(rng, 5)])
    near_id0 = vecs[:1] + 0.05 * _unit(rng, 1)  # close to id0's face, but no tie
    near_id0 /= np.linalg.norm(near_id0)
    engines = [_opener(kind, tmp_path)() for kind in BACKENDS]
    try:
        answers, scores = [], []
        for e in engines:
            e.create_collection("same")
            log = [[r.action for r in e.upsert_persons("same", persons[:120])]]
            log.append([r.action for r in e.upsert_persons("same", persons[100:])])
            changed = [_person("id5", near_id0), EnginePerson("id6", "renamed", {"i": "6"}, faces=persons[6].faces)]
            log.append([r.action for r in e.upsert_persons("same", changed)])
            e.delete_person("same", "id7")
            hits = e.search("same", q, k=7, min_score=0.05)
            listing = e.list_persons("same", limit=20, offset=3)[1]
            answers.append((
                log,
                e.counts("same"),
                [[(h.person_id, h.person_name, h.metadata) for h in row] for row in hits],
                [(p.person_id, p.person_name, p.metadata, p.faces) for p in listing],
            ))
            scores.append([h.score for row in hits for h in row])
        assert answers[0] == answers[1]
        assert answers[0][2][0][:2] == [("id0", "ID0", {"i": "0"}), ("id5", "ID5", {})]
        np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)
    finally:
        for e in engines:
            e.close()


def test_existing_person_ids_batched(engine: Any) -> None:
    """The run ledger's "still there?" question: one call for many ids, on both engines."""
    vecs = _unit(np.random.default_rng(7), 3)
    engine.upsert_persons("c", [_person(f"p{i}", vecs[i : i + 1]) for i in range(3)])
    ids = [f"p{i}" for i in range(1200)]  # more than one SQLite chunk of 500
    assert engine.existing_person_ids("c", ids) == {"p0", "p1", "p2"}
    assert engine.existing_person_ids("c", []) == set()
    engine.delete_person("c", "p1")
    assert engine.existing_person_ids("c", ["p1", "p2", "p2"]) == {"p2"}
    with pytest.raises(CollectionNotFound):
        engine.existing_person_ids("nope", ["p0"])
