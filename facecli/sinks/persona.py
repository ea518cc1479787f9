"""Persona face lists (https://api.withpersona.com) as a Sink: ``--to persona://LIST_ID``.

Contract: ../shared/APIS.md. ``Authorization: Bearer <key>``.

- ``POST /api/v1/importer/list-item/faces`` (multipart): a ``data`` field
  ``{"attributes": {"image-files": [names], "list-id": LIST_ID}}`` plus the image files; each file
  becomes one face list item. At most 50 images per request; images above ~500 KB are re-encoded
  smaller. Files are named ``PERSON_ID__N.jpg`` so the list items can be traced to the source.
- Every import carries an ``Idempotency-Key`` derived from its content (list id, file names and
  image hashes): a retried request, or the same batch re-sent by a killed-and-resumed run, is
  answered with the first response (the same importer) and imports nothing twice.
- The 201 answer is an importer (``mprt_...``, status ``pending``); ``GET /api/v1/importers/{id}``
  is polled until the status is final (the final names are undocumented: anything that is not
  pending/processing/queued/running/in-progress counts as final). Its successful / duplicate /
  error counts decide the persons' outcomes: no errors -> every person enrolled (duplicates mean
  "already in the list"); errors in a group of several persons -> the group is imported again in
  halves (the images already in the list come back as duplicates) until each failing person is
  isolated and fails alone with SERVER_REJECTED.
- 401 / 403 end the run (exit 3); 404 is an unknown list (exit 3); 429 / 5xx are retried by the
  transport (Retry-After, else RateLimit-Reset); when ``RateLimit-Remaining`` reaches 0 the next
  request waits for ``RateLimit-Reset``.
- Persona has no face-search endpoint: ``facecli search`` refuses this target. The collection
  option does not apply: the list is the one in the URL.

Base URL override (tests, proxies): ``FACECLI_PERSONA_URL=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
from PIL import Image

from facecli.errors import ConfigError, ReasonCode, Status, TargetError
from facecli.ids import url_segment
from facecli.imaging.encode import encode_jpeg
from facecli.sinks.base import ItemOutcome, Match, PersonPayload, SearchProbe, invalid_id_outcome
from facecli.sinks.seed_common import SeedClient, base_url
from facecli.sinks.transport import RetryPolicy, json_or_none, parse_retry_after

log = logging.getLogger("facecli.persona")

URL_ENV = "FACECLI_PERSONA_URL"
MAX_IMAGES_PER_REQUEST = 50
MAX_IMAGE_BYTES = 500_000
PERSONA_VERSION = "2023-01-05"
_PENDING = frozenset({"pending", "processing", "queued", "running", "in-progress", "in_progress", "started"})
_LIST_ID = re.compile(r"[A-Za-z0-9_.-]+")

_File = tuple[str, bytes]  # (file name, JPEG bytes)


def error_text(resp: httpx.Response) -> tuple[str, str]:
    """(code, message) of ``{errors: [{title, details, source: {pointer}}]}``."""
    data = json_or_none(resp)
    if isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"]:
        first = data["errors"][0] if isinstance(data["errors"][0], dict) else {}
        title = str(first.get("title") or "")
        details = first.get("details")
        details = details if isinstance(details, str) else json.dumps(details) if details else ""
        pointer = (first.get("source") or {}).get("pointer") if isinstance(first.get("source"), dict) else None
        return title, " ".join(x for x in (details, f"(at {pointer})" if pointer else "") if x)[:500]
    return "", (resp.text or "")[:200].replace("\n", " ")


def _member(obj: Any, key: str) -> dict[str, Any]:
    """``obj[key]`` when both are JSON objects, else ``{}`` (an answer of another shape)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def multipart(fields: list[tuple[str, str | None, str, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body: (field name, file name or None, content type, bytes) parts."""
    out = io.BytesIO()
    for name, filename, ctype, data in fields:
        out.write(f"--{boundary}\r\n".encode())
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"Content-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def shrink(jpeg: bytes, max_bytes: int) -> bytes:
    """``jpeg`` re-encoded under ``max_bytes`` when it is larger (quality, then size)."""
    if len(jpeg) <= max_bytes:
        return jpeg
    with Image.open(io.BytesIO(jpeg)) as img:
        rgb = np.asarray(img.convert("RGB"))
    return encode_jpeg(rgb, 85, max_bytes)


class PersonaSink(SeedClient):
    name = "persona"
    service = "Persona"
    takes_images = True
    preset = "persona"

    def __init__(self, list_id: str, api_key: str | None = None, *, insecure: bool = False,
                 concurrency: int | None = None, timeout: float | None = None, policy: RetryPolicy | None = None,
                 verify: bool | str | None = None, transport: httpx.BaseTransport | None = None,
                 max_images_per_request: int = MAX_IMAGES_PER_REQUEST, max_image_bytes: int = MAX_IMAGE_BYTES,
                 poll_interval_s: float = 0.5, poll_timeout_s: float = 600.0, **_ignored: Any) -> None:
        list_id = list_id.strip("/")
        if not _LIST_ID.fullmatch(list_id):
            raise ConfigError(f"invalid Persona list id {list_id!r}", hint="use persona://LIST_ID (e.g. persona://lst_abc123)")
        if not 1 <= max_images_per_request <= MAX_IMAGES_PER_REQUEST:
            raise ConfigError(f"Persona takes 1..{MAX_IMAGES_PER_REQUEST} images per request")
        self.list_id = list_id
        self.max_images_per_request = max_images_per_request
        self.max_image_bytes = max_image_bytes
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        super().__init__(base_url(URL_ENV, "https://api.withpersona.com", insecure), api_key,
                         auth_header="authorization", auth_scheme="Bearer", concurrency=concurrency, timeout=timeout,
                         policy=policy, verify=verify, transport=transport)
        self.target = f"{self.target}/lists/{list_id}"
        self._pace = threading.Lock()
        self._resume_at = 0.0
        self.imports = 0  # importers created or replayed (for tests and logs)

    # -- plumbing --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request that honours RateLimit-Remaining / RateLimit-Reset before it goes out."""
        with self._pace:
            wait = self._resume_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 60.0))
        headers = {"Key-Inflection": "kebab", "Persona-Version": PERSONA_VERSION} | dict(kw.pop("headers", None) or {})
        resp = self._request(method, path, headers=headers, **kw)
        remaining = resp.headers.get("ratelimit-remaining")
        if remaining is not None and remaining.strip() == "0":
            reset = parse_retry_after(resp.headers.get("ratelimit-reset")) or 1.0
            with self._pace:
                self._resume_at = max(self._resume_at, time.monotonic() + min(reset, 60.0))
        if resp.status_code in (401, 403):
            code, message = error_text(resp)
            raise self._auth_error(resp.status_code, " ".join(x for x in (code, message) if x))
        return resp

    def ensure_collection(self, collection: str, create: bool) -> None:
        if create:
            raise ConfigError("Persona lists are created in the Persona dashboard or API, not by facecli",
                              hint="drop --create-collection; the list is the one in persona://LIST_ID")
        # No list lookup is documented: an unknown list surfaces as 404 on the first import.

    # -- imports ---------------------------------------------------------------------------------

    def _files(self, p: PersonPayload) -> list[_File]:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", p.person_id)
        return [(f"{safe}__{i}.jpg", shrink(f.jpeg, self.max_image_bytes))
                for i, f in enumerate((f for f in p.faces if f.jpeg), 1)]

    def idempotency_key(self, files: list[_File]) -> str:
        h = hashlib.sha256(f"facecli-persona-faces\0{self.list_id}\0".encode())
        for name, data in files:
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return "facecli-" + h.hexdigest()[:48]

    def _import(self, files: list[_File]) -> tuple[int, dict[str, Any] | str]:
        """POST one import and poll it: (HTTP status, final attributes) or (status, error message)."""
        key = self.idempotency_key(files)
        data = json.dumps({"attributes": {"image-files": [n for n, _ in files], "list-id": self.list_id}}).encode()
        boundary = "facecli-" + key[-32:]
        body = multipart([("data", None, "application/json", data)]
                         + [("files[]", n, "image/jpeg", b) for n, b in files], boundary)
        resp = self._call("POST", "/api/v1/importer/list-item/faces", content=body,
                          headers={"content-type": f"multipart/form-data; boundary={boundary}", "Idempotency-Key": key})
        if resp.status_code == 404:
            raise TargetError(f"Persona list {self.list_id!r} was not found (404)", hint="check persona://LIST_ID")
        if resp.status_code not in (200, 201):
            code, message = error_text(resp)
            return resp.status_code, " ".join(x for x in (code, message) if x) or f"HTTP {resp.status_code}"
        self.imports += 1
        importer = _member(json_or_none(resp), "data")
        iid = importer.get("id")
        attrs = _member(importer, "attributes")
        try:
            poll = f"/api/v1/importers/{url_segment(str(iid or ''))}"
        except ValueError:  # none, or '.'/'..' (a URL path resolves those to another resource)
            return 502, f"the import answer carries no usable importer id ({iid!r})"
        deadline = time.monotonic() + self.poll_timeout_s
        delay = self.poll_interval_s
        while str(attrs.get("status", "pending")).lower() in _PENDING:
            if time.monotonic() > deadline:
                return 504, f"importer {iid} still {attrs.get('status')} after {self.poll_timeout_s:.0f}s"
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
            got = self._call("GET", poll)
            if got.status_code != 200:
                code, message = error_text(got)
                return got.status_code, f"polling importer {iid}: {code} {message}".strip()
            attrs = _member(_member(json_or_none(got), "data"), "attributes")
        return 201, attrs | {"id": iid}

    def _send(self, group: list[tuple[PersonPayload, list[_File]]]) -> dict[str, ItemOutcome]:
        files = [f for _, fs in group for f in fs]
        try:
            status, result = self._import(files)
        except httpx.TransportError as exc:
            msg = f"{type(exc).__name__} after {self.http.policy.retries} retries"
            return {p.person_id: ItemOutcome(p.person_id, Status.FAILED, ReasonCode.NETWORK_ERROR, message=msg)
                    for p, _ in group}
        if isinstance(result, str):  # the request was refused or the importer could not be followed
            if status in (400, 409, 413, 422) and len(group) > 1:
                half = len(group) // 2
                return self._send(group[:half]) | self._send(group[half:])
            reason = ReasonCode.SERVER_REJECTED if 400 <= status < 500 and status != 429 else ReasonCode.SERVER_ERROR
            return {p.person_id: ItemOutcome(p.person_id, Status.FAILED, reason, server_code=f"HTTP_{status}",
                                             message=result) for p, _ in group}
        ok, dup, bad = (int(result.get(k) or 0) for k in ("successful-count", "duplicate-count", "error-count"))
        final = str(result.get("status", ""))
        if bad == 0 and ok + dup >= len(files):
            action = "unchanged" if ok == 0 else "created"
            return {p.person_id: ItemOutcome(p.person_id, Status.ENROLLED, action=action) for p, _ in group}
        if len(group) > 1:  # which person's image failed is not reported: isolate by halves
            log.info("importer %s: %d error(s) in %d persons: splitting", result.get("id"), bad, len(group))
            half = len(group) // 2
            return self._send(group[:half]) | self._send(group[half:])
        p = group[0][0]
        return {p.person_id: ItemOutcome(
            p.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED, server_code=f"importer:{final or 'error'}",
            message=f"importer {result.get('id')}: {bad} of {len(files)} image(s) refused "
                    f"({ok} imported, {dup} duplicate)")}

    def _groups(self, items: list[tuple[PersonPayload, list[_File]]]) -> list[list[tuple[PersonPayload, list[_File]]]]:
        groups, group, n = [], [], 0
        for it in items:
            k = len(it[1])
            if group and n + k > self.max_images_per_request:
                groups.append(group)
                group, n = [], 0
            group.append(it)
            n += k
        if group:
            groups.append(group)
        return groups

    def upsert(self, collection: str, persons: Sequence[PersonPayload]) -> list[ItemOutcome]:
        outcomes: dict[str, ItemOutcome] = {}
        items = []
        for p in persons:
            refused = invalid_id_outcome(p.person_id)  # its file names are made from the id
            if refused is not None:
                outcomes[p.person_id] = refused
                continue
            files = self._files(p)[:self.max_images_per_request]
            if not files:
                outcomes[p.person_id] = ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED,
                                                    message="no face image to send (payload not encoded)")
            else:
                items.append((p, files))
        for g in self._groups(items):  # sequential: Persona's rate limit is per key
            outcomes.update(self._send(g))
        return [outcomes.get(p.person_id) or ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_ERROR,
                                                         message="no result for this person") for p in persons]

    def search(self, collection: str, probe: SearchProbe, k: int, min_score: float) -> list[Match]:
        raise ConfigError("Persona offers no face-search API: `facecli search` cannot use a persona:// target")
