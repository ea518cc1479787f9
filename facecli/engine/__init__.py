"""The face gallery engines.

- :class:`Engine`: the embedded local engine, one SQLite file of collections, persons and faces,
  searched through an exact vector index cached beside it. The default target (``--to local``).
- :class:`PgEngine`: the same API on PostgreSQL + pgvector (HNSW), for shared and larger
  galleries (``--to postgresql://...``; needs the ``postgres`` extra, imported on first use).

:func:`open_engine` picks one from a location; :func:`copy_collection` moves a collection between
any two engines."""

from .engine import (
    COLLECTION_NAME_PATTERN,
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    Engine,
    EngineClosed,
    EngineError,
    EngineFace,
    EngineLocked,
    EnginePerson,
    IncompatibleDatabase,
    IndexStats,
    InvalidCollectionName,
    InvalidInput,
    PersonInfo,
    PersonNotFound,
    SearchHit,
    UpsertResult,
)
from .index import ExactIndex, VectorIndex
from .pg import (
    CopyResult,
    DatabaseError,
    DatabaseUnavailable,
    PgEngine,
    copy_collection,
    export_persons,
    is_postgres_url,
    mask_url,
    open_engine,
)

__all__ = [
    "COLLECTION_NAME_PATTERN",
    "CollectionExists",
    "CollectionInfo",
    "CollectionNotFound",
    "CopyResult",
    "DatabaseError",
    "DatabaseUnavailable",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineFace",
    "EngineLocked",
    "EnginePerson",
    "ExactIndex",
    "IncompatibleDatabase",
    "IndexStats",
    "InvalidCollectionName",
    "InvalidInput",
    "PersonInfo",
    "PersonNotFound",
    "PgEngine",
    "SearchHit",
    "UpsertResult",
    "VectorIndex",
    "copy_collection",
    "export_persons",
    "is_postgres_url",
    "mask_url",
    "open_engine",
]
