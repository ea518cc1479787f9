"""`facecli serve` (server/app.py) over real HTTP: every documented error code and body, bulk
per-person results, search, listing, limits and concurrent writers."""

from __future__ import annotations

import base64
import sqlite3
import threading

import httpx
import pytest
from typer.testing import CliRunner

from facecli.cli.app import app as cli_app
from facecli.engine.engine import Engine
from facecli.vision.embed import MATCH_THRESHOLD

from .conftest import SAMPLES, needs_models
from .live_server import LiveServer

pytestmark = needs_models
KEY = "server-test-key-1"
LIMIT = 400_000


def b64(name: str) -> str:
    return base64.b64encode((SAMPLES / name).read_bytes()).decode()


@pytest.fixture(scope="module")
def server(checker, tmp_path_factory):
    from facecli.server.app import create_app

    engine = Engine(tmp_path_factory.mktemp("srv") / "g.db")
    app = create_app(engine, checker, [KEY, "second-key"], max_body_bytes=LIMIT)
    with LiveServer(app) as srv:
        srv.app = app
        with httpx.Client(base_url=srv.url, headers={"x-api-key": KEY}, timeout=30) as client:
            srv.client = client
            yield srv
    engine.close()


@pytest.fixture
def api(server):
    return server.client


def coll(api, name):
    r = api.post("/collection", json={"name": name})
    assert r.status_code in (200, 409), r.text
    return name


def error(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"], body
    return body


# -- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [("POST", "/collection"), ("DELETE", "/collection"), ("PUT", "/persons"),
                                         ("PUT", "/person"), ("POST", "/face-search"), ("GET", "/collections"),
                                         ("GET", "/persons")])
def test_every_endpoint_needs_a_valid_key(server, method, path):
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        error(anon.request(method, path, json={"name": "x"}), 401, "ERR_API_KEY_NOT_PRESENT")
        error(anon.request(method, path, json={"name": "x"}, headers={"x-api-key": "nope"}), 403, "ERR_API_KEY_NOT_VALID")
        r = anon.post("/collection", json={"name": "second"}, headers={"x-api-key": "second-key"})
        assert r.status_code in (200, 409)


def test_docs_are_public(server):
    with httpx.Client(base_url=server.url, timeout=10) as anon:
        schema = anon.get("/openapi.json").json()
        assert {"/collection", "/person", "/persons", "/face-search", "/collections"} <= set(schema["paths"])
        assert schema["components"]["securitySchemes"]["apiKey"]["name"] == "x-api-key"
        page = anon.get("/docs")
        assert page.status_code == 200 and "/face-search" in page.text


# -- collections -----------------------------------------------------------------------------


def test_collection_lifecycle_and_errors(api):
    r = api.post("/collection", json={"name": "life"})
    assert r.status_code == 200 and r.json() == {"name": "life", "num_persons": 0}
    error(api.post("/collection", json={"name": "life"}), 409, "ERR_ALREADY_EXISTS")
    error(api.post("/collection", json={"name": "bad name!"}), 400, "ERR_INVALID_COLLECTION_NAME")
    error(api.post("/collection", json={"name": 5}), 412, "ERR_UNPROCESSABLE_CONTENT")
    error(api.post("/collection", json=["life"]), 412, "ERR_UNPROCESSABLE_CONTENT")
    error(api.post("/collection", content=b'{"name": ', headers={"content-type": "application/json"}), 412,
          "ERR_UNPROCESSABLE_CONTENT")
    listed = api.get("/collections", params={"name": "life"}).json()
    assert listed["count"] == 1 and listed["collections"][0]["num_persons"] == 0
    r = api.request("DELETE", "/collection", json={"name": "life"})
    assert r.status_code == 200 and r.json()["name"] == "life"
    error(api.request("DELETE", "/collection", json={"name": "life"}), 404, "ERR_NOT_FOUND")
    assert api.get("/collections", params={"name": "life"}).json() == {"count": 0, "collections": []}
    error(api.get("/collections", params={"skip": "x"}), 412, "ERR_UNPROCESSABLE_CONTENT")
    error(api.get("/nowhere"), 404, "ERR_NOT_FOUND")


# -- bulk enrollment -------------------------------------------------------------------------


