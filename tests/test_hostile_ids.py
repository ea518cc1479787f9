"""Hostile person ids, collection names and JSON (issue 16): `facecli serve` over real HTTP refuses
them with the API's codes and stores nothing; every sink refuses them before any request; deep
JSON is a 412 without a traceback; outside values reach the terminal escaped, JSON stays exact."""

from __future__ import annotations

import base64
import json
import logging

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from facecli.cli.app import app as cli_app
from facecli.cli.console import safe_text
from facecli.engine import engine as eng
from facecli.errors import ConfigError, ReasonCode, Status
from facecli.ids import url_segment
from facecli.pipeline.report import ItemResult, RunSummary, open_report
from facecli.sinks.base import FacePayload, PersonPayload
from facecli.sinks.local import LocalSink
from facecli.sinks.opencv_fr import OpenCVFRSink
from facecli.sinks.opencv_fr_cloud import OpenCVFRCloudSink
from facecli.sinks.persona import PersonaSink
from facecli.sinks.transport import RetryPolicy
from facecli.sinks.verifik import VerifikSink

from .conftest import SAMPLES
from .live_server import LiveServer

KEY = "hostile-ids-key-7Hq2"
runner = CliRunner()

HOSTILE_IDS = ["../../x", "a\x00b\x1b[31m", "P" * 100_000, ".", "..", "-kit", "=cmd|calc", "", " pad", "a/b",
               "caf\u00e9", "x\u202ey"]
HOSTILE_COLLECTIONS = ["..", ".", "CON", "nul.txt", "com1", "a" * 65, "a/b", "a\x1bb", "sp ace", ""]
NO_RETRY = RetryPolicy(retries=0)


def b64(name: str) -> str:
    return base64.b64encode((SAMPLES / name).read_bytes()).decode()


