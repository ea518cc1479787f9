"""Run ledger, resume, interrupts, reports and cron ergonomics, end to end through the CLI."""

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.engine.engine import Engine

from .conftest import DATASETS, MODELS, REPO, SAMPLES, needs_data, needs_models

runner = CliRunner()
PAIRS = DATASETS / "deepface-pairs"
ENROLL = ["--batch-size", "4", "--on-duplicate", "warn", "--on-identity-mismatch", "warn", "--create-collection"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _spawn(tmp_path, *extra):
    env = {**os.environ, "FACECLI_MODELS_DIR": str(MODELS), "FACECLI_DEBUG_BATCH_DELAY": "0.4",
           "FACECLI_JOURNAL": str(tmp_path / "journal.db")}
    return subprocess.Popen(
        [sys.executable, "-m", "facecli", "enroll", str(PAIRS), "--db", str(tmp_path / "g.db"), *ENROLL, "-q", *extra],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait_confirmed(tmp_path, proc, at_least=1, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(tmp_path / "journal.db", timeout=1) as conn:
                n = conn.execute("SELECT COUNT(*) FROM persons WHERE state='confirmed'").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        if n >= at_least:
            return n
    raise AssertionError("no batch was confirmed in time")


def _persons_in_source():
    return len([p for p in PAIRS.iterdir() if p.suffix == ".jpg"])


@needs_models
@needs_data
def test_sigkill_then_rerun_enrolls_everyone_exactly_once(tmp_path, monkeypatch):
    proc = _spawn(tmp_path)
    _wait_confirmed(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    with Engine(tmp_path / "g.db") as e:
        first = e.counts("default")[0]
    assert 0 < first < 50
    monkeypatch.setenv("FACECLI_JOURNAL", str(tmp_path / "journal.db"))
    report = tmp_path / "r.jsonl"
    res = invoke("enroll", PAIRS, "--db", tmp_path / "g.db", *ENROLL, "--json", "--report", report)
    assert res.exit_code == 1, res.output  # the group photos stay rejected
    summary = json.loads(res.stdout)
    lines = [json.loads(l) for l in report.read_text().splitlines()]
    persons = [l for l in lines if l["kind"] == "person"]
    skipped = [p for p in persons if p["status"] == "skipped"]
    assert len(skipped) >= first - 4  # at most the batch in flight is re-sent
    assert all(p["reasons"] == ["UNCHANGED"] for p in skipped)
    enrolled_ids = {p["person_id"] for p in persons if p["status"] in ("enrolled", "skipped")}
    with Engine(tmp_path / "g.db") as e:
        total, rows = e.list_persons("default")
    assert total == len(enrolled_ids) == len({r.person_id for r in rows})
    assert total + summary["persons"]["rejected"] + summary["persons"]["failed"] == _persons_in_source()


@needs_models
@needs_data
def test_sigint_exits_130_and_the_resumed_run_completes(tmp_path, monkeypatch):
    proc = _spawn(tmp_path)
    _wait_confirmed(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert b"resume" in stderr
    with sqlite3.connect(tmp_path / "journal.db") as conn:
        status = conn.execute("SELECT status FROM runs").fetchone()[0]
        confirmed = conn.execute("SELECT COUNT(*) FROM persons WHERE state='confirmed'").fetchone()[0]
        in_flight = conn.execute("SELECT COUNT(*) FROM persons WHERE state='sent'").fetchone()[0]
    assert status == "interrupted" and in_flight == 0
    with Engine(tmp_path / "g.db") as e:
        assert e.counts("default")[0] == confirmed  # ledger and target agree
    monkeypatch.setenv("FACECLI_JOURNAL", str(tmp_path / "journal.db"))
    res = invoke("enroll", PAIRS, "--db", tmp_path / "g.db", *ENROLL, "--json", "--max-failures", "10%")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["skipped"] == confirmed and not s["interrupted"]
    with Engine(tmp_path / "g.db") as e:
        assert e.counts("default")[0] == _persons_in_source() - s["persons"]["rejected"] - s["persons"]["failed"]


@needs_models
def test_second_identical_run_writes_nothing(tmp_path):
    db = tmp_path / "g.db"
    assert invoke("enroll", SAMPLES, "--db", db, "--create-collection", "-q").exit_code == 1
    with Engine(db) as e:
        before = (e.counts("default"), {p.person_id: p.modified for p in e.list_persons("default")[1]})
    mtime = db.stat().st_mtime_ns
    res = invoke("enroll", SAMPLES, "--db", db, "--json")
    s = json.loads(res.stdout)
    assert s["persons"]["skipped"] == 2 and s["images"]["skipped"] == 3 and s["images"]["enrolled"] == 0
    with Engine(db) as e:
        assert (e.counts("default"), {p.person_id: p.modified for p in e.list_persons("default")[1]}) == before
    assert db.stat().st_mtime_ns == mtime
    s = json.loads(invoke("enroll", SAMPLES, "--db", db, "--json", "--force").stdout)
    assert s["persons"]["enrolled"] == 2  # --force ignores the ledger (the engine still finds them unchanged)


@needs_models
def test_changed_person_is_resent(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(SAMPLES / "grace_hopper.jpg", photos / "gh.jpg")
    db = tmp_path / "g.db"
    invoke("enroll", photos, "--db", db, "--create-collection", "-q")
    shutil.copy(SAMPLES / "grace_hopper_2.jpg", photos / "gh.jpg")  # same name, new content
    s = json.loads(invoke("enroll", photos, "--db", db, "--json").stdout)
    assert s["persons"]["enrolled"] == 1 and s["persons"]["skipped"] == 0


@needs_models
def test_retry_failed_only_reprocesses_failed_persons(tmp_path):
    from facecli.pipeline.journal import Journal

    db = tmp_path / "g.db"
    invoke("enroll", SAMPLES, "--db", db, "--create-collection", "-q")
    j = Journal()
    target = f"sqlite:///{db}"
    j.mark(target, "default", "manual", [("astronaut", "x", "failed", None, "simulated")])
    j.close()
    s = json.loads(invoke("enroll", SAMPLES, "--db", db, "--json", "--retry-failed").stdout)
    assert s["persons"] == {"accepted": 0, "enrolled": 1, "rejected": 0, "failed": 0, "skipped": 0}


@needs_models
def test_csv_and_junit_reports(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    for n in ("grace_hopper.jpg", "no_face.jpg", "truncated.jpg"):
        shutil.copy(SAMPLES / n, photos / n)
    shutil.copy(SAMPLES / "astronaut.jpg", photos / "=HYPERLINK(1).jpg")
    invoke("check", photos, "--report", tmp_path / "r.csv", "-q")
    rows = list(csv.DictReader((tmp_path / "r.csv").open(newline="")))
    assert {r["kind"] for r in rows} == {"image", "person"} and len(rows) == 8
    assert any(r["person_id"] == "'=HYPERLINK(1)" for r in rows)
    assert all(not r[c].startswith(("=", "+", "-", "@")) for r in rows for c in r)
    invoke("check", photos, "--report", tmp_path / "r.xml", "-q")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("errors") == "1"
    cases = {c.get("name").rsplit("/", 1)[-1]: c for c in suite.iter("testcase")}
    assert cases["no_face.jpg"].find("failure").get("message") == "NO_FACE"
    assert cases["truncated.jpg"].find("error") is not None and len(list(cases["grace_hopper.jpg"])) == 0


@needs_models
def test_max_failures_and_fail_fast(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    for n in ("astronaut.jpg", "grace_hopper.jpg", "no_face.jpg"):
        shutil.copy(SAMPLES / n, photos / n)
    assert invoke("check", photos, "-q").exit_code == 1
    assert invoke("check", photos, "-q", "--max-failures", "1").exit_code == 0
    assert invoke("check", photos, "-q", "--max-failures", "0").exit_code == 1
    assert invoke("check", photos, "-q", "--max-failures", "40%").exit_code == 0
    assert invoke("check", photos, "-q", "--max-failures", "30%").exit_code == 1
    assert invoke("check", photos, "-q", "--max-failures", "lots").exit_code == 2
    photos2 = tmp_path / "q"
    photos2.mkdir()
    for n in ("a_no_face.jpg", "b.jpg", "c.jpg"):
        shutil.copy(SAMPLES / ("no_face.jpg" if "no_face" in n else "grace_hopper.jpg"), photos2 / n)
    s = json.loads(invoke("check", photos2, "--json", "--fail-fast").stdout)
    assert sum(s["images"].values()) == 1


@needs_models
def test_runs_list_and_show(tmp_path):
    invoke("check", SAMPLES, "-q")
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert len(runs) == 1 and runs[0]["command"] == "check" and runs[0]["status"] == "done"
    shown = json.loads(invoke("runs", "show", runs[0]["run_id"][:17], "--json", "--failed").stdout)
    assert shown["items"] and all(i["status"] in ("rejected", "failed") for i in shown["items"])
    assert invoke("runs", "show", "nope").exit_code == 2


@needs_models
def test_unchanged_images_are_not_decoded_again(tmp_path, monkeypatch):
    import facecli.pipeline.check as check_mod

    assert invoke("check", SAMPLES, "-q").exit_code == 1
    calls = []
    real = check_mod.decode_image
    monkeypatch.setattr(check_mod, "decode_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert invoke("check", SAMPLES, "-q").exit_code == 1
    assert len(calls) == 1  # only the truncated file (failures are not cached)
    assert invoke("check", SAMPLES, "-q", "--threshold", "min_sharpness=25").exit_code == 1
    assert len(calls) > 1  # other settings: checked again


def test_precedence_flags_env_config_defaults(tmp_path, monkeypatch):
    from facecli.config import Settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('preset = "opencv-fr"\ncollection = "from-config"\nthreads = 3\n')
    monkeypatch.setenv("FACECLI_CONFIG", str(cfg))
    assert Settings().get("preset") == "opencv-fr"
    assert Settings().get("device", "cpu") == "cpu"  # default
    monkeypatch.setenv("FACECLI_PRESET", "azure-face")
    assert Settings().get("preset") == "azure-face"  # env beats config
    assert Settings({"preset": "default"}).get("preset") == "default"  # flag beats env
    assert Settings({"preset": None}).get("preset") == "azure-face"  # an unset flag does not count
    assert Settings().get("collection") == "from-config"
