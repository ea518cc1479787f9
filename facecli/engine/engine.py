"""The embedded local engine: collections, persons, faces and search over one SQLite file.

This is a library layer (no CLI, no printing): the local Sink and ``facecli serve`` wrap it.
Writes follow the OpenCV FR ``PUT /persons`` semantics (same person_id = update and replace faces)
and are transactional per batch; searches read a cached exact index that is rebuilt whenever the
collection's generation in the DB moves past the cache's stamp.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
from filelock import FileLock, Timeout

from facecli.ids import COLLECTION_NAME_RE, validate_collection_name

from . import store
from .index import ExactIndex, IndexCache

__all__ = [
    "Engine",
    "EngineFace",
    "EnginePerson",
    "UpsertResult",
    "SearchHit",
    "PersonInfo",
    "CollectionInfo",
    "IndexStats",
    "EngineError",
    "InvalidCollectionName",
    "InvalidInput",
    "CollectionNotFound",
    "CollectionExists",
    "PersonNotFound",
    "EngineLocked",
    "EngineClosed",
    "IncompatibleDatabase",
    "COLLECTION_NAME_PATTERN",
]

#: Same rule as the OpenCV FR server, so a collection can move between the two unchanged.
COLLECTION_NAME_PATTERN = COLLECTION_NAME_RE  # the rule lives in facecli.ids

ImageKind = Literal["thumbnail", "full"]
UpsertAction = Literal["created", "updated", "unchanged"]


# --------------------------------------------------------------------------- errors


class EngineError(Exception):
    """Base of every error the engine raises on purpose (the CLI maps these to exit codes)."""


class InvalidCollectionName(EngineError, ValueError):
    """Name not matching ``[A-Za-z0-9_.-]+``."""


class InvalidInput(EngineError, ValueError):
    """A person, face or query the engine cannot store or search (bad id, embedding, metadata)."""


class CollectionNotFound(EngineError, LookupError):
    """The named collection does not exist."""


class CollectionExists(EngineError):
    """``create_collection`` on an existing name without ``exist_ok``."""


class PersonNotFound(EngineError, LookupError):
    """``delete_person`` on a person_id the collection does not hold."""


class EngineLocked(EngineError):
    """Another process (or Engine) holds the writer lock of this database."""


class EngineClosed(EngineError):
    """The Engine was used after ``close()``."""


class IncompatibleDatabase(EngineError):
    """The file is not a facecli database, or was written by a newer facecli."""


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class EngineFace:
    """One accepted face: its embedding plus what is kept for audit and display."""

    embedding: npt.NDArray[np.float32]
    image_sha256: str
    quality: Mapping[str, Any] = field(default_factory=dict)
    source_path: str = ""
    image: bytes | None = None
    image_kind: ImageKind | None = None


@dataclass(slots=True)
class EnginePerson:
    """A person to upsert; ``faces`` replaces whatever faces the person had."""

    person_id: str
    person_name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    gender: str | None = None
    date_of_birth: str | None = None
    nationality: str | None = None
    notes: str | None = None
    faces: list[EngineFace] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UpsertResult:
    person_id: str
    action: UpsertAction


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A matched person; ``score`` is the cosine similarity of its best face (``face_id``)."""

    person_id: str
    person_name: str
    score: float
    metadata: dict[str, str]
    face_id: int


