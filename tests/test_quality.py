import cv2
import numpy as np
import pytest

from facecli.errors import ConfigError, ReasonCode
from facecli.imaging.decode import decode_image
from facecli.vision.align import DLIB_TEMPLATE_150, align_face, crop_scale, similarity_transform
from facecli.vision.detect import Face
from facecli.vision.quality import (
    PRESETS,
    Thresholds,
    crop_measurements,
    gate_crop,
    gate_faces,
    head_pose,
    other_face_verdict,
    thresholds_for,
)

from .conftest import SAMPLES


def face_at(x, y, size, score=0.95, yaw_shift=0.0):
    """A frontal face: the template landmarks scaled into a box at (x, y)."""
    lm = (DLIB_TEMPLATE_150 - [25, 25]) / 100 * size + [x, y]
    lm[2, 0] += yaw_shift * size
    return Face(np.array([x, y, size, size], np.float32), lm.astype(np.float32), score)


def test_frontal_template_has_zero_pose():
    yaw, pitch, roll = head_pose(DLIB_TEMPLATE_150)
    assert abs(yaw) < 1 and abs(pitch) < 1 and abs(roll) < 1


def test_pose_estimates_grow_with_turn_and_tilt():
    yaws = [abs(head_pose(face_at(0, 0, 100, yaw_shift=s).landmarks)[0]) for s in (0.05, 0.15, 0.3)]
    assert yaws[0] < yaws[1] < yaws[2] and yaws[2] > 40
    theta = np.radians(30)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert head_pose(DLIB_TEMPLATE_150 @ rot.T)[2] == pytest.approx(30, abs=0.5)


def test_one_clean_face_passes():
    g = gate_faces([face_at(100, 100, 200)], 400, 400, Thresholds())
    assert g.reasons == [] and g.main is not None and g.comparable == 0


def test_no_face():
    assert gate_faces([], 400, 400, Thresholds()).reasons == [ReasonCode.NO_FACE]


def test_comparable_second_face_is_multiple_but_background_face_is_ignored():
    t = Thresholds()
    main = face_at(50, 50, 200)
    assert ReasonCode.MULTIPLE_FACES in gate_faces([main, face_at(300, 50, 120)], 600, 400, t).reasons
    g = gate_faces([main, face_at(300, 50, 60)], 600, 400, t)
    assert g.reasons == [] and len(g.others) == 1  # reported, not rejected


def test_a_second_face_cut_by_the_border_does_not_compete():
    t = Thresholds()
    main = face_at(200, 100, 200)  # central in 600x400
    cut = face_at(-30, 100, 200)  # as large, but its box crosses the left border
    assert other_face_verdict(main, cut, 600, 400, t) == "cut"
    g = gate_faces([main, cut], 600, 400, t)
    assert g.reasons == [] and g.comparable == 0 and len(g.others) == 1
    assert "1.00 cut by the border" in g.message
    inside = face_at(10, 100, 200)  # the same face kept in frame competes
    assert other_face_verdict(main, inside, 600, 400, t) is None


def test_a_comparable_pair_at_the_centre_competes_and_the_message_states_the_sizes():
    t = Thresholds()
    left, right = face_at(110, 100, 180), face_at(310, 110, 170)  # side by side around the centre
    g = gate_faces([left, right, face_at(500, 20, 60)], 600, 400, t)
    assert g.reasons == [ReasonCode.MULTIPLE_FACES] and g.comparable == 1 and g.main is left
    assert g.message == "3 faces (1 of similar size: 0.94 of the main face)"


def test_a_clearly_smaller_face_beside_a_central_main_face_is_dominated():
    t = Thresholds()
    main = face_at(200, 100, 200)  # centred in 600x400
    side = face_at(440, 150, 140)  # 0.7 of its size, off-centre, fully in frame
    assert other_face_verdict(main, side, 600, 400, t) == "dominated"
    assert gate_faces([main, side], 600, 400, t).reasons == []
    # not when the main face is off-centre too, nor when the other face is nearly as large
    assert other_face_verdict(face_at(20, 100, 200), face_at(440, 150, 140), 600, 400, t) is None
    assert other_face_verdict(main, face_at(420, 120, 170), 600, 400, t) is None
    # each number is a threshold field, overridable by name
    assert other_face_verdict(main, side, 600, 400, thresholds_for(None, {"multi_face_dominated": 0.6})) is None


