"""Contract-faithful fakes of the seed APIs (../shared/APIS.md), served for real on 127.0.0.1 by
tests/live_server.LiveServer: OpenCV FR cloud, Verifik and Persona.

Each fake checks auth as documented, validates bodies with the documented status codes and error
bodies, keeps its state in memory (inspected by the tests), and has knobs for the faults a test
needs: ``throttle(n)`` (the next n requests answer 429), ``reject`` (names refused as a validation
error). Search scores come from an ``embed(jpeg) -> unit vector | None`` the test supplies (the
real models), so a search finds the same person from another photo.

Where APIS.md marks something as unclear (I), the fake picks one plausible behaviour and says so.
The OpenCV FR cloud fake follows the vendor's SDK and OpenAPI document where they differ from
APIS.md (tests/test_sdk_conformance.py drives it through the SDK); the Verifik and Persona fakes
follow APIS.md only (no SDK or OpenAPI document of theirs is available to check against).
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import io
import itertools
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Embed = Callable[[bytes], "np.ndarray | None"]
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.size
    except Exception:  # noqa: BLE001 - anything unreadable is "not an image"
        return None


def b64(text: Any) -> bytes | None:
    if not isinstance(text, str) or text.startswith("data:"):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class FakeBase:
    """Shared state and knobs."""

    def __init__(self, embed: Embed | None = None) -> None:
        self.embed = embed
        self.lock = threading.Lock()
        self.counts: Counter = Counter()  # "METHOD /route" and statuses
        self.throttled_at: list[float] = []
        self.after_throttle: list[float] = []
        self.reject: set[str] = set()
        self._throttle = 0
        self.retry_after = "0.2"
        self.seq = itertools.count(1)
        self.auth_headers: list[str] = []

    def throttle(self, n: int, retry_after: str = "0.2") -> None:
        with self.lock:
            self._throttle, self.retry_after = n, retry_after

    def _take_throttle(self) -> bool:
        with self.lock:
            if self._throttle > 0:
                self._throttle -= 1
                self.throttled_at.append(time.monotonic())
                return True
            if self.throttled_at and len(self.after_throttle) < len(self.throttled_at):
                self.after_throttle.append(time.monotonic())
            return False

    def _score(self, probe: bytes, images: list[bytes]) -> float | None:
        if self.embed is None:
            return None
        q = self.embed(probe)
        if q is None:
            return None
        best = None
        for img in images:
            e = self.embed(img)
            if e is not None:
                s = float(np.dot(q, e))
                best = s if best is None else max(best, s)
        return best


# ---------------------------------------------------------------------------------------------
# OpenCV FR cloud


class FakeOpenCVFRCloud(FakeBase):
    """OpenCV FR cloud, held to the vendor's own descriptions of the service: its Python SDK
    (``opencv-face-recognition`` 1.1.1, whose schema classes parse every answer;
    tests/test_sdk_conformance.py drives this fake through it) and its published OpenAPI document
    (https://us.opencv.fr/openapi.json, "OpenCV Face Recognition" 2026.07.15, read by hand: the
    field limits below). Where APIS.md differs, those win.

    - A collection is ``{id (a 36-character UUID), name (1..50), description (null or 0..100),
      count (persons in it), create_date, modified_date}``; ``GET /collections?skip&take(<=100)&order
      &search`` -> ``{count, collections}``; ``GET|DELETE /collection/{id}``; ``PATCH /collection
      {id, name?, description?}``; ``PATCH /collection/persons {collection_id, new_person_ids,
      removed_person_ids}`` echoes them.
    - A person is ``{id (1..100), name (null or 1..100), gender (M|F|null), date_of_birth
      (YYYY-MM-DD|null), nationality, notes (null or 0..500), collections: [collection objects],
      thumbnails: [{id, thumbnail: base64 JPEG}], create_date, modified_date}``. It is *sent* with
      ``collections`` as ids, 1..3 ``images`` and ``"id": null`` (or no id) for a server-made one;
      ``name`` is optional. ``PATCH /person`` carries the id and only the fields to change
      (``images`` replaces the faces). ``GET /persons?skip&take(<=100)&order&order_by&search`` ->
      ``{count, persons}``; ``DELETE /person/{id}`` -> ``{id}``; ``PATCH /persons {action:
      "DELETE", person_ids}`` -> ``[{id}]``.
    - ``POST /search {images (1..3), collection_id (null: every person), min_score (0..1, default
      0.81), max_results (1..500, default 10), search_mode (FAST|ACCURATE)}`` -> 200
      ``[{...person, score}]``, best first. Creates answer 201, everything else 200.
    - Errors: 422 ``{"detail": [{loc, msg, type}]}`` (the only one the OpenAPI document lists);
      every other one ``{code, message}`` (the SDK reads both keys); ``retry-after`` on 429 is whole
      seconds (the SDK does ``int()`` on it).

    Assumptions (neither the SDK nor the OpenAPI document pins them down): the status and code of
    the other errors (borrowed from the Server: 401 ERR_API_KEY_NOT_PRESENT without a key, 403
    ERR_API_KEY_NOT_VALID with a wrong one, 404 ERR_NOT_FOUND, 409 ERR_ALREADY_EXISTS for a create
    with an id that exists, 429 ERR_TOO_MANY_REQUESTS); the ``type``/``msg`` wording inside 422
    details (the image checks' types are the fake's own); dates carry a UTC offset; a server-made
    person id is a UUID; an unknown collection id inside a person is a 422 and in a search a 404; a
    probe without a face finds nobody (200 ``[]``); ``search`` matches person names and collection
    names or descriptions, case-insensitively, as substrings; collections list in creation order;
    collection names need not be unique; deleting a collection keeps its persons; thumbnails are
    the images shrunk to at most 160 px."""

    def __init__(self, api_key: str, embed: Embed | None = None) -> None:
        super().__init__(embed)
        self.retry_after = "1"
        self.api_key = api_key
        self.collections: dict[str, dict[str, Any]] = {}
        self.persons: dict[str, dict[str, Any]] = {}  # collections as ids, plus the stored image count (faces)
        self.images: dict[str, list[bytes]] = {}
        self.thumbs: dict[str, list[dict[str, str]]] = {}
        self.app = Starlette(routes=[
            Route("/collections", self.list_collections, methods=["GET"]),
            Route("/collection", self.create_collection, methods=["POST"]),
            Route("/collection", self.update_collection, methods=["PATCH"]),
            Route("/collection/persons", self.collection_persons, methods=["PATCH"]),
            Route("/collection/{cid:path}", self.get_collection, methods=["GET"]),
            Route("/collection/{cid:path}", self.delete_collection, methods=["DELETE"]),
            Route("/person/{pid:path}", self.get_person, methods=["GET"]),
            Route("/person/{pid:path}", self.delete_person, methods=["DELETE"]),
            Route("/person", self.post_person, methods=["POST"]),
            Route("/person", self.patch_person, methods=["PATCH"]),
            Route("/persons", self.list_persons, methods=["GET"]),
            Route("/persons", self.bulk_persons, methods=["PATCH"]),
            Route("/search", self.search, methods=["POST"]),
        ], exception_handlers={404: self._no_route, 405: self._no_route})

    def throttle(self, n: int, retry_after: str = "1") -> None:
        if not retry_after.isdigit():
            raise ValueError(f"retry-after {retry_after!r}: the SDK reads whole seconds (int())")
        super().throttle(n, retry_after)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            key = headers.get(b"x-api-key")
            self.counts[f"{scope['method']} {scope['path'].split('/')[1]}"] += 1
            if key is None:
                return await _err(401, {"code": "ERR_API_KEY_NOT_PRESENT", "message": "API key not present"})(scope, receive, send)
            if key.decode() != self.api_key:
                return await _err(403, {"code": "ERR_API_KEY_NOT_VALID", "message": "API key not valid"})(scope, receive, send)
            if self._take_throttle():
                return await JSONResponse({"code": "ERR_TOO_MANY_REQUESTS", "message": "slow down"}, 429,
                                          headers={"retry-after": self.retry_after})(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    async def _no_route(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return JSONResponse({"code": "ERR_NOT_FOUND" if status == 404 else "ERR_METHOD_NOT_ALLOWED",
                             "message": f"{request.method} {request.url.path}: no such route"}, status)

    @staticmethod
    def _invalid(*details: tuple[list[Any], str, str], where: str = "body") -> JSONResponse:
        return JSONResponse({"detail": [{"loc": [where, *loc], "msg": msg, "type": typ}
                                        for loc, msg, typ in details]}, 422)

    @staticmethod
    def _not_found(what: str) -> JSONResponse:
        return JSONResponse({"code": "ERR_NOT_FOUND", "message": f"{what} not found"}, 404)

    @staticmethod
    def _text(errs: list[tuple[list[Any], str, str]], body: dict[str, Any], key: str, lo: int, hi: int,
              required: bool = False) -> None:
        """The OpenAPI document's string fields: ``str`` of lo..hi characters, or null unless required."""
        v = body.get(key)
        if v is None:
            if required:
                errs.append(([key], "field required", "value_error.missing"))
        elif not isinstance(v, str):
            errs.append(([key], "str type expected", "type_error.str"))
        elif not lo <= len(v) <= hi:
            errs.append(([key], f"ensure this value has {lo} to {hi} characters", "value_error.any_str.length"))

    # -- answers in the SDK's shapes ------------------------------------------------------------

    def collection_out(self, cid: str) -> dict[str, Any]:
        c = self.collections[cid]
        return c | {"count": sum(cid in p["collections"] for p in self.persons.values())}

    def person_out(self, pid: str) -> dict[str, Any]:
        p = self.persons[pid]
        return {"id": pid, "name": p.get("name"), "gender": p.get("gender"), "date_of_birth": p.get("date_of_birth"),
                "nationality": p.get("nationality"), "notes": p.get("notes"),
                "collections": [self.collection_out(c) for c in p["collections"] if c in self.collections],
                "thumbnails": self.thumbs.get(pid, []), "create_date": p["create_date"],
                "modified_date": p["modified_date"]}

    def _page(self, rows: list[Any], q: Any, key: Callable[[Any], Any]) -> list[Any] | JSONResponse:
        try:
            skip, take = int(q.get("skip", 0)), int(q.get("take", 20))
        except ValueError:
            return self._invalid((["skip"], "value is not a valid integer", "type_error.integer"), where="query")
        if skip < 0 or not 0 <= take <= 100:
            return self._invalid((["take"], "skip >= 0 and take 0..100", "value_error.number"), where="query")
        if q.get("order", "ASC") not in ("ASC", "DESC"):
            return self._invalid((["order"], "unexpected value; permitted: 'ASC', 'DESC'", "type_error.enum"),
                                 where="query")
        return sorted(rows, key=key, reverse=q.get("order") == "DESC")[skip:skip + take]

    # -- collections ----------------------------------------------------------------------------

    async def list_collections(self, request: Request) -> Response:
        q = request.query_params
        s = q.get("search", "").lower()
        ids = [cid for cid, c in self.collections.items()
               if s in c["name"].lower() or s in (c.get("description") or "").lower()]
        order = {cid: i for i, cid in enumerate(self.collections)}
        page = self._page(ids, q, key=order.__getitem__)
        if isinstance(page, Response):
            return page
        return JSONResponse({"count": len(ids), "collections": [self.collection_out(c) for c in page]})

    def _collection_fields(self, body: Any, create: bool) -> JSONResponse | None:
        if not isinstance(body, dict):
            return self._invalid(([], "value is not a valid dict", "type_error.dict"))
        errs: list[tuple[list[Any], str, str]] = []
        if not create:
            self._text(errs, body, "id", 36, 36, required=True)
        self._text(errs, body, "name", 1, 50, required=create)
        self._text(errs, body, "description", 0, 100)
        return self._invalid(*errs) if errs else None

    async def create_collection(self, request: Request) -> Response:
        body = await _json_body(request)
        bad = self._collection_fields(body, create=True)
        if bad:
            return bad
        cid, now = str(uuid.uuid4()), _now()
        self.collections[cid] = {"id": cid, "name": body["name"], "description": body.get("description"),
                                 "create_date": now, "modified_date": now}
        return JSONResponse(self.collection_out(cid), 201)

    async def update_collection(self, request: Request) -> Response:
        body = await _json_body(request)
        bad = self._collection_fields(body, create=False)
        if bad:
            return bad
        c = self.collections.get(body["id"])
        if c is None:
            return self._not_found("collection")
        if body.get("name") is not None:  # null: unchanged (name is required on a collection)
            c["name"] = body["name"]
        if "description" in body:
            c["description"] = body["description"]
        c["modified_date"] = _now()  # the dates and count the SDK echoes back are read-only
        return JSONResponse(self.collection_out(body["id"]))

    async def get_collection(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        return JSONResponse(self.collection_out(cid)) if cid in self.collections else self._not_found("collection")

    async def delete_collection(self, request: Request) -> Response:
        cid = request.path_params["cid"]
        if cid not in self.collections:
            return self._not_found("collection")
        del self.collections[cid]
        for p in self.persons.values():  # its persons stay, outside it
            p["collections"] = [c for c in p["collections"] if c != cid]
        return JSONResponse({"id": cid})

    async def collection_persons(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return self._invalid(([], "value is not a valid dict", "type_error.dict"))
        errs: list[tuple[list[Any], str, str]] = []
        self._text(errs, body, "collection_id", 36, 36, required=True)
        add, remove = body.get("new_person_ids") or [], body.get("removed_person_ids") or []
        if not isinstance(add, list) or not isinstance(remove, list):
            errs.append((["new_person_ids"], "value is not a valid list", "type_error.list"))
        if errs:
            return self._invalid(*errs)
        cid = body["collection_id"]
        if cid not in self.collections:
            return self._not_found("collection")
        if any(pid not in self.persons for pid in [*add, *remove]):
            return self._not_found("person")
        for pid in add:
            if cid not in self.persons[pid]["collections"]:
                self.persons[pid]["collections"].append(cid)
        for pid in remove:
            self.persons[pid]["collections"] = [c for c in self.persons[pid]["collections"] if c != cid]
        return JSONResponse({"collection_id": cid, "new_person_ids": add, "removed_person_ids": remove})

    # -- persons --------------------------------------------------------------------------------

    async def get_person(self, request: Request) -> Response:
        pid = request.path_params["pid"]
        return JSONResponse(self.person_out(pid)) if pid in self.persons else self._not_found("person")

    async def delete_person(self, request: Request) -> Response:
        pid = request.path_params["pid"]
        if pid not in self.persons:
            return self._not_found("person")
        self._drop(pid)
        return JSONResponse({"id": pid})

    def _drop(self, pid: str) -> None:
        for d in (self.persons, self.images, self.thumbs):
            d.pop(pid, None)

    def _validate(self, body: Any, partial: bool) -> tuple[JSONResponse | None, list[bytes] | None]:
        if not isinstance(body, dict):
            return self._invalid(([], "value is not a valid dict", "type_error.dict")), None
        errs: list[tuple[list[Any], str, str]] = []
        self._text(errs, body, "id", 1, 100, required=partial)  # null on create: the server makes one
        self._text(errs, body, "name", 1, 100)
        if not isinstance(body.get("nationality"), (str, type(None))):  # no length published
            errs.append((["nationality"], "str type expected", "type_error.str"))
        self._text(errs, body, "notes", 0, 500)
        images = None
        if body.get("images") is not None or not partial:
            imgs = body.get("images")
            if not isinstance(imgs, list) or not 1 <= len(imgs) <= 3:
                errs.append((["images"], "ensure this value has 1 to 3 items", "value_error.list.size"))
            else:
                images = []
                for i, text in enumerate(imgs):
                    data = b64(text)
                    size = image_size(data) if data else None
                    if size is None:
                        errs.append((["images", i], "not a base64 JPEG", "value_error.image"))
                    elif size[0] < 224 or size[1] < 224:
                        errs.append((["images", i], f"image is {size[0]}x{size[1]}; it must be at least 224x224",
                                     "value_error.image_too_small"))
                    else:
                        images.append(data)
        if body.get("gender") not in (None, "M", "F"):
            errs.append((["gender"], "unexpected value; permitted: 'M', 'F'", "type_error.enum"))
        dob = body.get("date_of_birth")
        if dob is not None and not (isinstance(dob, str) and _DATE.fullmatch(dob)):
            errs.append((["date_of_birth"], "invalid date format", "value_error.date"))
        cols = body.get("collections")
        if cols is not None and (not isinstance(cols, list) or any(c not in self.collections for c in cols)):
            errs.append((["collections"], "unknown collection id", "value_error.collection"))
        if body.get("is_bulk_insert") not in (None, True, False):
            errs.append((["is_bulk_insert"], "value could not be parsed to a boolean", "type_error.bool"))
        if isinstance(body.get("name"), str) and body["name"] in self.reject:
            errs.append((["images", 0], "no face detected", "value_error.no_face"))
        return (self._invalid(*errs) if errs else None), images

    def _store(self, pid: str, body: dict[str, Any], images: list[bytes] | None, old: dict[str, Any] | None) -> None:
        now = _now()
        p = dict(old or {"id": pid, "collections": [], "create_date": now})
        for k in ("name", "gender", "date_of_birth", "nationality", "collections", "notes"):
            if k in body:
                p[k] = list(body[k] or []) if k == "collections" else body[k]
        p["modified_date"] = now
        if images is not None:
            self.images[pid] = images
            self.thumbs[pid] = [{"id": f"thumb-{next(self.seq)}", "thumbnail": _thumbnail(img)} for img in images]
        p["faces"] = len(self.images.get(pid, []))
        self.persons[pid] = p

    async def post_person(self, request: Request) -> Response:
        body = await _json_body(request)
        bad, images = self._validate(body, partial=False)
        if bad:
            return bad
        pid = body.get("id") or str(uuid.uuid4())
        if pid in self.persons:
            return JSONResponse({"code": "ERR_ALREADY_EXISTS", "message": "a person with this id exists"}, 409)
        self._store(pid, body, images, None)
        return JSONResponse(self.person_out(pid), 201)

    async def patch_person(self, request: Request) -> Response:
        body = await _json_body(request)
        bad, images = self._validate(body, partial=True)
        if bad:
            return bad
        old = self.persons.get(body["id"])
        if old is None:
            return self._not_found("person")
        self._store(body["id"], body, images, old)
        return JSONResponse(self.person_out(body["id"]))

    async def list_persons(self, request: Request) -> Response:
        q = request.query_params
        s = q.get("search", "").lower()
        ids = [pid for pid, p in self.persons.items() if s in (p.get("name") or "").lower()]
        field = q.get("order_by", "name")
        if field not in ("name", "date_of_birth", "gender", "nationality", "modified_date", "create_date"):
            return self._invalid((["order_by"], "unexpected value", "type_error.enum"), where="query")
        order = {pid: i for i, pid in enumerate(self.persons)}
        page = self._page(ids, q, key=lambda pid: (self.persons[pid].get(field) or "", order[pid]))
        if isinstance(page, Response):
            return page
        return JSONResponse({"count": len(ids), "persons": [self.person_out(p) for p in page]})

    async def bulk_persons(self, request: Request) -> Response:
        body = await _json_body(request)
        ids = body.get("person_ids") if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("action") != "DELETE":
            return self._invalid((["action"], "unexpected value; permitted: 'DELETE'", "type_error.enum"))
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return self._invalid((["person_ids"], "a non-empty list of ids", "value_error.list"))
        done = [pid for pid in ids if pid in self.persons]
        for pid in done:
            self._drop(pid)
        return JSONResponse([{"id": pid} for pid in done])

    # -- search ---------------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return self._invalid(([], "value is not a valid dict", "type_error.dict"))
        imgs, cid = body.get("images"), body.get("collection_id")
        min_score = 0.81 if body.get("min_score") is None else body["min_score"]
        max_results = 10 if body.get("max_results") is None else body["max_results"]
        errs: list[tuple[list[Any], str, str]] = []
        if not isinstance(imgs, list) or not 1 <= len(imgs) <= 3 or any(b64(i) is None for i in imgs):
            errs.append((["images"], "1 to 3 base64 images", "value_error.list.size"))
        self._text(errs, body, "collection_id", 36, 36)
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
            errs.append((["min_score"], "a number from 0 to 1", "value_error.number"))
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= 500:
            errs.append((["max_results"], "an integer from 1 to 500", "value_error.number"))
        if body.get("search_mode") not in (None, "FAST", "ACCURATE"):
            errs.append((["search_mode"], "unexpected value; permitted: 'ACCURATE', 'FAST'", "type_error.enum"))
        if errs:
            return self._invalid(*errs)
        if cid is not None and cid not in self.collections:
            return self._not_found("collection")
        probe = b64(imgs[0]) or b""
        out = []
        for pid, p in self.persons.items():
            if cid is None or cid in p["collections"]:
                score = self._score(probe, self.images.get(pid, []))
                if score is not None and score >= float(min_score):
                    out.append(self.person_out(pid) | {"score": score})
        return JSONResponse(sorted(out, key=lambda r: -r["score"])[:max_results])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _thumbnail(data: bytes, side: int = 160) -> str:
    with Image.open(io.BytesIO(data)) as img:
        small = img.convert("RGB")
        small.thumbnail((side, side))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Verifik


class FakeVerifik(FakeBase):
    """Bearer token; answers wrapped ``{id, data, signature}``; errors as documented.

    (I) choices: create answers 200; uniqueness is name + date_of_birth within any shared collection."""

    API = "/v2/face-recognition"

    def __init__(self, token: str, embed: Embed | None = None, expired: str = "expired-token") -> None:
        super().__init__(embed)
        self.token, self.expired = token, expired
        self.collections: dict[str, dict[str, Any]] = {}
        self.persons: dict[str, dict[str, Any]] = {}
        self.images: dict[str, list[bytes]] = {}
        a = self.API
        self.app = Starlette(routes=[
            Route(f"{a}/collections", self.list_collections, methods=["GET"]),
            Route(f"{a}/collections", self.create_collection, methods=["POST"]),
            Route(f"{a}/persons", self.list_persons, methods=["GET"]),
            Route(f"{a}/persons/lookup", self.lookup, methods=["GET"]),
            Route(f"{a}/persons", self.create_person, methods=["POST"]),
            Route(f"{a}/persons/{{pid}}", self.update_person, methods=["PUT"]),
            Route(f"{a}/search", self.search, methods=["POST"]),
        ])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            self.auth_headers.append(auth)
            self.counts[f"{scope['method']} {scope['path'].rsplit('/', 1)[-1]}"] += 1
            if auth == f"Bearer {self.expired}":
                return await _err(403, {"message": "token_expired", "code": "Forbidden"})(scope, receive, send)
            if auth != f"Bearer {self.token}":
                return await _err(401, {"message": "UNAUTHORIZED", "code": "Unauthorized"})(scope, receive, send)
            if self._take_throttle():
                return await JSONResponse({"message": "too_many_requests", "code": "TooManyRequests"}, 429,
                                          headers={"retry-after": self.retry_after})(scope, receive, send)
        await self.app(scope, receive, send)

    def _wrap(self, data: Any, status: int = 200) -> JSONResponse:
        return JSONResponse({"id": f"req-{next(self.seq)}", "data": data,
                             "signature": {"message": "Certified by Verifik.co", "dateTime": time.ctime()}}, status)

    async def list_collections(self, request: Request) -> Response:
        return self._wrap(list(self.collections.values()))

    async def create_collection(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not body.get("name"):
            return JSONResponse({"message": "missing name", "code": "MissingParameter"}, 409)
        cid = f"{next(self.seq):024x}"
        self.collections[cid] = {"_id": cid, "code": f"col{len(self.collections) + 1}", "name": body["name"],
                                 "description": body.get("description", "")}
        return self._wrap(self.collections[cid])

    async def list_persons(self, request: Request) -> Response:
        q = request.query_params
        page, limit = int(q.get("page", 1)), min(100, int(q.get("limit", 20)))
        rows = [p for p in self.persons.values() if not q.get("collection") or q["collection"] in p["collections"]]
        body = {"data": rows[(page - 1) * limit:page * limit],
                "pagination": {"page": page, "limit": limit, "total": len(rows), "pages": -(-len(rows) // limit)}}
        return JSONResponse(body)

    async def lookup(self, request: Request) -> Response:
        q = request.query_params
        rows = [p for p in self.persons.values() if p["name"] == q.get("name")
                and p.get("date_of_birth") == q.get("date_of_birth")]
        return self._wrap(rows)

    def _images(self, body: dict[str, Any]) -> tuple[JSONResponse | None, list[bytes]]:
        imgs = body.get("images")
        if not isinstance(imgs, list) or not 1 <= len(imgs) <= 3:
            return JSONResponse({"message": "only_images_in_base64", "code": "PreconditionFailed"}, 412), []
        out = []
        for text in imgs:
            data = b64(text)
            size = image_size(data) if data else None
            if size is None or min(size) < 50:  # (I) "bad/small image": 50 px picked here
                return JSONResponse({"message": "only_images_in_base64", "code": "PreconditionFailed"}, 412), []
            out.append(data)
        if body.get("name") in self.reject:
            return JSONResponse({"message": "only_images_in_base64", "code": "PreconditionFailed"}, 412), []
        return None, out

    def _fields(self, p: dict[str, Any], body: dict[str, Any]) -> None:
        for k in ("name", "gender", "date_of_birth", "nationality", "collections", "notes"):
            if k in body:
                p[k] = body[k]

    async def create_person(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return JSONResponse({"message": "invalid body", "code": "InvalidContent"}, 400)
        for field in ("name", "images"):
            if field not in body:
                return JSONResponse({"message": f"missing {field}", "code": "MissingParameter"}, 409)
        if body.get("gender") not in (None, "M", "F"):
            return JSONResponse({"message": "invalid gender", "code": "InvalidParameter"}, 409)
        cols = body.get("collections") or []
        if any(c not in self.collections for c in cols):
            return JSONResponse({"message": "collection_not_found", "code": "NotFound"}, 404)
        for p in self.persons.values():
            if p["name"] == body["name"] and p.get("date_of_birth") == body.get("date_of_birth") \
                    and (set(p["collections"]) & set(cols) or not cols):
                return JSONResponse({"message": "person_already_set", "code": "PreconditionFailed", "data": p}, 412)
        bad, images = self._images(body)
        if bad:
            return bad
        pid = f"{next(self.seq):024x}"
        p = {"_id": pid, "status": "active", "collections": []}
        self._fields(p, body)
        self.images[pid] = images
        p["faces"] = len(images)
        self.persons[pid] = p
        return self._wrap(p)

    async def update_person(self, request: Request) -> Response:
        pid = request.path_params["pid"]
        p = self.persons.get(pid)
        if p is None:
            return JSONResponse({"error": "Person not found", "message": "PERSON_NOT_FOUND"}, 404)
        body = await _json_body(request)
        if not isinstance(body, dict):
            return JSONResponse({"message": "invalid body", "code": "InvalidContent"}, 400)
        if "images" in body:
            bad, images = self._images(body)
            if bad:
                return bad
            self.images[pid] = images  # documented: sending images REPLACES all faces
        self._fields(p, body)
        p["faces"] = len(self.images[pid])
        return self._wrap(p)

    async def search(self, request: Request) -> Response:
        body = await _json_body(request)
        imgs = body.get("images") if isinstance(body, dict) else None
        if not isinstance(imgs, list) or not 1 <= len(imgs) <= 3:
            return JSONResponse({"message": "only_images_in_base64", "code": "PreconditionFailed"}, 412)
        min_score = float(body.get("min_score", 0.2))
        if not 0.2 <= min_score <= 1:
            return JSONResponse({"message": "min_score must be 0.2-1", "code": "InvalidParameter"}, 409)
        probe = b64(imgs[0]) or b""
        out = []
        for pid, p in self.persons.items():
            if body.get("collection_id") in p["collections"]:
                s = self._score(probe, self.images.get(pid, []))
                if s is not None and s >= min_score:
                    out.append({"id": pid, "name": p["name"], "score": s, "thumbnails": []})
        out.sort(key=lambda r: -r["score"])
        return self._wrap(out[:int(body.get("max_results", 5))])


# ---------------------------------------------------------------------------------------------
# Persona


class FakePersona(FakeBase):
    """Bearer key; multipart importer; Idempotency-Key replay; importer polling; RateLimit-* headers.

    (I) choices: the importer stays ``pending`` for ``polls`` GETs, then ``completed``; a file whose
    image is already in the list counts as a duplicate (not added again); an undecodable image, or
    a file whose name starts with a ``reject`` entry, counts as an error; the same Idempotency-Key
    with different parameters answers 422; 429 carries RateLimit-Reset but no Retry-After; the
    limit is ``rate_limit`` requests per ``window_s`` (300 per 60 s by default), past it: 429."""

    def __init__(self, key: str, lists: tuple[str, ...] = ("lst_test",), polls: int = 2,
                 rate_limit: int = 300, window_s: float = 60.0) -> None:
        super().__init__(None)
        self.key = key
        self.lists: dict[str, list[dict[str, Any]]] = {lid: [] for lid in lists}
        self.importers: dict[str, dict[str, Any]] = {}
        self.polls_left: dict[str, int] = {}
        self.polls = polls
        self.idem: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.rate_limit = rate_limit
        self.remaining = rate_limit
        self.window_s = window_s
        self.window_start = time.monotonic()
        self.limited = 0  # 429s for going over the limit (not injected by throttle())
        self.replays = 0
        self.app = Starlette(routes=[
            Route("/api/v1/importer/list-item/faces", self.create_import, methods=["POST"]),
            Route("/api/v1/importers/{iid}", self.get_importer, methods=["GET"]),
        ])

    def _rl_headers(self) -> dict[str, str]:
        reset = max(0.0, self.window_start + self.window_s - time.monotonic())
        return {"RateLimit-Limit": str(self.rate_limit), "RateLimit-Remaining": str(max(0, self.remaining)),
                "RateLimit-Reset": f"{reset:.2f}"}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        self.auth_headers.append(auth)
        self.counts[f"{scope['method']} {scope['path'].split('/')[3]}"] += 1
        if auth != f"Bearer {self.key}":
            return await _errors(401, "Unauthorized", "Must be authenticated to access this endpoint")(scope, receive, send)
        if self._take_throttle():
            return await JSONResponse({"errors": [{"title": "Too many requests", "details": "rate limit exceeded"}]}, 429,
                                      headers=self._rl_headers() | {"RateLimit-Remaining": "0",
                                                                    "RateLimit-Reset": self.retry_after})(scope, receive, send)
        with self.lock:
            if time.monotonic() - self.window_start >= self.window_s:
                self.window_start, self.remaining = time.monotonic(), self.rate_limit
            over = self.remaining <= 0
            if over:
                self.limited += 1
            else:
                self.remaining -= 1
        if over:
            return await JSONResponse({"errors": [{"title": "Too many requests", "details": "rate limit exceeded"}]},
                                      429, headers=self._rl_headers())(scope, receive, send)

        async def send_with_headers(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                msg["headers"] = list(msg.get("headers", [])) + [(k.lower().encode(), v.encode())
                                                                  for k, v in self._rl_headers().items()]
            await send(msg)

        await self.app(scope, receive, send_with_headers)

    async def create_import(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        raw = await request.body()
        if not ctype.startswith("multipart/form-data"):
            return _errors(400, "Bad request", "expected multipart/form-data")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
        data, files = None, []
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "data":
                data = payload
            elif part.get_filename():
                files.append((part.get_filename(), payload))
        try:
            attrs = json.loads(data)["attributes"] if data is not None else None
        except (ValueError, KeyError, TypeError):
            attrs = None
        if not isinstance(attrs, dict):
            return _errors(400, "Bad request", "data must be {\"attributes\": {...}}", "/data")
        names, list_id = attrs.get("image-files"), attrs.get("list-id")
        if not isinstance(names, list) or not names:
            return _errors(422, "Invalid attribute", "image-files must be a non-empty list", "/data/attributes/image-files")
        if len(names) > 50:
            return _errors(422, "Invalid attribute", "at most 50 images per request", "/data/attributes/image-files")
        if sorted(names) != sorted(n for n, _ in files):
            return _errors(422, "Invalid attribute", "image-files must name the uploaded files", "/data/attributes/image-files")
        if list_id not in self.lists:
            return _errors(404, "Not found", f"list {list_id} not found", "/data/attributes/list-id")
        fingerprint = hashlib.sha256(json.dumps([list_id, sorted((n, hashlib.sha256(b).hexdigest())
                                                                 for n, b in files)]).encode()).hexdigest()
        key = request.headers.get("idempotency-key")
        if key and key in self.idem:
            fp, status, body = self.idem[key]
            if fp != fingerprint:
                return _errors(422, "Idempotency key reused",
                               "this Idempotency-Key was used with different parameters")
            self.replays += 1
            return JSONResponse(body, status)
        ok = dup = bad = 0
        items = self.lists[list_id]
        have = {it["sha256"] for it in items}
        for name, blob in files:
            sha = hashlib.sha256(blob).hexdigest()
            if image_size(blob) is None or any(name.startswith(r) for r in self.reject):
                bad += 1
            elif sha in have:
                dup += 1
            else:
                items.append({"id": f"lif_{next(self.seq)}", "file": name, "sha256": sha})
                have.add(sha)
                ok += 1
        iid = f"mprt_{next(self.seq):08d}"
        self.importers[iid] = {"id": iid, "type": "importer/list-item/face",
                               "attributes": {"created-at": time.time(), "status": "pending",
                                              "successful-count": ok, "duplicate-count": dup, "error-count": bad}}
        self.polls_left[iid] = self.polls
        body = {"data": json.loads(json.dumps(self.importers[iid]))}
        if key:
            self.idem[key] = (fingerprint, 201, body)
        return JSONResponse(body, 201)

    async def get_importer(self, request: Request) -> Response:
        imp = self.importers.get(request.path_params["iid"])
        if imp is None:
            return _errors(404, "Not found", "importer not found")
        if self.polls_left[imp["id"]] > 0:
            self.polls_left[imp["id"]] -= 1
        else:
            imp["attributes"]["status"] = "completed"
        return JSONResponse({"data": imp})


# ---------------------------------------------------------------------------------------------


def _err(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status)


def _errors(status: int, title: str, details: str, pointer: str | None = None) -> JSONResponse:
    err: dict[str, Any] = {"title": title, "details": details}
    if pointer:
        err["source"] = {"pointer": pointer}
    return JSONResponse({"errors": [err]}, status)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def checker_embed(checker: Any) -> Embed:
    """``embed(jpeg)``: the main face's unit embedding with the real models (None when no face)."""
    from facecli.imaging.decode import decode_bytes
    from facecli.vision.align import align_face

    cache: dict[str, np.ndarray | None] = {}
    mu = threading.Lock()

    def embed(data: bytes) -> np.ndarray | None:
        h = hashlib.sha256(data).hexdigest()
        with mu:
            if h in cache:
                return cache[h]
            image = decode_bytes(data, checker.config.limits)
            faces = [f.scaled(image.scale) for f in checker.detector.detect(image.rgb)]
            if not faces:
                cache[h] = None
                return None
            main = max(faces, key=lambda f: f.box[2] * f.box[3])
            crop = align_face(image.rgb, main.landmarks / image.scale)
            e = checker.recognizer.embed(crop[None])[0]
            cache[h] = e / np.linalg.norm(e)
            return cache[h]

    return embed
