"""The OpenCV Face Recognition Server as a Sink (and, with `facecli serve`, a Gallery).

Written against the documented contract (../shared/APIS.md, docs.sensecrypt.com), defensive where
the documentation is silent:

- ``PUT /persons`` batches, capped by person count and request bytes, ``concurrency`` in flight.
- The bulk answer ``[{code, message, metadata}]`` is matched to persons by ``person_id`` when the
  server echoes it (``facecli serve`` does), else by a unique ``metadata`` echo, else -- only when
  every result is a success and the counts agree -- all at once. Never by position: whatever stays
  ambiguous is re-sent in halves (upserts are idempotent by person_id) until it is not.
- 412/413/422/400 on a batch: split in halves until the refused person is isolated; it fails with
  SERVER_REJECTED and the server's code and message; the others are enrolled.
- 401/403 end the run (TargetError, exit 3); so does a missing collection and a server that
  cannot be reached after the retries. 429/5xx are retried (transport.py), then the batch fails
  with SERVER_ERROR.
- The server takes one face per person per request, so ``max_faces_per_person = 1``: the CLI caps
  the images it keeps per person to the best one.

``GET /collections`` and ``GET /persons`` are `facecli serve` extensions (the OpenCV FR Server
documents no listing); against a server without them, listing fails with a clear message.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from facecli.errors import CollectionMissing, ConfigError, ExitCode, ReasonCode, Status, TargetError
from facecli.sinks.base import (
    FACE_STORAGE_TYPES,
    CollectionRow,
    ItemOutcome,
    Match,
    PersonPayload,
    PersonRow,
    SearchProbe,
    check_collection_name,
    invalid_id_outcome,
)
from facecli.ids import validate_person_id
from facecli.sinks.transport import (
    RemoteClient,
    RetryPolicy,
    Transport,
    check_base_url,
    display_url,
    encode_json,
    error_body,
    json_or_none,
)

log = logging.getLogger("facecli.opencv_fr")

DEFAULT_CONCURRENCY = 4
DEFAULT_BATCH_SIZE = 50
DEFAULT_MAX_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0

#: Statuses on a batch that may be one person's fault: split and retry the halves.
_SPLIT_STATUSES = frozenset({400, 412, 413, 422})
#: Person-level result codes that mean "try later" rather than "this person is refused".
_RETRYABLE_CODES = frozenset({"ERR_DATABASE_ERROR"})
_ACTIONS = ("created", "updated", "unchanged")
#: PersonPayload fields the OpenCV FR API has no place for: kept as metadata so nothing is lost.
_EXTRA_FIELDS = ("gender", "date_of_birth", "nationality", "notes")
_LIST_PAGE = 1000

_Item = tuple[PersonPayload, dict[str, Any], int]  # payload, its JSON object, its encoded size


def _auth_error(status: int, code: str, target: str) -> TargetError:
    if status == 401:
        err = TargetError(f"{target} refused the request: no API key was sent (401 {code or 'ERR_API_KEY_NOT_PRESENT'})",
                          hint="give the key with --api-key, FACECLI_API_KEY, or api_key / api_key_env in the config file")
    else:
        err = TargetError(f"{target} refused the API key (403 {code or 'ERR_API_KEY_NOT_VALID'}): the key is wrong, "
                          "expired or not allowed here",
                          hint="check --api-key / FACECLI_API_KEY against the server's keys")
    return err


def _is_success(code: Any) -> bool:
    return not str(code or "").upper().startswith("ERR")


class OpenCVFRSink(RemoteClient):
    """Sink + Gallery over the OpenCV FR Server REST API (also `facecli serve`)."""

    name = "opencv-fr"
    takes_images = True  # sends JPEG payloads; the server detects and embeds
    max_faces_per_person = 1

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        insecure: bool = False,
        face_storage_type: str = "NoStorage",
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        policy: RetryPolicy | None = None,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if face_storage_type not in FACE_STORAGE_TYPES:
            raise ConfigError(f"face storage type must be one of {', '.join(FACE_STORAGE_TYPES)}")
        if batch_size < 1 or concurrency < 1 or max_batch_bytes < 1 or timeout <= 0:
            raise ConfigError("batch size, concurrency, max batch bytes and timeout must be positive")
        base = check_base_url(url, insecure)
        self.target = display_url(base)
        self.face_storage_type = face_storage_type
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.concurrency = concurrency
        self.http = Transport(base, api_key, timeout=timeout, policy=policy, verify=verify,
                              max_connections=concurrency + 2, transport=transport)

    # -- plumbing ----------------------------------------------------------------------------

    def _fatal(self, resp: httpx.Response, what: str, collection: str | None = None) -> TargetError:
        """The run-ending error for a response no caller can work around."""
        code, message = error_body(resp)
        status = resp.status_code
        if status in (401, 403):
            return _auth_error(status, code, self.target)
        if status == 404 and collection is not None and code in ("ERR_NOT_FOUND", ""):
            if code:
                return CollectionMissing(f"collection {collection!r} does not exist on {self.target} (404 {code})",
                                   hint="create it with --create-collection or `facecli collections create NAME`")
            return TargetError(f"{self.target} answered 404 to {what}: is this an OpenCV FR server (and the URL "
                               "path right)?")
        if status == 400 and code == "ERR_INVALID_COLLECTION_NAME":
            err = TargetError(f"invalid collection name {collection!r}: {message or code}")
            err.exit_code = ExitCode.USAGE
            return err
        detail = " ".join(x for x in (code, message) if x)
        return TargetError(f"{what} failed on {self.target}: HTTP {status}" + (f" {detail}" if detail else ""))

    # -- Sink --------------------------------------------------------------------------------

    def ensure_collection(self, collection: str, create: bool) -> None:
        check_collection_name(collection)  # facecli.ids' rule: say so before any request
        if create:
            resp = self._request("POST", "/collection", json_body={"name": collection})
            if resp.status_code in (200, 201, 409):  # 409 ERR_ALREADY_EXISTS: fine
                return
            raise self._fatal(resp, "creating the collection", collection)
        resp = self._request("GET", "/collections", params={"name": collection})
        if resp.status_code in (401, 403):
            raise self._fatal(resp, "checking the collection", collection)
        data = json_or_none(resp) if resp.status_code == 200 else None
        if isinstance(data, dict) and isinstance(data.get("collections"), list):
            if not any(isinstance(c, dict) and c.get("name") == collection for c in data["collections"]):
                raise CollectionMissing(f"collection {collection!r} does not exist on {self.target}",
                                  hint="create it with --create-collection or `facecli collections create NAME`")
            return
        # A server without the listing extension (the OpenCV FR Server itself): the first upsert
        # tells a missing collection apart (404 ERR_NOT_FOUND).
        log.info("%s has no GET /collections (%s); collection checked on first upsert", self.target, resp.status_code)

    def _person_json(self, p: PersonPayload) -> dict[str, Any] | None:
        face = next((f for f in p.faces if f.jpeg), None)
        if face is None:
            return None
        metadata = {str(k): str(v) for k, v in p.metadata.items()}
        for name in _EXTRA_FIELDS:
            value = getattr(p, name)
            if value and name not in metadata:
                metadata[name] = str(value)
        return {"face_base_64": base64.b64encode(face.jpeg).decode("ascii"), "metadata": metadata,
                "person_id": p.person_id, "person_name": p.person_name or p.person_id}

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        """Request-sized groups: at most batch_size persons and max_batch_bytes of JSON each."""
        overhead = 200
        groups: list[list[_Item]] = []
        group: list[_Item] = []
        size = overhead
        for it in items:
            if group and (len(group) >= self.batch_size or size + it[2] + 1 > self.max_batch_bytes):
                groups.append(group)
                group, size = [], overhead
            group.append(it)
            size += it[2] + 1
        if group:
            groups.append(group)
        return groups

    def upsert(self, collection: str, persons: Sequence[PersonPayload]) -> list[ItemOutcome]:
        outcomes: dict[str, ItemOutcome] = {}
        items: list[_Item] = []
        for p in persons:
            refused = invalid_id_outcome(p.person_id)  # never sent: nothing stored under it
            if refused is not None:
                outcomes[p.person_id] = refused
                continue
            obj = self._person_json(p)
            if obj is None:
                outcomes[p.person_id] = ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED,
                                                    message="no face image to send (payload not encoded)")
            else:
                items.append((p, obj, len(encode_json(obj))))
        groups = self._groups(items)
        if len(groups) <= 1 or self.concurrency == 1:
            for g in groups:
                outcomes.update(self._send(collection, g))
        else:
            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(groups)), thread_name_prefix="upload")
            try:
                for result in pool.map(lambda g: self._send(collection, g), groups):
                    outcomes.update(result)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return [outcomes.get(p.person_id) or ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_ERROR,
                                                         message="no result for this person") for p in persons]

    def _send(self, collection: str, group: list[_Item]) -> dict[str, ItemOutcome]:
        if not group:
            return {}
        body = {"collection_name": collection, "face_storage_type": self.face_storage_type,
                "persons": [obj for _, obj, _ in group]}
        try:
            resp = self._request("PUT", "/persons", json_body=body)
        except httpx.TransportError as exc:  # timeouts / dropped connections after the retries
            msg = f"{type(exc).__name__} after {self.http.policy.retries} retries"
            return {p.person_id: ItemOutcome(p.person_id, Status.FAILED, ReasonCode.NETWORK_ERROR, message=msg)
                    for p, _, _ in group}
        status = resp.status_code
        if status == 200:
            return self._match(collection, group, resp)
        code, message = error_body(resp)
        if status in (401, 403) or status == 404 or (status == 400 and code == "ERR_INVALID_COLLECTION_NAME"):
            raise self._fatal(resp, "enrolling", collection)
        if status in _SPLIT_STATUSES:
            if len(group) == 1:
                p = group[0][0]
                if status == 413 and not message:
                    message = "this person's request is over the server's size limit (try --max-image-bytes)"
                return {p.person_id: ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED,
                                                 server_code=code or f"HTTP_{status}", message=message)}
            half = len(group) // 2
            log.info("HTTP %d on a batch of %d: splitting to isolate the refused person", status, len(group))
            return self._send(collection, group[:half]) | self._send(collection, group[half:])
        reason = ReasonCode.SERVER_ERROR
        detail = message or f"HTTP {status}"
        return {p.person_id: ItemOutcome(p.person_id, Status.FAILED, reason, server_code=code or f"HTTP_{status}",
                                         message=detail) for p, _, _ in group}

    def _outcome(self, pid: str, r: dict[str, Any]) -> ItemOutcome:
        code = str(r.get("code") or "")
        message = str(r.get("message") or "")
        if _is_success(code):
            return ItemOutcome(pid, Status.ENROLLED, action=message if message in _ACTIONS else None)
        reason = ReasonCode.SERVER_ERROR if code in _RETRYABLE_CODES else ReasonCode.SERVER_REJECTED
        return ItemOutcome(pid, Status.FAILED, reason, server_code=code, message=message)

    def _match(self, collection: str, group: list[_Item], resp: httpx.Response) -> dict[str, ItemOutcome]:
        """Results -> persons by person_id, then by a unique metadata echo; never by position."""
        data = json_or_none(resp)
        if isinstance(data, dict):
            data = next((data[k] for k in ("persons", "results", "data") if isinstance(data.get(k), list)), None)
        if not isinstance(data, list):
            return {p.person_id: ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_ERROR,
                                             message="unreadable answer to PUT /persons") for p, _, _ in group}
        by_id = {p.person_id: (p, obj) for p, obj, _ in group}
        out: dict[str, ItemOutcome] = {}
        loose: list[dict[str, Any]] = []
        for r in data:
            if not isinstance(r, dict):
                continue
            meta = r.get("metadata") if isinstance(r.get("metadata"), dict) else {}
            pid = r.get("person_id") or r.get("id") or meta.get("person_id")
            if isinstance(pid, str) and pid in by_id and pid not in out:
                out[pid] = self._outcome(pid, r)
            else:
                loose.append(r)
        left = [it for it in group if it[0].person_id not in out]
        if left and loose:  # a metadata echo that names exactly one person both ways
            for r in list(loose):
                meta = r.get("metadata")
                same = [it for it in left if isinstance(meta, dict) and it[1]["metadata"] == meta]
                if len(same) == 1 and sum(1 for x in loose if x.get("metadata") == meta) == 1:
                    out[same[0][0].person_id] = self._outcome(same[0][0].person_id, r)
                    left.remove(same[0])
                    loose.remove(r)
        if left and len(loose) == len(left) and all(_is_success(r.get("code")) for r in loose):
            for it, r in zip(left, loose, strict=True):  # all succeeded: which answer is whose does not matter
                out[it[0].person_id] = self._outcome(it[0].person_id, r)
            left = []
        if left:
            if len(group) > 1:  # ambiguous: ask again in smaller requests (idempotent upserts)
                half = max(1, len(left) // 2)
                return out | self._send(collection, left[:half]) | self._send(collection, left[half:])
            if len(loose) == 1:
                out[left[0][0].person_id] = self._outcome(left[0][0].person_id, loose[0])
            else:
                pid = left[0][0].person_id
                out[pid] = ItemOutcome(pid, Status.FAILED, ReasonCode.SERVER_ERROR, message="no result for this person")
        return out

    def search(self, collection: str, probe: SearchProbe, k: int, min_score: float) -> list[Match]:
        if probe.jpeg is None:
            raise ValueError("the OpenCV FR server searches by image: the probe needs a JPEG")
        body = {"collection_name": collection, "face_base_64": base64.b64encode(probe.jpeg).decode("ascii"),
                "min_similarity_score": float(min(1.0, max(0.0, min_score))), "max_results": int(k),
                "check_liveness": False}
        resp = self._request("POST", "/face-search", json_body=body)
        if resp.status_code != 200:
            code, _ = error_body(resp)
            if resp.status_code in (400, 412, 422) and code in (
                    "ERR_NO_FACE_DETECTED", "ERR_MULTIPLE_FACES_DETECTED", "ERR_INVALID_IMAGE"):
                return []
            raise self._fatal(resp, "searching", collection)
        return _parse_matches(json_or_none(resp), k, min_score)

    def gallery_size(self, collection: str) -> int | None:
        """Persons in the collection (the listing is a `facecli serve` extension; None without it)."""
        try:
            total, _ = self._get_list("/persons", "persons", {"collection_name": collection}, 1, 0, collection)
        except TargetError:
            return None
        return int(total)

    def score_fingerprint(self) -> str | None:
        """The recognizer sha256 whose cosine this server's scores are (`facecli serve` says so on
        /health); None for a server that does not say (its scores are on its own scale)."""
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = None
            try:
                resp = self._request("GET", "/health")
                body = json_or_none(resp) if resp.status_code == 200 else None
                if isinstance(body, dict) and isinstance(body.get("recognizer_sha256"), str):
                    self._fingerprint = body["recognizer_sha256"]
            except TargetError:
                pass
        return self._fingerprint

    def close(self) -> None:
        self.http.close()

    # -- Gallery (listing: `facecli serve` extensions) -----------------------------------------

    def _get_list(self, path: str, key: str, params: dict[str, Any], limit: int | None, offset: int,
                  collection: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []
        total = 0
        skip = offset
        while True:
            take = _LIST_PAGE if limit is None else min(_LIST_PAGE, limit - len(rows))
            resp = self._request("GET", path, params={**params, "skip": skip, "take": take})
            data = json_or_none(resp) if resp.status_code == 200 else None
            if resp.status_code in (404, 405) and not (isinstance(data, dict) and key in data):
                code, _ = error_body(resp)
                if code == "ERR_NOT_FOUND" and collection is not None:
                    raise self._fatal(resp, f"listing {key}", collection)
                raise TargetError(f"{self.target} offers no GET {path}: listing is a `facecli serve` extension "
                                  "that the OpenCV FR Server API does not document")
            if resp.status_code != 200 or not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise self._fatal(resp, f"listing {key}", collection)
            page = [r for r in data[key] if isinstance(r, dict)]
            total = int(data.get("count", len(page)))
            rows += page
            skip += len(page)
            if not page or skip >= total or (limit is not None and len(rows) >= limit):
                return total, rows

    def list_collections(self, limit: int | None, offset: int) -> tuple[int, list[CollectionRow]]:
        total, rows = self._get_list("/collections", "collections", {}, limit, offset)
        return total, [CollectionRow(str(r.get("name")), r.get("num_persons"), r.get("num_faces"), r.get("created"),
                                     r.get("modified")) for r in rows]

    def create_collection(self, collection: str) -> None:
        check_collection_name(collection)
        resp = self._request("POST", "/collection", json_body={"name": collection})
        if resp.status_code == 409:
            raise TargetError(f"collection {collection!r} already exists on {self.target}")
        if resp.status_code not in (200, 201):
            raise self._fatal(resp, "creating the collection", collection)

    def delete_collection(self, collection: str) -> None:
        check_collection_name(collection)
        resp = self._request("DELETE", "/collection", json_body={"name": collection})
        if resp.status_code not in (200, 204):
            raise self._fatal(resp, "deleting the collection", collection)

    @staticmethod
    def _row(r: dict[str, Any]) -> PersonRow:
        known = {"person_id", "person_name", "metadata", "faces", "created", "modified"}
        return PersonRow(str(r.get("person_id")), str(r.get("person_name") or ""), dict(r.get("metadata") or {}),
                         r.get("faces"), r.get("created"), r.get("modified"),
                         {k: v for k, v in r.items() if k not in known})

    def list_persons(self, collection: str, limit: int | None, offset: int) -> tuple[int, list[PersonRow]]:
        check_collection_name(collection)
        total, rows = self._get_list("/persons", "persons", {"collection_name": collection}, limit, offset, collection)
        return total, [self._row(r) for r in rows]

    def get_person(self, collection: str, person_id: str) -> PersonRow | None:
        check_collection_name(collection)
        why = validate_person_id(person_id)
        if why:
            raise ConfigError(why)
        _, rows = self._get_list("/persons", "persons", {"collection_name": collection, "person_id": person_id},
                                 1, 0, collection)
        rows = [r for r in rows if r.get("person_id") == person_id]
        return self._row(rows[0]) if rows else None

    def delete_person(self, collection: str, person_id: str) -> bool:
        raise ConfigError("the OpenCV FR Server API has no endpoint to delete one person",
                          hint="re-enroll the person, or delete and rebuild the collection")

    def held_ids(self, collection: str, person_ids: Sequence[str]) -> set[str] | None:
        """The ids the collection holds (one paged listing), or None when this server cannot list
        persons (an OpenCV FR Server: listing is a `facecli serve` extension)."""
        try:
            _, rows = self.list_persons(collection, None, 0)
        except TargetError:
            return None
        have = {r.person_id for r in rows}
        return {pid for pid in person_ids if pid in have}


def _parse_matches(data: Any, k: int, min_score: float) -> list[Match]:
    """The face-search answer (schema unpublished): a list, or a dict wrapping one; best first."""
    if isinstance(data, dict):
        data = next((data[key] for key in ("results", "matches", "persons", "data") if isinstance(data.get(key), list)),
                    [])
    matches: list[Match] = []
    for r in data if isinstance(data, list) else []:
        if not isinstance(r, dict):
            continue
        person = r.get("person") if isinstance(r.get("person"), dict) else r
        pid = person.get("person_id") or person.get("id")
        score = next((r[key] for key in ("score", "similarity", "similarity_score") if key in r), None)
        if pid is None or not isinstance(score, (int, float)) or isinstance(score, bool):
            continue
        meta = person.get("metadata")
        matches.append(Match(str(pid), str(person.get("person_name") or person.get("name") or ""), float(score),
                             {str(a): str(b) for a, b in meta.items()} if isinstance(meta, dict) else {}))
    matches.sort(key=lambda m: m.score, reverse=True)
    return [m for m in matches if m.score >= min_score][:k]
