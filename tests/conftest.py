"""Shared fixtures: the real models and datasets in ../shared, skipped cleanly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACECLI_SHARED", REPO.parent / "shared"))
MODELS = Path(os.environ.get("FACECLI_MODELS_DIR", SHARED / "models"))
DATASETS = SHARED / "datasets"
SAMPLES = REPO / "sample_images"

_no_models = not (MODELS / "dlib_resnet_faceapi_rec_u8.onnx").is_file()
_no_data = not DATASETS.is_dir()

needs_models = pytest.mark.skipif(_no_models, reason=f"model files not found in {MODELS} (../shared/models is absent)")
needs_data = pytest.mark.skipif(_no_data, reason=f"{DATASETS} is absent (../shared/datasets not beside the repo)")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read the developer's own config, data or cache dirs."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("FACECLI_CONFIG", raising=False)
    monkeypatch.delenv("FACECLI_API_KEY", raising=False)
    if MODELS.is_dir():
        monkeypatch.setenv("FACECLI_MODELS_DIR", str(MODELS))


@pytest.fixture(scope="session")
def checker():
    if _no_models:
        pytest.skip(f"model files not found in {MODELS}")
    from facecli.pipeline.check import CheckConfig, FaceChecker

    return FaceChecker.open(CheckConfig(models_dir=MODELS, threads=2))
