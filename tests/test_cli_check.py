"""`facecli check` end to end through the CLI (typer's CliRunner, real models and photos)."""

import csv
import json
import shutil

from typer.testing import CliRunner

from facecli.cli.app import app

from .conftest import DATASETS, SAMPLES, needs_data, needs_models

runner = CliRunner()


@needs_models
def test_check_sample_images_json_summary_and_report(tmp_path):
    report = tmp_path / "report.jsonl"
    res = runner.invoke(app, ["check", str(SAMPLES), "--json", "--report", str(report)])
    assert res.exit_code == 1, res.output
    summary = json.loads(res.stdout)
    assert summary["command"] == "check"
    assert summary["images"]["accepted"] == 3 and summary["images"]["failed"] == 1
    assert summary["reasons"]["MULTIPLE_FACES"] == 1 and summary["reasons"]["NO_FACE"] == 1
    lines = [json.loads(l) for l in report.read_text().splitlines()]
    images = [l for l in lines if l["kind"] == "image"]
    persons = [l for l in lines if l["kind"] == "person"]
    assert len(images) == 9 and len(persons) == 8  # grace_hopper has two images
    gh = next(l for l in images if l["path"].endswith("grace_hopper.jpg"))
    assert gh["status"] == "accepted" and gh["person_id"] == "grace_hopper" and gh["faces"] == 1
    assert len(gh["box"]) == 4 and len(gh["landmarks"]) == 5 and gh["det_score"] > 0.8
    assert {"sharpness", "brightness", "yaw", "pitch", "roll", "face_size"} <= set(gh["quality"])


@needs_models
def test_check_all_good_exits_0_and_prints_tables(tmp_path):
    for n in ("grace_hopper.jpg", "astronaut.jpg"):
        shutil.copy(SAMPLES / n, tmp_path / n)
    res = runner.invoke(app, ["check", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "accepted" in res.stdout and "2" in res.stdout


@needs_models
@needs_data
def test_check_formats_folder_continues_and_exits_1(tmp_path):
    report = tmp_path / "r.csv"
    res = runner.invoke(app, ["check", str(DATASETS / "formats"), "--report", str(report), "--json"])
    assert res.exit_code == 1
    rows = list(csv.DictReader(report.open(newline="")))
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows if r["kind"] == "image"}
    assert len(by_name) == 10
    assert by_name["truncated.jpg"]["status"] == "failed" and by_name["truncated.jpg"]["reasons"] == "DECODE_ERROR"
    assert by_name["empty.png"]["reasons"] == "UNSUPPORTED_FORMAT"


@needs_models
def test_preset_and_threshold_flags_change_the_verdict(tmp_path):
    shutil.copy(SAMPLES / "grace_hopper.jpg", tmp_path / "gh.jpg")
    assert runner.invoke(app, ["check", str(tmp_path), "-q"]).exit_code == 0
    res = runner.invoke(app, ["check", str(tmp_path), "--json", "--preset", "opencv-fr-liveness"])
    assert res.exit_code == 1 and "IMAGE_TOO_SMALL" in json.loads(res.stdout)["reasons"]
    res = runner.invoke(app, ["check", str(tmp_path), "--json", "-t", "min_sharpness=100000"])
    assert res.exit_code == 1 and json.loads(res.stdout)["reasons"] == {"LOW_SHARPNESS": 1}


@needs_models
def test_config_file_thresholds_and_flag_precedence(tmp_path, monkeypatch):
    shutil.copy(SAMPLES / "grace_hopper.jpg", tmp_path / "gh.jpg")
    cfg = tmp_path / "facecli.toml"
    cfg.write_text("[thresholds]\nmin_sharpness = 100000\n")
    monkeypatch.setenv("FACECLI_CONFIG", str(cfg))
    assert runner.invoke(app, ["check", str(tmp_path), "-q"]).exit_code == 1
    assert runner.invoke(app, ["check", str(tmp_path), "-q", "-t", "min_sharpness=1"]).exit_code == 0


def test_usage_errors_exit_2(tmp_path):
    assert runner.invoke(app, ["check", str(tmp_path / "missing")]).exit_code == 2
    assert runner.invoke(app, ["check", str(tmp_path), "-t", "bogus=1"]).exit_code == 2
    assert runner.invoke(app, ["check", str(tmp_path), "-t", "novalue"]).exit_code == 2
    assert runner.invoke(app, ["check", str(tmp_path), "--preset", "nope"]).exit_code == 2
    assert runner.invoke(app, ["check", "--bogus-flag"]).exit_code == 2


def test_missing_models_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FACECLI_MODELS_DIR", str(tmp_path / "empty"))
    res = runner.invoke(app, ["check", str(SAMPLES)])
    assert res.exit_code == 2
    assert "FACECLI_MODELS_DIR" in res.stderr and "facecli models fetch" in res.stderr


def _image_lines(report):
    return [json.loads(l) for l in report.read_text().splitlines() if json.loads(l)["kind"] == "image"]


@needs_models
def test_multi_face_largest_accepts_with_a_warning_and_the_default_rejects(tmp_path):
    shutil.copy(SAMPLES / "two_faces.jpg", tmp_path / "two_faces.jpg")
    report = tmp_path / "r.jsonl"
    res = runner.invoke(app, ["check", str(tmp_path), "-q", "--no-journal", "--report", str(report)])
    assert res.exit_code == 1
    (line,) = _image_lines(report)
    assert line["status"] == "rejected" and line["reasons"] == ["MULTIPLE_FACES"] and line["warnings"] == []
    assert "2 faces (1 of similar size: 0.9" in line["message"]
    res = runner.invoke(app, ["check", str(tmp_path), "--json", "--no-journal", "--multi-face", "largest",
                              "--report", str(report)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"]["accepted"] == 1
    (line,) = _image_lines(report)
    assert line["status"] == "accepted" and line["reasons"] == [] and line["warnings"] == ["MULTIPLE_FACES"]
    assert line["faces"] == 2 and len(line["other_faces"]) == 1 and line["other_faces"][0]["size_ratio"] > 0.9


@needs_models
def test_multi_face_from_the_config_file_and_the_run_ledger_keeps_the_warning(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SAMPLES / "two_faces.jpg", photos / "two_faces.jpg")
    cfg = tmp_path / "facecli.toml"
    cfg.write_text('multi_face = "largest"\n')
    monkeypatch.setenv("FACECLI_CONFIG", str(cfg))
    report = tmp_path / "r.jsonl"
    for _ in range(2):  # the second run reads the check from the ledger's cache
        assert runner.invoke(app, ["check", str(photos), "-q", "--report", str(report)]).exit_code == 0
        assert _image_lines(report)[0]["warnings"] == ["MULTIPLE_FACES"]
    # a flag wins over the config file, and the cached 'largest' verdict is not reused for it
    assert runner.invoke(app, ["check", str(photos), "-q", "--multi-face", "reject"]).exit_code == 1
    cfg.write_text('multi_face = "first"\n')
    res = runner.invoke(app, ["check", str(photos), "-q"])
    assert res.exit_code == 2 and "multi_face" in res.stderr


def test_multi_face_help_shows_the_choices():
    for cmd in ("check", "enroll"):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert "[reject|largest]" in res.stdout, cmd
    assert runner.invoke(app, ["check", ".", "--multi-face", "first"]).exit_code == 2
