"""ExactIndex against brute force, and the atomic, stamped on-disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facecli.engine import index as index_mod
from facecli.engine.index import ExactIndex, IndexCache, VectorIndex


def _unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _brute(
    matrix: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    s = matrix.astype(np.float64) @ q.astype(np.float64)
    order = np.argsort(-s, kind="stable")[:k]
    return s[order], ids[order]


def test_is_a_vector_index() -> None:
    assert isinstance(ExactIndex(), VectorIndex)


@pytest.mark.parametrize("k", [1, 5, 37, 1000, 5000])
def test_search_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    matrix = _unit(rng, 1000)
    ids = rng.permutation(10_000)[:1000].astype(np.int64)
    index = ExactIndex()
    index.build(ids, matrix)
    assert len(index) == 1000 and index.dim == 128
    queries = _unit(rng, 8)
    scores, got = index.search(queries, k)
    assert scores.shape == got.shape == (8, min(k, 1000))
    for qi, q in enumerate(queries):
        want_s, want_ids = _brute(matrix, ids, q, k)
        np.testing.assert_allclose(scores[qi], want_s, atol=1e-5)
        assert np.all(np.diff(scores[qi]) <= 0)  # best first
        # each returned id really has the reported score, no duplicates
        row = {int(v): j for j, v in enumerate(ids)}
        np.testing.assert_allclose(
            matrix[[row[int(v)] for v in got[qi]]] @ q, scores[qi], atol=1e-5
        )
        assert len(set(got[qi].tolist())) == len(got[qi])
        if k <= 37:  # top gaps are far above float32 error: ranking must be identical
            np.testing.assert_array_equal(got[qi], want_ids)
    s1, i1 = index.search(queries[0], k)  # [D] query gives 1-D results
    assert s1.shape == i1.shape == (min(k, 1000),)
    np.testing.assert_array_equal(i1, got[0])


def test_batched_queries_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    matrix, ids = _unit(rng, 500, 32), np.arange(500, dtype=np.int64) * 3
    index = ExactIndex()
    index.build(ids, matrix)
    queries = _unit(rng, 23, 32)
    full_s, full_i = index.search(queries, 10)
    monkeypatch.setattr(ExactIndex, "MAX_BLOCK", 1000)  # forces blocks of 2 queries
    s, i = index.search(queries, 10)
    np.testing.assert_array_equal(i, full_i)
    np.testing.assert_allclose(s, full_s, rtol=1e-6)


def test_empty_index_and_bad_queries() -> None:
    index = ExactIndex()
    s, i = index.search(np.ones(8, np.float32), 5)
    assert s.shape == i.shape == (0,)
    index.build(np.array([7]), np.ones((1, 8), np.float32) / np.sqrt(8))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(4, np.float32), 1)
    with pytest.raises(ValueError):
        index.build(np.array([1, 2]), np.ones((3, 8), np.float32))
    s, i = index.search(np.ones(8, np.float32), 0)
    assert s.shape == (0,)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    d=st.integers(1, 12),
    k=st.integers(1, 80),
    seed=st.integers(0, 2**31),
)
def test_topk_scores_are_the_largest(n: int, d: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, d)).astype(np.float32)
    index = ExactIndex()
    index.build(np.arange(n), matrix)
    q = rng.standard_normal(d).astype(np.float32)
    scores, ids = index.search(q, k)
    want = np.sort(matrix @ q)[::-1][: min(k, n)]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matrix[ids] @ q, scores, rtol=1e-5, atol=1e-5)
    assert len(set(ids.tolist())) == len(ids)


def test_cache_roundtrip_is_memory_mapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix, ids = _unit(rng, 50), np.arange(50, dtype=np.int64) + 100
    cache = IndexCache(tmp_path / "x.db.index")
    assert cache.load("u1", 3) is None
    assert cache.save("u1", 3, ids, matrix)
    got = cache.load("u1", 3)
    assert got is not None
    np.testing.assert_array_equal(got.matrix, matrix)
    np.testing.assert_array_equal(got.ids, ids)
    # backed by the file (mmap), not a private copy
    assert isinstance(got.matrix.base, np.memmap) or isinstance(got.matrix, np.memmap)
    loaded = np.load(cache.directory / "u1.g3.matrix.npy", mmap_mode="r")
    assert loaded.shape == (50, 128)
    assert cache.load("u1", 4) is None  # stale generation
    assert cache.load("u2", 3) is None  # other collection
    assert not list(cache.directory.glob("*.tmp"))


def test_cache_replaces_old_generation_and_remove(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cache = IndexCache(tmp_path / "idx")
    cache.save("u", 1, np.arange(5), _unit(rng, 5))
    cache.save("u", 2, np.arange(6), _unit(rng, 6))
    cache.save("w", 1, np.arange(2), _unit(rng, 2))
    names = sorted(p.name for p in cache.directory.iterdir())
    assert names == sorted(
        ["u.json", "u.g2.matrix.npy", "u.g2.ids.npy", "w.json", "w.g1.matrix.npy", "w.g1.ids.npy"]
    )
    assert cache.load("u", 1) is None
    got = cache.load("u", 2)
    assert got is not None and len(got.ids) == 6
    cache.remove("u")
    assert sorted(p.name for p in cache.directory.iterdir()) == [
        "w.g1.ids.npy",
        "w.g1.matrix.npy",
        "w.json",
    ]


@pytest.mark.parametrize("damage", ["truncate", "delete_ids", "garbage_sidecar", "wrong_count"])
def test_damaged_cache_is_a_miss(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(0)
    cache = IndexCache(tmp_path / "idx")
    cache.save("u", 1, np.arange(20), _unit(rng, 20))
    d = cache.directory
    if damage == "truncate":
        data = (d / "u.g1.matrix.npy").read_bytes()
        (d / "u.g1.matrix.npy").write_bytes(data[: len(data) // 2])
    elif damage == "delete_ids":
        (d / "u.g1.ids.npy").unlink()
    elif damage == "garbage_sidecar":
        (d / "u.json").write_text("{not json")
    else:
        np.save(d / "u.g1.ids.npy", np.arange(19, dtype=np.int64))
    assert cache.load("u", 1) is None


def test_cache_save_failure_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = IndexCache(blocker / "idx")  # parent is a file: cannot create the dir
    assert cache.save("u", 1, np.arange(2), np.ones((2, 4), np.float32)) is False


@pytest.mark.parametrize(
    "layout", ["random", "ascending", "ties", "hidden_between_samples", "top_on_sample_points"]
)
@pytest.mark.parametrize("k", [1, 20, 200])
def test_prefiltered_topk_is_exact(layout: str, k: int) -> None:
    rng = np.random.default_rng(k)
    n = 100_000
    if layout == "random":
        s = rng.standard_normal(n).astype(np.float32)
    elif layout == "ascending":
        s = np.linspace(-1, 1, n, dtype=np.float32)
    elif layout == "ties":
        s = np.zeros(n, np.float32)
    elif layout == "hidden_between_samples":  # the strided sample never sees the top scores
        s = rng.uniform(-1, 0, n).astype(np.float32)
        s[1::64][:300] = rng.uniform(0.5, 1, 300)
    else:  # the sample holds all top scores: too few pass the threshold, full partition needed
        s = rng.uniform(-1, 0, n).astype(np.float32)
        s[::64] = rng.uniform(1, 2, len(s[::64]))
    assert n >= index_mod.PREFILTER_MIN  # the prefilter path runs
    top = index_mod._top_unordered(s, k)
    assert len(top) == k == len(set(top.tolist()))
    np.testing.assert_array_equal(np.sort(s[top]), np.sort(s)[n - k :])
