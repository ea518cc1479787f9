"""`facecli serve`: the OpenCV Face Recognition Server REST API over the embedded engine.

Endpoints and bodies follow ../shared/APIS.md (the OpenCV FR Server section) so the same client
talks to either server: ``POST /collection``, ``DELETE /collection``, ``PUT /person``,
``PUT /persons``, ``POST /face-search``; plus two listing extensions the original does not
document, ``GET /collections`` and ``GET /persons``, and ``/openapi.json`` + ``/docs``.

Images are decoded, detected, gated (one face) and embedded here with the same models and code as
`facecli check`. Only the one-face gate is applied server-side (no face, several comparable
faces, undecodable); the quality thresholds are the client's business (`facecli check`), so an
image the client accepted is never refused for a re-encoding artefact.

Scores are the engine's cosine similarities of the embeddings. They are compressed: the same
person scores >= about ``MATCH_THRESHOLD`` (vision/embed.py), different people often 0.7-0.9, so the
OpenCV FR default ``min_similarity_score`` of 0.7 lets strangers through: clients should send
their own threshold (`facecli search` sends its --min-score).

Concurrency: requests run on the event loop; decoding, inference and SQLite run in the thread
pool (``run_in_threadpool``), with at most ``inference_workers`` requests doing inference at once.
The Engine is thread-safe (one connection behind a lock, a file lock per write transaction), so a
local `facecli enroll` may write to the same database meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from facecli import __version__
from facecli.engine import engine as eng
from facecli.ids import validate_collection_name, validate_person_id
from facecli.imaging.decode import DecodeFailure, decode_bytes
from facecli.imaging.encode import thumbnail_jpeg
from facecli.pipeline.check import FaceChecker, one_face_gate
from facecli.server.openapi import docs_html, openapi_schema
from facecli.sinks.base import FACE_STORAGE_TYPES
from facecli.vision.align import align_face

log = logging.getLogger("facecli.server")

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_TAKE = 1000
#: Deepest JSON nesting a body may have (the API's deepest body is 4): deeper is a 412, whether
#: json.loads gives up (RecursionError) or the iterative check after it finds it.
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
SUCCESS = "OK"


class ApiError(Exception):
    """An error answer: HTTP status + the OpenCV FR ``{code, message}`` body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def unprocessable(message: str) -> ApiError:
    return ApiError(412, "ERR_UNPROCESSABLE_CONTENT", message)


