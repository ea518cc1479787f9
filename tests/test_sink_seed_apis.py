"""The seed-API adapters (OpenCV FR cloud, Verifik, Persona) driven through the CLI against
contract-faithful fakes (tests/fake_seed_apis.py) served on 127.0.0.1: enroll, update, search,
auth failure (exit 3), throttling (429 honoured and counted), a refused person failing alone, no
duplicates when a run is repeated as a resumed run would, and the key never shown."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from typer.testing import CliRunner

from facecli.cli.app import app

from .conftest import DATASETS, SAMPLES, needs_data, needs_models
from .fake_seed_apis import FakeOpenCVFRCloud, FakePersona, FakeVerifik, checker_embed
from .live_server import LiveServer

pytestmark = [needs_models, needs_data]
runner = CliRunner()
KEY = "seed-secret-Kx93pQz71"
PAIRS = DATASETS / "deepface-pairs"
PERSONS = {"grace": "Grace Hopper", "astro": "Eileen Collins", "id02": "Person Two"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def secrets_absent(res, *files, key=KEY):
    assert key not in res.stdout and key not in res.stderr
    for f in files:
        if f.exists():
            assert key.encode() not in f.read_bytes(), f


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A manifest: 3 persons, 4 real photos, with the fields the seed APIs take."""
    d = tmp_path_factory.mktemp("seed-src")
    for name in ("grace_hopper.jpg", "grace_hopper_2.jpg", "astronaut.jpg"):
        shutil.copy(SAMPLES / name, d / name)
    shutil.copy(PAIRS / "img3.jpg", d / "p2.jpg")
    (d / "people.csv").write_text(
        "person_id,person_name,images,gender,date_of_birth,nationality,department\n"
        "grace,Grace Hopper,grace_hopper.jpg;grace_hopper_2.jpg,F,1906-12-09,US,navy\n"
        "astro,Eileen Collins,astronaut.jpg,F,1956-11-19,US,nasa\n"
        "id02,Person Two,p2.jpg,M,1980-01-01,FR,lab\n")
    return d / "people.csv"


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    """One ledger for the module: its check cache spares the slow machine re-running the models."""
    return tmp_path_factory.mktemp("seed-journal") / "ledger.db"


@pytest.fixture(scope="module")
def embed(checker):
    return checker_embed(checker)


@pytest.fixture
def cloud(embed, monkeypatch):
    fake = FakeOpenCVFRCloud(KEY, embed)
    with LiveServer(fake) as srv:
        monkeypatch.setenv("FACECLI_OPENCV_FR_CLOUD_URL", srv.url)
        yield fake


@pytest.fixture
def verifik(embed, monkeypatch):
    fake = FakeVerifik(KEY, embed)
    with LiveServer(fake) as srv:
        monkeypatch.setenv("FACECLI_VERIFIK_URL", srv.url)
        yield fake


@pytest.fixture
def persona(monkeypatch):
    fake = FakePersona(KEY)
    with LiveServer(fake) as srv:
        monkeypatch.setenv("FACECLI_PERSONA_URL", srv.url)
        yield fake


def enroll(source, journal, to, *extra, key=KEY):
    return invoke("enroll", "--manifest", source, "--to", to, "--api-key", key, "--journal", journal, "--json", *extra)


# -- OpenCV FR cloud ----------------------------------------------------------------------------


