"""The OpenCV FR client (sinks/opencv_fr.py + transport.py) against a fake server built from the
documented contract (../shared/APIS.md), served over real HTTP on 127.0.0.1. No models needed."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from facecli.errors import ConfigError, ExitCode, ReasonCode, Status, TargetError
from facecli.sinks.base import FacePayload, PersonPayload, SearchProbe
from facecli.sinks.opencv_fr import OpenCVFRSink
from facecli.sinks.transport import RetryPolicy, check_base_url, parse_retry_after

from .live_server import DropProxy, Faults, LiveServer

KEY = "fake-key-7f3a9c"
FAST = RetryPolicy(retries=6, initial_s=0.01, max_wait_s=0.05)


class FakeFR:
    """The documented OpenCV FR Server contract, minimally: collections, PUT /persons, /face-search."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *, echo_ids: bool = True, shuffle: bool = False, reject: str | None = None,
              body_limit: int | None = None, status_script: list[int] | None = None, retry_after: str = "0.3",
              delay: float = 0.0) -> None:
        self.collections: dict[str, dict[str, dict]] = {"c": {}}
        self.echo_ids, self.shuffle, self.reject, self.body_limit = echo_ids, shuffle, reject, body_limit
        self.status_script = list(status_script or [])  # statuses to answer PUT /persons with first
        self.retry_after, self.delay = retry_after, delay
        self.requests: list[int] = []  # body sizes of PUT /persons that reached the logic
        self.stored_times: dict[str, int] = {}
        self.inflight = self.max_inflight = 0
        self.search_answer: object = []

    def _auth(self, request: Request) -> JSONResponse | None:
        key = request.headers.get("x-api-key")
        if not key:
            return JSONResponse({"code": "ERR_API_KEY_NOT_PRESENT", "message": "The API key is missing from the request."}, 401)
        if key != KEY:
            return JSONResponse({"code": "ERR_API_KEY_NOT_VALID", "message": "API Key is invalid."}, 403)
        return None

    async def put_persons(self, request: Request) -> JSONResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        raw = await request.body()
        if self.status_script:
            status = self.status_script.pop(0)
            headers = {"retry-after": self.retry_after} if status == 429 else {}
            return JSONResponse({"code": "ERR_DATABASE_ERROR" if status == 500 else "ERR_SLOW_DOWN", "message": "later"},
                                status, headers=headers)
        if self.body_limit is not None and len(raw) > self.body_limit:
            return JSONResponse({"code": "ERR_PAYLOAD_IS_TOO_LARGE", "message": "too large"}, 413)
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"code": "ERR_UNPROCESSABLE_CONTENT", "message": "malformed"}, 412)
        coll = self.collections.get(body["collection_name"])
        if coll is None:
            return JSONResponse({"code": "ERR_NOT_FOUND", "message": "The requested entity could not be found."}, 404)
        persons = body["persons"]
        if self.reject and any(p["person_id"] == self.reject for p in persons):
            return JSONResponse({"code": "ERR_UNPROCESSABLE_CONTENT", "message": f"bad person {self.reject}"}, 412)
        self.requests.append(len(raw))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1
        results = []
        for p in persons:
            image = base64.b64decode(p["face_base_64"])
            if image.startswith(b"noface"):
                r = {"code": "ERR_NO_FACE_DETECTED", "message": "no face", "metadata": p["metadata"]}
            else:
                coll[p["person_id"]] = p
                self.stored_times[p["person_id"]] = self.stored_times.get(p["person_id"], 0) + 1
                r = {"code": "SUCCESS", "message": "enrolled", "metadata": p["metadata"]}
            if self.echo_ids:
                r["person_id"] = p["person_id"]
            results.append(r)
        if self.shuffle:
            random.Random(len(results)).shuffle(results)
        return JSONResponse(results)

    async def post_collection(self, request: Request) -> JSONResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        name = (await request.json())["name"]
        if name in self.collections:
            return JSONResponse({"code": "ERR_ALREADY_EXISTS", "message": "exists"}, 409)
        self.collections[name] = {}
        return JSONResponse({"name": name, "num_persons": 0})

    async def face_search(self, request: Request) -> JSONResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await request.json()
        if base64.b64decode(body["face_base_64"]).startswith(b"noface"):
            return JSONResponse({"code": "ERR_NO_FACE_DETECTED", "message": "no face"}, 412)
        return JSONResponse(self.search_answer)

    def app(self) -> Starlette:
        # No GET /collections: like the real OpenCV FR Server, listing is not offered.
        return Starlette(routes=[Route("/persons", self.put_persons, methods=["PUT"]),
                                 Route("/collection", self.post_collection, methods=["POST"]),
                                 Route("/face-search", self.face_search, methods=["POST"])])


@pytest.fixture(scope="module")
def fake():
    fr = FakeFR()
    with LiveServer(fr.app()) as srv:
        fr.url = srv.url
        yield fr


