"""Machine-readable output that lines up: the CSV report holds every JSON Lines field, every
listing's --csv holds the rows of its --json, times are ISO-8601 with a zone, `runs show` prints
tables, and `search --all-faces` names every face it found (issue 17)."""

import csv
import datetime as dt
import io
import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.pipeline.report import CSV_COLUMNS

from .conftest import SAMPLES, needs_models

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def same_cell(cell: str, value) -> bool:
    """Whether a CSV cell carries ``value`` of the JSON output (the documented cell rules)."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == ("true" if value else "false")
    if isinstance(value, (int, float)):
        return cell != "" and math.isclose(float(cell), value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return cell.lstrip("'") == ";".join(value)
    if isinstance(value, (list, dict)):
        return json.loads(cell) == value
    return cell in (value, "'" + value)  # text a spreadsheet would run is prefixed


def flatten(line: dict) -> dict:
    out = {k: v for k, v in line.items() if k != "quality"}
    out.update({f"quality_{k}": v for k, v in (line.get("quality") or {}).items()})
    return out


def read_csv(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


@pytest.fixture
def enrolled(tmp_path):
    """sample_images enrolled (group photo kept with its other face listed), with a CSV report."""
    db, report = tmp_path / "g.db", tmp_path / "r.csv"
    res = invoke("enroll", SAMPLES, "--db", db, "--create-collection", "--multi-face", "largest", "--report", report, "-q")
    assert res.exit_code == 1, res.output  # the bad samples are refused
    return db, report


@needs_models
def test_csv_report_has_a_column_for_every_jsonl_field(enrolled):
    db, report = enrolled
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    lines = json.loads(invoke("runs", "show", runs[0]["run_id"], "--json").stdout)["items"]  # the run's JSON Lines
    header, rows = read_csv(report.read_text(encoding="utf-8"))
    assert header == list(CSV_COLUMNS)  # one fixed order, whatever the run held
    assert len(rows) == len(lines) and {l["kind"] for l in lines} == {"image", "person"}
    seen = set()
    for row, line in zip(rows, lines):
        flat = flatten(line)
        seen |= set(line)
        missing = set(flat) - set(header)
        assert not missing, f"JSONL fields without a CSV column: {missing}"
        for key, value in flat.items():
            assert same_cell(row[key], value), (key, row[key], value)
        for key in set(header) - set(flat):
            assert row[key] == "", (key, row[key])  # a field the line does not have is empty
    # the run exercised the fields the old CSV lacked
    assert {"width", "height", "format", "sha256", "other_faces", "warnings", "quality", "images", "accepted_images",
            "action", "duplicates", "person_name"} <= seen
    people = [r for r in rows if r["kind"] == "person"]
    assert all(r["images"] and r["accepted_images"] for r in people)
    assert any(r["quality_sharpness"] and float(r["quality_sharpness"]) > 0 for r in rows)
    assert not any(r["quality_yaw"].startswith("'") for r in rows)  # negative numbers are not text


@needs_models
def test_every_listing_csv_has_the_rows_of_its_json(enrolled):
    db, _ = enrolled
    listings = {
        ("runs", "list"): ("runs", "run_id"),
        ("collections", "list", "--db", db): ("collections", "name"),
        ("persons", "list", "--db", db): ("persons", "person_id"),
        ("models", "list"): ("models", "file"),
    }
    for args, (key, ident) in listings.items():
        res_json, res_csv = invoke(*args, "--json"), invoke(*args, "--csv")
        assert res_json.exit_code == 0 and res_csv.exit_code == 0, (args, res_json.output, res_csv.output)
        entries = json.loads(res_json.stdout)[key]
        header, rows = read_csv(res_csv.stdout)
        assert entries and [r[ident] for r in rows] == [e[ident] for e in entries], args
        for row, entry in zip(rows, entries):
            common = [c for c in header if c in entry]
            assert ident in common and all(same_cell(row[c], entry[c]) for c in common), (args, row, entry)
            if key != "runs":  # runs: the summary and progress are flattened to counts, below
                assert set(entry) <= set(header), (args, set(entry) - set(header))
        assert invoke(*args, "--json", "--csv").exit_code == 2
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    _, rows = read_csv(invoke("runs", "list", "--csv").stdout)
    imgs = runs[0]["summary"]["images"]
    assert int(rows[0]["images"]) == sum(imgs.values()) and int(rows[0]["problems"]) == imgs["rejected"] + imgs["failed"]
    assert float(rows[0]["duration_s"]) == runs[0]["summary"]["duration_s"]


def _times(obj, path=""):
    """(path, value) of every time field, and fail on any number that looks like epoch seconds."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            counts = path.endswith((".actions", ".would"))  # persons created / updated: counts, not times
            if k in ("started", "finished", "created", "modified") and v is not None and not counts:
                yield f"{path}.{k}", v
            yield from _times(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _times(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        assert not 1e9 < obj < 1e11, f"epoch seconds at {path}: {obj}"


@needs_models
def test_no_epoch_floats_in_json_times_are_iso_with_a_zone(enrolled):
    db, _ = enrolled
    run_id = json.loads(invoke("runs", "list", "--json").stdout)["runs"][0]["run_id"]
    outputs = [invoke("runs", "list", "--json"), invoke("runs", "show", run_id, "--json"),
               invoke("collections", "list", "--db", db, "--json"), invoke("persons", "list", "--db", db, "--json")]
    found = []
    for res in outputs:
        assert res.exit_code == 0, res.output
        found += list(_times(json.loads(res.stdout)))
    assert {p.rsplit(".", 1)[-1] for p, _ in found} == {"started", "finished", "created", "modified"}
    for where, value in found:
        assert isinstance(value, str), (where, value)
        assert dt.datetime.fromisoformat(value).tzinfo is not None, (where, value)
    _, rows = read_csv(invoke("runs", "list", "--csv").stdout)
    assert dt.datetime.fromisoformat(rows[0]["started"]).tzinfo is not None


@needs_models
def test_runs_show_prints_tables(enrolled):
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    res = invoke("runs", "show", runs[0]["run_id"])
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "{'" not in text and '{"' not in text  # no dict, no JSON dump
    assert "│" in text or "┃" in text  # table borders
    for label in ("command", "target", "collection", "status", "started", "finished", "duration", "images", "reasons"):
        assert label in text, label
    assert runs[0]["started"] in text and "enroll" in text and "NO_FACE" in text and "no_face.jpg" in text
    res = invoke("runs", "show", runs[0]["run_id"], "--failed")
    assert "no_face.jpg" in res.stdout and "astronaut.jpg" not in res.stdout  # enrolled: not listed
    listed = invoke("runs", "list").stdout
    assert runs[0]["run_id"] in listed and runs[0]["started"].replace("+00:00", "Z") in listed


@needs_models
def test_runs_show_escapes_what_came_from_outside(tmp_path):
    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(SAMPLES / "no_face.jpg", photos / "evil[bold]\x1b[31m.jpg")
    invoke("check", photos, "-q")
    run_id = json.loads(invoke("runs", "list", "--json").stdout)["runs"][0]["run_id"]
    text = invoke("runs", "show", run_id).stdout
    assert "\x1b" not in text and "\\x1b" in text and "[bold]" in text


@needs_models
@pytest.mark.parametrize("enrolled_one", [True, False], ids=["one-of-two-enrolled", "none-enrolled"])
def test_search_all_faces_lists_every_face_with_or_without_a_match(tmp_path, enrolled_one):
    db = tmp_path / "g.db"
    if enrolled_one:  # grace_hopper is the left face of two_faces.jpg; the astronaut is not enrolled
        assert invoke("enroll", SAMPLES / "grace_hopper.jpg", "--db", db, "--create-collection", "-q").exit_code == 0
    else:
        assert invoke("collections", "create", "default", "--db", db).exit_code == 0
    res = invoke("search", SAMPLES / "two_faces.jpg", "--db", db, "--all-faces", "--json")
    assert res.exit_code == (0 if enrolled_one else 1), res.output
    doc = json.loads(res.stdout)
    faces = doc["faces"]
    assert [f["index"] for f in faces] == [1, 2]
    unmatched = [f for f in faces if not f["matches"]]
    assert len(unmatched) == (1 if enrolled_one else 2)
    if enrolled_one:
        matched = next(f for f in faces if f["matches"])
        assert matched["matches"][0]["person_id"] == "grace_hopper" and matched["box"][0] < 300  # the left half
        assert unmatched[0]["box"][0] > 300  # the astronaut, on the right
    text = invoke("search", SAMPLES / "two_faces.jpg", "--db", db, "--all-faces").stdout
    for f in unmatched:
        box = "(" + ", ".join(f"{v:.0f}" for v in f["box"]) + ")"
        assert f"face {f['index']} at {box}: no match above {doc['min_score']:.4f}" in " ".join(text.split()), text
    assert f"2 face(s) searched: {2 - len(unmatched)} matched, {len(unmatched)} without a match" in text
