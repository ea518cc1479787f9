"""The model registry: which ONNX files facecli runs, how to recognise them and where to find them.

Files are named explicitly and pinned by sha256. A model's kind and preprocessing come from this
registry, never from guessing at its input shape.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from facecli.errors import ModelError

MODELS_DIR_ENV = "FACECLI_MODELS_DIR"


@dataclass(frozen=True)
class ModelFile:
    """One acceptable file for a model (a model may have several equivalent exports)."""

    file: str
    sha256: str
    size: int
    #: "dynamic": any H, W (multiples of 32); "fixed": exactly ``input_size``.
    input_kind: str
    input_size: tuple[int, int] | None = None  # (width, height) when fixed
    url: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: str  # "detector" | "recognizer"
    license: str
    files: tuple[ModelFile, ...]  # in order of preference
    description: str


YUNET = ModelSpec(
    name="yunet",
    role="detector",
    license="MIT (OpenCV Zoo, Shiqi Yu)",
    files=(
        ModelFile(
            file="face_detection_yunet_2026may.onnx",
            sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
            size=229738,
            input_kind="dynamic",
        ),
        ModelFile(
            file="face_detection_yunet_2023mar.onnx",
            sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            size=232589,
            input_kind="fixed",
            input_size=(640, 640),
            url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        ),
    ),
    description="YuNet face detector: boxes, 5 landmarks, scores",
)

DLIB_RESNET = ModelSpec(
    name="dlib-resnet",
    role="recognizer",
    license="MIT (face-api port) / CC0 (dlib weights)",
    files=(
        ModelFile(
            file="dlib_resnet_faceapi_rec_u8.onnx",
            sha256="c2dcfaad2df8c8461764d5cc454d54f3aff679cc5f4fc6d55b754f4f655b3da8",
            size=6482347,
            input_kind="fixed",
            input_size=(150, 150),
        ),
    ),
    description="dlib ResNet-29 metric network, 128-d embedding (RGB 0..255, 150x150 aligned)",
)

REGISTRY: dict[str, ModelSpec] = {m.name: m for m in (YUNET, DLIB_RESNET)}
DEFAULT_DETECTOR = YUNET.name
DEFAULT_RECOGNIZER = DLIB_RESNET.name


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    file: ModelFile
    path: Path


def user_models_dir() -> Path:
    return Path(platformdirs.user_cache_dir("facecli")) / "models"


def search_dirs(models_dir: str | Path | None = None) -> list[Path]:
    """Directories searched, in order: explicit option, FACECLI_MODELS_DIR, the user cache dir."""
    dirs: list[Path] = []
    if models_dir:
        dirs.append(Path(models_dir))
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        dirs.append(Path(env))
    dirs.append(user_models_dir())
    return dirs


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_status(path: Path, mf: ModelFile) -> str:
    """"present" (hash verified), "missing" or "corrupt"."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != mf.size or sha256_file(path) != mf.sha256:
        return "corrupt"
    return "present"


def _missing_hint(spec: ModelSpec) -> str:
    names = ", ".join(f.file for f in spec.files)
    return (
        f"put {names} in a folder and set {MODELS_DIR_ENV} to it (tests use ../shared/models), "
        f"or run `facecli models fetch {spec.name}` / `facecli models import DIR`"
    )


def resolve_model(name: str, path: str | Path | None = None, models_dir: str | Path | None = None) -> ResolvedModel:
    """Find a verified file for model ``name``; raise :class:`ModelError` naming the fix."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}", hint=f"known models: {', '.join(REGISTRY)}")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"model file not found: {p}")
        digest = sha256_file(p)
        for mf in spec.files:
            if mf.sha256 == digest:
                return ResolvedModel(spec, mf, p)
        # An explicit, unknown file: trust the user, assume the first (preferred) file's contract.
        return ResolvedModel(spec, spec.files[0], p)
    corrupt: list[Path] = []
    for d in search_dirs(models_dir):
        for mf in spec.files:
            p = d / mf.file
            status = file_status(p, mf)
            if status == "present":
                return ResolvedModel(spec, mf, p)
            if status == "corrupt":
                corrupt.append(p)
    if corrupt:
        raise ModelError(
            f"model {name}: file(s) fail the sha256 check: {', '.join(map(str, corrupt))}",
            hint=_missing_hint(spec),
        )
    searched = ", ".join(str(d) for d in search_dirs(models_dir))
    raise ModelError(f"model {name} not found (searched {searched})", hint=_missing_hint(spec))
