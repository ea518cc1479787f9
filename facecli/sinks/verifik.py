"""Verifik face recognition (https://api.verifik.co) as a Sink: ``--to verifik://``.

Contract: ../shared/APIS.md. ``Authorization: Bearer <token>``; answers wrapped
``{id, data, signature}`` (unwrapped here).

- Collections by name -> ``_id`` (``GET /v2/face-recognition/collections``); created with
  ``POST .../collections {name, description}`` under ``--create-collection``.
- Persons: ``POST /v2/face-recognition/persons {name, images (1..3 raw base64), gender,
  date_of_birth, nationality, collections, notes}``. Verifik assigns the person id; uniqueness is
  name + date_of_birth, so a repeat answers 412 ``person_already_set`` with the existing person,
  which is then updated with ``PUT .../persons/{_id}``. Sending images there REPLACES all of that
  person's faces: re-enrolling keeps only the newly sent images. This is also why a killed and
  resumed run never duplicates anyone.
- 412 ``only_images_in_base64`` / 409 ``MissingParameter``: that person fails (SERVER_REJECTED);
  401 / 403 (``token_expired``) end the run (exit 3); 500 ``internal_error`` is retried.
- Search: ``POST /v2/face-recognition/search`` -> ``data[{id, name, score}]`` (min_score 0.2..1).

Base URL override (tests, proxies): ``FACECLI_VERIFIK_URL=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

import httpx

from facecli.errors import ReasonCode, Status
from facecli.ids import url_segment
from facecli.sinks.base import ItemOutcome, Match, PersonPayload, SearchProbe
from facecli.sinks.seed_common import NamedCollections, SeedClient, base_url
from facecli.sinks.transport import RetryPolicy, error_body, json_or_none

log = logging.getLogger("facecli.verifik")

URL_ENV = "FACECLI_VERIFIK_URL"
API = "/v2/face-recognition"
MAX_IMAGES = 3


def unwrap(resp: httpx.Response) -> Any:
    """``data`` of the ``{id, data, signature}`` envelope (the body itself when not wrapped)."""
    body = json_or_none(resp)
    return body.get("data") if isinstance(body, dict) and "data" in body else body


def _gender(value: str | None) -> str | None:
    if not value:
        return None
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(value.strip().upper())


class VerifikSink(NamedCollections, SeedClient):
    name = "verifik"
    service = "Verifik"
    takes_images = True
    max_faces_per_person = MAX_IMAGES
    preset = "verifik"

    def __init__(self, api_key: str | None = None, *, insecure: bool = False, concurrency: int | None = None,
                 timeout: float | None = None, policy: RetryPolicy | None = None, verify: bool | str | None = None,
                 transport: httpx.BaseTransport | None = None, **_ignored: Any) -> None:
        super().__init__(base_url(URL_ENV, "https://api.verifik.co", insecure), api_key, auth_header="authorization",
                         auth_scheme="Bearer", concurrency=concurrency, timeout=timeout, policy=policy, verify=verify,
                         transport=transport)
        self._collections: dict[str, str] = {}


    # -- collections -----------------------------------------------------------------------------

    def _find_collection(self, name: str) -> str | None:
        resp = self._request("GET", f"{API}/collections")
        if resp.status_code != 200:
            raise self._fatal(resp, "listing collections")
        rows = unwrap(resp)
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, dict) and r.get("name") == name and (r.get("_id") or r.get("id")):
                return str(r.get("_id") or r.get("id"))
        return None

    def _create_collection(self, name: str) -> str:
        resp = self._request("POST", f"{API}/collections", json_body={"name": name, "description": "facecli"})
        data = unwrap(resp)
        if resp.status_code not in (200, 201) or not isinstance(data, dict) or not (data.get("_id") or data.get("id")):
            raise self._fatal(resp, "creating the collection")
        return str(data.get("_id") or data.get("id"))

    # -- persons ---------------------------------------------------------------------------------

    def _body(self, p: PersonPayload, cid: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": p.person_name or p.person_id,
            "images": [base64.b64encode(f.jpeg).decode("ascii") for f in p.faces if f.jpeg][:MAX_IMAGES],
            "collections": [cid],
        }
        for key, value in (("gender", _gender(p.gender)), ("date_of_birth", p.date_of_birth),
                           ("nationality", p.nationality), ("notes", p.notes)):
            if value:
                body[key] = value
        return body

    def _failed(self, p: PersonPayload, resp: httpx.Response) -> ItemOutcome:
        code, message = error_body(resp)
        if resp.status_code in (401, 403):
            raise self._fatal(resp, "enrolling")
        reason = ReasonCode.SERVER_ERROR if resp.status_code >= 500 else ReasonCode.SERVER_REJECTED
        return ItemOutcome(p.person_id, Status.FAILED, reason, server_code=message or code or f"HTTP_{resp.status_code}",
                           message=" ".join(x for x in (code, message) if x) or f"HTTP {resp.status_code}")

    def _upsert_one(self, p: PersonPayload, cid: str) -> ItemOutcome:
        body = self._body(p, cid)
        resp = self._request("POST", f"{API}/persons", json_body=body)
        if resp.status_code in (200, 201):
            return ItemOutcome(p.person_id, Status.ENROLLED, action="created")
        _, message = error_body(resp)
        existing = unwrap(resp)
        if resp.status_code == 412 and message == "person_already_set" and isinstance(existing, dict) \
                and (existing.get("_id") or existing.get("id")):
            pid = str(existing.get("_id") or existing.get("id"))
            have = existing.get("collections") if isinstance(existing.get("collections"), list) else []
            have = [str(c.get("_id") if isinstance(c, dict) else c) for c in have]
            body["collections"] = list(dict.fromkeys([c for c in have if c and c != "None"] + [cid]))
            try:
                path = f"{API}/persons/{url_segment(pid)}"
            except ValueError:  # an id a URL path would resolve elsewhere ('..'): never request it
                return ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_ERROR, server_code="person_already_set",
                                   message=f"Verifik named the existing person {pid!r}, which is not a usable id")
            put = self._request("PUT", path, json_body=body)
            if put.status_code == 200:
                return ItemOutcome(p.person_id, Status.ENROLLED, action="updated",
                                   message=f"updated Verifik person {pid} (its images were replaced)")
            return self._failed(p, put)
        return self._failed(p, resp)

    def upsert(self, collection: str, persons: Sequence[PersonPayload]) -> list[ItemOutcome]:
        cid = self._collection_id(collection)
        return self._per_person(persons, lambda p: self._upsert_one(p, cid))

    def search(self, collection: str, probe: SearchProbe, k: int, min_score: float) -> list[Match]:
        if probe.jpeg is None:
            raise ValueError("Verifik searches by image: the probe needs a JPEG")
        body = {"images": [base64.b64encode(probe.jpeg).decode("ascii")], "collection_id": self._collection_id(collection),
                "max_results": int(k), "min_score": float(min(1.0, max(0.2, min_score))), "search_mode": "ACCURATE"}
        resp = self._request("POST", f"{API}/search", json_body=body)
        if resp.status_code == 412:  # no usable face in the probe
            return []
        if resp.status_code != 200:
            raise self._fatal(resp, "searching")
        rows = unwrap(resp)
        matches = [Match(str(r.get("id") or r.get("_id")), str(r.get("name") or ""), float(r["score"]))
                   for r in (rows if isinstance(rows, list) else [])
                   if isinstance(r, dict) and (r.get("id") or r.get("_id")) and isinstance(r.get("score"), (int, float))]
        matches.sort(key=lambda m: m.score, reverse=True)
        return [m for m in matches if m.score >= min_score][:k]
