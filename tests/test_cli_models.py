"""`facecli models list|fetch|import|verify` through the CLI (no network: a local HTTP server)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.vision import models as reg

from .conftest import MODELS, SAMPLES, needs_models
from .test_models import DLIB, JSON_KEYS, YUNET_2023, YUNET_2026, server  # noqa: F401  (server: fixture)

runner = CliRunner()


@pytest.fixture
def env_dir(monkeypatch, tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("FACECLI_MODELS_DIR", str(d))
    return d


def test_list_json_has_one_stable_entry_per_registry_file(env_dir):
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert list(doc) == ["models"]
    assert [(m["name"], m["file"]) for m in doc["models"]] == [
        (s.name, mf.file) for s in reg.REGISTRY.values() for mf in s.files]
    for m in doc["models"]:
        assert set(m) == JSON_KEYS
        assert m["status"] == "missing" and m["path"] is None
        assert isinstance(m["size"], int) and len(m["sha256"]) == 64
    assert runner.invoke(app, ["models", "list", "--json"]).stdout == res.stdout


@needs_models
def test_list_shows_status_and_resolved_path(env_dir):
    shutil.copy(MODELS / DLIB, env_dir / DLIB)
    doc = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    dlib = next(m for m in doc["models"] if m["file"] == DLIB)
    assert dlib["status"] == "present" and dlib["path"] == str(env_dir / DLIB)
    text = runner.invoke(app, ["models", "list"]).stdout
    assert "dlib-resnet" in text and "present" in text and "not validated in CI" in text


@needs_models
def test_verify_exit_codes(env_dir):
    for name in (YUNET_2026, DLIB):
        shutil.copy(MODELS / name, env_dir / name)
    ok = runner.invoke(app, ["models", "verify"])
    assert ok.exit_code == 0, ok.output
    (env_dir / YUNET_2023).write_bytes((MODELS / YUNET_2023).read_bytes()[:5000])  # truncated copy
    bad = runner.invoke(app, ["models", "verify"])
    assert bad.exit_code == 1
    assert "corrupt" in bad.stderr and YUNET_2023 in bad.stderr
    doc = json.loads(runner.invoke(app, ["models", "verify", "--json"]).stdout)
    assert doc["ok"] is False
    assert {(f["file"], f["status"]) for f in doc["files"]} == {
        (YUNET_2026, "present"), (DLIB, "present"), (YUNET_2023, "corrupt")}


def test_verify_fails_when_a_default_model_is_missing(env_dir):
    res = runner.invoke(app, ["models", "verify"])
    assert res.exit_code == 1
    assert "facecli models fetch" in res.stderr


@needs_models
def test_import_refuses_a_wrong_hash_and_names_it(tmp_path):
    src = tmp_path / "usb"
    src.mkdir()
    shutil.copy(MODELS / YUNET_2026, src / YUNET_2026)
    (src / DLIB).write_bytes((MODELS / DLIB).read_bytes()[:-100])
    res = runner.invoke(app, ["models", "import", str(src)])
    assert res.exit_code == 1
    assert "refused" in res.stderr and DLIB in res.stderr
    assert (reg.user_models_dir() / YUNET_2026).is_file()
    assert not (reg.user_models_dir() / DLIB).exists()


def test_import_of_a_folder_without_models_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["models", "import", str(tmp_path)])
    assert res.exit_code == 2 and "no model files" in res.stderr


@needs_models
def test_fetch_from_a_mirror_then_check_runs_without_facecli_models_dir(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("FACECLI_MODELS_DIR", raising=False)
    server.files[YUNET_2023] = (MODELS / YUNET_2023).read_bytes()
    res = runner.invoke(app, ["models", "fetch", "yunet", "--mirror", server.url])
    assert res.exit_code == 0, res.output
    assert "downloaded" in res.stdout and (reg.user_models_dir() / YUNET_2023).is_file()
    # dlib-resnet from an offline copy, as on an air-gapped machine
    usb = tmp_path / "usb"
    usb.mkdir()
    shutil.copy(MODELS / DLIB, usb / DLIB)
    assert runner.invoke(app, ["models", "import", str(usb)]).exit_code == 0
    check = runner.invoke(app, ["check", str(SAMPLES / "grace_hopper.jpg"), "--json"])
    assert check.exit_code == 0, check.output


def test_fetch_reports_a_hash_mismatch(server, tmp_path):  # noqa: F811
    server.files[YUNET_2023] = b"not the model" * 100
    res = runner.invoke(app, ["models", "fetch", "yunet", "--mirror", server.url, "--dest", str(tmp_path)])
    assert res.exit_code == 1
    assert YUNET_2023 in res.stderr and "sha256" in res.stderr
    assert not list(tmp_path.iterdir()) or all(p.name.startswith(".") for p in tmp_path.iterdir())


def test_fetch_unknown_model_is_a_usage_error():
    res = runner.invoke(app, ["models", "fetch", "buffalo_l"])
    assert res.exit_code == 2 and "unknown model" in res.stderr
