"""The engine on PostgreSQL + pgvector: the same API as the SQLite :class:`~facecli.engine.Engine`,
for galleries that outgrow one machine or that several writers share.

Selected by a ``postgresql://USER@HOST:PORT/DB`` URL (``--to``, ``--db`` or ``FACECLI_DB``).
Credentials come from the URL, ``PGPASSWORD`` or a pgpass file (libpq reads both); the password is
never printed: :func:`mask_url` is what reports and error messages show.

Layout (schema ``facecli``, or ``?schema=NAME`` in the URL; created and migrated here, versioned in
``<schema>.meta``):

- ``collections``: name, dimension (set by the first face), generation, and person/face counters
  kept exact in the writers' transactions, so counts never scan.
- ``persons`` and ``faces``: LIST-partitioned by collection, one partition pair per collection
  (``persons_c<id>``, ``faces_c<id>``), created when the collection is and dropped with it (an
  instant delete at any size). Embeddings are ``vector`` columns; each faces partition gets an
  HNSW index (cosine ops) on ``embedding::vector(D)`` once the collection's dimension D is known.

Writes: one transaction per batch (whole batch or nothing), row-level locks taken in person_id
order and ``INSERT ... ON CONFLICT``, so concurrent writers (several ``enroll`` processes, several
``facecli serve`` instances) need no file lock; a deadlock or serialization failure retries the
batch. Faces are bulk-loaded with binary ``COPY``.

Search: top-k persons by their best face. Small collections (``exact_max`` faces or fewer, or while
the index is deferred) are scanned exactly, so they give the SQLite engine's answers; larger ones
go through HNSW with ``ef_search`` (iterative scans on pgvector >= 0.8 when widening for
persons with many faces).

psycopg 3 (+ psycopg_pool, pgvector) is imported only when a PgEngine is opened, so this module
is importable without the ``postgres`` extra.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace, TracebackType
from typing import Any, Self, TypeVar

import numpy as np
import numpy.typing as npt

from . import store
from .engine import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    Engine,
    EngineClosed,
    EngineError,
    EngineFace,
    EnginePerson,
    IncompatibleDatabase,
    IndexStats,
    InvalidInput,
    PersonInfo,
    PersonNotFound,
    SearchHit,
    UpsertResult,
    _check_paging,
    _owners,
    _prepare,
    _PreparedFace,
    _PreparedPerson,
    _queries,
)

__all__ = [
    "PgEngine",
    "DatabaseError",
    "DatabaseUnavailable",
    "SCHEMA_VERSION",
    "CopyResult",
    "copy_collection",
    "export_persons",
    "is_postgres_url",
    "mask_url",
    "open_engine",
]

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "facecli"
#: HNSW candidate list per search (``?ef_search=`` in the URL or the ``ef_search`` argument).
DEFAULT_EF_SEARCH = 100
#: HNSW graph of new indexes (``?m=`` / ``?ef_construction=``): links per node and build-time
#: candidate list. Face embeddings are crowded (different people at cosine 0.84 +- 0.035), where
#: pgvector's defaults (16/64) lose the true nearest face often: on face-like vectors at ef_search
#: 100, recall@1 0.94 -> 0.995 at 100k and 0.83 -> 0.96 at 1M for a ~4x slower build and ~3x
#: slower indexed upserts (bench/search_scale.py, README "Performance").
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 128
#: PostgreSQL memory for an index (re)build (``?maintenance_work_mem=``): a build whose graph
#: outgrows it goes on several times slower (a 1M-face, m=16 graph outgrows 1GB).
DEFAULT_MAINTENANCE_WORK_MEM = "1GB"
_MEM_RE = re.compile(r"\d{1,7}\s*[kMG]B")
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Key of the advisory lock that serialises schema migrations between concurrent openers.
_MIGRATION_LOCK = 0x0FACEC11
#: HNSW takes at most 2000 dimensions; wider collections are searched exactly.
HNSW_MAX_DIM = 2000
_RETRIES = 6


class DatabaseError(EngineError):
    """PostgreSQL refused or failed an operation (message carries no credentials)."""


class DatabaseUnavailable(DatabaseError):
    """The server could not be reached, or refused the connection (auth, database missing)."""


# --------------------------------------------------------------------------- URLs


def is_postgres_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(SCHEMES)


def mask_url(url: str) -> str:
    """The URL as it may be shown: the password (in the userinfo or a ``password=`` query
    parameter) replaced by ``***``. Errs on the side of masking: everything between the first
    ':' of the userinfo and the last '@' before the query goes."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    main, qsep, query = rest.partition("?")
    at = main.rfind("@")
    if at >= 0:
        user, colon, password = main[:at].partition(":")
        if colon and password:
            main = f"{user}:***{main[at:]}"
    if qsep:
        parts = []
        for item in query.split("&"):
            key, eq, _ = item.partition("=")
            parts.append(f"{key}=***" if eq and "password" in key.lower() else item)
        query = "&".join(parts)
    return f"{scheme}{sep}{main}{qsep}{query}"


@dataclass(frozen=True)
class UrlOptions:
    """facecli's own query parameters of a postgresql:// URL (None: not given)."""

    schema: str = DEFAULT_SCHEMA
    ef_search: int | None = None
    m: int | None = None
    ef_construction: int | None = None
    maintenance_work_mem: str | None = None


#: name -> (lowest, highest) of facecli's whole-number URL parameters (pgvector's own limits).
_INT_OPTIONS = {"ef_search": (1, 1000), "m": (2, 100), "ef_construction": (4, 1000)}


def _split_url(url: str) -> tuple[str, UrlOptions]:
    """(the URL libpq is given, facecli's options): facecli's own parameters (``schema``,
    ``ef_search``, ``m``, ``ef_construction``, ``maintenance_work_mem``) are taken out, since
    libpq refuses parameters it does not know."""
    main, qsep, query = url.partition("?")
    found: dict[str, Any] = {}
    keep = []
    for item in query.split("&") if qsep else []:
        key, _, value = item.partition("=")
        value = urllib.parse.unquote(value)
        if key == "schema":
            if not _SCHEMA_RE.fullmatch(value):
                raise InvalidInput(f"schema must match [a-z_][a-z0-9_]*, got {value!r}")
            found[key] = value
        elif key in _INT_OPTIONS:
            lo, hi = _INT_OPTIONS[key]
            if not value.isdigit() or not lo <= int(value) <= hi:
                raise InvalidInput(f"{key} must be a whole number from {lo} to {hi}, got {value!r}")
            found[key] = int(value)
        elif key == "maintenance_work_mem":
            if not _MEM_RE.fullmatch(value):
                raise InvalidInput(f"maintenance_work_mem must look like 512MB or 4GB, got {value!r}")
            found[key] = value
        elif item:
            keep.append(item)
    return main + ("?" + "&".join(keep) if keep else ""), UrlOptions(**found)


