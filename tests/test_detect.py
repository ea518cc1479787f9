import cv2
import numpy as np
import pytest

from facecli.imaging.decode import decode_image
from facecli.vision.detect import Detector
from facecli.vision.models import YUNET, ResolvedModel

from .conftest import DATASETS, MODELS, needs_data, needs_models

IMAGES = [
    DATASETS / "compreface-samples" / "011_3.jpg",
    DATASETS / "compreface-samples" / "001_A.jpg",
    DATASETS / "deepface-pairs" / "couple.jpg",
]


def _reference(rgb: np.ndarray) -> np.ndarray:
    """cv2.FaceDetectorYN on the same <= 640 px image, boxes in that image's pixels."""
    h, w = rgb.shape[:2]
    r = min(1.0, 640 / max(h, w))
    small = cv2.resize(rgb, (round(w * r), round(h * r)), interpolation=cv2.INTER_AREA) if r < 1 else rgb
    yn = cv2.FaceDetectorYN.create(str(MODELS / "face_detection_yunet_2023mar.onnx"), "", (small.shape[1], small.shape[0]), 0.8, 0.3, 5000)
    _, faces = yn.detect(np.ascontiguousarray(small[:, :, ::-1]))
    boxes = np.zeros((0, 4)) if faces is None else faces[:, :4] / r
    return boxes[np.argsort(boxes[:, 0])]


@needs_models
@needs_data
@pytest.mark.parametrize("file_index", [0, 1])
def test_matches_cv2_facedetectoryn(file_index):
    mf = YUNET.files[file_index]  # dynamic-input 2026may and fixed-640 2023mar
    det = Detector(ResolvedModel(YUNET, mf, MODELS / mf.file), threads=2)
    for path in IMAGES:
        rgb = decode_image(path).rgb
        ours = np.array(sorted((f.box for f in det.detect(rgb)), key=lambda b: b[0]))
        ref = _reference(rgb)
        assert len(ours) == len(ref) > 0, path.name
        if mf.input_kind == "dynamic" or max(rgb.shape[:2]) >= 640:
            assert np.abs(ours - ref).max() <= 2.0, path.name
        else:  # the fixed 640x640 letterbox sees a different padding: same faces, close boxes
            assert np.abs(ours - ref).max() <= 6.0, path.name


@needs_models
@needs_data
def test_landmarks_are_in_order_and_inside_the_box():
    det = Detector(ResolvedModel(YUNET, YUNET.files[0], MODELS / YUNET.files[0].file), threads=1)
    face = det.detect(decode_image(DATASETS / "deepface-pairs" / "img1.jpg").rgb)[0]
    x, y, w, h = face.box
    le, re, nose, lm, rm = face.landmarks
    assert le[0] < re[0] and lm[0] < rm[0]  # image-left before image-right
    assert le[1] < nose[1] < lm[1]  # eyes above nose above mouth
    assert (face.landmarks[:, 0] > x).all() and (face.landmarks[:, 0] < x + w).all()
    assert 0.8 <= face.score <= 1.0


@needs_models
def test_recognizer_graph_cache_gives_identical_embeddings(tmp_path, monkeypatch):
    from facecli.vision.embed import Recognizer
    from facecli.vision.models import resolve_model
    from facecli.vision.runtime import optimized_cache_path

    model = resolve_model("dlib-resnet", models_dir=MODELS)
    crops = np.random.default_rng(0).integers(0, 255, (3, 150, 150, 3), dtype=np.uint8)
    first = Recognizer(model, threads=1)  # builds the cache
    cached = optimized_cache_path(model.path, model.file.sha256)
    assert cached.is_file()
    second = Recognizer(model, threads=1)  # loads from it
    assert np.abs(first.embed(crops) - second.embed(crops)).max() < 1e-5
    cached.write_bytes(b"garbage")  # a damaged entry is dropped, not fatal
    third = Recognizer(model, threads=1)
    assert np.abs(first.embed(crops) - third.embed(crops)).max() < 1e-5
