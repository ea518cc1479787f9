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
