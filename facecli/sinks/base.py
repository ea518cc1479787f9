"""The Sink Protocol: one small interface for every enrollment target (local engine, servers).

Pipelines build ``PersonPayload`` objects and read back ``ItemOutcome`` / ``Match`` objects; they
never know which target is behind the sink, so contract tests can run one scenario on all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from facecli.errors import ConfigError, ReasonCode, Status
from facecli.ids import validate_collection_name, validate_person_id

FACE_STORAGE_TYPES = ("NoStorage", "StoreThumbnails", "StoreFullImage")


@dataclass
class FacePayload:
    """One accepted face of a person, as a target needs it."""

    image_sha256: str
    source_path: str
    embedding: np.ndarray | None = None  # for targets that take embeddings (the local engine)
    jpeg: bytes | None = None  # the re-encoded face image (remote targets; stored thumbnails)
    quality: dict[str, float] = field(default_factory=dict)


@dataclass
class PersonPayload:
    person_id: str
    person_name: str
    faces: list[FacePayload]
    metadata: dict[str, str] = field(default_factory=dict)
    gender: str | None = None
    date_of_birth: str | None = None
    nationality: str | None = None
    notes: str | None = None


@dataclass
class ItemOutcome:
    """What the target said about one person of a batch."""

    person_id: str
    status: Status  # ENROLLED or FAILED
    reason: ReasonCode | None = None
    action: str | None = None  # created | updated | unchanged, where the target says
    server_code: str | None = None
    message: str = ""


def invalid_id_outcome(person_id: str) -> ItemOutcome | None:
    """The failure of a person whose id breaks facecli.ids' rule (INVALID_ROW), or None. Every sink
    asks before it builds a request (or a row) for the person: nothing is sent or stored under it."""
    why = validate_person_id(person_id)
    return None if why is None else ItemOutcome(person_id, Status.FAILED, ReasonCode.INVALID_ROW, message=why)


def check_collection_name(collection: str) -> str:
    """``collection`` when facecli.ids accepts it, else a ConfigError (exit 2) before any request."""
    why = validate_collection_name(collection)
    if why:
        raise ConfigError(why, hint="collection names: 1-64 letters, digits, '_', '.' or '-'; not '.', '..' or a "
                                    "Windows device name (README, \"Person ids and collection names\")")
    return collection


@dataclass
class SearchProbe:
    embedding: np.ndarray | None = None
    jpeg: bytes | None = None


@dataclass
class Match:
    person_id: str
    person_name: str
    score: float
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"person_id": self.person_id, "person_name": self.person_name, "score": round(self.score, 4),
                "metadata": self.metadata}


@runtime_checkable
class Sink(Protocol):
    name: str

    def ensure_collection(self, collection: str, create: bool) -> None: ...
    def upsert(self, collection: str, persons: Sequence[PersonPayload]) -> list[ItemOutcome]: ...
    def search(self, collection: str, probe: SearchProbe, k: int, min_score: float) -> list[Match]: ...
    def close(self) -> None: ...
    # Optional: ``held_ids(collection, ids) -> set[str] | None`` says which ids the collection
    # holds (None: this target cannot tell). The run ledger asks it, in one batch, before it skips
    # persons as UNCHANGED (a sink without it gets "could not be checked" in the summary), and
    # --dry-run to say create or update.


@dataclass
class CollectionRow:
    name: str
    num_persons: int | None = None
    num_faces: int | None = None
    created: str | None = None
    modified: str | None = None


@dataclass
class PersonRow:
    person_id: str
    person_name: str
    metadata: dict[str, str]
    faces: int | None = None
    created: str | None = None
    modified: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"person_id": self.person_id, "person_name": self.person_name, "metadata": self.metadata,
                "faces": self.faces, "created": self.created, "modified": self.modified, **self.extra}


class Gallery(Protocol):
    """Administration a target may offer (`facecli collections` / `facecli persons`)."""

    def list_collections(self, limit: int | None, offset: int) -> tuple[int, list[CollectionRow]]: ...
    def create_collection(self, collection: str) -> None: ...
    def delete_collection(self, collection: str) -> None: ...
    def list_persons(self, collection: str, limit: int | None, offset: int) -> tuple[int, list[PersonRow]]: ...
    def get_person(self, collection: str, person_id: str) -> PersonRow | None: ...
    def delete_person(self, collection: str, person_id: str) -> bool: ...  # False: not found
