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
    assert {r["kind"] for r in rows} == {"image", "person"} and len(rows) == 7  # the =HYPERLINK id: an item, no person
    assert any(r["person_id"] == "'=HYPERLINK(1)" for r in rows)
    assert all(not r[c].startswith(("=", "+", "-", "@")) or _number(r[c]) for r in rows for c in r)
    invoke("check", photos, "--report", tmp_path / "r.xml", "-q")
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("errors") == "2"  # + INVALID_ROW
    cases = {c.get("name").rsplit("/", 1)[-1]: c for c in suite.iter("testcase")}
    assert cases["no_face.jpg"].find("failure").get("message") == "NO_FACE"
    assert cases["truncated.jpg"].find("error") is not None and len(list(cases["grace_hopper.jpg"])) == 0


def _number(cell: str) -> bool:
    """A numeric cell (a negative yaw is no formula: only text is prefixed with ')."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


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


@needs_models
def test_resume_trusts_the_target_not_only_the_ledger(tmp_path):
    """The ledger's "already enrolled" is checked against the target in one batch: a deleted
    person, a deleted database or a re-created collection is re-sent, not reported UNCHANGED."""
    db = tmp_path / "g.db"
    assert invoke("enroll", SAMPLES, "--db", db, "--create-collection", "-q").exit_code == 1  # bad samples
    s = json.loads(invoke("enroll", SAMPLES, "--db", db, "--json").stdout)
    assert s["persons"]["skipped"] == 2 and s["ledger"]["checked_at_target"] is True
    assert s["ledger"]["missing_at_target"] == 0
    assert invoke("persons", "delete", "astronaut", "--db", db).exit_code == 0
    s = json.loads(invoke("enroll", SAMPLES, "--db", db, "--json").stdout)
    assert s["persons"]["enrolled"] == 1 and s["persons"]["skipped"] == 1, s
    assert s["ledger"]["missing_at_target"] == 1
    assert invoke("collections", "delete", "default", "-y", "--db", db).exit_code == 0
    assert invoke("collections", "create", "default", "--db", db).exit_code == 0
    s = json.loads(invoke("enroll", SAMPLES, "--db", db, "--json").stdout)
    assert s["persons"]["enrolled"] == 2 and s["persons"]["skipped"] == 0, s
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"g.db{suffix}").unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "g.db.index", ignore_errors=True)
    s = json.loads(invoke("enroll", SAMPLES, "--db", db, "--create-collection", "--json").stdout)
    assert s["persons"]["enrolled"] == 2 and s["persons"]["skipped"] == 0, s
    with Engine(db) as e:
        assert e.counts("default") == (2, 3)


def test_ledger_skip_asks_the_target_once_and_says_when_it_cannot():
    from facecli.pipeline.enroll import still_held
    from facecli.pipeline.report import RunSummary

    class Counting:
        calls = 0

        def held_ids(self, collection, ids):
            Counting.calls += 1
            return {i for i in ids if int(i[1:]) % 2 == 0}

    summary = RunSummary(command="enroll")
    ids = [f"p{i}" for i in range(3000)]
    assert still_held(Counting(), "default", ids, summary) == {i for i in ids if int(i[1:]) % 2 == 0}
    assert Counting.calls == 1 and summary.ledger["missing_at_target"] == 1500
    summary = RunSummary(command="enroll")
    assert still_held(object(), "default", ["a", "b"], summary) == {"a", "b"}  # cannot tell: keep the ledger's word
    assert summary.ledger["checked_at_target"] is False and "cannot" in summary.ledger["note"]


@needs_models
def test_nothing_to_do_exits_0_with_a_clear_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = invoke("check", empty)
    assert res.exit_code == 0 and "nothing to do" in res.stdout, res.output
    db = tmp_path / "g.db"
    res = invoke("enroll", empty, "--db", db, "--create-collection", "--json")
    assert res.exit_code == 0 and "no photos" in json.loads(res.stdout)["nothing_to_do"]
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(SAMPLES / "grace_hopper.jpg", one / "grace_hopper.jpg")
    assert invoke("enroll", one, "--db", db, "-q").exit_code == 0
    res = invoke("enroll", one, "--db", db, "--retry-failed")
    assert res.exit_code == 0 and "nothing to retry" in res.stdout, res.output


@needs_models
def test_target_flags_beat_the_environment_and_the_environment_beats_the_config(tmp_path, monkeypatch):
    from facecli.cli.common import target_settings
    from facecli.config import Settings

    env_db, flag_db, cfg_db = tmp_path / "env.db", tmp_path / "flag.db", tmp_path / "cfg.db"
    monkeypatch.setenv("FACECLI_DB", str(env_db))
    res = invoke("enroll", SAMPLES / "grace_hopper.jpg", "--to", f"sqlite:///{flag_db}", "--create-collection", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["target"] == f"sqlite:///{flag_db}" and flag_db.exists() and not env_db.exists()
    pg = "postgresql://u@127.0.0.1:1/x"
    assert target_settings(Settings({"to": pg})) == (pg, None, "default")  # not "give the database ... not both"
    assert invoke("enroll", SAMPLES / "grace_hopper.jpg", "--to", f"sqlite:///{flag_db}", "--db", env_db,
                  "-q").exit_code == 2  # two flags still conflict
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'to = "sqlite:///{cfg_db}"\n')
    monkeypatch.setenv("FACECLI_CONFIG", str(cfg))
    assert target_settings(Settings()) == ("local", str(env_db), "default")  # env db beats config `to`
    assert target_settings(Settings({"db": str(flag_db)})) == ("local", str(flag_db), "default")
    monkeypatch.delenv("FACECLI_DB")
    assert target_settings(Settings()) == (f"sqlite:///{cfg_db}", None, "default")
    monkeypatch.setenv("FACECLI_TARGET", "local")
    cfg.write_text(f'db = "{cfg_db}"\n')
    assert target_settings(Settings()) == ("local", str(cfg_db), "default")  # `local` takes a db from anywhere


@needs_models
def test_json_prints_one_summary_object_on_fatal_errors(tmp_path):
    res = invoke("enroll", SAMPLES / "grace_hopper.jpg", "--db", tmp_path / "g.db", "-c", "nope", "--json")
    assert res.exit_code == 3
    s = json.loads(res.stdout)
    assert s["exit_code"] == 3 and "nope" in s["error"] and s["command"] == "enroll" and s["collection"] == "nope"
    res = invoke("enroll", SAMPLES / "grace_hopper.jpg", "--to", "http://127.0.0.1:9", "--retries", "0",
                 "--timeout", "1", "--create-collection", "--json")
    assert res.exit_code == 3 and json.loads(res.stdout)["exit_code"] == 3, res.output
    res = invoke("check", tmp_path / "missing", "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["error"].startswith("path not found")


@needs_models
def test_read_only_commands_create_no_database_and_no_ledger(tmp_path, monkeypatch):
    journal = tmp_path / "journal.db"
    monkeypatch.setenv("FACECLI_JOURNAL", str(journal))
    res = invoke("runs", "list", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == {"runs": []} and not journal.exists()
    assert invoke("runs", "list").exit_code == 0 and not journal.exists()
    res = invoke("runs", "show", "2026")
    assert res.exit_code == 3 and "no run ledger" in res.stderr and not journal.exists()
    db = tmp_path / "none.db"
    res = invoke("search", SAMPLES / "grace_hopper.jpg", "--db", db)
    assert res.exit_code == 3 and "no database" in res.stderr and "--create-collection" not in res.stderr.split(
        "hint")[0], res.output
    assert not db.exists() and not (tmp_path / "none.db.lock").exists()
    for args in (("collections", "list"), ("persons", "list"), ("persons", "get", "x")):
        assert invoke(*args, "--db", db).exit_code == 3 and not db.exists()
    assert invoke("collections", "create", "staff", "--db", db).exit_code == 0  # a writer may create it
    res = invoke("search", SAMPLES / "grace_hopper.jpg", "--db", db, "-c", "nope")
    assert res.exit_code == 3 and "collections list" in res.stderr


@needs_models
def test_report_path_and_format_are_checked_before_any_work(tmp_path, monkeypatch):
    import facecli.pipeline.check as check_mod

    calls = []
    real = check_mod.decode_image
    monkeypatch.setattr(check_mod, "decode_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    for cmd in ("check", "enroll"):
        target = ["--db", tmp_path / "g.db", "--create-collection"] if cmd == "enroll" else []
        res = invoke(cmd, SAMPLES / "grace_hopper.jpg", *target, "--report", "/proc/facecli-r.jsonl")
        assert res.exit_code == 2 and "cannot be written" in res.stderr, res.output  # no traceback
        res = invoke(cmd, SAMPLES / "grace_hopper.jpg", "--report", tmp_path / "r.txt", "--json")
        assert res.exit_code == 2 and ".jsonl" in res.stderr and json.loads(res.stdout)["exit_code"] == 2
        assert not (tmp_path / "r.txt").exists()
    assert calls == [] and not (tmp_path / "g.db").exists()
    assert invoke("check", SAMPLES / "grace_hopper.jpg", "--report", tmp_path / "r.json", "-q").exit_code == 0
    assert json.loads((tmp_path / "r.json").read_text().splitlines()[0])["kind"] == "image"


@needs_models
@needs_data
def test_run_states_failed_and_abandoned_with_counts_so_far(tmp_path, monkeypatch):
    monkeypatch.setenv("FACECLI_JOURNAL", str(tmp_path / "journal.db"))
    assert invoke("enroll", SAMPLES / "grace_hopper.jpg", "--db", tmp_path / "g.db", "-c", "nope", "-q").exit_code == 3
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert runs[0]["status"] == "failed" and "nope" in runs[0]["error"]
    proc = _spawn(tmp_path)
    _wait_confirmed(tmp_path, proc)
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert runs[0]["status"] == "running" and runs[0]["progress"]["persons_enrolled"] >= 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert runs[0]["status"] == "abandoned" and runs[0]["progress"]["persons_enrolled"] >= 1, runs[0]
    shown = invoke("runs", "show", runs[0]["run_id"]).stdout
    assert "abandoned" in shown and "resume" in shown and "so far" in shown and "{'" not in shown