def test_bulk_results_per_person_in_order_with_image_codes(api):
    coll(api, "bulk")
    persons = [
        {"person_id": "gh", "person_name": "Grace", "face_base_64": b64("grace_hopper.jpg"), "metadata": {"dept": "navy"}},
        {"person_id": "none", "person_name": "N", "face_base_64": b64("no_face.jpg"), "metadata": {}},
        {"person_id": "two", "person_name": "T", "face_base_64": b64("two_faces.jpg"), "metadata": {}},
        {"person_id": "trunc", "person_name": "X", "face_base_64": b64("truncated.jpg"), "metadata": {}},
        {"person_id": "junk", "person_name": "J", "face_base_64": "@@not base64@@", "metadata": {}},
        {"person_id": "astro", "person_name": "Eileen", "face_base_64": b64("astronaut.jpg")},
    ]
    r = api.put("/persons", json={"collection_name": "bulk", "face_storage_type": "StoreThumbnails", "persons": persons})
    assert r.status_code == 200, r.text
    res = r.json()
    assert [x["person_id"] for x in res] == [p["person_id"] for p in persons]
    codes = {x["person_id"]: x["code"] for x in res}
    assert codes == {"gh": "OK", "none": "ERR_NO_FACE_DETECTED", "two": "ERR_MULTIPLE_FACES_DETECTED",
                     "trunc": "ERR_INVALID_IMAGE", "junk": "ERR_INVALID_IMAGE", "astro": "OK"}
    assert res[0]["message"] == "created" and res[0]["metadata"] == {"dept": "navy"}
    again = api.put("/persons", json={"collection_name": "bulk", "face_storage_type": "StoreThumbnails",
                                      "persons": persons[:1]}).json()
    assert again[0]["message"] == "unchanged"
    listed = api.get("/persons", params={"collection_name": "bulk"}).json()
    assert listed["count"] == 2 and [p["person_id"] for p in listed["persons"]] == ["astro", "gh"]
    assert listed["persons"][1]["faces"] == 1 and listed["persons"][1]["metadata"] == {"dept": "navy"}
    one = api.get("/persons", params={"collection_name": "bulk", "person_id": "gh"}).json()
    assert one["count"] == 1 and one["persons"][0]["person_name"] == "Grace"
    page = api.get("/persons", params={"collection_name": "bulk", "skip": 1, "take": 1}).json()
    assert page["count"] == 2 and [p["person_id"] for p in page["persons"]] == ["gh"]


@pytest.mark.parametrize("body", [
    {"face_storage_type": "NoStorage", "persons": []},  # no collection_name
    {"collection_name": "bulk", "persons": "nope"},
    {"collection_name": "bulk", "persons": [{"person_id": 7, "face_base_64": "x"}]},
    {"collection_name": "bulk", "persons": [{"person_id": "a", "face_base_64": "x", "metadata": {"n": 1}}]},
    {"collection_name": "bulk", "persons": [{"person_id": "a"}]},
    {"collection_name": "bulk", "face_storage_type": "Everything", "persons": []},
])
def test_bulk_wrong_types_are_412(api, body):
    coll(api, "bulk")
    error(api.put("/persons", json=body), 412, "ERR_UNPROCESSABLE_CONTENT")


def test_missing_collection_and_bad_name(api):
    body = {"collection_name": "absent", "face_storage_type": "NoStorage",
            "persons": [{"person_id": "a", "person_name": "A", "face_base_64": b64("grace_hopper.jpg")}]}
    error(api.put("/persons", json=body), 404, "ERR_NOT_FOUND")
    error(api.put("/persons", json=body | {"collection_name": "a/b"}), 400, "ERR_INVALID_COLLECTION_NAME")


def test_body_limit_is_413(api):
    coll(api, "big")
    persons = [{"person_id": str(i), "person_name": "x", "face_base_64": b64("grace_hopper.jpg")} for i in range(8)]
    error(api.put("/persons", json={"collection_name": "big", "persons": persons}), 413, "ERR_PAYLOAD_IS_TOO_LARGE")