# --------------------------------------------------------------------------- request parsing


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ..., where: str = "") -> Any:
    """A typed field; a missing required one or a wrong type is a 412."""
    label = f"{where}{name}"
    if name not in body or body[name] is None:
        if default is ...:
            raise unprocessable(f"{label} is required")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:  # JSON true is not a number here
        raise unprocessable(f"{label} must be {_type_name(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise unprocessable(f"{label} must be {_type_name(kinds)}, got {type(value).__name__}")
    return value


def _type_name(kinds: Iterable[type]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "an object",
             list: "an array"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _valid_collection(name: str) -> str:
    """facecli.ids' collection-name rule, for every endpoint: 400 ERR_INVALID_COLLECTION_NAME."""
    why = validate_collection_name(name)
    if why:
        raise ApiError(400, "ERR_INVALID_COLLECTION_NAME", why)
    return name


def _collection_name(body: dict[str, Any], field: str) -> str:
    return _valid_collection(_field(body, field, str))


def _valid_person_id(pid: str, label: str = "person_id") -> str:
    """facecli.ids' person-id rule, for every endpoint: 412 ERR_UNPROCESSABLE_CONTENT (the message
    shows the id escaped, or only its length when it is too long)."""
    why = validate_person_id(pid)
    if why:
        raise unprocessable(f"{label}: {why}")
    return pid


def _too_deep(data: Any, limit: int) -> bool:
    """Whether parsed JSON nests arrays/objects more than ``limit`` deep (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _metadata(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise unprocessable(f"{where}metadata must be an object of string values")
    return dict(value)


def _storage(body: dict[str, Any]) -> str:
    storage = _field(body, "face_storage_type", str, "NoStorage")
    if storage not in FACE_STORAGE_TYPES:
        raise unprocessable(f"face_storage_type must be one of {', '.join(FACE_STORAGE_TYPES)}")
    return storage


def _score(body: dict[str, Any], name: str, default: float) -> float:
    value = float(_field(body, name, (int, float), default))
    if not 0.0 <= value <= 1.0:
        raise unprocessable(f"{name} must be between 0 and 1")
    return value


def _no_liveness(body: dict[str, Any]) -> None:
    if _field(body, "check_liveness", bool, False):
        raise unprocessable("check_liveness is not supported by facecli serve (no liveness model); send false")


_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(_DATA_URI.sub("", value.strip()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _query_int(request: Request, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise unprocessable(f"{name} must be an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise unprocessable(f"{name} must be between {lo} and {hi}" if hi is not None else f"{name} must be >= {lo}")
    return value


# --------------------------------------------------------------------------- faces


@dataclass
class Analysed:
    """One uploaded image after decode + detect + the one-face gate (+ embedding, later)."""

    code: str | None = None  # ERR_... when the image is refused
    message: str = ""
    crop: np.ndarray | None = None
    sha256: str = ""
    det_score: float = 0.0
    image: bytes | None = None  # what face_storage_type keeps
    image_kind: str | None = None
    embedding: np.ndarray | None = None


def analyse(checker: FaceChecker, data: bytes | None, storage: str = "NoStorage", strict: bool = True) -> Analysed:
    """Decode, detect and gate one image. ``strict``: refuse several comparable faces (enrollment);
    otherwise use the main face (search)."""
    if data is None:
        return Analysed("ERR_INVALID_IMAGE", "face_base_64 is not valid base64")
    try:
        image = decode_bytes(data, checker.config.limits)
    except DecodeFailure as exc:
        return Analysed("ERR_INVALID_IMAGE", f"{exc.reason}: {exc.message}")
    gate, verdict = one_face_gate(checker.detector, checker.thresholds, image.rgb, image.scale,
                                  (image.source_width, image.source_height))
    if gate.main is None:
        return Analysed("ERR_NO_FACE_DETECTED", "no face detected in the image")
    if strict and verdict is not None:
        return Analysed("ERR_MULTIPLE_FACES_DETECTED", f"{verdict[1]}; send an image with one face")
    a = Analysed(crop=align_face(image.rgb, gate.main.landmarks / image.scale), sha256=image.sha256,
                 det_score=float(gate.main.score))
    if storage == "StoreThumbnails":
        a.image, a.image_kind = thumbnail_jpeg(image.rgb, gate.main.box / image.scale), "thumbnail"
    elif storage == "StoreFullImage":
        a.image, a.image_kind = bytes(data), "full"
    return a


# --------------------------------------------------------------------------- the app


class FaceServer:
    """The state behind the routes: engine, models, keys, limits."""

    def __init__(self, engine: eng.Engine, checker: FaceChecker, api_keys: Iterable[str] | None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, inference_workers: int = 2) -> None:
        self.engine = engine
        self.checker = checker
        self.api_keys = None if api_keys is None else [k.encode() for k in api_keys if k]
        if self.api_keys is not None and not self.api_keys:
            raise ValueError("api_keys is empty: pass None to disable authentication explicitly")
        self.max_body_bytes = max_body_bytes
        self._inference = threading.BoundedSemaphore(max(1, inference_workers))

    # -- plumbing ----------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if self.api_keys is None:
            return
        key = request.headers.get("x-api-key")
        if not key:
            raise ApiError(401, "ERR_API_KEY_NOT_PRESENT", "The API key is missing from the request.")
        given = key.encode()
        if not any(hmac.compare_digest(given, k) for k in self.api_keys):
            raise ApiError(403, "ERR_API_KEY_NOT_VALID", "The API key is not valid.")

    async def body(self, request: Request) -> dict[str, Any]:
        """The JSON object body, read under the size limit (413) and parsed strictly (412)."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    too_big = True
                if not too_big:
                    chunks.append(chunk)
                elif size > 4 * limit:  # stop draining an abusive upload; the connection closes
                    break
        except ClientDisconnect:
            raise ApiError(400, "ERR_UNPROCESSABLE_CONTENT", "client disconnected") from None
        if too_big:
            raise ApiError(413, "ERR_PAYLOAD_IS_TOO_LARGE",
                           f"request body is over this server's limit of {limit} bytes; send smaller batches")
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise unprocessable(f"malformed JSON: {exc}") from None
        except RecursionError:  # past the parser's own limit: refused like any body past ours
            raise unprocessable(_TOO_DEEP) from None
        if isinstance(data, (dict, list)) and _too_deep(data, MAX_JSON_DEPTH):
            raise unprocessable(_TOO_DEEP)
        if not isinstance(data, dict):
            raise unprocessable("the body must be a JSON object")
        return data

    async def db(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run an engine call in the thread pool; engine errors -> API errors."""
        try:
            return await run_in_threadpool(fn, *args, **kw)
        except eng.InvalidCollectionName as exc:
            raise ApiError(400, "ERR_INVALID_COLLECTION_NAME", str(exc)) from None
        except eng.CollectionNotFound as exc:
            raise ApiError(404, "ERR_NOT_FOUND", str(exc)) from None
        except eng.PersonNotFound as exc:
            raise ApiError(404, "ERR_NOT_FOUND", str(exc)) from None
        except eng.CollectionExists as exc:
            raise ApiError(409, "ERR_ALREADY_EXISTS", str(exc)) from None
        except eng.InvalidInput as exc:
            raise unprocessable(str(exc)) from None
        except (eng.EngineError, sqlite3.Error) as exc:
            log.warning("database error: %s", exc)
            raise ApiError(500, "ERR_DATABASE_ERROR",
                           "An error occurred while connecting with the database, please retry your request later") from None

    def _analyse_all(self, images: list[bytes | None], storage: str, strict: bool) -> list[Analysed]:
        """Decode + detect each image, then embed every accepted face in one batch."""
        with self._inference:
            out = [analyse(self.checker, data, storage, strict) for data in images]
            todo = [a for a in out if a.crop is not None]
            if todo:
                embeddings = self.checker.recognizer.embed(np.stack([a.crop for a in todo]))
                for a, e in zip(todo, embeddings, strict=True):
                    a.embedding, a.crop = e, None
        return out

    @staticmethod
    def _engine_person(pid: str, name: str, meta: dict[str, str], a: Analysed) -> eng.EnginePerson:
        face = eng.EngineFace(embedding=a.embedding, image_sha256=a.sha256, quality={"det_score": round(a.det_score, 4)},
                              source_path="upload", image=a.image, image_kind=a.image_kind)
        return eng.EnginePerson(person_id=pid, person_name=name, metadata=meta, faces=[face])

    def _upsert(self, collection: str, persons: list[eng.EnginePerson]) -> dict[int, tuple[str, str]]:
        """One transaction for the batch; a person the engine refuses is isolated (ERR_UNPROCESSABLE_CONTENT).
        Returns index -> (code, message)."""
        try:
            return {i: (SUCCESS, str(r.action)) for i, r in enumerate(self.engine.upsert_persons(collection, persons))}
        except eng.InvalidInput:
            pass
        out = {}
        for i, p in enumerate(persons):
            try:
                out[i] = (SUCCESS, str(self.engine.upsert_persons(collection, [p])[0].action))
            except eng.InvalidInput as exc:
                out[i] = ("ERR_UNPROCESSABLE_CONTENT", str(exc))
        return out

    # -- endpoints ---------------------------------------------------------------------------

    async def create_collection(self, request: Request) -> Response:
        body = await self.body(request)
        name = _collection_name(body, "name")
        info = await self.db(self.engine.create_collection, name)
        return JSONResponse({"name": info.name, "num_persons": info.num_persons})

    async def delete_collection(self, request: Request) -> Response:
        body = await self.body(request)
        name = _collection_name(body, "name")
        info = await self.db(self.engine.get_collection, name)
        await self.db(self.engine.delete_collection, name)
        return JSONResponse({"name": name, "num_persons": info.num_persons})

    async def list_collections(self, request: Request) -> Response:
        skip = _query_int(request, "skip", 0, 0)
        take = _query_int(request, "take", 20, 0, MAX_TAKE)
        name = request.query_params.get("name")
        if name:
            _valid_collection(name)
            try:
                rows = [await self.db(self.engine.get_collection, name)]
            except ApiError as exc:
                if exc.status not in (400, 404):
                    raise
                rows = []
            total, rows = len(rows), rows[skip: skip + take]
        else:
            total, rows = await self.db(self.engine.list_collections, limit=take, offset=skip)
        return JSONResponse({"count": total, "collections": [
            {"name": c.name, "num_persons": c.num_persons, "num_faces": c.num_faces, "created": c.created,
             "modified": c.modified} for c in rows]})

    @staticmethod
    def _person_json(p: eng.PersonInfo) -> dict[str, Any]:
        out = {"person_id": p.person_id, "person_name": p.person_name, "metadata": p.metadata, "faces": p.faces,
               "created": p.created, "modified": p.modified}
        out.update({k: v for k, v in (("gender", p.gender), ("date_of_birth", p.date_of_birth),
                                      ("nationality", p.nationality), ("notes", p.notes)) if v})
        return out

    async def list_persons(self, request: Request) -> Response:
        collection = request.query_params.get("collection_name")
        if not collection:
            raise unprocessable("collection_name is required")
        _valid_collection(collection)
        skip = _query_int(request, "skip", 0, 0)
        take = _query_int(request, "take", 20, 0, MAX_TAKE)
        person_id = request.query_params.get("person_id")
        if person_id is not None:
            _valid_person_id(person_id)
            p = await self.db(self.engine.get_person, collection, person_id)
            rows = [p] if p is not None else []
            total, rows = len(rows), rows[skip: skip + take]
        else:
            total, rows = await self.db(self.engine.list_persons, collection, limit=take, offset=skip)
        return JSONResponse({"count": total, "persons": [self._person_json(p) for p in rows]})

    def _persons_body(self, body: dict[str, Any]) -> list[tuple[str, str, dict[str, str], str]]:
        persons = _field(body, "persons", list)
        out = []
        for i, p in enumerate(persons):
            where = f"persons[{i}]."
            if not isinstance(p, dict):
                raise unprocessable(f"persons[{i}] must be an object")
            pid = _valid_person_id(_field(p, "person_id", str, where=where), f"{where}person_id")
            name = _field(p, "person_name", str, "", where=where)
            face = _field(p, "face_base_64", str, where=where)
            out.append((pid, name, _metadata(p.get("metadata"), where), face))
        return out

    async def put_persons(self, request: Request) -> Response:
        body = await self.body(request)
        collection = _collection_name(body, "collection_name")
        storage = _storage(body)
        persons = self._persons_body(body)
        await self.db(self.engine.get_collection, collection)  # 404 before the expensive part
        analysed = await run_in_threadpool(self._analyse_all, [_b64(f) for *_, f in persons], storage, True)
        good = [i for i, a in enumerate(analysed) if a.code is None]
        stored = await self.db(self._upsert, collection,
                               [self._engine_person(*persons[i][:3], analysed[i]) for i in good])
        results = []
        by_index = {i: stored[j] for j, i in enumerate(good)}
        for i, ((pid, _, meta, _), a) in enumerate(zip(persons, analysed, strict=True)):
            code, message = (a.code, a.message) if a.code else by_index[i]
            results.append({"code": code, "message": message, "metadata": meta, "person_id": pid})
        return JSONResponse(results)

    async def put_person(self, request: Request) -> Response:
        body = await self.body(request)
        collection = _collection_name(body, "collection_name")
        storage = _storage(body)
        pid = _valid_person_id(_field(body, "person_id", str))
        name = _field(body, "person_name", str, "")
        face = _field(body, "face_base_64", str)
        meta = _metadata(body.get("metadata"), "")
        check_duplicates = _field(body, "check_duplicates", bool, False)
        dup_min = _score(body, "duplicate_check_min_similarity", 0.7)
        _no_liveness(body)
        await self.db(self.engine.get_collection, collection)
        (a,) = await run_in_threadpool(self._analyse_all, [_b64(face)], storage, True)
        if a.code:
            raise ApiError(412, a.code, a.message)
        if check_duplicates:
            hits = (await self.db(self.engine.search, collection, a.embedding, k=5, min_score=dup_min))[0]
            clash = next((h for h in hits if h.person_id != pid), None)
            if clash is not None:
                raise ApiError(409, "ERR_ALREADY_EXISTS", f"this face is already enrolled as person "
                                                          f"{clash.person_id!r} (similarity {clash.score:.3f})")
        code, message = (await self.db(self._upsert, collection, [self._engine_person(pid, name, meta, a)]))[0]
        if code != SUCCESS:
            raise ApiError(412, code, message)
        return JSONResponse({"code": code, "message": message, "metadata": meta, "person_id": pid})

    async def face_search(self, request: Request) -> Response:
        body = await self.body(request)
        collection = _collection_name(body, "collection_name")
        face = _field(body, "face_base_64", str)
        min_score = _score(body, "min_similarity_score", 0.7)
        k = _field(body, "max_results", int, 1)
        if not 1 <= k <= MAX_TAKE:
            raise unprocessable(f"max_results must be between 1 and {MAX_TAKE}")
        _no_liveness(body)
        await self.db(self.engine.get_collection, collection)
        (a,) = await run_in_threadpool(self._analyse_all, [_b64(face)], "NoStorage", False)
        if a.code:
            raise ApiError(412, a.code, a.message)
        hits = (await self.db(self.engine.search, collection, a.embedding, k=k, min_score=min_score))[0]
        return JSONResponse([{"person_id": h.person_id, "person_name": h.person_name, "score": round(h.score, 6),
                              "metadata": h.metadata} for h in hits])


def _protected(server: FaceServer, handler: Callable[[Request], Awaitable[Response]]):
    async def endpoint(request: Request) -> Response:
        server.authorize(request)
        return await handler(request)

    endpoint.__name__ = handler.__name__
    return endpoint


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "ERR_NOT_FOUND", 405: "ERR_METHOD_NOT_ALLOWED"}.get(exc.status_code, f"ERR_HTTP_{exc.status_code}")
    return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"code": "ERR_INTERNAL_SERVER_ERROR", "message": "unexpected server error; please retry"},
                        status_code=500)


def create_app(engine: eng.Engine, checker: FaceChecker, api_keys: Iterable[str] | None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, inference_workers: int = 2) -> Starlette:
    """The ASGI app. ``api_keys=None`` disables authentication (the CLI allows it on loopback only)."""
    server = FaceServer(engine, checker, api_keys, max_body_bytes, inference_workers)
    schema = openapi_schema(__version__, max_body_bytes)
    html = docs_html(schema)

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema)

    async def docs(request: Request) -> Response:
        return HTMLResponse(html)

    async def health(request: Request) -> Response:
        # the recognizer's fingerprint: a client whose own model has the same sha256 reads this
        # server's search scores through its score model (false-match probabilities, duplicates)
        return JSONResponse({"status": "ok", "version": __version__,
                             "recognizer_sha256": checker.recognizer.model.file.sha256})

    p = lambda h: _protected(server, h)  # noqa: E731
    routes = [
        Route("/collection", p(server.create_collection), methods=["POST"]),
        Route("/collection", p(server.delete_collection), methods=["DELETE"]),
        Route("/collections", p(server.list_collections), methods=["GET"]),
        Route("/person", p(server.put_person), methods=["PUT"]),
        Route("/persons", p(server.put_persons), methods=["PUT"]),
        Route("/persons", p(server.list_persons), methods=["GET"]),
        Route("/face-search", p(server.face_search), methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error,
                                                       Exception: _server_error})
    app.state.server = server
    return app
