"""Contract-faithful fakes of the seed APIs (../shared/APIS.md), served for real on 127.0.0.1 by
tests/live_server.LiveServer: OpenCV FR cloud, Verifik and Persona.

Each fake checks auth as documented, validates bodies with the documented status codes and error
bodies, keeps its state in memory (inspected by the tests), and has knobs for the faults a test
needs: ``throttle(n)`` (the next n requests answer 429), ``reject`` (names refused as a validation
error). Search scores come from an ``embed(jpeg) -> unit vector | None`` the test supplies (the
real models), so a search finds the same person from another photo.

Where APIS.md marks something as unclear (I), the fake picks one plausible behaviour and says so.
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
from collections import Counter
from collections.abc import Callable
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
    """x-api-key; 422 ``{"detail": [{loc, msg, type}]}``; other errors ``{code, message}``.

    (I) choices: a POST /person with an id that exists answers 409 ERR_ALREADY_EXISTS; 401 without
    a key, 403 with a wrong one; 429 carries ``retry-after``."""

    def __init__(self, api_key: str, embed: Embed | None = None) -> None:
        super().__init__(embed)
        self.api_key = api_key
        self.collections: dict[str, dict[str, Any]] = {}
        self.persons: dict[str, dict[str, Any]] = {}
        self.images: dict[str, list[bytes]] = {}
        self.app = Starlette(routes=[
            Route("/collections", self.list_collections, methods=["GET"]),
            Route("/collection", self.create_collection, methods=["POST"]),
            Route("/person/{pid:path}", self.get_person, methods=["GET"]),
            Route("/person", self.post_person, methods=["POST"]),
            Route("/person", self.patch_person, methods=["PATCH"]),
            Route("/persons", self.list_persons, methods=["GET"]),
            Route("/search", self.search, methods=["POST"]),
        ])

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
    def _invalid(*details: tuple[list[Any], str, str]) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["body", *loc], "msg": msg, "type": typ} for loc, msg, typ in details]}, 422)

    async def list_collections(self, request: Request) -> Response:
        q = request.query_params
        rows = [c for c in self.collections.values() if q.get("search", "") in c["name"]]
        skip, take = int(q.get("skip", 0)), int(q.get("take", 20))
        return JSONResponse({"count": len(rows), "collections": rows[skip:skip + take]})

    async def create_collection(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
            return self._invalid((["name"], "field required", "value_error.missing"))
        cid = f"col-{next(self.seq)}"
        self.collections[cid] = {"id": cid, "name": body["name"], "description": body.get("description") or ""}
        return JSONResponse(self.collections[cid], 201)

    async def get_person(self, request: Request) -> Response:
        p = self.persons.get(request.path_params["pid"])
        if p is None:
            return JSONResponse({"code": "ERR_NOT_FOUND", "message": "person not found"}, 404)
        return JSONResponse(p)

    def _validate(self, body: Any, partial: bool) -> tuple[JSONResponse | None, list[bytes] | None]:
        if not isinstance(body, dict):
            return self._invalid(([], "value is not a valid dict", "type_error.dict")), None
        errs: list[tuple[list[Any], str, str]] = []
        if not isinstance(body.get("id"), str) or not body.get("id"):
            errs.append((["id"], "field required", "value_error.missing"))
        if not partial and not isinstance(body.get("name"), str):
            errs.append((["name"], "field required", "value_error.missing"))
        images = None
        if "images" in body or not partial:
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
        if isinstance(body.get("name"), str) and body["name"] in self.reject:
            errs.append((["images", 0], "no face detected", "value_error.no_face"))
        return (self._invalid(*errs) if errs else None), images

    def _store(self, body: dict[str, Any], images: list[bytes] | None, old: dict[str, Any] | None) -> dict[str, Any]:
        p = dict(old or {"create_date": time.time()})
        for k in ("id", "name", "gender", "date_of_birth", "nationality", "collections", "notes"):
            if k in body:
                p[k] = body[k]
        p["modified_date"] = time.time()
        if images is not None:
            self.images[p["id"]] = images
        p["faces"] = len(self.images.get(p["id"], []))
        self.persons[p["id"]] = p
        return p

    async def post_person(self, request: Request) -> Response:
        body = await _json_body(request)
        bad, images = self._validate(body, partial=False)
        if bad:
            return bad
        if body["id"] in self.persons:
            return JSONResponse({"code": "ERR_ALREADY_EXISTS", "message": "a person with this id exists"}, 409)
        return JSONResponse(self._store(body, images, None), 201)

    async def patch_person(self, request: Request) -> Response:
        body = await _json_body(request)
        bad, images = self._validate(body, partial=True)
        if bad:
            return bad
        old = self.persons.get(body["id"])
        if old is None:
            return JSONResponse({"code": "ERR_NOT_FOUND", "message": "person not found"}, 404)
        return JSONResponse(self._store(body, images, old))

    async def list_persons(self, request: Request) -> Response:
        rows = list(self.persons.values())
        return JSONResponse({"count": len(rows), "persons": rows})

    async def search(self, request: Request) -> Response:
        body = await _json_body(request)
        imgs = body.get("images") if isinstance(body, dict) else None
        if not isinstance(imgs, list) or not 1 <= len(imgs) <= 3 or body.get("collection_id") not in self.collections:
            return self._invalid((["images"], "1 to 3 images and a known collection_id", "value_error"))
        probe = b64(imgs[0]) or b""
        out = []
        for pid, p in self.persons.items():
            if body["collection_id"] in (p.get("collections") or []):
                score = self._score(probe, self.images.get(pid, []))
                if score is not None and score >= float(body.get("min_score", 0.7)):
                    out.append(p | {"score": score})
        return JSONResponse(sorted(out, key=lambda r: -r["score"]))


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
