"""Vector index of a collection's faces and its on-disk cache.

The index is derived data: the faces table is the truth, and the cache files only spare a restart
the cost of re-reading every embedding from SQLite. Each cache is stamped with the collection's
``uid`` and ``generation`` (see ``store.py``); a stamp that differs from the DB means "stale,
rebuild". Files are written temp-then-``os.replace`` and named per generation, and the sidecar that
points at them is replaced last, so a reader never pairs a matrix with the wrong ids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = ["VectorIndex", "ExactIndex", "IndexCache", "CachedIndex"]

log = logging.getLogger(__name__)

_CACHE_FORMAT = 1


@runtime_checkable
class VectorIndex(Protocol):
    """What the engine needs from an index; small so an ANN library can slot in later."""

    def build(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        """Replace the contents with ``matrix[i]`` labelled ``ids[i]``."""
        ...

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids), best first: shape [k'] for a [D] query, [Q, k'] for [Q, D]."""
        ...

    def __len__(self) -> int: ...


class ExactIndex:
    """Exact cosine search: one matrix-vector product over unit vectors, top-k by argpartition.

    Exact search is simple, has no recall loss and stays near memory-bandwidth speed (~25 ms per
    query at 1M x 128 on two cores), which is enough for enrollment-sized galleries.
    """

    #: Bound on the [Q, N] score block so a large batch of queries never allocates unboundedly.
    MAX_BLOCK = 1 << 24

    def __init__(self) -> None:
        self._ids = np.empty(0, dtype=np.int64)
        self._matrix = np.empty((0, 0), dtype=np.float32)

    def build(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        """Keep the arrays (no copy when already contiguous float32, e.g. a read-only memmap)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        matrix = np.asarray(matrix)
        if len(ids) == 0 and matrix.size == 0:
            matrix = np.empty((0, matrix.shape[-1] if matrix.ndim == 2 else 0), dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(f"matrix shape {matrix.shape} does not match {len(ids)} ids")
        self._ids = np.ascontiguousarray(ids)
        self._matrix = np.ascontiguousarray(matrix, dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix

    @property
    def nbytes(self) -> int:
        """Bytes the index addresses (mapped or resident), for capacity planning."""
        return int(self._matrix.nbytes + self._ids.nbytes)

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(query, dtype=np.float32)
        single = q.ndim == 1
        if single:
            q = q[None, :]
        if q.ndim != 2:
            raise ValueError(f"query must be [D] or [Q, D], got shape {np.shape(query)}")
        n = len(self)
        kk = max(0, min(int(k), n))
        nq = q.shape[0]
        scores = np.empty((nq, kk), dtype=np.float32)
        ids = np.empty((nq, kk), dtype=np.int64)
        if kk and nq:
            if q.shape[1] != self.dim:
                raise ValueError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
            step = max(1, self.MAX_BLOCK // n)
            for start in range(0, nq, step):
                block = q[start : start + step]
                # gemv for one query reads the matrix once in row order: the fast path at 1M.
                s = (
                    (self._matrix @ block[0])[None, :]
                    if len(block) == 1
                    else block @ self._matrix.T
                )
                for r, row in enumerate(s):
                    top = _top_unordered(row, kk)
                    top_s = row[top]
                    order = np.argsort(-top_s, kind="stable")
                    scores[start + r] = top_s[order]
                    ids[start + r] = self._ids[top[order]]
        if single:
            return scores[0], ids[0]
        return scores, ids


#: Below this many scores a plain argpartition is already cheap.
PREFILTER_MIN = 65536
_SAMPLE_STRIDE = 64


def _top_unordered(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, in no particular order (exact).

    At 1M scores a full argpartition costs ~3 ms, a tenth of a query. A threshold taken from a
    strided sample (expected to let through ~4k + 8*64 scores) shrinks the partition to a few
    hundred candidates; whenever fewer than k pass, it falls back to the full partition, so the
    result is always the true top k.
    """
    n = len(scores)
    if k >= n:
        return np.arange(n)
    if n >= PREFILTER_MIN and 8 * k * _SAMPLE_STRIDE < n:
        sample = scores[::_SAMPLE_STRIDE]
        rank = -(-4 * k // _SAMPLE_STRIDE) + 8
        threshold = np.partition(sample, len(sample) - rank)[len(sample) - rank]
        candidates = np.flatnonzero(scores >= threshold)
        if len(candidates) >= k:
            sub = scores[candidates]
            return candidates[np.argpartition(sub, len(sub) - k)[len(sub) - k :]]
    return np.argpartition(scores, n - k)[n - k :]


@dataclass(frozen=True, slots=True)
class CachedIndex:
    """Arrays loaded from (or just written to) the cache, with the stamp they belong to."""

    uid: str
    generation: int
    ids: np.ndarray
    matrix: np.ndarray


class IndexCache:
    """The ``<db>.index/`` directory: per collection uid, a sidecar JSON plus per-generation
    ``.npy`` matrix and ids (loadable with ``mmap_mode='r'`` so a restart maps rather than reads).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _sidecar(self, uid: str) -> Path:
        return self.directory / f"{uid}.json"

    def _names(self, uid: str, generation: int) -> tuple[str, str]:
        return f"{uid}.g{generation}.matrix.npy", f"{uid}.g{generation}.ids.npy"

    def load(self, uid: str, generation: int, *, mmap: bool = True) -> CachedIndex | None:
        """The cached arrays if present, well-formed and stamped ``(uid, generation)``; else None.

        Any problem (missing, truncated, foreign, stale) is a miss, never an error: the caller
        rebuilds from the DB.
        """
        try:
            meta = json.loads(self._sidecar(uid).read_text(encoding="utf-8"))
            if (
                meta.get("format") != _CACHE_FORMAT
                or meta.get("uid") != uid
                or meta.get("generation") != generation
            ):
                return None
            mode: Literal["r"] | None = "r" if mmap else None
            matrix = np.load(self.directory / meta["matrix"], mmap_mode=mode, allow_pickle=False)
            ids = np.load(self.directory / meta["ids"], mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        count = int(meta.get("count", -1))
        if (
            matrix.dtype != np.float32
            or ids.dtype != np.int64
            or matrix.ndim != 2
            or ids.ndim != 1
            or matrix.shape[0] != count
            or ids.shape[0] != count
            or (count and matrix.shape[1] != meta.get("dim"))
        ):
            return None
        # asarray drops the memmap subclass so arithmetic returns plain ndarrays.
        return CachedIndex(uid, generation, np.asarray(ids), np.asarray(matrix))

    def save(self, uid: str, generation: int, ids: np.ndarray, matrix: np.ndarray) -> bool:
        """Write the cache atomically; returns False (and logs) when the directory is unwritable,
        because a missing cache only costs a rebuild.
        """
        matrix_name, ids_name = self._names(uid, generation)
        meta = {
            "format": _CACHE_FORMAT,
            "uid": uid,
            "generation": generation,
            "count": int(len(ids)),
            "dim": int(matrix.shape[1]) if matrix.ndim == 2 else 0,
            "dtype": "float32",
            "matrix": matrix_name,
            "ids": ids_name,
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._atomic_npy(matrix_name, np.ascontiguousarray(matrix, dtype=np.float32))
            self._atomic_npy(ids_name, np.ascontiguousarray(ids, dtype=np.int64))
            self._atomic_write(self._sidecar(uid).name, json.dumps(meta).encode())
        except OSError as exc:
            log.warning("could not write index cache in %s: %s", self.directory, exc)
            return False
        self._remove_files(uid, keep={matrix_name, ids_name, self._sidecar(uid).name})
        return True

    def remove(self, uid: str) -> None:
        """Drop every cache file of a collection (best effort)."""
        self._remove_files(uid, keep=set())

    def _remove_files(self, uid: str, keep: set[str]) -> None:
        with contextlib.suppress(OSError):
            for p in self.directory.glob(f"{uid}.*"):
                if p.name not in keep:
                    # On Windows a file mapped by another engine cannot be removed: leave it.
                    with contextlib.suppress(OSError):
                        p.unlink()

    def _atomic_write(self, name: str, data: bytes) -> None:
        self._atomic(name, lambda f: f.write(data))

    def _atomic_npy(self, name: str, array: np.ndarray) -> None:
        self._atomic(name, lambda f: np.save(f, array, allow_pickle=False))

    def _atomic(self, name: str, write: Callable[[BinaryIO], object]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