def test_database_errors_are_500_retryable(server, api, monkeypatch):
    def broken(*a, **k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(server.app.state.server.engine, "get_collection", broken)
    body = {"collection_name": "bulk", "persons": [{"person_id": "a", "face_base_64": b64("grace_hopper.jpg")}]}
    error(api.put("/persons", json=body), 500, "ERR_DATABASE_ERROR")


# -- single person and search ----------------------------------------------------------------


def test_single_person_duplicates_liveness_and_search(api):
    coll(api, "one")
    base = {"collection_name": "one", "face_storage_type": "NoStorage", "check_duplicates": False,
            "check_liveness": False, "duplicate_check_min_similarity": 0.7}
    r = api.put("/person", json=base | {"person_id": "gh", "person_name": "Grace", "face_base_64": b64("grace_hopper.jpg"),
                                       "metadata": {"k": "v"}})
    assert r.status_code == 200 and r.json()["code"] == "OK" and r.json()["message"] == "created"
    api.put("/person", json=base | {"person_id": "astro", "person_name": "E", "face_base_64": b64("astronaut.jpg")})
    dup = api.put("/person", json=base | {"person_id": "other", "person_name": "G2", "check_duplicates": True,
                                          "duplicate_check_min_similarity": 0.9, "face_base_64": b64("grace_hopper_2.jpg")})
    assert error(dup, 409, "ERR_ALREADY_EXISTS")["message"].count("gh") == 1
    error(api.put("/person", json=base | {"person_id": "x", "check_liveness": True, "face_base_64": b64("astronaut.jpg")}),
          412, "ERR_UNPROCESSABLE_CONTENT")
    error(api.put("/person", json=base | {"person_id": "x", "face_base_64": b64("no_face.jpg")}), 412,
          "ERR_NO_FACE_DETECTED")

    search = {"collection_name": "one", "face_base_64": b64("grace_hopper_2.jpg"), "min_similarity_score": 0.0,
              "max_results": 5, "check_liveness": False}
    hits = api.post("/face-search", json=search).json()
    assert [h["person_id"] for h in hits] == ["gh", "astro"]
    assert hits[0]["score"] >= MATCH_THRESHOLD > hits[1]["score"] and hits[0]["metadata"] == {"k": "v"}
    assert hits[0]["person_name"] == "Grace"
    assert [h["person_id"] for h in api.post("/face-search", json=search | {"max_results": 1}).json()] == ["gh"]
    assert api.post("/face-search", json=search | {"min_similarity_score": 0.999}).json() == []
    # group photo: the main face is searched
    assert api.post("/face-search", json=search | {"face_base_64": b64("two_faces.jpg")}).status_code == 200
    error(api.post("/face-search", json=search | {"face_base_64": b64("no_face.jpg")}), 412, "ERR_NO_FACE_DETECTED")
    error(api.post("/face-search", json=search | {"collection_name": "absent"}), 404, "ERR_NOT_FOUND")
    error(api.post("/face-search", json=search | {"max_results": "3"}), 412, "ERR_UNPROCESSABLE_CONTENT")
    error(api.post("/face-search", json=search | {"min_similarity_score": True}), 412, "ERR_UNPROCESSABLE_CONTENT")


def test_concurrent_writers_and_readers(api):
    coll(api, "conc")
    face = b64("grace_hopper.jpg")
    errors: list = []

    def writer(w: int) -> None:
        try:
            persons = [{"person_id": f"w{w}-{i}", "person_name": "x", "face_base_64": face} for i in range(3)]
            r = api.put("/persons", json={"collection_name": "conc", "persons": persons})
            assert r.status_code == 200 and all(x["code"] == "OK" for x in r.json())
            assert api.get("/persons", params={"collection_name": "conc"}).status_code == 200
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert api.get("/persons", params={"collection_name": "conc"}).json()["count"] == 12


# -- the command -----------------------------------------------------------------------------


def test_serve_refuses_to_start_without_keys(monkeypatch, tmp_path):
    runner = CliRunner()
    monkeypatch.delenv("FACECLI_SERVER_API_KEYS", raising=False)
    res = runner.invoke(cli_app, ["serve", "--db", str(tmp_path / "g.db")])
    assert res.exit_code == 2 and "no API keys" in res.output
    res = runner.invoke(cli_app, ["serve", "--no-auth", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "loopback" in res.output
    keyfile = tmp_path / "keys"
    keyfile.write_text("# comment\n\n")
    res = runner.invoke(cli_app, ["serve", "--api-key-file", str(keyfile)])
    assert res.exit_code == 2 and "no API keys" in res.output