@dataclass(frozen=True, slots=True)
class PersonInfo:
    """A stored person; timestamps are ISO-8601 UTC strings."""

    person_id: str
    person_name: str
    metadata: dict[str, str]
    gender: str | None
    date_of_birth: str | None
    nationality: str | None
    notes: str | None
    faces: int
    created: str
    modified: str


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    num_persons: int
    num_faces: int
    created: str
    modified: str


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What a loaded collection index costs, for ``serve`` warm-up logs and the benchmark."""

    collection: str
    faces: int
    dim: int
    nbytes: int
    generation: int
    source: Literal["memory", "cache", "rebuilt"]


# --------------------------------------------------------------------------- helpers


def _iso(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def _canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def _json_default(value: Any) -> Any:
    # Quality measurements often arrive as numpy scalars/arrays.
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def _unit_vector(embedding: Any, what: str) -> np.ndarray:
    """A finite 1-D float32 unit vector; already-unit input is kept bit-exact so re-upserting the
    same embedding compares equal and normalisation is idempotent."""
    try:
        v = np.asarray(embedding, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what}: embedding is not numeric ({exc})") from None
    if v.ndim != 1 or v.size == 0:
        raise InvalidInput(f"{what}: embedding must be a non-empty 1-D vector, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InvalidInput(f"{what}: embedding contains NaN or infinity")
    norm = float(np.linalg.norm(v.astype(np.float64)))
    if norm == 0.0:
        raise InvalidInput(f"{what}: embedding is all zeros")
    if abs(norm - 1.0) > 1e-4:
        v = v / np.float32(norm)
    return np.ascontiguousarray(v, dtype=store.EMBEDDING_DTYPE)


def _queries(embeddings: Any) -> tuple[np.ndarray, bool]:
    """[Q, D] float32 unit rows, and whether the caller passed a single [D] vector."""
    q = np.asarray(embeddings, dtype=np.float32)
    if q.ndim not in (1, 2) or q.shape[-1] == 0:
        raise InvalidInput(f"query must be [D] or [Q, D], got shape {q.shape}")
    single = q.ndim == 1
    q = q.reshape(-1, q.shape[-1])
    if not np.all(np.isfinite(q)):
        raise InvalidInput("query contains NaN or infinity")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise InvalidInput("query embedding is all zeros")
    return np.ascontiguousarray(q / norms, dtype=np.float32), single


def _owners(face_persons: list[str], matrix: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(distinct person ids, each face's index into them, the matrix) from one person id per face."""
    persons, owner = np.unique(np.asarray(face_persons, dtype=object), return_inverse=True)
    dim = matrix.shape[1] if matrix.ndim == 2 else 0
    return ([str(p) for p in persons], owner.astype(np.int64).reshape(-1),
            matrix if len(face_persons) else np.empty((0, dim), dtype=np.float32))


def _opt_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"{what} must be a string or None, got {type(value).__name__}")


def _check_paging(limit: int | None, offset: int) -> int:
    if limit is not None and limit < 0:
        raise InvalidInput("limit must be >= 0")
    if offset < 0:
        raise InvalidInput("offset must be >= 0")
    return -1 if limit is None else int(limit)  # SQLite: LIMIT -1 = no limit


@dataclass(frozen=True, slots=True)
class _PreparedFace:
    blob: bytes
    image_sha256: str
    quality_json: str
    source_path: str
    image: bytes | None
    image_kind: str | None

    @property
    def key(self) -> tuple[str, bytes, str]:
        """What makes two faces 'the same' for the unchanged check (not quality or path)."""
        return (self.image_sha256, self.blob, self.image_kind or "")


@dataclass(frozen=True, slots=True)
class _PreparedPerson:
    person_id: str
    person_name: str
    metadata: dict[str, str]
    metadata_json: str
    fields: tuple[str | None, str | None, str | None, str | None]
    faces: tuple[_PreparedFace, ...]

    @property
    def face_keys(self) -> list[tuple[str, bytes, str]]:
        return sorted(f.key for f in self.faces)


