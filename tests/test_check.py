"""Acceptance tests of the check stage on real photos and the real models."""

import csv
import json

import cv2
import numpy as np
import pytest

from facecli.errors import ReasonCode, Status
from facecli.vision.embed import MATCH_THRESHOLD, similarity

from .conftest import DATASETS, SAMPLES, needs_data

COMPREFACE = DATASETS / "compreface-samples"
PAIRS = DATASETS / "deepface-pairs"


@needs_data
def test_compreface_samples_agree_with_annotations(checker):
    truth = json.loads((COMPREFACE / "annotations.json").read_text())["images"]
    names = sorted(truth)
    results = list(checker.check_paths(COMPREFACE / n for n in names))
    assert [r.path for r in results] == [str(COMPREFACE / n) for n in names]  # input order kept
    agree = 0
    for name, r in zip(names, results):
        n = truth[name]["faces"]
        if n == 1:
            ok = r.status == Status.ACCEPTED and r.embedding is not None
        elif n == 0:
            ok = r.reasons == [ReasonCode.NO_FACE]
        else:
            ok = ReasonCode.MULTIPLE_FACES in r.reasons
        agree += ok
        assert ok, (name, n, r.status, r.reasons, r.faces)
    assert agree == 18


@needs_data
@pytest.mark.parametrize("name", ["couple.jpg", "selfie-many-people.jpg"])
def test_group_photos_are_multiple_faces(checker, name):
    r = checker.check_path(PAIRS / name)
    assert ReasonCode.MULTIPLE_FACES in r.reasons and r.faces >= 2


@needs_data
def test_formats_folder_each_file_gets_a_verdict(checker):
    files = sorted((DATASETS / "formats").iterdir())
    results = {r.path.rsplit("/", 1)[-1]: r for r in checker.check_paths(files)}
    assert len(results) == 10
    for ext in ("bmp", "gif", "ico", "jpeg", "png", "tiff", "webp"):
        assert ReasonCode.DECODE_ERROR not in results[f"einstein.{ext}"].reasons
        assert results[f"einstein.{ext}"].faces == 1
    for bad in ("corrupted.png", "empty.png", "truncated.jpg"):
        assert results[bad].status == Status.FAILED
        assert results[bad].reasons[0] in (ReasonCode.DECODE_ERROR, ReasonCode.UNSUPPORTED_FORMAT)


EXPECTED_SAMPLES = {
    "grace_hopper.jpg": [],
    "astronaut.jpg": [],
    "grace_hopper_2.jpg": [],
    "two_faces.jpg": [ReasonCode.MULTIPLE_FACES],
    "no_face.jpg": [ReasonCode.NO_FACE],
    "blurred.jpg": [ReasonCode.LOW_SHARPNESS],
    "dark.jpg": [ReasonCode.LOW_BRIGHTNESS],
    "truncated.jpg": [ReasonCode.DECODE_ERROR],
}


def test_sample_images_give_the_documented_reasons(checker):
    for name, reasons in EXPECTED_SAMPLES.items():
        assert checker.check_path(SAMPLES / name).reasons == reasons, name
    tiny = checker.check_path(SAMPLES / "tiny.jpg")
    assert ReasonCode.IMAGE_TOO_SMALL in tiny.reasons and ReasonCode.FACE_TOO_SMALL in tiny.reasons


