import csv
import json

from facecli.errors import ReasonCode, Status
from facecli.pipeline.report import ItemResult, PersonResult, RunSummary, open_report, spreadsheet_safe


def test_spreadsheet_safe():
    for bad in ("=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(bad).startswith("'")
    assert spreadsheet_safe("alice") == "alice"


def test_jsonl_and_csv_reports(tmp_path):
    summary = RunSummary(command="check")
    item = ItemResult("=evil.jpg", "=HYPERLINK(1)", Status.REJECTED, [ReasonCode.NO_FACE, ReasonCode.IMAGE_TOO_SMALL], "m")
    person = PersonResult("p1", "P One", Status.REJECTED, [ReasonCode.NO_ACCEPTED_IMAGE], 1, 0)
    for name in ("r.jsonl", "r.csv"):
        w = open_report(tmp_path / name)
        w.write_item(item)
        w.write_person(person)
        w.close(summary)
    lines = [json.loads(l) for l in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "image" and lines[0]["reasons"] == ["NO_FACE", "IMAGE_TOO_SMALL"]
    assert lines[1] == {**lines[1], "kind": "person", "person_id": "p1", "status": "rejected"}
    rows = list(csv.DictReader((tmp_path / "r.csv").open(newline="")))
    assert rows[0]["path"] == "'=evil.jpg" and rows[0]["person_id"] == "'=HYPERLINK(1)"
    assert rows[0]["reasons"] == "NO_FACE;IMAGE_TOO_SMALL" and rows[1]["kind"] == "person"
    # person rows are complete: every key of the JSON line has its column
    assert set(lines[1]) <= set(rows[1]) and set(lines[0]) - {"quality"} <= set(rows[0])
    assert (rows[1]["person_name"], rows[1]["images"], rows[1]["accepted_images"]) == ("P One", "1", "0")
    assert rows[1]["path"] == "" and rows[0]["images"] == ""  # a field the line does not have is empty


def test_csv_cells_flatten_quality_and_keep_numbers(tmp_path):
    from facecli.pipeline.check import ImageCheck
    from facecli.pipeline.report import CSV_COLUMNS, QUALITY_KEYS, csv_cell

    check = ImageCheck(path="a.jpg", status=Status.ACCEPTED, faces=1,
                       quality={"face_size": 120.0, "yaw": -8.25, "sharpness": 301.5})
    person = PersonResult("p1", "P", Status.ENROLLED, images=1, accepted_images=1, action="created",
                          duplicates=[{"other_person_id": "p2", "score": 0.95, "where": "run"}])
    w = open_report(tmp_path / "r.csv")
    w.write_item(ItemResult("a.jpg", "p1", Status.ACCEPTED, check=check))
    w.write_person(person)
    w.close(RunSummary(command="check"))
    reader = csv.DictReader((tmp_path / "r.csv").open(newline=""))
    rows = list(reader)
    assert reader.fieldnames == list(CSV_COLUMNS) and "quality" not in reader.fieldnames
    assert all(f"quality_{k}" in reader.fieldnames for k in QUALITY_KEYS)
    assert rows[0]["quality_yaw"] == "-8.25" and rows[0]["quality_face_size"] == "120.0"  # no formula quote
    assert rows[0]["quality_roll"] == ""  # not measured
    assert rows[1]["action"] == "created" and json.loads(rows[1]["duplicates"])[0]["other_person_id"] == "p2"
    assert csv_cell([1.0, 2.5]) == "[1.0,2.5]" and csv_cell(["A", "B"]) == "A;B" and csv_cell(None) == ""
    assert csv_cell({"k": "=1"}) == '{"k":"=1"}' and csv_cell("-x") == "'-x" and csv_cell(True) == "true"


def test_summary_json_contract():
    s = RunSummary(command="check")
    s.add_item(ItemResult("a", "p", Status.ACCEPTED))
    s.add_item(ItemResult("b", "p", Status.FAILED, [ReasonCode.DECODE_ERROR]))
    s.finish()
    j = s.to_json()
    assert set(j) >= {"run_id", "command", "target", "collection", "images", "persons", "reasons", "duration_s", "retries"}
    assert j["images"] == {"accepted": 1, "rejected": 0, "failed": 1, "skipped": 0, "enrolled": 0}
    assert j["reasons"] == {"DECODE_ERROR": 1}
    assert s.problems == 1
