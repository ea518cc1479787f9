"""What facecli says must be true (issue 15): usage errors that name the mistake, idempotent
collection creation, the face payload a target re-detects, every setting's precedence."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.config import CONFIG_KEYS, ENV_VARS, Settings

from .conftest import DATASETS, SAMPLES, needs_data, needs_models

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_config_typos_are_usage_errors_with_a_did_you_mean(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('presett = "opencv-fr"\n')
    for cmd in (["check", SAMPLES], ["runs", "list"], ["models", "list"], ["collections", "list"]):
        res = invoke(*cmd, "--config", cfg)
        assert res.exit_code == 2, (cmd, res.output)
        text = " ".join(res.stderr.split())  # rich wraps long lines
        assert "unknown setting 'presett'" in text and "did you mean 'preset'" in text
    assert not (tmp_path / "journal.db").exists()
    cfg.write_text('db = "x.db"\nmulti_face = "largest"\nretries = 2\n[thresholds]\nmin_sharpness = 10\n')
    assert Settings(config_path=cfg).get("retries") == 2  # known keys (and the thresholds table) pass


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_a_models_dir_that_does_not_exist_is_a_usage_error(tmp_path, monkeypatch, how):
    nope = tmp_path / "nope"
    args = ["check", SAMPLES / "grace_hopper.jpg"]
    if how == "flag":
        args += ["--models-dir", nope]
    elif how == "env":
        monkeypatch.setenv("FACECLI_MODELS_DIR", str(nope))
    else:
        monkeypatch.delenv("FACECLI_MODELS_DIR", raising=False)
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'models_dir = "{nope}"\n')
        args += ["--config", cfg]
    res = invoke(*args)
    assert res.exit_code == 2 and "no such directory" in res.stderr and str(nope) in res.stderr
    expected = {"flag": "--models-dir", "env": "FACECLI_MODELS_DIR", "config": "config file models_dir"}[how]
    assert expected in res.stderr
    res = invoke("models", "list", *(args[2:]))
    assert res.exit_code == 2 and "no such directory" in res.stderr


def test_collections_create_is_idempotent(tmp_path):
    db = tmp_path / "g.db"
    res = invoke("collections", "create", "staff", "--db", db)
    assert res.exit_code == 0 and "created collection staff" in res.stdout
    res = invoke("collections", "create", "staff", "--db", db)
    assert res.exit_code == 0, res.output
    assert "already exists: nothing to do" in res.stdout
    names = [c["name"] for c in json.loads(invoke("collections", "list", "--db", db, "--json").stdout)["collections"]]
    assert names.count("staff") == 1
    assert invoke("collections", "create", "..", "--db", db).exit_code == 2


@needs_models
def test_runs_show_says_when_a_prefix_is_ambiguous(tmp_path):
    assert invoke("check", SAMPLES / "grace_hopper.jpg", "-q").exit_code == 0
    assert invoke("check", SAMPLES / "grace_hopper.jpg", "-q").exit_code == 0
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert len(runs) == 2
    res = invoke("runs", "show", "20")
    assert res.exit_code == 2 and "2 runs start with '20'" in res.stderr and runs[0]["run_id"] in res.stderr
    assert invoke("runs", "show", runs[1]["run_id"], "--json").exit_code == 0
    res = invoke("runs", "show", "19")
    assert res.exit_code == 2 and "no run matches '19'" in res.stderr


def test_every_environment_setting_beats_the_config_file_and_loses_to_its_flag(tmp_path, monkeypatch):
    """The one precedence rule, for every setting that has an environment variable."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("".join(f'{name} = "from-config"\n' for name in ENV_VARS))
    for name, var in ENV_VARS.items():
        assert name in CONFIG_KEYS
        monkeypatch.delenv(var, raising=False)
        assert Settings(config_path=cfg).get(name) == "from-config", name
        assert Settings(config_path=cfg).source(name) == f"config file {name}"
        monkeypatch.setenv(var, "from-env")
        assert Settings(config_path=cfg).get(name) == "from-env", name
        assert Settings(config_path=cfg).source(name) == var
        assert Settings({name: "from-flag"}, config_path=cfg).get(name) == "from-flag", name
        assert Settings({name: "from-flag"}, config_path=cfg).level(name) == 0


LFW = DATASETS / "lfw-view1" / "images"
# LFW photos whose plain face crop (the face at 40% of the width) let a neighbour's face in, so the
# OpenCV FR-style one-face rule of `facecli serve` refused them (found by bench/payload.py).
CROWDED = ["Adam_Sandler/Adam_Sandler_0004.jpg", "Charles_Grassley/Charles_Grassley_0001.jpg"]


@needs_models
@needs_data
def test_the_face_payload_holds_only_the_accepted_face(tmp_path):
    from facecli.imaging.encode import PayloadSpec, payload_jpeg
    from facecli.pipeline.check import CheckConfig, FaceChecker
    from facecli.server.app import analyse

    from .conftest import MODELS

    checker = FaceChecker.open(CheckConfig(models_dir=MODELS, payload=PayloadSpec(), keep_images=True))
    for rel in CROWDED:
        r = checker.check_path(LFW / rel)
        assert r.accepted and r.payload, (rel, r.message)
        assert analyse(checker, r.payload, strict=True).code is None  # what facecli serve decides
        plain = payload_jpeg(r.image.rgb, r.face.box / r.image.scale, PayloadSpec())
        assert analyse(checker, plain, strict=True).code == "ERR_MULTIPLE_FACES_DETECTED", \
            "the former plain crop no longer fails: pick another CROWDED photo with bench/payload.py"


def test_missing_models_are_named_together_with_the_one_command_that_fixes_them(tmp_path, monkeypatch):
    empty = tmp_path / "models"
    empty.mkdir()
    monkeypatch.setenv("FACECLI_MODELS_DIR", str(empty))
    res = invoke("check", SAMPLES / "grace_hopper.jpg")
    assert res.exit_code == 2
    text = " ".join(res.stderr.split())
    assert "yunet" in text and "dlib-resnet" in text, text  # both, not the first one only
    assert "facecli models fetch" in text and "facecli models import DIR" in text
    assert "../shared" not in text and "tests use" not in text


@needs_models
def test_rejections_state_the_measured_value_and_the_limit(tmp_path):
    report = tmp_path / "r.jsonl"
    invoke("check", SAMPLES, "--no-journal", "--report", report, "-q")
    lines = {json.loads(l)["path"].rsplit("/", 1)[-1]: json.loads(l) for l in report.read_text().splitlines()
             if json.loads(l)["kind"] == "image"}
    assert "sharpness 4.7 < 20 (min_sharpness)" in lines["blurred.jpg"]["message"]
    assert "brightness" in lines["dark.jpg"]["message"] and "< 45 (min_brightness)" in lines["dark.jpg"]["message"]
    assert "image 60x70 < 80x80" in lines["tiny.jpg"]["message"]
    assert "no face with detector score >= 0.8" in lines["no_face.jpg"]["message"]
    assert "2 faces (1 of similar size" in lines["two_faces.jpg"]["message"]
    for line in lines.values():
        if line["status"] == "rejected":
            assert line["message"], line