def person(i: int | str, image: bytes | None = None, meta: dict | None = None) -> PersonPayload:
    pid = f"p{i}" if isinstance(i, int) else i
    return PersonPayload(pid, f"Person {pid}", [FacePayload("0" * 64, f"/x/{pid}.jpg", jpeg=image or f"face-{pid}".encode())],
                         meta if meta is not None else {"row": pid})


def sink_for(fake, **kw) -> OpenCVFRSink:
    kw.setdefault("policy", FAST)
    return OpenCVFRSink(fake.url, kw.pop("api_key", KEY), **kw)


# -- no server needed -----------------------------------------------------------------------


def test_url_rules():
    with pytest.raises(ConfigError, match="plain http"):
        check_base_url("http://fr.example.com:8000")
    assert check_base_url("http://fr.example.com:8000", insecure=True).host == "fr.example.com"
    assert check_base_url("https://fr.example.com/api").path == "/api"
    for ok in ("http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:9"):
        check_base_url(ok)
    with pytest.raises(ConfigError, match="credentials"):
        check_base_url("https://user:pw@fr.example.com")
    with pytest.raises(ConfigError):
        check_base_url("ftp://fr.example.com")


def test_retry_after_values():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 9 <= parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) <= 11


# -- batches ---------------------------------------------------------------------------------


def test_a_412_batch_is_split_until_the_bad_person_is_isolated(fake):
    fake.reset(reject="p13")
    sink = sink_for(fake, batch_size=50)
    try:
        outcomes = sink.upsert("c", [person(i) for i in range(50)])
    finally:
        sink.close()
    failed = [o for o in outcomes if o.status == Status.FAILED]
    assert [o.person_id for o in failed] == ["p13"]
    assert failed[0].reason == ReasonCode.SERVER_REJECTED and failed[0].server_code == "ERR_UNPROCESSABLE_CONTENT"
    assert "bad person p13" in failed[0].message
    assert len(fake.collections["c"]) == 49 and all(n == 1 for n in fake.stored_times.values())
    assert len(fake.requests) <= 2 * 6  # halving: about 2 log2(50) requests reach the server


def test_request_caps_and_a_413_person(fake):
    fake.reset(body_limit=6000)
    big = b"x" * 9000
    persons = [person(i) for i in range(20)] + [person("huge", image=big)]
    sink = sink_for(fake, batch_size=8, max_batch_bytes=1500)
    try:
        outcomes = {o.person_id: o for o in sink.upsert("c", persons)}
    finally:
        sink.close()
    assert outcomes["huge"].status == Status.FAILED and outcomes["huge"].server_code == "ERR_PAYLOAD_IS_TOO_LARGE"
    assert sum(o.status == Status.ENROLLED for o in outcomes.values()) == 20
    assert max(fake.requests) <= 1500 and len(fake.requests) >= 20 * 100 // 1500


def test_results_are_matched_by_person_id_not_position(fake):
    fake.reset(shuffle=True)
    persons = [person(i) for i in range(10)] + [person("nf", image=b"noface!")]
    sink = sink_for(fake)
    try:
        outcomes = {o.person_id: o for o in sink.upsert("c", persons)}
    finally:
        sink.close()
    assert outcomes["nf"].status == Status.FAILED and outcomes["nf"].server_code == "ERR_NO_FACE_DETECTED"
    assert outcomes["nf"].reason == ReasonCode.SERVER_REJECTED
    assert all(outcomes[f"p{i}"].status == Status.ENROLLED for i in range(10))


def test_results_without_person_id_use_metadata_then_smaller_requests(fake):
    fake.reset(shuffle=True, echo_ids=False)
    sink = sink_for(fake)
    try:
        # unique metadata: matched by the echo
        by_meta = {o.person_id: o for o in sink.upsert("c", [person(i) for i in range(6)] + [person("nf", b"noface")])}
        assert by_meta["nf"].status == Status.FAILED and sum(o.status == Status.ENROLLED for o in by_meta.values()) == 6
        # identical (empty) metadata and one failure: only smaller requests can tell who failed
        same = [person(i, meta={}) for i in range(6)] + [person("nf2", b"noface", meta={})]
        out = {o.person_id: o for o in sink.upsert("c", same)}
    finally:
        sink.close()
    assert out["nf2"].status == Status.FAILED and out["nf2"].server_code == "ERR_NO_FACE_DETECTED"
    assert all(out[f"p{i}"].status == Status.ENROLLED for i in range(6))


# -- retries -------------------------------------------------------------------------------


def test_429_retry_after_is_honoured_and_counted(fake):
    fake.reset(status_script=[429, 429], retry_after="0.3")
    sink = sink_for(fake)
    try:
        t0 = time.monotonic()
        outcomes = sink.upsert("c", [person(1)])
        elapsed = time.monotonic() - t0
    finally:
        sink.close()
    assert outcomes[0].status == Status.ENROLLED
    assert sink.retries == 2 and elapsed >= 0.6


