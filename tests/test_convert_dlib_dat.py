"""The dlib .dat -> ONNX converter (full-precision dlib-resnet), when dlib's file is at hand.

Nothing downloads: the test runs where ``face_recognition_models`` (CC0) is installed, or where
``FACECLI_DLIB_DAT`` names dlib_face_recognition_resnet_model_v1.dat; otherwise it skips.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from facecli.errors import ModelError
from facecli.vision import convert_dlib_dat

from .conftest import SAMPLES


def _dat() -> Path | None:
    env = os.environ.get("FACECLI_DLIB_DAT")
    if env:
        return Path(env) if Path(env).is_file() else None
    return convert_dlib_dat.default_dat()


DAT = _dat()
needs_dat = pytest.mark.skipif(
    DAT is None, reason="dlib_face_recognition_resnet_model_v1.dat not available "
    "(pip install face_recognition_models, or set FACECLI_DLIB_DAT)")


def test_garbage_is_refused_with_a_clear_error():
    with pytest.raises(ModelError, match="not a dlib face-recognition network"):
        convert_dlib_dat.parse_dat(b"\x00" * 1000)


@needs_dat
def test_parse_gives_every_layer_with_the_face_api_names_and_shapes():
    w = convert_dlib_dat.parse_dat(DAT.read_bytes())
    assert w["conv32_down/conv/filters"].shape == (7, 7, 3, 32)
    assert w["conv256_down_out/conv2/conv/filters"].shape == (3, 3, 256, 256)
    assert w["fc"].shape == (256, 128)
    assert len(w) == 29 * 4 + 1
    assert all(np.isfinite(v.data).all() and v.data.dtype == np.float32 for v in w.values())


@needs_dat
def test_built_model_matches_the_8bit_model_and_is_deterministic(checker, tmp_path):
    pytest.importorskip("onnx")
    from facecli.imaging.decode import decode_image
    from facecli.vision.align import align_face
    from facecli.vision.embed import Recognizer
    from facecli.vision.models import DEFAULT_RECOGNIZER, resolve_model

    data = DAT.read_bytes()
    onnx_bytes = convert_dlib_dat.build_model(data)
    assert convert_dlib_dat.build_model(data) == onnx_bytes
    out = tmp_path / convert_dlib_dat.OUTPUT_FILE
    out.write_bytes(onnx_bytes)
    f32 = Recognizer(resolve_model(DEFAULT_RECOGNIZER, out, None), threads=1, flip=checker.recognizer.flip)
    r = checker.check_path(SAMPLES / "grace_hopper.jpg")
    image = decode_image(SAMPLES / "grace_hopper.jpg", checker.config.limits)
    crop = align_face(image.rgb, r.face.landmarks / image.scale)
    a = checker.recognizer.embed(crop)[0]
    b = f32.embed(crop)[0]
    assert float(a @ b) > 0.999  # the same network; only the 8-bit rounding differs
