"""The CLI against a real `facecli serve` on 127.0.0.1: enroll, search and the gallery commands over
HTTP; the API key never shows; faults (500, 429 + Retry-After, dropped connections) and a person
the server refuses (412) lose nobody else."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.engine.engine import Engine
from facecli.vision.embed import MATCH_THRESHOLD

from .conftest import DATASETS, SAMPLES, needs_data, needs_models
from .live_server import DropProxy, Faults, LiveServer

pytestmark = needs_models
runner = CliRunner()
KEY = "cli-remote-key-Zq81xV"
PAIRS = DATASETS / "deepface-pairs"


@pytest.fixture(scope="module")
def served(checker, tmp_path_factory):
    from facecli.server.app import create_app

    engine = Engine(tmp_path_factory.mktemp("served") / "g.db")
    faults = Faults(create_app(engine, checker, [KEY]))
    with LiveServer(faults) as srv:
        srv.faults, srv.engine = faults, engine
        yield srv
    engine.close()


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("FACECLI_API_KEY", KEY)


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res


def secrets_absent(res, *files, key=KEY):
    assert key not in res.stdout and key not in res.stderr
    for f in files:
        if f.exists():
            assert key.encode() not in f.read_bytes(), f


def test_enroll_search_and_gallery_over_http(served, keyed, tmp_path):
    report, journal = tmp_path / "r.jsonl", tmp_path / "ledger.db"
    res = invoke("enroll", SAMPLES, "--to", served.url, "-c", "demo", "--create-collection", "--json",
                 "--report", report, "--journal", journal, "--concurrency", "2")
    assert res.exit_code == 1, res.output  # sample_images holds bad photos on purpose
    s = json.loads(res.stdout)
    assert s["target"] == served.url and s["persons"]["enrolled"] == 2 and s["retries"] == 0
    assert s["reasons"].get("TOO_MANY_IMAGES") == 1  # one face per person on this API: the best is kept
    secrets_absent(res, report, journal)
    again = json.loads(invoke("enroll", SAMPLES, "--to", served.url, "-c", "demo", "--json", "--journal", journal).stdout)
    assert again["persons"]["skipped"] == 2 and again["persons"]["enrolled"] == 0  # the ledger knows this target
    forced = json.loads(invoke("enroll", SAMPLES, "--to", served.url, "-c", "demo", "--json", "--journal", journal,
                               "--force").stdout)
    assert forced["persons"]["enrolled"] == 2  # cached check results still carry their payload JPEGs

    res = invoke("search", SAMPLES / "grace_hopper_2.jpg", "--to", served.url, "-c", "demo", "--json")
    assert res.exit_code == 0, res.output
    top = json.loads(res.stdout)["faces"][0]["matches"][0]
    assert top["person_id"] == "grace_hopper" and top["score"] >= MATCH_THRESHOLD
    res = invoke("search", SAMPLES / "no_face.jpg", "--to", served.url, "-c", "demo", "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["reason"] == "NO_FACE"

    listed = json.loads(invoke("persons", "list", "--to", served.url, "-c", "demo", "--json").stdout)
    assert listed["count"] == 2 and {p["person_id"] for p in listed["persons"]} == {"astronaut", "grace_hopper"}
    got = invoke("persons", "get", "astronaut", "--to", served.url, "-c", "demo", "--json")
    assert got.exit_code == 0 and json.loads(got.stdout)["faces"] == 1
    assert invoke("persons", "get", "nobody", "--to", served.url, "-c", "demo").exit_code == 1
    res = invoke("persons", "delete", "astronaut", "--to", served.url, "-c", "demo")
    assert res.exit_code == 2 and "no endpoint to delete one person" in res.output

    assert invoke("collections", "create", "scratch", "--to", served.url).exit_code == 0
    names = {c["name"] for c in json.loads(invoke("collections", "list", "--to", served.url, "--json").stdout)["collections"]}
    assert {"demo", "scratch"} <= names
    assert invoke("collections", "delete", "scratch", "--yes", "--to", served.url).exit_code == 0
    res = invoke("collections", "delete", "scratch", "--yes", "--to", served.url)
    assert res.exit_code == 3 and "does not exist" in res.output


def test_full_image_payloads_and_a_missing_collection(served, keyed, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "grace.jpg").write_bytes((SAMPLES / "grace_hopper.jpg").read_bytes())
    res = invoke("enroll", one, "--to", served.url, "-c", "absent", "--no-journal")
    assert res.exit_code == 3 and "does not exist" in res.output and "--create-collection" in res.output
    res = invoke("enroll", one, "--to", served.url, "-c", "full", "--create-collection", "--payload", "full",
                 "--max-image-bytes", "40000", "--face-storage-type", "StoreFullImage", "--no-journal", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["persons"]["enrolled"] == 1, res.output
    stored = served.engine._db().execute("SELECT length(image), image_kind FROM faces WHERE image_kind = 'full'").fetchall()
    assert stored and all(n <= 40000 for n, _ in stored)
    assert invoke("enroll", one, "--to", served.url, "--payload", "raw").exit_code == 2


@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_wrong_key_is_exit_3_and_never_shown(served, monkeypatch, tmp_path, how):
    wrong = "WRONG-key-9d8c7b6a"
    report = tmp_path / "r.jsonl"
    args = ["enroll", SAMPLES / "grace_hopper.jpg", "--to", served.url, "-c", "demo", "--report", report,
            "--no-journal"]
    if how == "env":
        monkeypatch.setenv("FACECLI_API_KEY", wrong)
    else:
        args += ["--api-key", wrong]
    res = invoke(*args)
    assert res.exit_code == 3, res.output
    assert "refused the API key" in res.stderr and "403" in res.stderr
    secrets_absent(res, report, key=wrong)
    monkeypatch.delenv("FACECLI_API_KEY", raising=False)
    res = invoke("search", SAMPLES / "grace_hopper.jpg", "--to", served.url, "-c", "demo")
    assert res.exit_code == 3 and "no API key was sent" in res.stderr


def test_plain_http_to_another_host_is_refused(keyed):
    res = invoke("search", SAMPLES / "grace_hopper.jpg", "--to", "http://fr.example.com:8000")
    assert res.exit_code == 2 and "plain http" in res.stderr and "--insecure" in res.stderr


@needs_data
def test_faults_lose_nobody_and_a_refused_person_fails_alone(served, keyed, tmp_path):
    rows = [r for r in csv.DictReader((PAIRS / "identities.csv").open()) if r["file"] != "img62.jpg"][:30]  # 62: group
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["person_id", "image", "identity"])
        for r in rows:
            w.writerow([r["file"].removesuffix(".jpg"), str(PAIRS / r["file"]), r["identity"]])
    config = tmp_path / "facecli.toml"
    config.write_text("retry_initial_s = 0.01\nretry_max_wait_s = 0.05\n")
    report = tmp_path / "r.jsonl"
    served.faults.reset(rate_500=0.2, rate_429=0.1, retry_after="0.05", reject_ids={"img5"})
    try:
        with DropProxy(served.port, rate=0.15, seed=3) as proxy:
            res = invoke("enroll", "--manifest", manifest, "--allow-absolute", "--to", proxy.url, "-c", "faulty",
                         "--create-collection", "--on-duplicate", "warn", "--batch-size", "4", "--concurrency", "3",
                         "--retries", "10", "--config", config, "--report", report, "--no-journal", "--json")
        counts = dict(served.faults.counts)
    finally:
        served.faults.reset()
    assert res.exit_code == 1, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["enrolled"] == 29 and s["persons"]["failed"] == 1, s
    assert s["reasons"] == {"SERVER_REJECTED": 1}
    assert s["retries"] >= max(counts.get("500", 0) + counts.get("429", 0), proxy.dropped) > 0
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    bad = [x for x in lines if x.get("kind") == "person" and x["status"] == "failed"]
    assert [x["person_id"] for x in bad] == ["img5"] and "ERR_UNPROCESSABLE_CONTENT" in bad[0]["message"]
    total, persons = served.engine.list_persons("faulty")
    assert total == 29 and all(p.faces == 1 for p in persons)
    assert {p.person_id for p in persons} == {r["file"].removesuffix(".jpg") for r in rows} - {"img5"}
    assert all(p.metadata == {"identity": next(r["identity"] for r in rows if r["file"] == p.person_id + ".jpg")}
               for p in persons)
    secrets_absent(res, report)


@needs_data
def test_duplicate_across_runs_found_through_facecli_serve(served, keyed, tmp_path):
    """`facecli serve` names its recognizer on /health, so its search scores are read through the
    score model: a person enrolled in an earlier run is found as a duplicate under a new id."""
    import shutil

    comp = DATASETS / "compreface-samples"
    for pid, name in (("alice", "001_A.jpg"), ("bob", "007_B.jpg")):
        (tmp_path / "r1" / pid).mkdir(parents=True)
        shutil.copy(comp / name, tmp_path / "r1" / pid / name)
    (tmp_path / "r2" / "alice-again").mkdir(parents=True)
    shutil.copy(comp / "002_A.jpg", tmp_path / "r2" / "alice-again" / "002_A.jpg")
    res = invoke("enroll", tmp_path / "r1", "--to", served.url, "-c", "dups", "--create-collection", "--json",
                 "--no-journal")
    assert res.exit_code == 0, res.output
    res = invoke("enroll", tmp_path / "r2", "--to", served.url, "-c", "dups", "--json", "--no-journal")
    assert res.exit_code == 1, res.output
    s = json.loads(res.stdout)
    assert s["duplicate_check"]["target"].startswith("checked against 2")
    assert s["duplicates"][0]["other_person_id"] == "alice" and s["duplicates"][0]["where"] == "target"
    assert s["persons"]["rejected"] == 1 and s["persons"]["enrolled"] == 0


def test_dry_run_checks_the_key_and_the_server_even_with_create_collection(served, monkeypatch, tmp_path):
    """Issue 15: a dry run must fail where the real run would, --create-collection or not."""
    args = ["enroll", SAMPLES / "grace_hopper.jpg", "--to", served.url, "-c", "dry-new", "--create-collection",
            "--dry-run", "--no-journal", "--json"]
    res = invoke(*args, "--api-key", "WRONG-key-dry")
    assert res.exit_code == 3 and json.loads(res.stdout)["exit_code"] == 3, res.output
    monkeypatch.setenv("FACECLI_API_KEY", KEY)
    res = invoke(*args, "--report", tmp_path / "r.jsonl")
    assert res.exit_code == 0 and json.loads(res.stdout)["would"]["create"] == 1, (tmp_path / "r.jsonl").read_text()
    assert "dry-new" not in [c.name for c in served.engine.list_collections()[1]]
    res = invoke(*args[:-1], "--to", "http://127.0.0.1:9")  # nothing listens there: unreachable
    assert res.exit_code == 3, res.output