class Captured(logging.Handler):
    """Every record of the server's and uvicorn's loggers, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.levels.append(record.levelno)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def server(checker, tmp_path_factory):
    from facecli.server.app import create_app

    engine = eng.Engine(tmp_path_factory.mktemp("hostile") / "g.db")
    live = LiveServer(create_app(engine, checker, [KEY]))  # configures uvicorn's logging: add ours after
    log = Captured()
    loggers = [logging.getLogger(n) for n in ("facecli.server", "uvicorn", "uvicorn.error", "starlette")]
    for lg in loggers:
        lg.addHandler(log)
    try:
        with live as srv:
            srv.engine, srv.log = engine, log
            with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY}, timeout=60) as client:
                srv.client = client
                assert client.post("/collection", json={"name": "h"}).status_code == 200
                yield srv
    finally:
        for lg in loggers:
            lg.removeHandler(log)
        engine.close()


def error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["code"] == code and body["message"], body
    assert len(body["message"]) < 400  # never an echo of a 100,000-character id
    return body


def stored_ids(server, collection: str = "h") -> list[str]:
    return [p.person_id for p in server.engine.list_persons(collection)[1]]


# -- facecli serve --------------------------------------------------------------------------------


@pytest.mark.parametrize("pid", HOSTILE_IDS, ids=lambda p: repr(p)[:20])
def test_serve_refuses_hostile_person_ids_on_every_endpoint_and_stores_nothing(server, pid):
    api, face = server.client, b64("grace_hopper.jpg")
    before = stored_ids(server)
    good = {"person_id": "fine-1", "person_name": "Fine", "face_base_64": face}
    bulk = {"collection_name": "h", "persons": [good, {"person_id": pid, "person_name": "X", "face_base_64": face}]}
    error(api.put("/persons", json=bulk), 412, "ERR_UNPROCESSABLE_CONTENT")
    error(api.put("/person", json={"collection_name": "h", "person_id": pid, "face_base_64": face}), 412,
          "ERR_UNPROCESSABLE_CONTENT")
    if 0 < len(pid) < 10_000:  # an empty query value reads as "no filter"; httpx refuses a 100 kB URL
        error(api.get("/persons", params={"collection_name": "h", "person_id": pid}), 412, "ERR_UNPROCESSABLE_CONTENT")
    assert stored_ids(server) == before and pid not in stored_ids(server)  # the whole request was refused


def test_serve_still_takes_every_kind_of_valid_id(server):
    ok = ["E1001", "Ada Lovelace", "a.b@c:d+e-f_g", "x" * 128, "1"]
    persons = [{"person_id": p, "person_name": "name \x1b[1m free text", "face_base_64": b64("grace_hopper.jpg")}
               for p in ok]
    r = server.client.put("/persons", json={"collection_name": "h", "persons": persons})
    assert r.status_code == 200 and [x["code"] for x in r.json()] == ["OK"] * len(ok), r.text[:300]
    assert set(ok) <= set(stored_ids(server))
    one = server.client.get("/persons", params={"collection_name": "h", "person_id": "Ada Lovelace"}).json()
    assert one["persons"][0]["person_name"] == "name \x1b[1m free text"  # names are free text, kept exact


@pytest.mark.parametrize("name", HOSTILE_COLLECTIONS, ids=lambda n: repr(n)[:20])
def test_serve_refuses_hostile_collection_names_everywhere(server, name):
    api, face = server.client, b64("grace_hopper.jpg")
    bad = (400, "ERR_INVALID_COLLECTION_NAME")
    error(api.post("/collection", json={"name": name}), *bad)
    error(api.request("DELETE", "/collection", json={"name": name}), *bad)
    error(api.put("/persons", json={"collection_name": name, "persons": [
        {"person_id": "c1", "face_base_64": face}]}), *bad)
    error(api.put("/person", json={"collection_name": name, "person_id": "c1", "face_base_64": face}), *bad)
    error(api.post("/face-search", json={"collection_name": name, "face_base_64": face}), *bad)
    if name:  # an empty query value reads as "not given"
        error(api.get("/persons", params={"collection_name": name}), *bad)
        error(api.get("/collections", params={"name": name}), *bad)
    names = [c.name for c in server.engine.list_collections()[1]]
    assert name not in names


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("body", [
    nested(100_000),
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    '{"name": "deep", "x": ' + nested(64) + "}",  # depth 65: under the parser's limit, over ours
    '{"collection_name": "h", "persons": [{"person_id": "d", "face_base_64": "x", "metadata": ' + nested(200) + "}]}",
], ids=["array-100k", "object-100k", "depth-65", "metadata-200"])
def test_deep_json_is_412_without_a_traceback(server, body):
    start = len(server.log.lines)
    for method, path in (("POST", "/collection"), ("PUT", "/persons")):
        r = server.client.request(method, path, content=body.encode(), headers={"content-type": "application/json"})
        assert error(r, 412, "ERR_UNPROCESSABLE_CONTENT")["message"] == "JSON nested deeper than 64 levels"
    logged = "\n".join(server.log.lines[start:])
    assert "Traceback" not in logged and "RecursionError" not in logged, logged
    assert not any(level >= logging.ERROR for level in server.log.levels[start:]), logged
    assert "deep" not in [c.name for c in server.engine.list_collections()[1]]


def test_json_at_the_depth_limit_is_still_read(server):
    body = '{"name": "deep64", "x": ' + nested(63) + "}"  # depth 64
    r = server.client.post("/collection", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code in (200, 409), r.text


# -- the CLI prints outside values escaped, --json stays exact ------------------------------------

EVIL_NAME = "Mallory\x1b[2J\x1b]0;pwned\x07\x00\x9b31m"


@pytest.fixture(scope="module")
def evil_gallery(server):
    """A person a key holder enrolled with a hostile name (names are free text) and metadata, and
    one whose id a hostile or older server holds (stored in its engine directly)."""
    api = server.client
    assert api.post("/collection", json={"name": "evil"}).status_code == 200
    r = api.put("/persons", json={"collection_name": "evil", "persons": [
        {"person_id": "mallory", "person_name": EVIL_NAME, "face_base_64": b64("grace_hopper.jpg"),
         "metadata": {"note": "[bold]x\x1b[5m"}}]})
    assert r.json()[0]["code"] == "OK", r.text
    emb = np.ones(128, dtype=np.float32)
    server.engine.upsert_persons("evil", [eng.EnginePerson(
        person_id="a\x00b\x1b[31m", person_name="legacy", metadata={},
        faces=[eng.EngineFace(embedding=emb, image_sha256="0" * 64, quality={}, source_path="x")])])
    return server


def assert_no_raw_controls(text: str) -> None:
    for c in ("\x1b", "\x00", "\x07", "\x9b"):
        assert c not in text, (c, text)


def test_persons_list_escapes_control_characters_and_json_stays_exact(evil_gallery, monkeypatch):
    monkeypatch.setenv("FACECLI_API_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "400")  # no cell cut short
    res = runner.invoke(cli_app, ["persons", "list", "--to", evil_gallery.url, "-c", "evil"])
    assert res.exit_code == 0, res.output
    assert_no_raw_controls(res.stdout)
    assert "Mallory\\x1b[2J\\x1b]0;pwned\\x07\\x00\\x9b31m" in res.stdout, res.stdout
    assert "a\\x00b\\x1b[31m" in res.stdout and '"[bold]x\\u001b[5m"' in res.stdout, res.stdout  # not markup
    res = runner.invoke(cli_app, ["persons", "list", "--to", evil_gallery.url, "-c", "evil", "--json"])
    rows = {p["person_id"]: p for p in json.loads(res.stdout)["persons"]}
    assert rows["mallory"]["person_name"] == EVIL_NAME and rows["mallory"]["metadata"] == {"note": "[bold]x\x1b[5m"}
    assert "a\x00b\x1b[31m" in rows
    res = runner.invoke(cli_app, ["persons", "get", "mallory", "--to", evil_gallery.url, "-c", "evil"])
    assert res.exit_code == 0 and "Mallory" in res.stdout
    assert_no_raw_controls(res.stdout)


def test_search_table_escapes_a_hostile_name(evil_gallery, monkeypatch):
    monkeypatch.setenv("FACECLI_API_KEY", KEY)
    res = runner.invoke(cli_app, ["search", str(SAMPLES / "grace_hopper_2.jpg"), "--to", evil_gallery.url, "-c", "evil",
                                  "--min-score", "0.5"])
    assert res.exit_code == 0, res.output
    assert "Mallory" in res.stdout
    assert_no_raw_controls(res.stdout)
    res = runner.invoke(cli_app, ["search", str(SAMPLES / "grace_hopper_2.jpg"), "--to", evil_gallery.url, "-c", "evil",
                                  "--min-score", "0.5", "--json"])
    assert json.loads(res.stdout)["faces"][0]["matches"][0]["person_name"] == EVIL_NAME


def test_collections_create_refuses_a_bad_name_with_exit_2(tmp_path):
    db = tmp_path / "g.db"
    for name in ("..", "CON", "a" * 65, "x\x1by"):
        res = runner.invoke(cli_app, ["collections", "create", name, "--db", str(db)])
        assert res.exit_code == 2, res.output
        assert "collection name" in res.stderr and "\x1b" not in res.stderr
    assert not db.exists()  # refused before any target was opened


def test_safe_text():
    assert safe_text("a\x00b\x1b[31mc\x9b\u202e\n\udcff[b]x[/b]") == "a\\x00b\\x1b[31mc\\x9b\\u202e\\x0a\\udcff\\[b]x\\[/b]"
    assert safe_text("Zoë 日本 é") == "Zoë 日本 é"
    assert safe_text("l1\nl2", newlines=True) == "l1\nl2"


# -- every sink refuses before any request -------------------------------------------------------


class Recorder:
    """An httpx MockTransport that records every request and answers like a friendly server."""

    def __init__(self, answer) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer
        self.transport = httpx.MockTransport(self)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def paths(self) -> list[str]:
        return [r.url.raw_path.decode() for r in self.requests]


def payload(pid: str) -> PersonPayload:
    face = FacePayload(image_sha256="f" * 64, source_path="p.jpg", embedding=np.ones(128, dtype=np.float32),
                       jpeg=b"\xff\xd8 not really a jpeg \xff\xd9")
    return PersonPayload(person_id=pid, person_name="n", faces=[face])


BAD = [".", "..", "../../x", "a\x00b", "-kit", "=cmd|calc", "P" * 129]


def assert_refused(outcomes, ids):
    assert [o.person_id for o in outcomes] == ids
    for o in outcomes:
        assert o.status == Status.FAILED and o.reason == ReasonCode.INVALID_ROW and o.message, o


def opencv_fr_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=[{"code": "OK", "message": "created", "person_id": p["person_id"]}
                                     for p in json.loads(request.content)["persons"]])


def cloud_answer(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/collections":
        return httpx.Response(200, json={"count": 1, "collections": [{"name": "c", "id": "cid"}]})
    if request.method == "GET":
        return httpx.Response(404, json={"code": "NOT_FOUND", "message": "no such person"})
    return httpx.Response(201, json={"id": "x"})


def verifik_answer(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/collections"):
        return httpx.Response(200, json={"data": [{"name": "c", "_id": "cid"}]})
    # a hostile server: "already set", naming a person whose id is a dot segment
    return httpx.Response(412, json={"code": "PreconditionFailed", "message": "person_already_set",
                                     "data": {"_id": "..", "collections": []}})


def persona_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"data": {"id": "..", "attributes": {"status": "pending"}}})


REMOTE_SINKS = {
    "opencv-fr": (opencv_fr_answer, lambda t: OpenCVFRSink("http://127.0.0.1:9", "k", policy=NO_RETRY, transport=t)),
    "cloud": (cloud_answer, lambda t: OpenCVFRCloudSink("us", "k", policy=NO_RETRY, transport=t)),
    "verifik": (verifik_answer, lambda t: VerifikSink("k", policy=NO_RETRY, transport=t)),
    "persona": (persona_answer, lambda t: PersonaSink("lst_1", "k", policy=NO_RETRY, transport=t, poll_interval_s=0.01)),
}


@pytest.mark.parametrize("name", sorted(REMOTE_SINKS))
def test_remote_sinks_refuse_invalid_ids_without_a_request(name):
    answer, make = REMOTE_SINKS[name]
    rec = Recorder(answer)
    sink = make(rec.transport)
    try:
        if name in ("cloud", "verifik"):
            sink.ensure_collection("c", create=False)  # a lookup by name, before the persons
        before = len(rec.requests)
        assert_refused(sink.upsert("c", [payload(p) for p in BAD]), BAD)
        assert len(rec.requests) == before, rec.paths()
        for bad in ("..", ".", "CON", "a/b", "x" * 65):
            with pytest.raises(ConfigError):
                sink.ensure_collection(bad, create=True)
        assert len(rec.requests) == before, rec.paths()
    finally:
        sink.close()


def test_cloud_sends_a_valid_id_as_one_encoded_path_segment():
    rec = Recorder(cloud_answer)
    sink = OpenCVFRCloudSink("us", "k", policy=NO_RETRY, transport=rec.transport)
    try:
        out = sink.upsert("c", [payload("Ada L@x:1+2"), payload("..")])
    finally:
        sink.close()
    assert [o.status for o in out] == [Status.ENROLLED, Status.FAILED]
    assert "/person/Ada%20L%40x%3A1%2B2" in rec.paths()
    assert [p for p in rec.paths() if p.startswith("/person") and p != "/person"] == ["/person/Ada%20L%40x%3A1%2B2"]


def test_server_named_dot_segments_are_never_requested():
    outcomes = {}
    for name in ("verifik", "persona"):
        answer, make = REMOTE_SINKS[name]
        rec = Recorder(answer)
        sink = make(rec.transport)
        try:
            (outcomes[name],) = sink.upsert("c", [payload("E1")])
        finally:
            sink.close()
        assert [r.method for r in rec.requests if r.url.path != "/v2/face-recognition/collections"] == ["POST"], \
            rec.paths()  # no PUT /persons/.. (Verifik), no GET /importers/.. (Persona)
    assert all(o.status == Status.FAILED and "'..'" in o.message for o in outcomes.values()), outcomes


def test_url_segment():
    assert url_segment("a b/c?d#e%f") == "a%20b%2Fc%3Fd%23e%25f"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            url_segment(bad)


def test_local_sink_stores_nothing_under_an_invalid_id(tmp_path):
    sink = LocalSink(tmp_path / "g.db", writer=True)
    try:
        sink.ensure_collection("c", create=True)
        out = sink.upsert("c", [payload(p) for p in BAD] + [payload("ok")])
        assert_refused(out[:-1], BAD)
        assert out[-1].status == Status.ENROLLED
        assert [p.person_id for p in sink.list_persons("c", None, 0)[1]] == ["ok"]
        for bad in ("..", "CON", "x" * 65):
            with pytest.raises(Exception) as exc:
                sink.ensure_collection(bad, create=True)
            assert getattr(exc.value, "exit_code", None) == 2
    finally:
        sink.close()


# -- reports -------------------------------------------------------------------------------------


def test_reports_neutralise_formulas_and_stay_valid(tmp_path):
    import csv
    import xml.etree.ElementTree as ET

    item = ItemResult(path="=HYPERLINK(1)\x1b\udcff.jpg", person_id="=cmd|calc", status=Status.FAILED,
                      reasons=[ReasonCode.DECODE_ERROR], message="@SUM(1)\x00")
    for name in ("r.csv", "r.jsonl", "r.xml"):
        rep = open_report(tmp_path / name)
        rep.write_item(item)
        rep.close(RunSummary(command="check"))
    (row,) = list(csv.DictReader((tmp_path / "r.csv").open(newline="", encoding="utf-8")))
    assert row["path"].startswith("'=") and row["person_id"] == "'=cmd|calc" and row["message"].startswith("'@")
    line = json.loads((tmp_path / "r.jsonl").read_text(encoding="utf-8"))
    assert line["path"] == item.path and line["person_id"] == "=cmd|calc" and line["message"] == "@SUM(1)\x00"
    case = ET.parse(tmp_path / "r.xml").getroot().find(".//testcase")
    assert case.get("classname") == "=cmd|calc" and "\\x1b" in case.get("name")
