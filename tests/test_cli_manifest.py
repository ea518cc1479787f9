"""Manifests through `facecli check`: identity mismatch, duplicate persons, bad rows."""

import csv
import json
import shutil

from typer.testing import CliRunner

from facecli.cli.app import app

from .conftest import DATASETS, needs_data, needs_models

runner = CliRunner()
PAIRS = DATASETS / "deepface-pairs"


def _identities():
    ids = {}
    for row in csv.DictReader((PAIRS / "identities.csv").open()):
        ids.setdefault(row["identity"], []).append(row["file"])
    return ids


def _write(tmp_path, rows, header=("person_id", "person_name", "image", "department")):
    for r in rows:
        src = PAIRS / r[2]
        if src.exists() and not (tmp_path / r[2]).exists():
            shutil.copy(src, tmp_path / r[2])
    m = tmp_path / "people.csv"
    with m.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return m


@needs_models
@needs_data
def test_mislabelled_image_and_duplicate_person_from_a_manifest(tmp_path):
    ids = _identities()
    big = sorted(ids, key=lambda k: -len(ids[k]))
    a, b, c = big[0], big[1], big[2]
    wrong = ids[b][0]
    rows = [(a, f"Person {a}", f, "R&D") for f in ids[a][:3]] + [(a, f"Person {a}", wrong, "R&D")]
    rows += [(b, f"Person {b}", f, "Sales") for f in ids[b][1:3]]
    rows += [("c-1", "C one", ids[c][0], "Ops"), ("c-2", "C two", ids[c][1], "Ops")]  # one face, two ids
    m = _write(tmp_path, rows)
    report = tmp_path / "r.jsonl"
    res = runner.invoke(app, ["check", "--manifest", str(m), "--report", str(report), "--json"])
    assert res.exit_code == 1, res.output
    lines = [json.loads(l) for l in report.read_text().splitlines()]
    mismatched = [l["path"] for l in lines if l["kind"] == "image" and "IDENTITY_MISMATCH" in l["reasons"]]
    assert [p.rsplit("/", 1)[-1] for p in mismatched] == [wrong]
    persons = {l["person_id"]: l for l in lines if l["kind"] == "person"}
    assert persons[a]["status"] == "accepted" and "IDENTITY_MISMATCH" in persons[a]["warnings"]
    assert persons[b]["status"] == "accepted"
    # one face under two ids: the later id in source order is rejected (persons are decided as they stream)
    assert persons["c-1"]["status"] == "accepted" and persons["c-2"]["status"] == "rejected"
    assert "DUPLICATE_PERSON" in persons["c-2"]["reasons"] and "c-1" in persons["c-2"]["message"]
    # metadata columns travel with the person
    summary = json.loads(res.stdout)
    assert summary["persons"]["accepted"] == 3 and summary["persons"]["rejected"] == 1


@needs_models
@needs_data
def test_warn_policies_through_the_cli(tmp_path):
    ids = _identities()
    c = sorted(ids, key=lambda k: -len(ids[k]))[2]
    m = _write(tmp_path, [("c-1", "C one", ids[c][0], ""), ("c-2", "C two", ids[c][1], "")])
    res = runner.invoke(app, ["check", "--manifest", str(m), "--json", "--on-duplicate", "warn"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["check", "--manifest", str(m), "--on-duplicate", "maybe"]).exit_code == 2


@needs_models
def test_bad_rows_are_reported_with_line_numbers_and_the_rest_runs(tmp_path):
    from .conftest import SAMPLES

    shutil.copy(SAMPLES / "grace_hopper.jpg", tmp_path / "gh.jpg")
    m = tmp_path / "m.csv"
    m.write_bytes(
        b"person_id,image\n"          # line 1
        b"ok,gh.jpg\n"                # 2 valid
        b",gh.jpg\n"                  # 3 empty id
        b"p3,missing.jpg\n"           # 4 missing file
        b"p4,../../etc/passwd\n"      # 5 escapes the folder
        b"p5,/etc/hostname\n"         # 6 absolute
        b"p6,gh.jpg,extra\n"          # 7 too many fields
        b"p7,\xff\xfe.jpg\n"          # 8 not UTF-8
    )
    report = tmp_path / "r.jsonl"
    res = runner.invoke(app, ["check", "--manifest", str(m), "--report", str(report), "--json"])
    assert res.exit_code == 1
    lines = [json.loads(l) for l in report.read_text().splitlines()]
    invalid = {l["line"]: l for l in lines if "INVALID_ROW" in l["reasons"]}
    assert sorted(invalid) == [3, 4, 5, 6, 7, 8]
    assert all(l["message"] for l in invalid.values())
    ok = [l for l in lines if l.get("person_id") == "ok" and l["kind"] == "image"]
    assert ok and ok[0]["status"] == "accepted"
    assert json.loads(res.stdout)["reasons"]["INVALID_ROW"] == 6


def test_manifest_usage_errors(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("name,photo\nA,a.jpg\n")
    assert runner.invoke(app, ["check", "--manifest", str(m)]).exit_code == 2  # no person_id column
    assert runner.invoke(app, ["check", str(tmp_path), "--manifest", str(m)]).exit_code == 2
    assert runner.invoke(app, ["check", str(tmp_path), "--map", "person_id=name"]).exit_code == 2


@needs_models
def test_map_renames_columns(tmp_path):
    from .conftest import SAMPLES

    shutil.copy(SAMPLES / "grace_hopper.jpg", tmp_path / "gh.jpg")
    m = tmp_path / "hr.csv"
    m.write_text("EmployeeID;Full Name;Photo;Dept\nE1;Grace Hopper;gh.jpg;Navy\n")
    report = tmp_path / "r.jsonl"
    res = runner.invoke(app, ["check", "-m", str(m), "--map", "person_id=EmployeeID,person_name=Full Name",
                              "--map", "image=Photo", "--report", str(report)])
    assert res.exit_code == 0, res.output
    person = [json.loads(l) for l in report.read_text().splitlines()][-1]
    assert person["person_id"] == "E1" and person["person_name"] == "Grace Hopper"
