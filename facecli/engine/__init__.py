"""Embedded local engine: one SQLite file of collections, persons and faces, searched through an
exact vector index cached beside it. The default enrollment target (``--to local``)."""

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

__all__ = [
    "COLLECTION_NAME_PATTERN",
    "CollectionExists",
    "CollectionInfo",
    "CollectionNotFound",
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
    "SearchHit",
    "UpsertResult",
    "VectorIndex",
]
