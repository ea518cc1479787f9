"""OpenCV FR cloud (https://{us|eu|sg}.opencv.fr) as a Sink: ``--to opencv-fr-cloud://us|eu|sg``.

Contract: ../shared/APIS.md, corrected by the vendor's own descriptions of the service, which win
where they differ: its Python SDK (``opencv-face-recognition``; tests/test_sdk_conformance.py drives
the test fake through it, and this adapter against the same fake) and its published OpenAPI
document (https://us.opencv.fr/openapi.json). Header ``x-api-key``; JSON; 422 carries validation
details ``{"detail": [{loc, msg, type}]}``, other errors ``{code, message}``; throttling answers 429
with ``retry-after`` (transport.py obeys it).

- Collections are addressed by id (a UUID); ``-c NAME`` is looked up by name (``GET
  /collections?search=``, paged by ``count``) and created with ``POST /collection`` under
  ``--create-collection``. The service takes names of at most 50 characters: a longer one is
  refused with its 422 details, which end the run.
- A person is ``GET /person/{id}`` first: 404 -> ``POST /person`` (201) with 1..3 images, id, name,
  gender, date_of_birth, nationality, collections (ids) and notes; found -> ``PATCH /person`` with
  the same fields, its other collections kept (the answer lists them as collection *objects*,
  ``{id, name, ...}``; plain ids are read too). A ``POST`` answered 409 (created meanwhile, e.g. by
  the in-flight request of a killed run) is retried as a ``PATCH``: a resumed run never duplicates.
- The API has no metadata field: a person's metadata travels as JSON in ``notes`` when the source
  gives no notes, and comes back from search as metadata. The service caps ``notes`` at 500
  characters and ids and names at 100: past that, the person fails alone with the 422 details.
- 422 (and 400/412) on one person: that person fails with SERVER_REJECTED and the validation
  details; the others go on. 401/403 end the run (exit 3).
- Search: ``POST /search {images, min_score, max_results, collection_id, search_mode}`` ->
  ``[{...person, score}]``, best first; ``max_results`` defaults to 10 on the service, so it is
  sent (``k``, at most 100).

Base URL override (tests, proxies): ``FACECLI_OPENCV_FR_CLOUD_URL=http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from typing import Any

import httpx

from facecli.errors import ConfigError, ReasonCode, Status
from facecli.ids import url_segment
from facecli.sinks.base import ItemOutcome, Match, PersonPayload, SearchProbe
from facecli.sinks.seed_common import NamedCollections, SeedClient, base_url
from facecli.sinks.transport import RetryPolicy, error_body, json_or_none

log = logging.getLogger("facecli.opencv_fr_cloud")

REGIONS = ("us", "eu", "sg")
URL_ENV = "FACECLI_OPENCV_FR_CLOUD_URL"
MAX_IMAGES = 3
MAX_RESULTS = 100  # /search max_results: the OpenAPI schema allows 500, its prose says 100
_REJECT_STATUSES = frozenset({400, 404, 412, 413, 422})


def _gender(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip().upper()
    return {"M": "M", "MALE": "M", "MAN": "M", "F": "F", "FEMALE": "F", "WOMAN": "F"}.get(v)


def validation_message(resp: httpx.Response) -> tuple[str, str]:
    """(code, message) of an error; 422 ``{"detail": [{loc, msg, type}]}`` flattened to one line."""
    data = json_or_none(resp)
    if isinstance(data, dict) and isinstance(data.get("detail"), list):
        parts, types = [], []
        for d in data["detail"]:
            if isinstance(d, dict):
                loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", "")))
                if d.get("type"):
                    types.append(str(d["type"]))
        return (types[0] if types else "VALIDATION_ERROR"), "; ".join(parts)[:500]
    return error_body(resp)


class OpenCVFRCloudSink(NamedCollections, SeedClient):
    name = "opencv-fr-cloud"
    service = "OpenCV FR cloud"
    takes_images = True
    max_faces_per_person = MAX_IMAGES  # the API takes 1..3 images per person
    preset = "opencv-fr-cloud"  # images >= 224x224 (vision/quality.py PRESETS)

    def __init__(self, region: str, api_key: str | None = None, *, insecure: bool = False,
                 concurrency: int | None = None, timeout: float | None = None, policy: RetryPolicy | None = None,
                 verify: bool | str | None = None, transport: httpx.BaseTransport | None = None,
                 **_ignored: Any) -> None:
        region = region.strip("/").lower()
        if region not in REGIONS:
            raise ConfigError(f"unknown OpenCV FR cloud region {region!r}", hint="use opencv-fr-cloud://us, eu or sg")
        self.region = region
        super().__init__(base_url(URL_ENV, f"https://{region}.opencv.fr", insecure), api_key,
                         auth_header="x-api-key", auth_scheme=None, concurrency=concurrency, timeout=timeout,
                         policy=policy, verify=verify, transport=transport)
        self._collections: dict[str, str] = {}

    # -- collections ---------------------------------------------------------------------------

    _error_parts = staticmethod(validation_message)

    def _find_collection(self, name: str) -> str | None:
        skip = 0
        while True:
            resp = self._request("GET", "/collections", params={"skip": skip, "take": 100, "search": name})
            if resp.status_code != 200:
                raise self._fatal(resp, "listing collections")
            data = json_or_none(resp)
            rows = data.get("collections") if isinstance(data, dict) else data
            rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
            for r in rows:
                if r.get("name") == name and r.get("id"):
                    return str(r["id"])
            total = data.get("count") if isinstance(data, dict) else None
            skip += len(rows)
            if not rows or not isinstance(total, int) or skip >= total:
                return None

    def _create_collection(self, name: str) -> str:
        resp = self._request("POST", "/collection", json_body={"name": name, "description": "facecli"})
        data = json_or_none(resp)
        if resp.status_code not in (200, 201) or not isinstance(data, dict) or not data.get("id"):
            raise self._fatal(resp, "creating the collection")
        return str(data["id"])

    # -- persons -------------------------------------------------------------------------------

    def _person_body(self, p: PersonPayload, cid: str) -> dict[str, Any]:
        notes = p.notes
        if notes is None and p.metadata:
            notes = json.dumps({str(k): str(v) for k, v in p.metadata.items()}, ensure_ascii=False, sort_keys=True)
        return {"id": p.person_id, "name": p.person_name or p.person_id,
                "images": [base64.b64encode(f.jpeg).decode("ascii") for f in p.faces if f.jpeg][:MAX_IMAGES],
                "gender": _gender(p.gender), "date_of_birth": p.date_of_birth, "nationality": p.nationality,
                "collections": [cid], "notes": notes}

    def _rejected(self, p: PersonPayload, resp: httpx.Response) -> ItemOutcome:
        code, message = validation_message(resp)
        if resp.status_code in (401, 403):
            raise self._auth_error(resp.status_code, code or message)
        if resp.status_code in _REJECT_STATUSES:
            return ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_REJECTED,
                               server_code=code or f"HTTP_{resp.status_code}", message=message)
        return ItemOutcome(p.person_id, Status.FAILED, ReasonCode.SERVER_ERROR,
                           server_code=code or f"HTTP_{resp.status_code}", message=message or f"HTTP {resp.status_code}")

    def _patch(self, p: PersonPayload, body: dict[str, Any], existing: dict[str, Any] | None) -> ItemOutcome:
        if existing and isinstance(existing.get("collections"), list):  # keep its other collections
            have = [c.get("id") if isinstance(c, dict) else c for c in existing["collections"]]
            body["collections"] = list(dict.fromkeys([str(c) for c in have if c] + body["collections"]))
        resp = self._request("PATCH", "/person", json_body=body)
        if resp.status_code == 200:
            return ItemOutcome(p.person_id, Status.ENROLLED, action="updated")
        return self._rejected(p, resp)

    def _upsert_one(self, p: PersonPayload, cid: str) -> ItemOutcome:
        body = self._person_body(p, cid)
        # one percent-encoded segment; '.'/'..' never get here (invalid_id_outcome refuses them)
        got = self._request("GET", f"/person/{url_segment(p.person_id)}")
        if got.status_code in (401, 403):
            raise self._fatal(got, "looking up a person")
        if got.status_code == 200:
            return self._patch(p, body, json_or_none(got))
        resp = self._request("POST", "/person", json_body=body)
        if resp.status_code in (200, 201):
            return ItemOutcome(p.person_id, Status.ENROLLED, action="created")
        if resp.status_code == 409:  # created meanwhile (a resumed run's in-flight request): update it
            return self._patch(p, body, None)
        return self._rejected(p, resp)

    def upsert(self, collection: str, persons: Sequence[PersonPayload]) -> list[ItemOutcome]:
        cid = self._collection_id(collection)
        return self._per_person(persons, lambda p: self._upsert_one(p, cid))

    def search(self, collection: str, probe: SearchProbe, k: int, min_score: float) -> list[Match]:
        if probe.jpeg is None:
            raise ValueError("OpenCV FR cloud searches by image: the probe needs a JPEG")
        body = {"images": [base64.b64encode(probe.jpeg).decode("ascii")],
                "collection_id": self._collection_id(collection),
                "min_score": float(min(1.0, max(0.0, min_score))), "max_results": max(1, min(k, MAX_RESULTS)),
                "search_mode": "ACCURATE"}
        resp = self._request("POST", "/search", json_body=body)
        if resp.status_code in (400, 422):  # no usable face in the probe
            return []
        if resp.status_code != 200:
            raise self._fatal(resp, "searching")
        data = json_or_none(resp)
        rows = data if isinstance(data, list) else (data.get("persons") or data.get("results") or []) \
            if isinstance(data, dict) else []
        matches = []
        for r in rows:
            if not isinstance(r, dict) or r.get("id") is None or not isinstance(r.get("score"), (int, float)):
                continue
            meta: dict[str, str] = {}
            notes = r.get("notes")
            if isinstance(notes, str) and notes.startswith("{"):
                try:
                    parsed = json.loads(notes)
                    meta = {str(a): str(b) for a, b in parsed.items()} if isinstance(parsed, dict) else {}
                except ValueError:
                    pass
            for f in ("gender", "date_of_birth", "nationality"):
                if r.get(f):
                    meta.setdefault(f, str(r[f]))
            matches.append(Match(str(r["id"]), str(r.get("name") or ""), float(r["score"]), meta))
        matches.sort(key=lambda m: m.score, reverse=True)
        return [m for m in matches if m.score >= min_score][:k]

