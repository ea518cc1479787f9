"""`facecli enroll` + `facecli search` + gallery commands on the embedded engine, end to end."""

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.engine.engine import Engine

from .conftest import DATASETS, MODELS, REPO, SAMPLES, needs_data, needs_models

runner = CliRunner()
COMPREFACE = DATASETS / "compreface-samples"
PAIRS = DATASETS / "deepface-pairs"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@needs_models
@needs_data
def test_compreface_enroll_one_each_then_search_the_rest(tmp_path):
    photos = tmp_path / "photos"
    for person, name in (("A", "001_A.jpg"), ("B", "007_B.jpg"), ("C", "009_C.jpg")):
        (photos / person).mkdir(parents=True)
        shutil.copy(COMPREFACE / name, photos / person / name)
    db = tmp_path / "g.db"
    res = invoke("enroll", photos, "--db", db, "--create-collection", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["images"]["enrolled"] == 3 and s["persons"]["enrolled"] == 3 and s["collection"] == "default"
    for name, person in [("002_A.jpg", "A"), ("003_A.jpg", "A"), ("004_A.jpg", "A"), ("005_A.jpg", "A"),
                         ("006_A.jpg", "A"), ("008_B.jpg", "B")]:
        res = invoke("search", COMPREFACE / name, "--db", db, "--json")
        assert res.exit_code == 0, (name, res.output)
        top = json.loads(res.stdout)["faces"][0]["matches"][0]
        assert top["person_id"] == person, name
    res = invoke("search", COMPREFACE / "017_0.jpg", "--db", db, "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["reason"] == "NO_FACE"
    res = invoke("enroll", COMPREFACE / "017_0.jpg", "--db", db, "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["reasons"] == {"NO_FACE": 1}


@needs_models
@needs_data
def test_deepface_identities_top1_accuracy(tmp_path):
    ids: dict[str, list[str]] = {}
    for row in csv.DictReader((PAIRS / "identities.csv").open()):
        ids.setdefault(row["identity"], []).append(row["file"])
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["person_id", "image"])
        for ident, files in sorted(ids.items()):
            w.writerow([ident, str(PAIRS / files[0])])
    db = tmp_path / "g.db"
    res = invoke("enroll", "--manifest", manifest, "--allow-absolute", "--db", db, "--create-collection", "--json")
    assert json.loads(res.stdout)["persons"]["enrolled"] == len(ids), res.output
    right = total = 0
    for ident, files in ids.items():
        for f in files[1:]:
            out = json.loads(invoke("search", PAIRS / f, "--db", db, "--json", "--min-score", "0").stdout)
            total += 1
            right += bool(out["faces"]) and out["faces"][0]["matches"][0]["person_id"] == ident
    assert total >= 40
    assert right / total >= 0.95, (right, total)


@needs_models
def test_reenrolling_changes_nothing_and_updates_replace_faces(tmp_path):
    db = tmp_path / "g.db"
    assert invoke("enroll", SAMPLES, "--db", db, "--create-collection", "-q").exit_code == 1  # bad samples
    with Engine(db) as e:
        first = e.counts("default")
        modified = {p.person_id: p.modified for p in e.list_persons("default")[1]}
    assert first == (2, 3)  # grace_hopper (2 faces) and astronaut
    assert invoke("enroll", SAMPLES, "--db", db, "-q").exit_code == 1
    with Engine(db) as e:
        assert e.counts("default") == first
        assert {p.person_id: p.modified for p in e.list_persons("default")[1]} == modified
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(SAMPLES / "grace_hopper.jpg", one / "grace_hopper.jpg")
    assert invoke("enroll", one, "--db", db, "-q").exit_code == 0
    with Engine(db) as e:
        assert e.counts("default") == (2, 2)  # grace_hopper's faces replaced by the single new one


@needs_models
def test_dry_run_writes_nothing_and_says_what_it_would_do(tmp_path):
    db = tmp_path / "g.db"
    report = tmp_path / "r.jsonl"
    assert invoke("collections", "create", "staff", "--db", db).exit_code == 0
    res = invoke("enroll", SAMPLES, "--db", db, "-c", "staff", "--dry-run", "--report", report, "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["dry_run"] is True
    persons = [json.loads(l) for l in report.read_text().splitlines() if '"kind": "person"' in l]
    assert any("would create grace_hopper" in p["message"] for p in persons)
    with Engine(db) as e:
        assert e.counts("staff") == (0, 0)


@needs_models
def test_missing_collection_is_a_target_error(tmp_path):
    res = invoke("enroll", SAMPLES / "grace_hopper.jpg", "--db", tmp_path / "g.db", "-c", "nope")
    assert res.exit_code == 3 and "--create-collection" in res.stderr
    assert invoke("search", SAMPLES / "grace_hopper.jpg", "--db", tmp_path / "g.db", "-c", "nope").exit_code == 3
    assert invoke("enroll", SAMPLES, "--db", tmp_path / "g.db", "-c", "bad/name", "--create-collection").exit_code == 2


@needs_models
def test_search_all_faces_and_multiple_faces_error(tmp_path):
    db = tmp_path / "g.db"
    invoke("enroll", SAMPLES, "--db", db, "--create-collection", "-q")
    res = invoke("search", SAMPLES / "two_faces.jpg", "--db", db, "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["reason"] == "MULTIPLE_FACES"
    res = invoke("search", SAMPLES / "two_faces.jpg", "--db", db, "--json", "--all-faces")
    faces = json.loads(res.stdout)["faces"]
    assert res.exit_code == 0 and len(faces) == 2
    assert {f["matches"][0]["person_id"] for f in faces} == {"grace_hopper", "astronaut"}
    for f in faces:
        assert f["matches"] == sorted(f["matches"], key=lambda m: -m["score"])
        assert set(f["matches"][0]) == {"person_id", "person_name", "score", "metadata", "false_match_probability",
                                        "margin", "ambiguous"}
    res = invoke("search", SAMPLES / "grace_hopper.jpg", "--db", db)
    assert res.exit_code == 0 and "grace_hopper" in res.stdout


@needs_models
def test_gallery_commands(tmp_path):
    db = tmp_path / "g.db"
    invoke("enroll", SAMPLES, "--db", db, "-c", "staff", "--create-collection", "-q", "--face-storage-type", "StoreThumbnails")
    cols = json.loads(invoke("collections", "list", "--db", db, "--json").stdout)
    assert cols["count"] == 1 and cols["collections"][0]["name"] == "staff" and cols["collections"][0]["num_persons"] == 2
    page = json.loads(invoke("persons", "list", "-c", "staff", "--db", db, "--json", "--limit", "1").stdout)
    assert page["count"] == 2 and len(page["persons"]) == 1
    assert set(page["persons"][0]) >= {"person_id", "person_name", "metadata", "faces", "created", "modified"}
    page2 = json.loads(invoke("persons", "list", "-c", "staff", "--db", db, "--json", "--limit", "1", "--offset", "1").stdout)
    assert page2["persons"][0]["person_id"] != page["persons"][0]["person_id"]
    got = json.loads(invoke("persons", "get", "grace_hopper", "-c", "staff", "--db", db, "--json").stdout)
    assert got["faces"] == 2
    assert invoke("persons", "get", "nobody", "-c", "staff", "--db", db).exit_code == 1
    assert invoke("persons", "delete", "grace_hopper", "-c", "staff", "--db", db).exit_code == 0
    assert invoke("persons", "delete", "grace_hopper", "-c", "staff", "--db", db).exit_code == 1
    with sqlite3.connect(db) as conn:  # thumbnails were stored for StoreThumbnails
        assert conn.execute("SELECT COUNT(*) FROM faces WHERE image IS NOT NULL").fetchone()[0] == 1
    assert invoke("collections", "delete", "staff", "--db", db, "--yes").exit_code == 0
    assert json.loads(invoke("collections", "list", "--db", db, "--json").stdout)["count"] == 0


@needs_models
def test_second_writer_with_no_wait_fails_clearly(tmp_path):
    db = tmp_path / "g.db"
    invoke("collections", "create", "default", "--db", db)
    with Engine(db) as holder, holder.writer_lock():
        res = invoke("enroll", SAMPLES / "grace_hopper.jpg", "--db", db, "--no-wait")
        assert res.exit_code == 3 and "another" in res.stderr
        # readers are not blocked by a writer
        assert invoke("persons", "list", "--db", db, "--json").exit_code == 0


@needs_models
@needs_data
def test_sigkill_mid_enroll_leaves_whole_batches(tmp_path):
    db = tmp_path / "g.db"
    env = {**os.environ, "FACECLI_MODELS_DIR": str(MODELS), "FACECLI_DEBUG_BATCH_DELAY": "0.3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "facecli", "enroll", str(PAIRS), "--db", str(db), "--create-collection",
         "--batch-size", "4", "--on-duplicate", "warn", "--on-identity-mismatch", "warn", "-q"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    persons = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(db, timeout=1) as conn:
                persons = conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        if persons >= 8:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert persons >= 8, "enroll never reached its second batch"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0]
    assert n % 4 == 0 and n < 61  # whole batches only, and it really was killed mid-run
    with Engine(db) as e:
        assert e.counts("default")[0] == n


@needs_models
def test_dry_run_fails_where_the_real_run_would_and_counts_what_it_would_do(tmp_path):
    db = tmp_path / "g.db"
    invoke("enroll", SAMPLES / "grace_hopper.jpg", "--db", db, "-c", "other", "--create-collection", "-q")
    res = invoke("enroll", SAMPLES, "--db", db, "-c", "staff", "--dry-run", "--json")  # "staff" is missing
    assert res.exit_code == 3, res.output
    assert json.loads(res.stdout)["exit_code"] == 3
    res = invoke("enroll", SAMPLES, "--db", db, "--dry-run", "--create-collection", "--json")
    s = json.loads(res.stdout)
    assert s["would"] == {"create": 2, "update": 0, "unchanged": 0, "rejected": s["persons"]["rejected"],
                          "failed": s["persons"]["failed"]}
    with Engine(db) as e:
        assert [c.name for c in e.list_collections()[1]] == ["other"], "a dry run created the collection"
    assert invoke("enroll", SAMPLES, "--db", db, "--create-collection", "-q").exit_code == 1
    ledger = tmp_path / "ledger.db"
    assert invoke("enroll", SAMPLES, "--db", db, "--journal", ledger, "-q").exit_code == 1
    before = ledger.read_bytes(), sorted(p.name for p in tmp_path.iterdir())
    # the ledger knows both persons are unchanged: the dry run says so, as the real run would
    res = invoke("enroll", SAMPLES, "--db", db, "--journal", ledger, "--dry-run", "--json")
    assert json.loads(res.stdout)["would"]["unchanged"] == 2 and json.loads(res.stdout)["would"]["update"] == 0
    res = invoke("enroll", SAMPLES, "--db", db, "--journal", ledger, "--dry-run")
    assert "would create 0, update 0 person(s), leave 2 unchanged" in res.stderr
    assert (ledger.read_bytes(), sorted(p.name for p in tmp_path.iterdir())) == before, "a dry run wrote the ledger"
    res = invoke("enroll", SAMPLES, "--db", db, "--dry-run", "--no-journal")
    assert "would create 0, update 2 person(s), leave 0 unchanged" in res.stderr
    res = invoke("enroll", SAMPLES, "--db", db, "--journal", tmp_path / "none.db", "--dry-run", "-q")
    assert not (tmp_path / "none.db").exists(), "a dry run created a ledger"


@needs_models
def test_the_local_default_collection_is_created_on_first_use(tmp_path):
    db = tmp_path / "g.db"
    res = invoke("enroll", SAMPLES, "--db", db, "--no-journal", "--json")
    s = json.loads(res.stdout)
    assert res.exit_code == 1 and s["persons"]["enrolled"] == 2 and s["collection"] == "default", res.output
    assert s["actions"] == {"created": 2, "updated": 0, "unchanged": 0}
    assert invoke("enroll", SAMPLES, "--db", db, "-c", "staff", "--no-journal").exit_code == 3  # other names: no
    res = invoke("enroll", SAMPLES, "--db", db, "--json")
    assert json.loads(res.stdout)["actions"] == {"created": 0, "updated": 0, "unchanged": 2}  # the engine says so
    res = invoke("enroll", SAMPLES, "--db", db)
    assert "persons: 0 created, 0 updated, 2 unchanged" in res.stdout and "default" in res.stdout
    assert "problems" not in res.stdout or "UNCHANGED" not in res.stdout.split("problems", 1)[1]