def test_cloud_enroll_update_resume_search(cloud, source, journal, tmp_path):
    report = tmp_path / "r.jsonl"
    res = enroll(source, journal, "opencv-fr-cloud://us", "-c", "staff", "--create-collection", "--report", report)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["enrolled"] == 3 and s["images"]["enrolled"] == 4
    assert set(cloud.persons) == set(PERSONS)
    (cid,) = cloud.collections
    g = cloud.persons["grace"]
    assert (g["name"], g["gender"], g["date_of_birth"], g["nationality"], g["collections"], g["faces"]) == \
        ("Grace Hopper", "F", "1906-12-09", "US", [cid], 2)
    assert json.loads(g["notes"]) == {"department": "navy"}  # metadata travels in notes
    secrets_absent(res, report, journal)

    # a resumed run re-sends what was in flight: existing ids are PATCHed, never created twice
    res = enroll(source, journal, "opencv-fr-cloud://us", "-c", "staff", "--force")
    assert res.exit_code == 0 and json.loads(res.stdout)["persons"]["enrolled"] == 3, res.output
    assert len(cloud.persons) == 3 and cloud.counts["PATCH person"] == 3 and cloud.counts["POST person"] == 3
    # an update: a changed name is PATCHed
    changed = source.with_name("changed.csv")
    changed.write_text(source.read_text().replace("Person Two", "Person 2"))
    res = enroll(changed, journal, "opencv-fr-cloud://us", "-c", "staff")
    assert res.exit_code == 0, res.output
    assert cloud.persons["id02"]["name"] == "Person 2" and len(cloud.persons) == 3

    res = invoke("search", SAMPLES / "grace_hopper_2.jpg", "--to", "opencv-fr-cloud://us", "-c", "staff",
                 "--api-key", KEY, "--min-score", "0.7", "--json")
    assert res.exit_code == 0, res.output
    top = json.loads(res.stdout)["faces"][0]["matches"][0]
    assert top["person_id"] == "grace" and top["person_name"] == "Grace Hopper"
    assert top["metadata"]["department"] == "navy"
    secrets_absent(res)


def test_cloud_throttling_rejection_and_auth(cloud, source, journal, tmp_path):
    report = tmp_path / "r.jsonl"
    cloud.reject = {"Eileen Collins"}
    cloud.throttle(2, retry_after="1")  # whole seconds: the vendor SDK reads int(retry-after)
    res = enroll(source, journal, "opencv-fr-cloud://eu", "-c", "t", "--create-collection", "--report", report,
                 "--concurrency", "1")
    assert res.exit_code == 1, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["enrolled"] == 2 and s["persons"]["failed"] == 1 and s["retries"] == 2
    assert s["reasons"].get("SERVER_REJECTED") == 1
    assert set(cloud.persons) == {"grace", "id02"}
    assert cloud.after_throttle[0] - cloud.throttled_at[-1] >= 0.95  # retry-after honoured
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    astro = [x for x in lines if x.get("person_id") == "astro" and x.get("kind") != "person"]
    assert astro and astro[0]["status"] == "failed" and "no face detected" in astro[0]["message"]
    secrets_absent(res, report)

    wrong = "wrong-key-77aa"
    res = enroll(source, journal, "opencv-fr-cloud://eu", "-c", "t", key=wrong)
    assert res.exit_code == 3 and "403" in res.stderr, res.output
    secrets_absent(res, key=wrong)


def test_cloud_validation_details_are_per_person(cloud):
    """A too-small image: 422 with details -> that person fails with the server's words."""
    import io

    from PIL import Image

    from facecli.sinks.base import FacePayload, PersonPayload
    from facecli.sinks.opencv_fr_cloud import OpenCVFRCloudSink

    def jpeg(side):
        buf = io.BytesIO()
        Image.open(SAMPLES / "grace_hopper.jpg").convert("RGB").resize((side, side)).save(buf, "JPEG")
        return buf.getvalue()

    sink = OpenCVFRCloudSink("sg", KEY)
    try:
        sink.ensure_collection("c", create=True)
        out = sink.upsert("c", [PersonPayload("small", "Small", [FacePayload("x", "x", jpeg=jpeg(100))]),
                                PersonPayload("big", "Big", [FacePayload("y", "y", jpeg=jpeg(300))])])
    finally:
        sink.close()
    assert out[0].status == "failed" and out[0].reason == "SERVER_REJECTED"
    assert out[0].server_code == "value_error.image_too_small" and "224x224" in out[0].message
    assert out[1].status == "enrolled" and set(cloud.persons) == {"big"}


# -- Verifik ----------------------------------------------------------------------------------


