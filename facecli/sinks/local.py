"""The engines as a Sink: the embedded one (the default target, a SQLite file plus a vector index)
and, through the same code, PostgreSQL + pgvector (``postgresql://`` targets, :class:`PgSink`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import platformdirs

from facecli.engine import engine as eng
from facecli.engine import pg
from facecli.errors import CollectionMissing, ConfigError, ReasonCode, Status, TargetError
from facecli.sinks.base import (
    FACE_STORAGE_TYPES,
    CollectionRow,
    ItemOutcome,
    Match,
    PersonPayload,
    PersonRow,
    SearchProbe,
    invalid_id_outcome,
)

DB_ENV = "FACECLI_DB"


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("facecli")) / "facecli.db"


def _target_error(exc: Exception) -> TargetError:
    if isinstance(exc, eng.CollectionNotFound):
        return CollectionMissing(str(exc), hint="create it with --create-collection or `facecli collections create NAME`")
    if isinstance(exc, eng.InvalidCollectionName):
        err = TargetError(str(exc))
        err.exit_code = ConfigError.exit_code
        return err
    if isinstance(exc, eng.EngineLocked):
        return TargetError(str(exc), hint="another `facecli enroll` is writing; wait, or drop --no-wait")
    if isinstance(exc, pg.DatabaseUnavailable):
        return TargetError(str(exc), hint="check the URL, that the server is up, and the password "
                                          "(in the URL, PGPASSWORD or a pgpass file)")
    if isinstance(exc, pg.DatabaseError) or str(exc).startswith(pg.SCHEMES):
        return TargetError(str(exc))
    return TargetError(f"local engine: {exc}")


class LocalSink:
    """Sink and Gallery over :class:`facecli.engine.engine.Engine`."""

    name = "local"
    takes_images = False  # searches and stores embeddings; images only as optional thumbnails

    def __init__(self, path: str | Path, writer: bool = False, wait: bool = True,
                 face_storage_type: str = "NoStorage", on_wait: Callable[[str], None] | None = None) -> None:
        if face_storage_type not in FACE_STORAGE_TYPES:
            raise ConfigError(f"face storage type must be one of {', '.join(FACE_STORAGE_TYPES)}")
        self.face_storage_type = face_storage_type
        try:
            self.engine = self._open(path)
            if writer:
                self._take_writer_lock(wait, on_wait)
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    def _open(self, path: str | Path) -> eng.Engine | pg.PgEngine:
        self.path = Path(path)
        return eng.Engine(self.path, lock_timeout=None)

    def _take_writer_lock(self, wait: bool, on_wait: Callable[[str], None] | None) -> None:
        """Hold the engine's writer lock for the whole run; say so when we have to wait for it."""
        lock = self.engine.writer_lock(wait=False)
        try:
            lock.__enter__()
        except eng.EngineLocked:
            if not wait:
                raise
            if on_wait:
                on_wait(f"another writer holds {self.engine.lock_path}; waiting for it to finish (Ctrl-C to stop)")
            lock = self.engine.writer_lock(wait=True)
            lock.__enter__()
        self._writer_lock = lock

    @property
    def target(self) -> str:
        return f"sqlite:///{self.path}"

    # -- Sink ------------------------------------------------------------------------------------

    def ensure_collection(self, collection: str, create: bool) -> None:
        try:
            if create:
                self.engine.create_collection(collection, exist_ok=True)
            else:
                self.engine.get_collection(collection)
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    def _stored_image(self, face) -> tuple[bytes | None, str | None]:
        if self.face_storage_type == "StoreThumbnails" and face.jpeg:
            return face.jpeg, "thumbnail"
        if self.face_storage_type == "StoreFullImage":
            data = Path(face.source_path).read_bytes()
            if hashlib.sha256(data).hexdigest() != face.image_sha256:
                raise eng.InvalidInput(f"{face.source_path} changed since it was checked")
            return data, "full"
        return None, None

    def _engine_person(self, p: PersonPayload) -> eng.EnginePerson:
        faces = []
        for f in p.faces:
            image, kind = self._stored_image(f)
            faces.append(eng.EngineFace(embedding=f.embedding, image_sha256=f.image_sha256, quality=dict(f.quality),
                                        source_path=f.source_path, image=image, image_kind=kind))
        return eng.EnginePerson(person_id=p.person_id, person_name=p.person_name, metadata=dict(p.metadata),
                                gender=p.gender, date_of_birth=p.date_of_birth, nationality=p.nationality,
                                notes=p.notes, faces=faces)

    def upsert(self, collection: str, persons: Sequence[PersonPayload]) -> list[ItemOutcome]:
        """One transaction per batch. A person the engine refuses is isolated and fails alone."""
        outcomes: dict[str, ItemOutcome] = {}
        good: list[eng.EnginePerson] = []
        for p in persons:
            refused = invalid_id_outcome(p.person_id)  # nothing is stored under an id the rule refuses
            if refused is not None:
                outcomes[p.person_id] = refused
                continue
            try:
                good.append(self._engine_person(p))
            except (OSError, eng.EngineError) as exc:
                outcomes[p.person_id] = ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED,
                                                    message=str(exc))
        try:
            results = self.engine.upsert_persons(collection, good)
        except eng.InvalidInput:
            results = []
            for ep in good:  # isolate the one the engine refuses
                try:
                    results += self.engine.upsert_persons(collection, [ep])
                except eng.InvalidInput as exc:
                    outcomes[ep.person_id] = ItemOutcome(ep.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED,
                                                         message=str(exc))
        except eng.EngineError as exc:
            raise _target_error(exc) from None
        for r in results:
            outcomes[r.person_id] = ItemOutcome(r.person_id, Status.ENROLLED, action=str(r.action))
        return [outcomes[p.person_id] for p in persons]

    def search(self, collection: str, probe: SearchProbe, k: int, min_score: float) -> list[Match]:
        if probe.embedding is None:
            raise ValueError("the local engine searches by embedding")
        return self.search_many(collection, np.atleast_2d(probe.embedding), k, min_score)[0]

    def search_many(self, collection: str, embeddings: np.ndarray, k: int, min_score: float) -> list[list[Match]]:
        """One index pass for many probes (the duplicate check of a whole run)."""
        if len(embeddings) == 0:
            return []
        try:
            hits = self.engine.search(collection, np.asarray(embeddings, dtype=np.float32), k=k, min_score=min_score)
        except eng.EngineError as exc:
            raise _target_error(exc) from None
        return [[Match(h.person_id, h.person_name, h.score, dict(h.metadata)) for h in row] for row in hits]

    def gallery_size(self, collection: str) -> int | None:
        """Faces in the collection (each is one comparison for a search); None when it is absent."""
        try:
            return int(self.engine.counts(collection)[1])
        except eng.CollectionNotFound:
            return None
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    def counts(self, collection: str) -> tuple[int, int]:
        """(persons, faces) in the collection."""
        try:
            return self.engine.counts(collection)
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    def face_embeddings(self, collection: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(person ids, each face's index into them, embeddings) of every face (`collections stats`)."""
        try:
            return self.engine.face_embeddings(collection)
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    def score_fingerprint(self) -> str:
        """Scores are cosines of the embeddings this facecli computed: its own recognizer's."""
        return "local"

    def close(self) -> None:
        lock, self._writer_lock = getattr(self, "_writer_lock", None), None
        if lock is not None:
            lock.__exit__(None, None, None)
        self.engine.close()

    # -- Gallery ---------------------------------------------------------------------------------

    def held_ids(self, collection: str, person_ids: Sequence[str]) -> set[str] | None:
        """Which of these ids the collection holds (batched: one query per 500 ids); none when
        the collection is absent. --dry-run and the ledger's "already enrolled" check use it."""
        try:
            return self.engine.existing_person_ids(collection, person_ids)
        except eng.CollectionNotFound:
            return set()
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    def list_collections(self, limit: int | None, offset: int) -> tuple[int, list[CollectionRow]]:
        try:
            total, rows = self.engine.list_collections(limit=limit, offset=offset)
        except eng.EngineError as exc:
            raise _target_error(exc) from None
        return total, [CollectionRow(c.name, c.num_persons, c.num_faces, c.created, c.modified) for c in rows]

    def create_collection(self, collection: str) -> None:
        try:
            self.engine.create_collection(collection)
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    def delete_collection(self, collection: str) -> None:
        try:
            self.engine.delete_collection(collection)
        except eng.EngineError as exc:
            raise _target_error(exc) from None

    @staticmethod
    def _row(p: eng.PersonInfo) -> PersonRow:
        extra = {k: v for k, v in (("gender", p.gender), ("date_of_birth", p.date_of_birth),
                                   ("nationality", p.nationality), ("notes", p.notes)) if v}
        return PersonRow(p.person_id, p.person_name, dict(p.metadata), p.faces, p.created, p.modified, extra)

    def list_persons(self, collection: str, limit: int | None, offset: int) -> tuple[int, list[PersonRow]]:
        try:
            total, rows = self.engine.list_persons(collection, limit=limit, offset=offset)
        except eng.EngineError as exc:
            raise _target_error(exc) from None
        return total, [self._row(p) for p in rows]

    def get_person(self, collection: str, person_id: str) -> PersonRow | None:
        try:
            p = self.engine.get_person(collection, person_id)
        except eng.EngineError as exc:
            raise _target_error(exc) from None
        return self._row(p) if p else None

    def delete_person(self, collection: str, person_id: str) -> bool:
        try:
            self.engine.delete_person(collection, person_id)
            return True
        except eng.PersonNotFound:
            return False
        except eng.EngineError as exc:
            raise _target_error(exc) from None


class PgSink(LocalSink):
    """The same Sink and Gallery over :class:`facecli.engine.pg.PgEngine` (``postgresql://``).

    PostgreSQL's row locks make concurrent writers safe, so there is no writer lock to wait for
    (the engine's ``writer_lock`` is a no-op). ``target`` never shows the password."""

    name = "postgres"

    def _open(self, path: str | Path) -> pg.PgEngine:
        return pg.PgEngine(str(path))

    @property
    def target(self) -> str:
        return self.engine.target


def is_embedded(sink: object) -> bool:
    """The embedded SQLite engine (not PostgreSQL, not a server): its default collection is
    created on first use, because nobody else shares that file."""
    return isinstance(sink, LocalSink) and not isinstance(sink, PgSink)