def _secrets(url: str) -> list[str]:
    """Password strings that must never appear in a message (from the URL and PGPASSWORD)."""
    out = []
    main, _, query = url.partition("?")
    at = main.rfind("@")
    if at >= 0:
        _, colon, password = main[:at].partition("://")[2].partition(":")
        if colon and password:
            out += [password, urllib.parse.unquote(password)]
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if eq and "password" in key.lower() and value:
            out += [value, urllib.parse.unquote(value)]
    if os.environ.get("PGPASSWORD"):
        out.append(os.environ["PGPASSWORD"])
    return sorted({s for s in out if s}, key=len, reverse=True)


# --------------------------------------------------------------------------- driver (lazy)

_driver: SimpleNamespace | None = None


def _load_driver() -> SimpleNamespace:
    """psycopg, psycopg_pool and pgvector, imported on first use (the ``postgres`` extra)."""
    global _driver
    if _driver is None:
        try:
            import psycopg
            import psycopg_pool
            from pgvector.psycopg import register_vector
        except ImportError as exc:
            raise DatabaseError(
                f"PostgreSQL targets need the postgres extra ({exc.name} is not installed): "
                "pip install 'facecli[postgres]'"
            ) from None
        _driver = SimpleNamespace(
            psycopg=psycopg, errors=psycopg.errors, pool=psycopg_pool, register_vector=register_vector
        )
    return _driver


F = TypeVar("F", bound=Callable[..., Any])