def test_verifik_enroll_update_resume_search(verifik, source, journal, tmp_path):
    report = tmp_path / "r.jsonl"
    res = enroll(source, journal, "verifik://", "-c", "staff", "--create-collection", "--report", report)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["persons"]["enrolled"] == 3
    assert sorted(p["name"] for p in verifik.persons.values()) == sorted(PERSONS.values())
    assert all(h == f"Bearer {KEY}" for h in verifik.auth_headers)
    (cid,) = verifik.collections
    grace = next(p for p in verifik.persons.values() if p["name"] == "Grace Hopper")
    assert (grace["date_of_birth"], grace["gender"], grace["collections"], grace["faces"]) == ("1906-12-09", "F", [cid], 2)
    secrets_absent(res, report, journal)

    # resumed run: 412 person_already_set -> PUT on the existing person; nobody is created twice
    res = enroll(source, journal, "verifik://", "-c", "staff", "--force")
    assert res.exit_code == 0 and json.loads(res.stdout)["persons"]["enrolled"] == 3, res.output
    assert len(verifik.persons) == 3 and verifik.counts["PUT " + grace["_id"]] == 1
    # update: the PUT replaces the images (grace now has one)
    one = source.with_name("one.csv")
    one.write_text(source.read_text().replace("grace_hopper.jpg;grace_hopper_2.jpg", "grace_hopper.jpg"))
    res = enroll(one, journal, "verifik://", "-c", "staff")
    assert res.exit_code == 0, res.output
    assert len(verifik.persons) == 3 and verifik.persons[grace["_id"]]["faces"] == 1

    res = invoke("search", SAMPLES / "grace_hopper_2.jpg", "--to", "verifik://", "-c", "staff", "--api-key", KEY,
                 "--min-score", "0.7", "--json")
    assert res.exit_code == 0, res.output
    top = json.loads(res.stdout)["faces"][0]["matches"][0]
    assert top["person_id"] == grace["_id"] and top["person_name"] == "Grace Hopper"


def test_verifik_throttling_rejection_and_auth(verifik, source, journal, tmp_path):
    verifik.reject = {"Person Two"}
    verifik.throttle(2, retry_after="0.3")
    res = enroll(source, journal, "verifik://", "-c", "t", "--create-collection", "--concurrency", "1")
    assert res.exit_code == 1, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["enrolled"] == 2 and s["persons"]["failed"] == 1 and s["retries"] == 2
    assert verifik.after_throttle[0] - verifik.throttled_at[-1] >= 0.25
    assert sorted(p["name"] for p in verifik.persons.values()) == ["Eileen Collins", "Grace Hopper"]
    secrets_absent(res)

    for key, status in (("wrong-token-1", "401"), ("expired-token", "403")):
        res = enroll(source, journal, "verifik://", "-c", "t", key=key)
        assert res.exit_code == 3 and status in res.stderr, res.output
        secrets_absent(res, key=key)


# -- Persona ----------------------------------------------------------------------------------


def test_persona_import_resume_and_idempotency(persona, source, journal, tmp_path):
    report = tmp_path / "r.jsonl"
    persona.throttle(1, retry_after="0.3")
    t0 = time.monotonic()
    res = enroll(source, journal, "persona://lst_test", "--report", report)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["enrolled"] == 3 and s["images"]["enrolled"] == 4 and s["retries"] == 1
    assert persona.after_throttle[0] - persona.throttled_at[-1] >= 0.25  # RateLimit-Reset honoured on 429
    items = persona.lists["lst_test"]
    assert sorted(i["file"] for i in items) == ["astro__1.jpg", "grace__1.jpg", "grace__2.jpg", "id02__1.jpg"]
    assert persona.counts["GET importers"] >= 3  # polled until final
    assert time.monotonic() - t0 < 120
    secrets_absent(res, report, journal)

    # a resumed run re-sends the same batch: same Idempotency-Key -> the first answer replayed
    res = enroll(source, journal, "persona://lst_test", "--force")
    assert res.exit_code == 0 and json.loads(res.stdout)["persons"]["enrolled"] == 3, res.output
    assert persona.replays == 1 and len(persona.lists["lst_test"]) == 4
    # a different batch (one person): a new key, and the images already there count as duplicates
    res = enroll(source, journal, "persona://lst_test", "--force", "--batch-size", "1")
    assert res.exit_code == 0, res.output
    assert len(persona.lists["lst_test"]) == 4