def test_retry_budget_stops_a_retry_storm(fake):
    fake.reset(status_script=[500] * 100)
    sink = sink_for(fake, batch_size=1, concurrency=1, policy=RetryPolicy(retries=5, initial_s=0.01, budget=3))
    try:
        outcomes = sink.upsert("c", [person(i) for i in range(4)])
    finally:
        sink.close()
    assert sink.retries == 3  # not 4 x 5
    assert all(o.status == Status.FAILED and o.reason == ReasonCode.SERVER_ERROR for o in outcomes)
    assert outcomes[0].server_code == "ERR_DATABASE_ERROR"


def test_concurrency_puts_requests_in_flight_together(fake):
    fake.reset(delay=0.3)
    sink = sink_for(fake, batch_size=2, concurrency=4)
    try:
        t0 = time.monotonic()
        outcomes = sink.upsert("c", [person(i) for i in range(8)])
        elapsed = time.monotonic() - t0
    finally:
        sink.close()
    assert all(o.status == Status.ENROLLED for o in outcomes)
    assert fake.max_inflight >= 3 and elapsed < 4 * 0.3


def test_faults_and_dropped_connections_lose_nobody(fake):
    fake.reset()
    faults = Faults(fake.app(), seed=3)
    faults.reset(rate_500=0.2, rate_429=0.1, retry_after="0.02")
    with LiveServer(faults) as srv, DropProxy(srv.port, rate=0.2, seed=5) as proxy:
        sink = OpenCVFRSink(proxy.url, KEY, batch_size=3, concurrency=3, policy=RetryPolicy(retries=10, initial_s=0.01,
                                                                                          max_wait_s=0.05))
        try:
            outcomes = sink.upsert("c", [person(i) for i in range(40)])
        finally:
            sink.close()
    assert all(o.status == Status.ENROLLED for o in outcomes), [o for o in outcomes if o.status != Status.ENROLLED]
    assert sorted(fake.collections["c"]) == sorted(f"p{i}" for i in range(40))
    assert faults.counts["500"] + faults.counts["429"] > 0 and proxy.dropped > 0
    # (a drop may hit an injected 500: the client then sees one failure, not two)
    assert sink.retries >= max(faults.counts["500"] + faults.counts["429"], proxy.dropped)


# -- fatal conditions ------------------------------------------------------------------------


@pytest.mark.parametrize("key,status_text", [(None, "no API key was sent"), ("wrong-key-123", "refused the API key")])
def test_auth_failures_end_the_run_without_echoing_the_key(fake, key, status_text):
    fake.reset()
    sink = OpenCVFRSink(fake.url, key, policy=FAST)
    try:
        with pytest.raises(TargetError) as info:
            sink.upsert("c", [person(1)])
    finally:
        sink.close()
    err = info.value
    assert err.exit_code == ExitCode.TARGET and status_text in err.message
    assert "wrong-key-123" not in f"{err.message} {err.hint}" and KEY not in f"{err.message} {err.hint}"


def test_missing_collection(fake):
    fake.reset()
    sink = sink_for(fake)
    try:
        sink.ensure_collection("nope", create=False)  # no listing on this server: checked on upsert
        with pytest.raises(TargetError, match="does not exist") as info:
            sink.upsert("nope", [person(1)])
        assert "--create-collection" in info.value.hint
        sink.ensure_collection("made", create=True)
        sink.ensure_collection("made", create=True)  # 409: fine
        assert sink.upsert("made", [person(1)])[0].status == Status.ENROLLED
        with pytest.raises(TargetError, match="GET /collections"):
            sink.list_collections(None, 0)
    finally:
        sink.close()


def test_unreachable_server_is_fatal_after_retries():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sink = OpenCVFRSink(f"http://127.0.0.1:{port}", KEY, policy=RetryPolicy(retries=2, initial_s=0.01))
    try:
        with pytest.raises(TargetError, match="cannot reach"):
            sink.upsert("c", [person(1)])
    finally:
        sink.close()
    assert sink.retries == 2


# -- search ----------------------------------------------------------------------------------


def test_search_answers_are_read_defensively(fake):
    fake.reset()
    fake.search_answer = {"results": [{"person": {"id": "b", "name": "B"}, "similarity": 0.80},
                                      {"person_id": "a", "person_name": "A", "score": 0.95, "metadata": {"k": "v"}},
                                      {"person_id": "c", "score": 0.40}, {"junk": True}]}
    sink = sink_for(fake)
    try:
        matches = sink.search("c", SearchProbe(jpeg=b"face"), k=5, min_score=0.5)
        assert [(m.person_id, m.score) for m in matches] == [("a", 0.95), ("b", 0.80)]
        assert matches[0].metadata == {"k": "v"} and matches[1].person_name == "B"
        assert sink.search("c", SearchProbe(jpeg=b"noface"), k=5, min_score=0.5) == []
    finally:
        sink.close()