@pytest.mark.parametrize(
    "photo",
    [
        SAMPLES / "astronaut.jpg",
        # LFW faces of ~75 px: the 150 px crop is a 2x upscale; measured on it, these two were refused
        # as LOW_SHARPNESS at 0.8x and 0.6x (sharpness 17 and 12), and 7% of LFW at full size.
        DATASETS / "lfw-view1/images/Jim_Furyk/Jim_Furyk_0001.jpg",
        DATASETS / "lfw-view1/images/Tommy_Lewis/Tommy_Lewis_0001.jpg",
    ],
    ids=lambda p: p.stem,
)
def test_a_smaller_copy_of_an_accepted_photo_stays_accepted(checker, tmp_path, photo):
    if not photo.is_file():
        pytest.skip(f"{photo} is absent (../shared/datasets not beside the repo)")
    base = checker.check_path(photo)
    assert base.accepted, base.reasons
    rgb = cv2.imread(str(photo))
    for f in (0.8, 0.6):
        copy = tmp_path / f"{photo.stem}_{f}.png"
        cv2.imwrite(str(copy), cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))
        r = checker.check_path(copy)
        assert r.accepted, (f, r.reasons, r.quality)
        assert r.quality["sharpness"] > 0.7 * base.quality["sharpness"], f


def test_exif_rotated_photo_is_detected_like_its_upright_original(checker):
    up = checker.check_path(SAMPLES / "grace_hopper.jpg")
    rot = checker.check_path(SAMPLES / "grace_hopper_2.jpg")  # mirrored copy stored with EXIF 6
    assert up.accepted and rot.accepted
    x, y, w, h = rot.face.box
    assert np.abs(up.face.box - [rot.width - x - w, y, w, h]).max() < 6  # mirror the box back
    assert similarity(up.embedding, rot.embedding) > 0.95


def test_coordinates_are_in_original_pixels_after_dct_scaling(checker, tmp_path):
    from PIL import Image

    big = Image.open(SAMPLES / "grace_hopper.jpg").resize((2560, 3000), Image.Resampling.LANCZOS)
    big.save(tmp_path / "big.jpg", quality=92)
    small = checker.check_path(SAMPLES / "grace_hopper.jpg")
    large = checker.check_path(tmp_path / "big.jpg")
    assert (large.width, large.height) == (2560, 3000)
    assert np.allclose(large.face.box, small.face.box * 5, rtol=0.05, atol=10)
    assert similarity(small.embedding, large.embedding) > 0.97


def test_embeddings_are_unit_vectors_and_batching_changes_nothing(checker):
    paths = [SAMPLES / "grace_hopper.jpg", SAMPLES / "astronaut.jpg", SAMPLES / "grace_hopper_2.jpg"]
    batched = [r.embedding for r in checker.check_paths(paths)]
    single = [checker.check_path(p).embedding for p in paths]
    for b, s in zip(batched, single):
        assert b.dtype == np.float32 and b.shape == (128,)
        assert np.linalg.norm(b) == pytest.approx(1.0, abs=1e-5)
        assert np.abs(b - s).max() < 1e-4


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@needs_data
def test_deepface_pairs_roc_auc_and_threshold(checker):
    rows = list(csv.DictReader((PAIRS / "master.csv").open()))
    files = sorted({r["file_x"] for r in rows} | {r["file_y"] for r in rows})
    emb = {p.rsplit("/", 1)[-1]: r.embedding for p, r in zip(map(str, (PAIRS / f for f in files)), checker.check_paths(PAIRS / f for f in files))}
    assert all(e is not None for e in emb.values())
    same = np.array([similarity(emb[r["file_x"]], emb[r["file_y"]]) for r in rows if r["Decision"] == "Yes"])
    diff = np.array([similarity(emb[r["file_x"]], emb[r["file_y"]]) for r in rows if r["Decision"] == "No"])
    assert _auc(same, diff) >= 0.99
    accuracy = ((same >= MATCH_THRESHOLD).sum() + (diff < MATCH_THRESHOLD).sum()) / (len(same) + len(diff))
    assert accuracy >= 0.97


def test_a_bad_item_never_stops_the_stream(checker, tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(b"\x00" * 100)
    paths = [tmp_path / "missing.jpg", tmp_path / "garbage.jpg", SAMPLES / "grace_hopper.jpg", tmp_path]
    results = list(checker.check_paths(paths))
    assert [r.reasons[:1] for r in results] == [[ReasonCode.FILE_NOT_FOUND], [ReasonCode.UNSUPPORTED_FORMAT], [], [ReasonCode.UNREADABLE]]