def test_persona_rejection_auth_and_idempotency_contract(persona, source, journal):
    persona.reject = {"astro__"}
    persona.polls = 0
    res = enroll(source, journal, "persona://lst_test")
    assert res.exit_code == 1, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["enrolled"] == 2 and s["persons"]["failed"] == 1
    assert sorted(i["file"] for i in persona.lists["lst_test"]) == ["grace__1.jpg", "grace__2.jpg", "id02__1.jpg"]
    secrets_absent(res)

    res = enroll(source, journal, "persona://lst_test", key="bad-key-0")
    assert res.exit_code == 3 and "401" in res.stderr, res.output
    secrets_absent(res, key="bad-key-0")
    res = enroll(source, journal, "persona://lst_nope", "--force")
    assert res.exit_code == 3 and "not found" in res.stderr, res.output
    res = invoke("search", SAMPLES / "grace_hopper_2.jpg", "--to", "persona://lst_test", "--api-key", KEY)
    assert res.exit_code == 2 and "no face-search" in res.output

    # the fake keeps the documented contract: same key + other parameters is an error
    from facecli.sinks.persona import PersonaSink, multipart
    sink = PersonaSink("lst_test", KEY)
    try:
        key = sink.idempotency_key([("a.jpg", b"x")])
        body = multipart([("data", None, "application/json",
                           json.dumps({"attributes": {"image-files": ["b.jpg"], "list-id": "lst_test"}}).encode()),
                          ("files[]", "b.jpg", "image/jpeg", (SAMPLES / "astronaut.jpg").read_bytes())], "bnd")
        hdr = {"content-type": "multipart/form-data; boundary=bnd", "Idempotency-Key": key}
        first = sink.http.request("POST", "/api/v1/importer/list-item/faces", content=body, headers=hdr)
        again = sink.http.request("POST", "/api/v1/importer/list-item/faces", content=body, headers=hdr)
        assert first.status_code == again.status_code == 201 and first.json() == again.json()
        diff = multipart([("data", None, "application/json",
                           json.dumps({"attributes": {"image-files": ["c.jpg"], "list-id": "lst_test"}}).encode()),
                          ("files[]", "c.jpg", "image/jpeg", (SAMPLES / "grace_hopper.jpg").read_bytes())], "bnd")
        refused = sink.http.request("POST", "/api/v1/importer/list-item/faces", content=diff, headers=hdr)
        assert refused.status_code == 422 and refused.json()["errors"][0]["title"] == "Idempotency key reused"
    finally:
        sink.close()


def test_persona_paces_itself_by_the_ratelimit_headers(monkeypatch, source, journal):
    """RateLimit-Remaining 0 -> the next request waits for RateLimit-Reset: no 429 at all."""
    fake = FakePersona(KEY, polls=1, rate_limit=3, window_s=1.0)
    with LiveServer(fake) as srv:
        monkeypatch.setenv("FACECLI_PERSONA_URL", srv.url)
        res = enroll(source, journal, "persona://lst_test", "--batch-size", "1", "--concurrency", "1", "--force")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert sum(fake.counts.values()) >= 2 * fake.rate_limit  # three imports: the limit was reached twice
    assert s["persons"]["enrolled"] == 3 and s["retries"] == 0 and fake.limited == 0
    assert len(fake.lists["lst_test"]) == 4


def test_cloud_killed_mid_run_then_resumed_creates_nobody_twice(cloud, tmp_path):
    """A real SIGKILL between batches, then the same command again: every person exactly once."""
    import csv
    import os
    import signal
    import subprocess
    import sys

    from .conftest import MODELS, REPO

    ids: dict[str, str] = {}
    for row in csv.DictReader((PAIRS / "identities.csv").open()):
        ids.setdefault(row["identity"], row["file"])
    manifest = tmp_path / "m.csv"
    manifest.write_text("person_id,image\n" + "".join(f"{i},{PAIRS / f}\n" for i, f in sorted(ids.items())))
    ledger = tmp_path / "ledger.db"
    args = ["enroll", "--manifest", str(manifest), "--allow-absolute", "--to", "opencv-fr-cloud://us", "-c", "staff",
            "--create-collection", "--batch-size", "2", "--concurrency", "1", "--journal", str(ledger),
            "--on-duplicate", "warn", "-q"]
    env = {**os.environ, "FACECLI_MODELS_DIR": str(MODELS), "FACECLI_API_KEY": KEY, "FACECLI_DEBUG_BATCH_DELAY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "facecli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(cloud.persons) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    first = len(cloud.persons)
    assert 2 <= first < len(ids), "the run was not killed mid-way"
    res = invoke(*args[:-1], "--api-key", KEY, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["persons"]["skipped"] >= first - 2  # at most the batch in flight again
    assert set(cloud.persons) == set(ids)
    assert cloud.counts["POST person"] == len(ids)  # nobody created twice