def _prepare(person: EnginePerson) -> _PreparedPerson:
    """Validate and serialise one person before the transaction starts, so bad input never
    leaves a half-written batch and the lock is held only for SQL."""
    pid = person.person_id
    if not isinstance(pid, str) or not pid.strip():
        raise InvalidInput(f"person_id must be a non-empty string, got {pid!r}")
    name = person.person_name if person.person_name is not None else ""
    if not isinstance(name, str):
        raise InvalidInput(f"person {pid!r}: person_name must be a string")
    meta = person.metadata or {}
    if not isinstance(meta, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise InvalidInput(f"person {pid!r}: metadata must map strings to strings")
    fields = (
        _opt_str(person.gender, f"person {pid!r}: gender"),
        _opt_str(person.date_of_birth, f"person {pid!r}: date_of_birth"),
        _opt_str(person.nationality, f"person {pid!r}: nationality"),
        _opt_str(person.notes, f"person {pid!r}: notes"),
    )
    faces = []
    for i, face in enumerate(person.faces or ()):
        what = f"person {pid!r} face {i}"
        if not isinstance(face.image_sha256, str) or not face.image_sha256:
            raise InvalidInput(f"{what}: image_sha256 must be a non-empty string")
        if face.image_kind not in (None, "thumbnail", "full"):
            raise InvalidInput(f"{what}: image_kind must be 'thumbnail', 'full' or None")
        if face.image is not None and not isinstance(face.image, bytes | bytearray | memoryview):
            raise InvalidInput(f"{what}: image must be bytes or None")
        image = bytes(face.image) if face.image is not None else None
        kind = (face.image_kind or "thumbnail") if image is not None else None
        faces.append(
            _PreparedFace(
                blob=_unit_vector(face.embedding, what).tobytes(),
                image_sha256=face.image_sha256,
                quality_json=_canonical_json(face.quality or {}),
                source_path=str(face.source_path or ""),
                image=image,
                image_kind=kind,
            )
        )
    return _PreparedPerson(pid, name, dict(meta), _canonical_json(meta), fields, tuple(faces))


@dataclass(slots=True)
class _Loaded:
    generation: int
    index: ExactIndex


# --------------------------------------------------------------------------- engine


class Engine:
    """Embedded face gallery over one SQLite file (``path``) plus derived caches beside it:
    ``<path>.index/`` (vector index) and ``<path>.lock`` (writer lock).

    Writers take the file lock per write transaction, or for a whole session with
    ``writer=True`` / :meth:`writer_lock`, so two writers never interleave batches. Readers never
    take it: WAL lets them search while a writer commits. One connection per Engine, guarded by a
    lock, so an Engine may be shared between threads.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        writer: bool = False,
        lock_timeout: float | None = 30.0,
    ) -> None:
        """Open or create the database. ``lock_timeout``: seconds a write waits for another
        writer before :class:`EngineLocked` (``None`` = forever, ``0`` = fail at once).
        ``writer=True`` takes the writer lock now and keeps it until :meth:`close`."""
        self.path = Path(path).expanduser().absolute()
        if self.path.is_dir():
            raise IncompatibleDatabase(f"{self.path} is a directory, not a database file")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.index_dir = self.path.with_name(self.path.name + ".index")
        self._lock_timeout = lock_timeout
        self._mu = threading.RLock()
        # thread_local=False: a writer session opened on one thread covers writes made by
        # worker threads of the same Engine (the RLock above serialises the SQL itself).
        self._flock = FileLock(str(self.lock_path), thread_local=False)
        self._cache = IndexCache(self.index_dir)
        self._indexes: dict[str, _Loaded] = {}
        try:
            self._conn: sqlite3.Connection | None = store.connect(self.path)
        except store.SchemaTooNew as exc:
            raise IncompatibleDatabase(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise IncompatibleDatabase(
                f"{self.path}: not a usable facecli database ({exc})"
            ) from None
        if writer:
            try:
                self._acquire(wait=True)
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Engine({str(self.path)!r})"

    def close(self) -> None:
        """Close the connection and drop any writer lock this Engine holds; idempotent."""
        with self._mu:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._indexes.clear()
            if self._flock.is_locked:
                self._flock.release(force=True)

    @property
    def closed(self) -> bool:
        return self._conn is None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EngineClosed(f"engine for {self.path} is closed")
        return self._conn

    # ------------------------------------------------------------------ locking

    def _acquire(self, wait: bool) -> None:
        timeout: float = (
            0 if not wait else (-1 if self._lock_timeout is None else self._lock_timeout)
        )
        try:
            self._flock.acquire(timeout=timeout)
        except Timeout:
            raise EngineLocked(
                f"another writer is using {self.path} (lock file {self.lock_path}); "
                "wait for it to finish or write to a different database"
            ) from None

    @contextmanager
    def writer_lock(self, wait: bool = True) -> Iterator[None]:
        """Hold the writer lock for a block of several writes (an enrollment run).

        ``wait=False`` raises :class:`EngineLocked` at once when another writer holds it;
        ``wait=True`` waits up to ``lock_timeout``. Reentrant.
        """
        self._acquire(wait)
        try:
            yield
        finally:
            self._flock.release()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """File lock, then the connection lock, then one ``BEGIN IMMEDIATE`` transaction."""
        self._db()
        self._acquire(wait=True)
        try:
            with self._mu:
                conn = self._db()
                with store.transaction(conn):
                    yield conn
        finally:
            self._flock.release()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot (plain ``BEGIN``) without the writer lock."""
        with self._mu:
            conn = self._db()
            with store.transaction(conn, immediate=False):
                yield conn

    # ------------------------------------------------------------------ collections

    @staticmethod
    def _check_name(name: str) -> None:
        why = validate_collection_name(name)
        if why:
            raise InvalidCollectionName(why)

    @staticmethod
    def _collection_row(conn: sqlite3.Connection, name: str) -> tuple[int, str, int]:
        Engine._check_name(name)
        row = conn.execute(
            "SELECT id, uid, generation FROM collections WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection {name!r} does not exist")
        return int(row[0]), str(row[1]), int(row[2])

    _COLLECTION_SELECT = """
        SELECT c.name,
               (SELECT COUNT(*) FROM persons p WHERE p.collection_id = c.id),
               (SELECT COUNT(*) FROM faces f JOIN persons p ON p.id = f.person_pk
                 WHERE p.collection_id = c.id),
               c.created, c.modified
          FROM collections c
    """

    @staticmethod
    def _collection_info(row: Sequence[Any]) -> CollectionInfo:
        return CollectionInfo(row[0], int(row[1]), int(row[2]), _iso(row[3]), _iso(row[4]))

    def create_collection(self, name: str, exist_ok: bool = False) -> CollectionInfo:
        """Create a collection; with ``exist_ok`` an existing one is returned untouched (and no
        writer lock is taken, so 'ensure it exists' works beside a running enrollment)."""
        self._check_name(name)
        if exist_ok:
            with self._read() as conn:
                row = conn.execute(
                    self._COLLECTION_SELECT + " WHERE c.name = ?", (name,)
                ).fetchone()
            if row is not None:
                return self._collection_info(row)
        now = time.time()
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone()
            if exists is None:
                conn.execute(
                    "INSERT INTO collections (name, uid, generation, created, modified) "
                    "VALUES (?, ?, 0, ?, ?)",
                    (name, uuid.uuid4().hex, now, now),
                )
            elif not exist_ok:
                raise CollectionExists(f"collection {name!r} already exists")
            row = conn.execute(self._COLLECTION_SELECT + " WHERE c.name = ?", (name,)).fetchone()
        return self._collection_info(row)

    def get_collection(self, name: str) -> CollectionInfo:
        """Counts and timestamps of one collection; raises :class:`CollectionNotFound`."""
        self._check_name(name)
        with self._read() as conn:
            row = conn.execute(self._COLLECTION_SELECT + " WHERE c.name = ?", (name,)).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection {name!r} does not exist")
        return self._collection_info(row)

    def delete_collection(self, name: str) -> None:
        """Delete a collection with its persons and faces (FK cascade) and its index cache."""
        with self._write() as conn:
            _, uid, _ = self._collection_row(conn, name)
            conn.execute("DELETE FROM collections WHERE name = ?", (name,))
            self._indexes.pop(uid, None)
        self._cache.remove(uid)

    def list_collections(
        self, limit: int | None = None, offset: int = 0
    ) -> tuple[int, list[CollectionInfo]]:
        """(total, page) ordered by name."""
        lim = _check_paging(limit, offset)
        with self._read() as conn:
            total = int(conn.execute("SELECT COUNT(*) FROM collections").fetchone()[0])
            rows = conn.execute(
                self._COLLECTION_SELECT + " ORDER BY c.name LIMIT ? OFFSET ?", (lim, offset)
            ).fetchall()
        return total, [self._collection_info(r) for r in rows]

    # ------------------------------------------------------------------ persons

    def upsert_persons(
        self, collection: str, persons: Sequence[EnginePerson]
    ) -> list[UpsertResult]:
        """Create or update persons in ONE transaction (whole batch or nothing after a crash).

        An existing person_id gets the new name/metadata/fields and its faces replaced (created
        kept, modified bumped). A person whose name, metadata, fields and faces (image_sha256,
        embedding, image_kind; compared as a set) equal what is stored is left untouched:
        ``unchanged``. Embeddings are stored L2-normalised float32. Results follow input order; a
        person_id repeated in one batch is applied in order.
        """
        prepared = [_prepare(p) for p in persons]
        dims = {len(f.blob) for p in prepared for f in p.faces}
        if len(dims) > 1:
            raise InvalidInput("embeddings in one batch have different dimensions")
        results: list[UpsertResult] = []
        if not prepared:
            with self._read() as conn:
                self._collection_row(conn, collection)
            return results
        now = time.time()
        with self._write() as conn:
            cid, _, _ = self._collection_row(conn, collection)
            if dims:
                self._check_dim(conn, cid, dims.pop())
            changed = faces_changed = False
            for p in prepared:
                row = conn.execute(
                    "SELECT id, person_name, metadata, gender, date_of_birth, nationality, notes, "
                    "modified FROM persons WHERE collection_id = ? AND person_id = ?",
                    (cid, p.person_id),
                ).fetchone()
                if row is None:
                    pk = conn.execute(
                        "INSERT INTO persons (collection_id, person_id, person_name, metadata, "
                        "gender, date_of_birth, nationality, notes, created, modified) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (cid, p.person_id, p.person_name, p.metadata_json, *p.fields, now, now),
                    ).lastrowid
                    assert pk is not None
                    self._insert_faces(conn, pk, p.faces, now)
                    results.append(UpsertResult(p.person_id, "created"))
                    changed = True
                    faces_changed |= bool(p.faces)
                    continue
                pk = int(row[0])
                try:
                    stored_meta = json.loads(row[2])
                except ValueError:
                    stored_meta = None
                same_fields = (
                    row[1] == p.person_name
                    and stored_meta == p.metadata
                    and tuple(row[3:7]) == p.fields
                )
                stored_faces = sorted(
                    (sha, bytes(blob), kind or "")
                    for sha, blob, kind in conn.execute(
                        "SELECT image_sha256, embedding, image_kind FROM faces WHERE person_pk = ?",
                        (pk,),
                    )
                )
                same_faces = stored_faces == p.face_keys
                if same_fields and same_faces:
                    results.append(UpsertResult(p.person_id, "unchanged"))
                    continue
                # Strictly later than before, even on a coarse clock, so 'modified' always moves.
                modified = max(now, float(row[7]) + 1e-6)
                conn.execute(
                    "UPDATE persons SET person_name = ?, metadata = ?, gender = ?, "
                    "date_of_birth = ?, nationality = ?, notes = ?, modified = ? WHERE id = ?",
                    (p.person_name, p.metadata_json, *p.fields, modified, pk),
                )
                if not same_faces:
                    conn.execute("DELETE FROM faces WHERE person_pk = ?", (pk,))
                    self._insert_faces(conn, pk, p.faces, now)
                    faces_changed = True
                results.append(UpsertResult(p.person_id, "updated"))
                changed = True
            if changed:
                self._touch(conn, cid, now, faces_changed)
        return results

    @staticmethod
    def _insert_faces(
        conn: sqlite3.Connection, pk: int, faces: Sequence[_PreparedFace], now: float
    ) -> None:
        conn.executemany(
            "INSERT INTO faces (person_pk, embedding, image_sha256, quality, source_path, image, "
            "image_kind, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    pk,
                    f.blob,
                    f.image_sha256,
                    f.quality_json,
                    f.source_path,
                    f.image,
                    f.image_kind,
                    now,
                )
                for f in faces
            ],
        )

    @staticmethod
    def _touch(conn: sqlite3.Connection, cid: int, now: float, faces_changed: bool) -> None:
        """Bump modified and, when faces changed, the generation that invalidates index caches —
        in the caller's transaction, so cache staleness and data never disagree."""
        conn.execute(
            "UPDATE collections SET modified = ?, generation = generation + ? WHERE id = ?",
            (now, 1 if faces_changed else 0, cid),
        )

    @staticmethod
    def _check_dim(conn: sqlite3.Connection, cid: int, nbytes: int) -> None:
        row = conn.execute(
            "SELECT length(f.embedding) FROM faces f JOIN persons p ON p.id = f.person_pk "
            "WHERE p.collection_id = ? LIMIT 1",
            (cid,),
        ).fetchone()
        if row is not None and int(row[0]) != nbytes:
            size = store.EMBEDDING_DTYPE.itemsize
            raise InvalidInput(
                f"embedding dimension {nbytes // size} differs from the collection's "
                f"{int(row[0]) // size} (a different recognition model?)"
            )

    _PERSON_SELECT = """
        SELECT p.person_id, p.person_name, p.metadata, p.gender, p.date_of_birth,
               p.nationality, p.notes,
               (SELECT COUNT(*) FROM faces f WHERE f.person_pk = p.id),
               p.created, p.modified
          FROM persons p
    """

    @staticmethod
    def _person_info(row: Sequence[Any]) -> PersonInfo:
        return PersonInfo(
            person_id=row[0],
            person_name=row[1],
            metadata=json.loads(row[2]),
            gender=row[3],
            date_of_birth=row[4],
            nationality=row[5],
            notes=row[6],
            faces=int(row[7]),
            created=_iso(row[8]),
            modified=_iso(row[9]),
        )

    def list_persons(
        self, collection: str, limit: int | None = None, offset: int = 0
    ) -> tuple[int, list[PersonInfo]]:
        """(total, page) ordered by person_id."""
        lim = _check_paging(limit, offset)
        with self._read() as conn:
            cid, _, _ = self._collection_row(conn, collection)
            total = int(
                conn.execute(
                    "SELECT COUNT(*) FROM persons WHERE collection_id = ?", (cid,)
                ).fetchone()[0]
            )
            rows = conn.execute(
                self._PERSON_SELECT
                + " WHERE p.collection_id = ? ORDER BY p.person_id LIMIT ? OFFSET ?",
                (cid, lim, offset),
            ).fetchall()
        return total, [self._person_info(r) for r in rows]

    def get_person(self, collection: str, person_id: str) -> PersonInfo | None:
        """The person, or None when the collection does not hold it (a lookup, not an error);
        a missing collection still raises :class:`CollectionNotFound`."""
        with self._read() as conn:
            cid, _, _ = self._collection_row(conn, collection)
            row = conn.execute(
                self._PERSON_SELECT + " WHERE p.collection_id = ? AND p.person_id = ?",
                (cid, person_id),
            ).fetchone()
        return None if row is None else self._person_info(row)

    def existing_person_ids(self, collection: str, person_ids: Sequence[str]) -> set[str]:
        """Which of ``person_ids`` the collection holds: one query per 500 ids (a resumed run
        confirms thousands of "already enrolled" persons this way). A missing collection raises
        :class:`CollectionNotFound`."""
        ids = list(dict.fromkeys(person_ids))
        found: set[str] = set()
        with self._read() as conn:
            cid, _, _ = self._collection_row(conn, collection)
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                found.update(r[0] for r in conn.execute(
                    "SELECT person_id FROM persons WHERE collection_id = ? AND person_id IN ("
                    + ",".join("?" * len(chunk)) + ")", (cid, *chunk)))
        return found

    def delete_person(self, collection: str, person_id: str) -> None:
        """Delete a person and its faces; raises :class:`PersonNotFound` (maps to a 404)."""
        now = time.time()
        with self._write() as conn:
            cid, _, _ = self._collection_row(conn, collection)
            cur = conn.execute(
                "DELETE FROM persons WHERE collection_id = ? AND person_id = ?", (cid, person_id)
            )
            if cur.rowcount == 0:
                raise PersonNotFound(f"person {person_id!r} not found in collection {collection!r}")
            self._touch(conn, cid, now, faces_changed=True)

    def counts(self, collection: str) -> tuple[int, int]:
        """(persons, faces) in the collection."""
        info = self.get_collection(collection)
        return info.num_persons, info.num_faces

    def face_embeddings(self, collection: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every face of the collection, in one snapshot: (person ids, each face's index into
        them (int64[N]), embeddings float32[N, D]). For measuring the gallery itself
        (`facecli collections stats`); the matrix is the search index's own (read-only)."""
        with self._read() as conn:
            cid, _, index, _ = self._index(conn, collection)
            owner_of = dict(conn.execute(
                "SELECT f.id, p.person_id FROM persons p JOIN faces f ON f.person_pk = p.id "
                "WHERE p.collection_id = ?", (cid,)).fetchall())
        return _owners([owner_of[int(f)] for f in index.ids.tolist()], index.matrix)

    # ------------------------------------------------------------------ search

    def _index(
        self, conn: sqlite3.Connection, collection: str
    ) -> tuple[int, int, ExactIndex, Literal["memory", "cache", "rebuilt"]]:
        """(collection rowid, generation, index, where it came from) at the snapshot's generation:
        memory, else the cache files, else rebuilt from the faces table (and the cache rewritten).
        Call inside ``_read`` so the generation and the rows belong to one snapshot."""
        cid, uid, generation = self._collection_row(conn, collection)
        loaded = self._indexes.get(uid)
        if loaded is not None and loaded.generation == generation:
            return cid, generation, loaded.index, "memory"
        index = ExactIndex()
        cached = self._cache.load(uid, generation)
        source: Literal["memory", "cache", "rebuilt"]
        if cached is not None:
            index.build(cached.ids, cached.matrix)
            source = "cache"
        else:
            ids, matrix = store.load_embeddings(conn, cid)
            self._cache.save(uid, generation, ids, matrix)
            index.build(ids, matrix)
            source = "rebuilt"
        self._indexes[uid] = _Loaded(generation, index)
        return cid, generation, index, source

    def load_index(self, collection: str) -> IndexStats:
        """Load (or rebuild) a collection's index now rather than on its first search, e.g. when
        a server starts."""
        with self._read() as conn:
            _, generation, index, source = self._index(conn, collection)
        return IndexStats(collection, len(index), index.dim, index.nbytes, generation, source)

    def search(
        self,
        collection: str,
        embeddings: npt.ArrayLike,
        k: int = 5,
        min_score: float = 0.0,
    ) -> list[list[SearchHit]]:
        """Top-``k`` persons per query (best face per person), score >= ``min_score``, best first.

        ``embeddings`` is one [D] vector or [Q, D]; the result always has one list per query.
        Queries are L2-normalised, so scores are cosine similarities. Runs in one read snapshot,
        so the index and the person rows it resolves to always agree.
        """
        q, _ = _queries(embeddings)
        k = int(k)
        if k < 0:
            raise InvalidInput("k must be >= 0")
        if math.isnan(min_score):
            raise InvalidInput("min_score must be a number")
        with self._read() as conn:
            cid, _, index, _ = self._index(conn, collection)
            n = len(index)
            if n == 0 or k == 0:
                return [[] for _ in range(len(q))]
            if q.shape[1] != index.dim:
                raise InvalidInput(
                    f"query dimension {q.shape[1]} != collection dimension {index.dim}"
                )
            # Faces, not persons, are indexed: over-fetch so k distinct persons usually fit.
            want = min(n, max(4 * k, k + 16))
            scores, ids = index.search(q, want)
            people: dict[int, tuple[int, str, str, str]] = {}
            out = []
            for qi in range(len(q)):
                s, f = scores[qi], ids[qi]
                while True:
                    hits = self._dedupe(conn, cid, s, f, k, min_score, people)
                    exhausted = len(s) >= n or (len(s) > 0 and s[-1] < min_score)
                    if len(hits) >= k or exhausted:
                        break
                    s, f = index.search(q[qi], min(n, len(s) * 4))
                out.append(hits)
        return out

    def _dedupe(
        self,
        conn: sqlite3.Connection,
        cid: int,
        scores: np.ndarray,
        face_ids: np.ndarray,
        k: int,
        min_score: float,
        people: dict[int, tuple[int, str, str, str]],
    ) -> list[SearchHit]:
        """First (= best) face of each person among the ranked candidates, up to k."""
        keep = scores >= min_score
        scores, face_ids = scores[keep], face_ids[keep]
        missing = [int(f) for f in face_ids if int(f) not in people]
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            marks = ",".join("?" * len(chunk))
            # CROSS JOIN pins faces as the outer loop (rowid lookups); with a plain JOIN the
            # planner may walk every person of the collection instead (~50 ms at 10k faces).
            sql = (
                "SELECT f.id, p.id, p.person_id, p.person_name, p.metadata FROM faces f "
                "CROSS JOIN persons p ON p.id = f.person_pk "
                f"WHERE p.collection_id = ? AND f.id IN ({marks})"
            )
            for fid, pk, pid, name, meta in conn.execute(sql, (cid, *chunk)):
                people[int(fid)] = (int(pk), pid, name, meta)
        seen: set[int] = set()
        hits: list[SearchHit] = []
        for score, fid in zip(scores.tolist(), face_ids.tolist(), strict=True):
            person = people.get(fid)
            if person is None or person[0] in seen:
                continue
            seen.add(person[0])
            hits.append(
                SearchHit(
                    person_id=person[1],
                    person_name=person[2],
                    score=min(1.0, max(-1.0, score)),
                    metadata=json.loads(person[3]),
                    face_id=fid,
                )
            )
            if len(hits) >= k:
                break
        return hits