def test_sharpness_does_not_depend_on_the_face_resolution():
    """A sharp face photographed smaller is upscaled by alignment; measured on that upscale it
    looked blurred. At the face's own resolution its sharpness stays about the same."""
    rgb = decode_image(SAMPLES / "astronaut.jpg").rgb
    lm = np.array([[101.1, 101.9], [145.7, 102.8], [119.7, 124.9], [100.8, 140.7], [138.7, 145.2]])  # YuNet's
    base = crop_measurements(align_face(rgb, lm), crop_scale(lm))["sharpness"]
    for f in (0.8, 0.6, 0.4):
        small = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        crop = align_face(small, lm * f)
        assert crop_scale(lm * f) == pytest.approx(crop_scale(lm) / f, rel=0.02)
        native = crop_measurements(crop, crop_scale(lm * f))["sharpness"]
        assert 0.7 * base < native < 3 * base, f
        assert crop_measurements(crop)["sharpness"] < 0.6 * native  # what the upscaled crop shows
    blurred = cv2.GaussianBlur(rgb, (0, 0), 3)
    assert crop_measurements(align_face(blurred, lm), crop_scale(lm))["sharpness"] < Thresholds().min_sharpness


def test_faces_below_detection_score_do_not_count():
    g = gate_faces([face_at(50, 50, 200), face_at(300, 50, 200, score=0.5)], 600, 400, Thresholds())
    assert g.reasons == [] and g.others == []


def test_each_detection_threshold_has_its_reason():
    t = Thresholds()
    assert gate_faces([face_at(10, 10, 30)], 100, 100, t).reasons == [ReasonCode.FACE_TOO_SMALL]
    assert gate_faces([face_at(100, 100, 200, score=0.82)], 400, 400, t).reasons == [ReasonCode.LOW_CONFIDENCE]
    assert gate_faces([face_at(100, 100, 200, yaw_shift=0.3)], 400, 400, t).reasons == [ReasonCode.EXTREME_POSE]
    assert gate_faces([face_at(300, 100, 200)], 400, 400, t).reasons == [ReasonCode.FACE_TRUNCATED]
    assert gate_faces([face_at(5, 5, 60)], 70, 70, t).reasons[0] == ReasonCode.IMAGE_TOO_SMALL


def test_crop_thresholds():
    t = Thresholds()
    assert gate_crop({"sharpness": 5, "brightness": 120}, t) == [ReasonCode.LOW_SHARPNESS]
    assert gate_crop({"sharpness": 500, "brightness": 20}, t) == [ReasonCode.LOW_BRIGHTNESS]
    assert gate_crop({"sharpness": 500, "brightness": 240}, t) == [ReasonCode.OVEREXPOSED]
    assert gate_crop({"sharpness": 500, "brightness": 120}, t) == []


def test_liveness_preset_applies_documented_requirements():
    t = thresholds_for("opencv-fr-liveness")
    assert (t.min_image_width, t.min_image_height, t.min_face_size, t.min_border, t.min_eye_distance) == (600, 800, 150, 15, 50)
    assert t.max_yaw == 30 and t.max_pitch == 30
    # a face 10 px from the border passes the default gate but not the liveness one
    f = face_at(10, 200, 300)
    assert ReasonCode.FACE_TRUNCATED not in gate_faces([f], 700, 900, Thresholds()).reasons
    assert ReasonCode.FACE_TRUNCATED in gate_faces([f], 700, 900, t).reasons
    assert thresholds_for("opencv-fr").min_image_width == 224
    assert set(PRESETS) >= {"opencv-fr", "opencv-fr-liveness"}


def test_overrides_validate_names_and_values():
    assert thresholds_for(None, {"min-sharpness": "33"}).min_sharpness == 33.0
    assert thresholds_for("opencv-fr", {"min_image_width": 300}).min_image_width == 300
    with pytest.raises(ConfigError):
        thresholds_for(None, {"min_sharpnes": 1})
    with pytest.raises(ConfigError):
        thresholds_for(None, {"min_sharpness": "high"})
    with pytest.raises(ConfigError):
        thresholds_for("nope")


def test_similarity_transform_recovers_a_known_transform():
    theta, scale, shift = np.radians(20), 1.7, np.array([13.0, -4.0])
    rot = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    src = DLIB_TEMPLATE_150
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], shift, atol=1e-9)


def test_align_maps_landmarks_onto_the_template():
    img = np.zeros((400, 400, 3), np.uint8)
    f = face_at(100, 120, 200)
    for x, y in f.landmarks.astype(int):
        img[y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = align_face(img, f.landmarks)
    assert crop.shape == (150, 150, 3)
    for x, y in DLIB_TEMPLATE_150.astype(int):
        assert crop[y, x].max() > 100