def _db_errors(fn: F) -> F:
    """Turn driver exceptions into :class:`DatabaseError` (credentials scrubbed); the engine's
    own errors pass through."""

    @functools.wraps(fn)
    def wrapper(self: PgEngine, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except EngineError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    return wrapper  # type: ignore[return-value]


def _reads(fn: F) -> F:
    """A read: like :func:`_db_errors`, and retried once on a connection error, since pooled
    connections are not pinged before use (a server restart costs no failed search)."""

    @functools.wraps(fn)
    def retry_once(self: PgEngine, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except _load_driver().psycopg.OperationalError:
            return fn(self, *args, **kwargs)

    return _db_errors(retry_once)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- schema


def _m001_initial(cur: Any, s: str) -> None:
    """Collections plus persons and faces partitioned by collection (see the module doc)."""
    statements = [
        f"""CREATE TABLE {s}.collections (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name          text COLLATE "C" NOT NULL UNIQUE,
            uid           text NOT NULL UNIQUE,
            dim           integer CHECK (dim > 0),
            generation    bigint NOT NULL DEFAULT 0,
            num_persons   bigint NOT NULL DEFAULT 0,
            num_faces     bigint NOT NULL DEFAULT 0,
            index_deferred boolean NOT NULL DEFAULT false,
            created       timestamptz NOT NULL DEFAULT now(),
            modified      timestamptz NOT NULL DEFAULT now()
        )""",
        f"CREATE SEQUENCE {s}.persons_id_seq AS bigint",
        f"""CREATE TABLE {s}.persons (
            collection_id bigint NOT NULL,
            id            bigint NOT NULL DEFAULT nextval('{s}.persons_id_seq'),
            person_id     text COLLATE "C" NOT NULL,
            person_name   text NOT NULL DEFAULT '',
            metadata      jsonb NOT NULL DEFAULT '{{}}',
            gender        text,
            date_of_birth text,
            nationality   text,
            notes         text,
            num_faces     integer NOT NULL DEFAULT 0,
            created       timestamptz NOT NULL DEFAULT now(),
            modified      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (collection_id, id),
            UNIQUE (collection_id, person_id)
        ) PARTITION BY LIST (collection_id)""",
        f"CREATE SEQUENCE {s}.faces_id_seq AS bigint",
        f"""CREATE TABLE {s}.faces (
            collection_id bigint NOT NULL,
            id            bigint NOT NULL DEFAULT nextval('{s}.faces_id_seq'),
            person_pk     bigint NOT NULL,
            embedding     vector NOT NULL,
            image_sha256  text NOT NULL,
            quality       jsonb NOT NULL DEFAULT '{{}}',
            source_path   text NOT NULL DEFAULT '',
            image         bytea,
            image_kind    text CHECK (image_kind IN ('thumbnail', 'full')),
            created       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (collection_id, id)
        ) PARTITION BY LIST (collection_id)""",
        f"CREATE INDEX faces_person ON {s}.faces (collection_id, person_pk)",
        f"CREATE INDEX faces_image_sha256 ON {s}.faces (collection_id, image_sha256)",
    ]
    for sql in statements:
        cur.execute(sql)


#: Ordered; position i upgrades schema version i to i+1. Append only, never edit a shipped one.
MIGRATIONS: tuple[Callable[[Any, str], None], ...] = (_m001_initial,)
SCHEMA_VERSION = len(MIGRATIONS)


# --------------------------------------------------------------------------- helpers


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _vec_bytes(value: Any) -> bytes:
    """A loaded pgvector value as the engine's little-endian float32 bytes."""
    arr = value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
    return np.ascontiguousarray(arr, dtype=store.EMBEDDING_DTYPE).tobytes()


@dataclass(slots=True)
class _State:
    """One person while a batch is applied: what is stored (or will be) and what to write."""

    pk: int
    name: str
    metadata: dict[str, Any]
    fields: tuple[str | None, ...]
    face_keys: list[tuple[str, bytes, str]]
    existed: bool  # stored before this batch
    seen: bool = False
    changed: bool = False  # row must be UPDATEd
    faces: tuple[_PreparedFace, ...] | None = None  # faces to write (replacing the stored ones)


@dataclass(frozen=True, slots=True)
class _Coll:
    id: int
    dim: int | None
    num_faces: int
    has_index: bool
    deferred: bool


# --------------------------------------------------------------------------- engine


class PgEngine:
    """Face gallery in PostgreSQL + pgvector; mirrors :class:`facecli.engine.Engine`.

    Thread-safe: each call borrows a connection from a small pool (``pool_size``). No writer lock
    is needed: ``writer``/``lock_timeout`` and :meth:`writer_lock` exist only for API parity.

    ``exact_max``: collections with at most this many faces are searched exactly (a sequential
    scan there costs about as much as an index probe); ``ef_search``: HNSW candidate list size
    (default: ``?ef_search=`` in the URL, else 100), raised to the number of candidates a query
    needs; ``m``/``ef_construction``: HNSW graph of indexes built from now on, and
    ``maintenance_work_mem``: memory for such a build (defaults: the URL's ``?m=``,
    ``?ef_construction=``, ``?maintenance_work_mem=``, else 32, 128, 1GB).
    """

    def __init__(
        self,
        url: str,
        *,
        writer: bool = False,
        lock_timeout: float | None = None,
        pool_size: int = 4,
        exact_max: int = 5_000,
        ef_search: int | None = None,
        m: int | None = None,
        ef_construction: int | None = None,
        maintenance_work_mem: str | None = None,
        connect_timeout: float = 15.0,
    ) -> None:
        if not is_postgres_url(url):
            raise InvalidInput("a PostgreSQL engine needs a postgresql:// URL")
        del writer, lock_timeout  # row-level locking: no file lock to take
        self._url = url  # with its password: never shown (see target)
        self.target = mask_url(url)
        self._conninfo, opts = _split_url(url)
        self.schema = opts.schema
        self._secrets = _secrets(url)
        self.exact_max = int(exact_max)
        self.ef_search = max(1, min(1000, int(ef_search or opts.ef_search or DEFAULT_EF_SEARCH)))
        self.m = int(m or opts.m or DEFAULT_M)
        self.ef_construction = int(ef_construction or opts.ef_construction or DEFAULT_EF_CONSTRUCTION)
        self.maintenance_work_mem = maintenance_work_mem or opts.maintenance_work_mem or DEFAULT_MAINTENANCE_WORK_MEM
        self._pool: Any = None
        self._mu = threading.Lock()
        self._meta: dict[str, tuple[float, _Coll]] = {}
        self.pgvector_version = (0, 0, 0)
        self.vector_schema = "public"
        drv = _load_driver()
        try:
            with drv.psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            ) as conn:
                self._migrate(conn)
            self._pool = drv.pool.ConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=max(1, int(pool_size)),
                kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
                configure=self._configure,
                timeout=max(1.0, connect_timeout * 2),
                name="facecli",
                open=True,
            )
        except EngineError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise self._translate(exc) from None

    # ------------------------------------------------------------------ plumbing

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text.replace(self._url, self.target)

    def _translate(self, exc: Exception) -> EngineError:
        drv = _load_driver()
        msg = self._scrub(str(exc).strip() or type(exc).__name__)
        if isinstance(exc, drv.errors.InsufficientPrivilege):
            return DatabaseError(f"{self.target}: permission denied ({msg})")
        if isinstance(exc, drv.psycopg.OperationalError | drv.pool.PoolTimeout):
            return DatabaseUnavailable(f"cannot use {self.target}: {msg}")
        return DatabaseError(f"{self.target}: {msg}")

    def _migrate(self, conn: Any) -> None:
        """Create or upgrade the schema (and the vector extension) under an advisory lock, so
        concurrent openers never race; a current schema is only read (works on a replica)."""
        s = self.schema
        version = self._schema_version(conn)
        if version is None or version < SCHEMA_VERSION:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                self._ensure_extension(conn)
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)"
                )
                version = self._schema_version(conn) or 0
                self._check_version(version)
                self._set_path(conn)
                with conn.cursor() as cur:
                    for step in MIGRATIONS[version:]:
                        step(cur, s)
                conn.execute(
                    f"INSERT INTO {s}.meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (str(SCHEMA_VERSION),),
                )
        self._check_version(version)
        row = conn.execute(
            "SELECT n.nspname, e.extversion FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        ).fetchone()
        if row is None:
            raise IncompatibleDatabase(f"{self.target}: the pgvector extension is not installed")
        self.vector_schema = row[0]
        self.pgvector_version = tuple(int(x) for x in re.findall(r"\d+", row[1])[:3])

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise IncompatibleDatabase(
                f"{self.target}: facecli schema version {version} is newer than this facecli "
                f"supports ({SCHEMA_VERSION}); upgrade facecli"
            )

    def _schema_version(self, conn: Any) -> int | None:
        if conn.execute("SELECT to_regclass(%s)", (f"{self.schema}.meta",)).fetchone()[0] is None:
            return None
        row = conn.execute(
            f"SELECT value FROM {self.schema}.meta WHERE key = 'schema_version'"
        ).fetchone()
        return int(row[0]) if row else 0

    def _ensure_extension(self, conn: Any) -> None:
        drv = _load_driver()
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        if row is None:
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except drv.errors.InsufficientPrivilege:
                raise IncompatibleDatabase(
                    f"{self.target}: the pgvector extension is not installed in this database and "
                    "this role may not install it; ask an administrator to run CREATE EXTENSION vector"
                ) from None
            except (drv.errors.UndefinedFile, drv.errors.FeatureNotSupported) as exc:
                raise IncompatibleDatabase(
                    f"{self.target}: the server has no pgvector extension ({self._scrub(str(exc))}); "
                    "install pgvector >= 0.5 on it"
                ) from None
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
        if tuple(int(x) for x in re.findall(r"\d+", row[0])[:2]) < (0, 5):
            raise IncompatibleDatabase(
                f"{self.target}: pgvector {row[0]} has no HNSW index; ALTER EXTENSION vector UPDATE "
                "(>= 0.5 needed)"
            )

    def _set_path(self, conn: Any) -> None:
        vschema = conn.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'vector'"
        ).fetchone()
        path = [self.schema] + ([vschema[0]] if vschema and vschema[0] != self.schema else [])
        conn.execute(
            "SELECT set_config('search_path', %s, false)",
            (", ".join(f'"{p}"' for p in path),),
        )

    def _configure(self, conn: Any) -> None:
        """Every pooled connection: our schema and the extension's on the search path, and the
        vector type adapted to numpy (binary)."""
        self._set_path(conn)
        _load_driver().register_vector(conn)
        if self.pgvector_version >= (0, 8, 0):
            # widening past ef_search (persons with many faces) keeps the index, in exact order
            conn.execute("SET hnsw.iterative_scan = strict_order")

    @contextmanager
    def _tx(self, *, read_only: bool = False) -> Iterator[Any]:
        """One transaction on a pooled connection (READ COMMITTED for writes; a REPEATABLE READ
        read-only snapshot for reads made of several statements)."""
        pool = self._pool
        if pool is None:
            raise EngineClosed(f"engine for {self.target} is closed")
        with pool.connection() as conn, conn.transaction():
            if read_only:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def _retrying(self, fn: Callable[[Any], Any], *, idempotent: bool = False) -> Any:
        """Run ``fn(conn)`` in a write transaction; on a deadlock or serialization failure the
        whole transaction is retried (it was rolled back, so nothing half-done remains).
        ``idempotent`` (upserts): a dropped connection is retried once as well, since applying
        the batch again cannot change the result even if its commit had gone through."""
        drv = _load_driver()
        dropped = 0
        for attempt in range(_RETRIES):
            try:
                with self._tx() as conn:
                    return fn(conn)
            except (drv.errors.DeadlockDetected, drv.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(random.uniform(0, 0.02 * 2**attempt))
            except drv.psycopg.OperationalError:
                dropped += 1
                if not idempotent or dropped > 1:
                    raise
        raise AssertionError("unreachable")

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
        return f"PgEngine({self.target!r})"

    def close(self) -> None:
        """Close the pool; idempotent."""
        with self._mu:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    @property
    def closed(self) -> bool:
        return self._pool is None

    @contextmanager
    def writer_lock(self, wait: bool = True) -> Iterator[None]:
        """No-op: PostgreSQL's row locks make concurrent writers safe (API parity with Engine)."""
        if self._pool is None:
            raise EngineClosed(f"engine for {self.target} is closed")
        yield

    # ------------------------------------------------------------------ collections

    @staticmethod
    def _check_name(name: str) -> None:
        Engine._check_name(name)

    def _coll(self, conn: Any, name: str, lock: str = "") -> _Coll:
        self._check_name(name)
        row = conn.execute(
            "SELECT id, dim, num_faces, to_regclass(format('%%I.faces_c%%s_hnsw', %s::text, id)) "
            f"IS NOT NULL, index_deferred FROM collections WHERE name = %s {lock}",
            (self.schema, name),
        ).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection {name!r} does not exist")
        return _Coll(int(row[0]), row[1], int(row[2]), bool(row[3]), bool(row[4]))

    _COLLECTION_SELECT = (
        "SELECT name, num_persons, num_faces, created, modified FROM collections"
    )

    @staticmethod
    def _collection_info(row: Sequence[Any]) -> CollectionInfo:
        return CollectionInfo(row[0], int(row[1]), int(row[2]), _iso(row[3]), _iso(row[4]))

    @_db_errors
    def create_collection(self, name: str, exist_ok: bool = False) -> CollectionInfo:
        """Create a collection (and its partitions); with ``exist_ok`` an existing one is returned."""
        self._check_name(name)

        def create(conn: Any) -> CollectionInfo:
            row = conn.execute(
                "INSERT INTO collections (name, uid) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, uuid.uuid4().hex),
            ).fetchone()
            if row is None:
                if not exist_ok:
                    raise CollectionExists(f"collection {name!r} already exists")
            else:
                cid = int(row[0])
                conn.execute("SET LOCAL lock_timeout = '30s'")
                # CREATE + ATTACH takes only SHARE UPDATE EXCLUSIVE on the parents, so writers
                # and searches of other collections carry on meanwhile.
                for table in ("persons", "faces"):
                    conn.execute(
                        f"CREATE TABLE {table}_c{cid} (LIKE {table} INCLUDING DEFAULTS "
                        "INCLUDING CONSTRAINTS)"
                    )
                    conn.execute(
                        f"ALTER TABLE {table} ATTACH PARTITION {table}_c{cid} FOR VALUES IN ({cid})"
                    )
            info = conn.execute(self._COLLECTION_SELECT + " WHERE name = %s", (name,)).fetchone()
            return self._collection_info(info)

        if exist_ok:
            with self._tx() as conn:
                row = conn.execute(self._COLLECTION_SELECT + " WHERE name = %s", (name,)).fetchone()
            if row is not None:
                return self._collection_info(row)
        result: CollectionInfo = self._retrying(create)
        return result

    @_reads
    def get_collection(self, name: str) -> CollectionInfo:
        self._check_name(name)
        with self._tx() as conn:
            row = conn.execute(self._COLLECTION_SELECT + " WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection {name!r} does not exist")
        return self._collection_info(row)

    @_db_errors
    def delete_collection(self, name: str) -> None:
        """Delete a collection: its row, then its partitions are dropped (instant at any size).
        Waits for writers of this collection to finish (they hold a key-share lock on its row)."""

        def delete(conn: Any) -> None:
            conn.execute("SET LOCAL lock_timeout = '60s'")
            coll = self._coll(conn, name, lock="FOR UPDATE")
            conn.execute("DELETE FROM collections WHERE id = %s", (coll.id,))
            conn.execute(f"DROP TABLE IF EXISTS faces_c{coll.id}, persons_c{coll.id}")

        self._meta.pop(name, None)
        self._retrying(delete)

    @_reads
    def list_collections(
        self, limit: int | None = None, offset: int = 0
    ) -> tuple[int, list[CollectionInfo]]:
        """(total, page) ordered by name (byte order, as in SQLite)."""
        lim = _check_paging(limit, offset)
        with self._tx(read_only=True) as conn:
            total = int(conn.execute("SELECT count(*) FROM collections").fetchone()[0])
            rows = conn.execute(
                self._COLLECTION_SELECT + " ORDER BY name LIMIT %s OFFSET %s",
                (None if lim < 0 else lim, offset),
            ).fetchall()
        return total, [self._collection_info(r) for r in rows]

    def counts(self, collection: str) -> tuple[int, int]:
        """(persons, faces) in the collection."""
        info = self.get_collection(collection)
        return info.num_persons, info.num_faces

    @_reads
    def face_embeddings(self, collection: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every face of the collection, in one snapshot: (person ids, each face's index into
        them, embeddings float32[N, D]). Same contract as :meth:`Engine.face_embeddings`."""
        with self._tx(read_only=True) as conn:
            coll = self._coll(conn, collection)
            rows = conn.execute(
                f"SELECT p.person_id, f.embedding FROM faces_c{coll.id} f JOIN persons_c{coll.id} p "
                "ON p.id = f.person_pk ORDER BY f.id").fetchall()
        dim = int(coll.dim or 0)
        matrix = np.empty((len(rows), dim), dtype=np.float32)
        for i, (_, emb) in enumerate(rows):
            matrix[i] = np.frombuffer(_vec_bytes(emb), dtype=store.EMBEDDING_DTYPE)
        return _owners([r[0] for r in rows], matrix)

    # ------------------------------------------------------------------ persons

    @_db_errors
    def upsert_persons(
        self, collection: str, persons: Sequence[EnginePerson]
    ) -> list[UpsertResult]:
        """Create or update persons in ONE transaction, with the SQLite engine's semantics:
        created / updated (faces replaced, created kept, modified bumped) / unchanged; results
        in input order; a person_id repeated in the batch is applied in order.

        Safe beside other writers of the same collection: existing rows are locked in person_id
        order, new ones inserted in that order with ``ON CONFLICT DO NOTHING`` (a row another
        writer just inserted is then locked and compared like any stored row), so every
        person_id exists once. A deadlock retries the batch.
        """
        prepared = [_prepare(p) for p in persons]
        dims = {len(f.blob) for p in prepared for f in p.faces}
        if len(dims) > 1:
            raise InvalidInput("embeddings in one batch have different dimensions")
        dim = dims.pop() // store.EMBEDDING_DTYPE.itemsize if dims else None
        if not prepared:
            with self._tx() as conn:
                self._coll(conn, collection)
            return []
        result: list[UpsertResult] = self._retrying(
            lambda conn: self._upsert_tx(conn, collection, prepared, dim), idempotent=True
        )
        return result

    _STATE_SELECT = (
        "SELECT id, person_id, person_name, metadata, gender, date_of_birth, nationality, notes "
        "FROM persons WHERE collection_id = %s AND person_id = ANY(%s) "
        "ORDER BY person_id FOR UPDATE"
    )

    def _load_states(self, conn: Any, cid: int, ids: list[str]) -> dict[str, _State]:
        """Lock and read stored persons (in person_id order) with their face keys."""
        states: dict[str, _State] = {}
        by_pk: dict[int, _State] = {}
        for row in conn.execute(self._STATE_SELECT, (cid, ids)):
            st = _State(int(row[0]), row[2], row[3], tuple(row[4:8]), [], existed=True)
            states[row[1]] = by_pk[st.pk] = st
        if by_pk:
            for pk, sha, emb, kind in conn.execute(
                "SELECT person_pk, image_sha256, embedding, image_kind FROM faces "
                "WHERE collection_id = %s AND person_pk = ANY(%s)",
                (cid, list(by_pk)),
            ):
                by_pk[pk].face_keys.append((sha, _vec_bytes(emb), kind or ""))
            for st in by_pk.values():
                st.face_keys.sort()
        return states

    def _set_dim(self, conn: Any, coll: _Coll, dim: int) -> None:
        """The first faces of a collection fix its dimension and create its HNSW index (on an
        empty partition: instant). Later batches must match."""
        current = coll.dim
        if current is None:
            row = conn.execute(
                "UPDATE collections SET dim = %s WHERE id = %s AND dim IS NULL "
                "RETURNING index_deferred",
                (dim, coll.id),
            ).fetchone()
            if row is not None:
                if not row[0]:
                    self._create_index(conn, coll.id, dim)
                return
            current = conn.execute("SELECT dim FROM collections WHERE id = %s", (coll.id,)).fetchone()[0]
        if current != dim:
            raise InvalidInput(
                f"embedding dimension {dim} differs from the collection's {current} "
                "(a different recognition model?)"
            )

    def _create_index(self, conn: Any, cid: int, dim: int, name: str | None = None) -> None:
        if dim > HNSW_MAX_DIM:
            return
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {name or f'faces_c{cid}_hnsw'} ON faces_c{cid} USING hnsw "
            f"((embedding::vector({dim})) vector_cosine_ops) "
            f"WITH (m = {self.m}, ef_construction = {self.ef_construction})"
        )

    def _upsert_tx(
        self, conn: Any, collection: str, prepared: list[_PreparedPerson], dim: int | None
    ) -> list[UpsertResult]:
        # KEY SHARE: a concurrent delete_collection waits for us; other writers do not.
        coll = self._coll(conn, collection, lock="FOR KEY SHARE")
        cid = coll.id
        if dim is not None:
            self._set_dim(conn, coll, dim)
        ids = sorted({p.person_id for p in prepared})
        states = self._load_states(conn, cid, ids)
        first = {}
        for p in prepared:
            first.setdefault(p.person_id, p)
        missing = [pid for pid in ids if pid not in states]
        inserted: set[str] = set()
        if missing:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO persons (collection_id, person_id, person_name, metadata, gender, "
                    "date_of_birth, nationality, notes, num_faces) "
                    "VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (collection_id, person_id) DO NOTHING RETURNING id, person_id",
                    [
                        (cid, pid, first[pid].person_name, first[pid].metadata_json,
                         *first[pid].fields, len(first[pid].faces))
                        for pid in missing
                    ],
                    returning=True,
                )
                while True:
                    row = cur.fetchone()
                    if row is not None:
                        p = first[row[1]]
                        states[row[1]] = _State(
                            int(row[0]), p.person_name, p.metadata, p.fields, p.face_keys,
                            existed=False, faces=p.faces,
                        )
                        inserted.add(row[1])
                    if not cur.nextset():
                        break
            raced = [pid for pid in missing if pid not in inserted]
            if raced:  # inserted by a concurrent writer since we looked: lock and compare
                states.update(self._load_states(conn, cid, raced))

        results: list[UpsertResult] = []
        for p in prepared:
            st = states[p.person_id]
            if p.person_id in inserted and not st.seen:
                st.seen = True
                results.append(UpsertResult(p.person_id, "created"))
                continue
            st.seen = True
            same_fields = st.name == p.person_name and st.metadata == p.metadata and st.fields == p.fields
            same_faces = st.face_keys == p.face_keys
            if same_fields and same_faces:
                results.append(UpsertResult(p.person_id, "unchanged"))
                continue
            st.name, st.metadata, st.fields = p.person_name, p.metadata, p.fields
            st.changed = True
            if not same_faces:
                st.face_keys, st.faces = p.face_keys, p.faces
            results.append(UpsertResult(p.person_id, "updated"))

        # write: old faces out, new faces in (COPY), changed rows, then the collection row last
        replaced = [st.pk for st in states.values() if st.existed and st.faces is not None]
        deleted = 0
        if replaced:
            deleted = conn.execute(
                "DELETE FROM faces WHERE collection_id = %s AND person_pk = ANY(%s)", (cid, replaced)
            ).rowcount
        new_faces = [(st.pk, f) for st in states.values() if st.faces for f in st.faces]
        if new_faces:
            self._copy_faces(conn, cid, new_faces)
        changed = [st for st in states.values() if st.changed]
        if changed:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE persons SET person_name = %s, metadata = %s::jsonb, gender = %s, "
                    "date_of_birth = %s, nationality = %s, notes = %s, num_faces = %s, "
                    "modified = greatest(now(), modified + interval '1 microsecond') "
                    "WHERE collection_id = %s AND id = %s",
                    [
                        (st.name, json.dumps(st.metadata, sort_keys=True, ensure_ascii=False),
                         *st.fields, len(st.face_keys), cid, st.pk)
                        for st in changed
                    ],
                )
        if inserted or changed:
            conn.execute(
                "UPDATE collections SET modified = now(), generation = generation + %s, "
                "num_persons = num_persons + %s, num_faces = num_faces + %s WHERE id = %s",
                (1 if (new_faces or deleted) else 0, len(inserted), len(new_faces) - deleted, cid),
            )
        return results

    @staticmethod
    def _copy_faces(conn: Any, cid: int, faces: list[tuple[int, _PreparedFace]]) -> None:
        with conn.cursor() as cur, cur.copy(
            "COPY faces (collection_id, person_pk, embedding, image_sha256, quality, source_path, "
            "image, image_kind) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int8", "int8", "vector", "text", "jsonb", "text", "bytea", "text"])
            for pk, f in faces:
                copy.write_row((
                    cid, pk, np.frombuffer(f.blob, dtype=store.EMBEDDING_DTYPE), f.image_sha256,
                    json.loads(f.quality_json), f.source_path, f.image, f.image_kind,
                ))

    _PERSON_SELECT = (
        "SELECT person_id, person_name, metadata, gender, date_of_birth, nationality, notes, "
        "num_faces, created, modified FROM persons"
    )

    @staticmethod
    def _person_info(row: Sequence[Any]) -> PersonInfo:
        return PersonInfo(
            person_id=row[0],
            person_name=row[1],
            metadata=dict(row[2]),
            gender=row[3],
            date_of_birth=row[4],
            nationality=row[5],
            notes=row[6],
            faces=int(row[7]),
            created=_iso(row[8]),
            modified=_iso(row[9]),
        )

    @_reads
    def list_persons(
        self, collection: str, limit: int | None = None, offset: int = 0
    ) -> tuple[int, list[PersonInfo]]:
        """(total, page) ordered by person_id (byte order)."""
        lim = _check_paging(limit, offset)
        with self._tx(read_only=True) as conn:
            coll = self._coll(conn, collection)
            total = int(
                conn.execute("SELECT num_persons FROM collections WHERE id = %s", (coll.id,)).fetchone()[0]
            )
            rows = conn.execute(
                self._PERSON_SELECT
                + " WHERE collection_id = %s ORDER BY person_id LIMIT %s OFFSET %s",
                (coll.id, None if lim < 0 else lim, offset),
            ).fetchall()
        return total, [self._person_info(r) for r in rows]

    @_reads
    def get_person(self, collection: str, person_id: str) -> PersonInfo | None:
        with self._tx() as conn:
            coll = self._coll(conn, collection)
            row = conn.execute(
                self._PERSON_SELECT + " WHERE collection_id = %s AND person_id = %s",
                (coll.id, person_id),
            ).fetchone()
        return None if row is None else self._person_info(row)

    @_reads
    def existing_person_ids(self, collection: str, person_ids: Sequence[str]) -> set[str]:
        """Which of ``person_ids`` the collection holds, in one query (``= ANY``)."""
        ids = list(dict.fromkeys(person_ids))
        with self._tx(read_only=True) as conn:
            coll = self._coll(conn, collection)
            if not ids:
                return set()
            rows = conn.execute("SELECT person_id FROM persons WHERE collection_id = %s AND person_id = ANY(%s)",
                                (coll.id, ids)).fetchall()
        return {r[0] for r in rows}

    @_db_errors
    def delete_person(self, collection: str, person_id: str) -> None:
        """Delete a person and its faces; raises :class:`PersonNotFound`."""

        def delete(conn: Any) -> None:
            coll = self._coll(conn, collection, lock="FOR KEY SHARE")
            row = conn.execute(
                "DELETE FROM persons WHERE collection_id = %s AND person_id = %s RETURNING id",
                (coll.id, person_id),
            ).fetchone()
            if row is None:
                raise PersonNotFound(f"person {person_id!r} not found in collection {collection!r}")
            n = conn.execute(
                "DELETE FROM faces WHERE collection_id = %s AND person_pk = %s", (coll.id, row[0])
            ).rowcount
            conn.execute(
                "UPDATE collections SET modified = now(), generation = generation + 1, "
                "num_persons = num_persons - 1, num_faces = num_faces - %s WHERE id = %s",
                (n, coll.id),
            )

        self._retrying(delete)

    # ------------------------------------------------------------------ export (copy between engines)

    def iter_persons(self, collection: str, batch_size: int = 500) -> Iterator[list[EnginePerson]]:
        """Every person with its faces (embeddings, images), in person_id order, in batches.
        Each batch is read in its own snapshot (keyset pagination), so a copy of a collection that
        is being written to sees each person whole."""
        after = ""
        while True:
            batch = self._persons_page(collection, after, batch_size)
            if not batch:
                return
            yield batch
            after = batch[-1].person_id

    @_reads
    def _persons_page(self, collection: str, after: str, batch_size: int) -> list[EnginePerson]:
        with self._tx(read_only=True) as conn:
            coll = self._coll(conn, collection)
            rows = conn.execute(
                "SELECT id, person_id, person_name, metadata, gender, date_of_birth, "
                "nationality, notes FROM persons WHERE collection_id = %s AND person_id > %s "
                "ORDER BY person_id LIMIT %s",
                (coll.id, after, batch_size),
            ).fetchall()
            faces: dict[int, list[EngineFace]] = {int(r[0]): [] for r in rows}
            if rows:
                for pk, emb, sha, quality, path, image, kind in conn.execute(
                    "SELECT person_pk, embedding, image_sha256, quality, source_path, image, "
                    "image_kind FROM faces WHERE collection_id = %s AND person_pk = ANY(%s) "
                    "ORDER BY id",
                    (coll.id, list(faces)),
                ):
                    faces[pk].append(EngineFace(
                        embedding=np.frombuffer(_vec_bytes(emb), dtype=store.EMBEDDING_DTYPE),
                        image_sha256=sha, quality=quality, source_path=path,
                        image=bytes(image) if image is not None else None, image_kind=kind,
                    ))
        return [
            EnginePerson(r[1], r[2], dict(r[3]), r[4], r[5], r[6], r[7], faces[int(r[0])])
            for r in rows
        ]

    # ------------------------------------------------------------------ index

    @_reads
    def load_index(self, collection: str) -> IndexStats:
        """What the collection's index holds. PostgreSQL keeps the index itself, so there is
        nothing to load: ``source`` is always "memory"."""
        with self._tx() as conn:
            coll = self._coll(conn, collection)
            gen, nbytes = conn.execute(
                "SELECT generation, coalesce(pg_relation_size(to_regclass(format("
                "'%%I.faces_c%%s_hnsw', %s::text, id))), 0) FROM collections WHERE id = %s",
                (self.schema, coll.id),
            ).fetchone()
        return IndexStats(collection, coll.num_faces, coll.dim or 0, int(nbytes), int(gen), "memory")

    @_db_errors
    def rebuild_index(self, collection: str, *, maintenance_work_mem: str | None = None) -> float:
        """(Re)build the collection's HNSW index now (with the engine's m/ef_construction);
        returns the seconds it took. Writers of this collection wait meanwhile (searches do not)."""
        maintenance_work_mem = maintenance_work_mem or self.maintenance_work_mem
        if not _MEM_RE.fullmatch(maintenance_work_mem):
            raise InvalidInput("maintenance_work_mem must look like 512MB or 4GB")
        t0 = time.perf_counter()
        with self._tx() as conn:
            coll = self._coll(conn, collection, lock="FOR UPDATE")
            name = f"faces_c{coll.id}_hnsw"
            if coll.dim is not None and coll.dim <= HNSW_MAX_DIM:
                # built beside the old one, swapped at the end: searches keep their index
                conn.execute(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'")
                conn.execute(f"DROP INDEX IF EXISTS {name}_new")
                self._create_index(conn, coll.id, int(coll.dim), name=f"{name}_new")
                conn.execute(f"DROP INDEX IF EXISTS {name}")
                conn.execute(f"ALTER INDEX {name}_new RENAME TO {name}")
            else:
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            conn.execute("UPDATE collections SET index_deferred = false WHERE id = %s", (coll.id,))
        return time.perf_counter() - t0

    @_db_errors
    def _defer_index(self, collection: str) -> None:
        with self._tx() as conn:
            coll = self._coll(conn, collection, lock="FOR UPDATE")
            conn.execute(f"DROP INDEX IF EXISTS faces_c{coll.id}_hnsw")
            conn.execute("UPDATE collections SET index_deferred = true WHERE id = %s", (coll.id,))

    @contextmanager
    def deferred_index(self, collection: str) -> Iterator[None]:
        """Bulk load: drop the HNSW index, let the block insert without maintaining it, then
        build it once (much faster than indexing row by row). Searches meanwhile are exact."""
        self._defer_index(collection)
        try:
            yield
        finally:
            with contextlib.suppress(CollectionNotFound):
                self.rebuild_index(collection)

    # ------------------------------------------------------------------ search

    #: Seconds a collection's id/dimension/size are reused by searches before being re-read.
    META_TTL_S = 5.0

    def _search_meta(self, collection: str, fresh: bool) -> _Coll:
        """The collection as searches need it; cached once it has faces, so a search is one
        round trip. A stale entry is harmless: a dropped collection fails the query (and is
        re-read), and the size only picks exact vs HNSW."""
        cached = self._meta.get(collection)
        if cached is not None and not fresh and time.monotonic() - cached[0] < self.META_TTL_S:
            return cached[1]
        with self._tx() as conn:
            coll = self._coll(conn, collection)
        if coll.dim is not None:
            self._meta[collection] = (time.monotonic(), coll)
        else:
            self._meta.pop(collection, None)
        return coll

    @_db_errors
    def search(
        self,
        collection: str,
        embeddings: npt.ArrayLike,
        k: int = 5,
        min_score: float = 0.0,
    ) -> list[list[SearchHit]]:
        """Top-``k`` persons per query (best face per person), score >= ``min_score``, best
        first; scores are cosine similarities. Same contract as :meth:`Engine.search`.

        Each query is one statement (its own snapshot) sent with its ``ef_search`` in one
        round trip. Collections of ``exact_max`` faces or fewer (or without their index) are
        scanned exactly; larger ones through HNSW, over-fetching faces so that k distinct
        persons usually fit, and widening when one person's faces crowd the candidates."""
        q, _ = _queries(embeddings)
        k = int(k)
        if k < 0:
            raise InvalidInput("k must be >= 0")
        if math.isnan(min_score):
            raise InvalidInput("min_score must be a number")
        self._check_name(collection)
        drv = _load_driver()
        for attempt in range(2):
            try:
                coll = self._search_meta(collection, fresh=attempt > 0)
                if k == 0 or coll.dim is None:
                    return [[] for _ in range(len(q))]
                if q.shape[1] != coll.dim:
                    raise InvalidInput(f"query dimension {q.shape[1]} != collection dimension {coll.dim}")
                return self._search_rows(coll, q, k, min_score)
            except drv.errors.UndefinedTable:  # deleted (and maybe re-created) since cached
                self._meta.pop(collection, None)
                if attempt:
                    raise CollectionNotFound(f"collection {collection!r} does not exist") from None
            except drv.psycopg.OperationalError:  # a pooled connection the server dropped
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _search_rows(self, coll: _Coll, q: np.ndarray, k: int, min_score: float) -> list[list[SearchHit]]:
        exact = coll.num_faces <= self.exact_max or not coll.has_index
        # Exact: no cast, so the ORDER BY does not match the index and the plan is a full scan.
        order = "embedding <=> %(q)s" if exact else f"embedding::vector({coll.dim}) <=> %(q)s"
        # The LATERAL ... LIMIT 1 keeps the person lookups a nested loop of primary-key probes
        # (a plain join may hash the whole persons partition when its statistics are stale).
        sql = (
            "SELECT c.id, c.person_pk, c.d, p.person_id, p.person_name, p.metadata FROM "
            f"(SELECT id, person_pk, {order} AS d FROM faces_c{coll.id} ORDER BY d LIMIT %(n)s) c, "
            f"LATERAL (SELECT person_id, person_name, metadata FROM persons_c{coll.id} "
            "WHERE collection_id = %(cid)s::bigint AND id = c.person_pk LIMIT 1) p "
            "ORDER BY c.d, c.id"
        )
        pool = self._pool
        if pool is None:
            raise EngineClosed(f"engine for {self.target} is closed")
        out = []
        with pool.connection() as conn:
            for qv in q:
                want = max(4 * k, k + 16)
                while True:
                    params = {"q": qv, "n": want, "cid": coll.id}
                    if exact:
                        rows = conn.execute(sql, params).fetchall()
                    else:
                        with conn.pipeline():
                            conn.execute(
                                "SELECT set_config('hnsw.ef_search', %s, false)",
                                (str(min(1000, max(self.ef_search, want))),),
                            )
                            cur = conn.execute(sql, params)
                        rows = cur.fetchall()
                    hits = self._dedupe(rows, k, min_score)
                    exhausted = len(rows) < want or (rows and 1.0 - rows[-1][2] < min_score)
                    if len(hits) >= k or exhausted:
                        break
                    want *= 4
                out.append(hits)
        return out

    @staticmethod
    def _dedupe(rows: list[Any], k: int, min_score: float) -> list[SearchHit]:
        seen: set[int] = set()
        hits: list[SearchHit] = []
        for fid, pk, dist, pid, name, meta in rows:
            score = 1.0 - float(dist)
            if score < min_score or pk in seen:
                continue
            seen.add(pk)
            hits.append(SearchHit(pid, name, min(1.0, max(-1.0, score)), dict(meta), int(fid)))
            if len(hits) >= k:
                break
        return hits


# --------------------------------------------------------------------------- between engines


def open_engine(location: str | os.PathLike[str], **kwargs: Any) -> Engine | PgEngine:
    """The engine a location names: a ``postgresql://`` URL, else a SQLite file path."""
    if is_postgres_url(location):
        return PgEngine(str(location), **kwargs)
    return Engine(location, **kwargs)


def _sqlite_persons(engine: Engine, collection: str, batch_size: int) -> Iterator[list[EnginePerson]]:
    """Every person of a SQLite collection with its faces, in person_id order, one snapshot per
    batch. (Reads the engine's own tables: Engine has no export method of its own yet.)"""
    after = ""
    while True:
        with engine._read() as conn:
            cid, _, _ = engine._collection_row(conn, collection)
            rows = conn.execute(
                "SELECT id, person_id, person_name, metadata, gender, date_of_birth, nationality, "
                "notes FROM persons WHERE collection_id = ? AND person_id > ? "
                "ORDER BY person_id LIMIT ?",
                (cid, after, batch_size),
            ).fetchall()
            faces: dict[int, list[EngineFace]] = {int(r[0]): [] for r in rows}
            for start in range(0, len(rows), 500):
                chunk = list(faces)[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for pk, blob, sha, quality, path, image, kind in conn.execute(
                    "SELECT person_pk, embedding, image_sha256, quality, source_path, image, "
                    f"image_kind FROM faces WHERE person_pk IN ({marks}) ORDER BY id",
                    chunk,
                ):
                    faces[pk].append(EngineFace(
                        embedding=np.frombuffer(blob, dtype=store.EMBEDDING_DTYPE),
                        image_sha256=sha, quality=json.loads(quality), source_path=path,
                        image=image, image_kind=kind,
                    ))
        if not rows:
            return
        yield [
            EnginePerson(r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], faces[int(r[0])])
            for r in rows
        ]
        after = rows[-1][1]


def export_persons(
    engine: Engine | PgEngine, collection: str, batch_size: int = 500
) -> Iterator[list[EnginePerson]]:
    """Batches of complete persons (faces with embeddings and stored images) of a collection."""
    if isinstance(engine, PgEngine):
        return engine.iter_persons(collection, batch_size)
    return _sqlite_persons(engine, collection, batch_size)


@dataclass
class CopyResult:
    collection: str
    destination: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    faces: int = 0
    seconds: float = 0.0

    @property
    def persons(self) -> int:
        return self.created + self.updated + self.unchanged

    def to_json(self) -> dict[str, Any]:
        return {"collection": self.collection, "to_collection": self.destination,
                "persons": self.persons, "created": self.created, "updated": self.updated,
                "unchanged": self.unchanged, "faces": self.faces, "seconds": round(self.seconds, 3)}


def copy_collection(
    src: Engine | PgEngine,
    dst: Engine | PgEngine,
    collection: str,
    *,
    to_collection: str | None = None,
    batch_size: int = 500,
    progress: Callable[[CopyResult], None] | None = None,
) -> CopyResult:
    """Copy one collection (persons, faces, embeddings, stored images) from ``src`` to ``dst``
    with the destination's upsert semantics: the destination collection is created if needed,
    a re-run only updates what changed (``unchanged`` otherwise), persons only in the
    destination are kept. Into a new PostgreSQL collection the HNSW index is built once at the
    end. created/modified timestamps are the destination's (the time of the copy)."""
    name = to_collection or collection
    src.get_collection(collection)  # CollectionNotFound before anything is created
    result = CopyResult(collection, name)
    t0 = time.perf_counter()
    existed = True
    try:
        dst.get_collection(name)
    except CollectionNotFound:
        existed = False
        dst.create_collection(name, exist_ok=True)
    bulk = (
        dst.deferred_index(name)
        if isinstance(dst, PgEngine) and not existed
        else contextlib.nullcontext()
    )
    with bulk:
        for batch in export_persons(src, collection, batch_size):
            for r in dst.upsert_persons(name, batch):
                setattr(result, r.action, getattr(result, r.action) + 1)
            result.faces += sum(len(p.faces) for p in batch)
            if progress:
                progress(result)
    result.seconds = time.perf_counter() - t0
    return result
