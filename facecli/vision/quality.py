"""The one-face gate: measurements of the main face and the thresholds that turn them into reasons.

All thresholds live here (``Thresholds``) with their defaults; config files, presets and CLI flags
override fields by name. Measurements are returned with every item so a user can see how far a
rejected photo was from the bar and tune the bar for their own cameras.

Defaults were set on ../shared/datasets (deepface-pairs, compreface-samples) and sample_images:
every real single-face photo there passes, every derived bad case fails with its own reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import cv2
import numpy as np

from facecli.errors import ConfigError, ReasonCode
from facecli.vision.detect import Face

#: Frontal nose-tip height between the eye line (0) and the mouth line (1) in the dlib template.
_FRONTAL_NOSE_T = (76.5625 - 46.5990) / (103.0233 - 46.5990)
#: Nose-tip depth over inter-eye distance, for the yaw/pitch estimate from 2-D landmarks.
_NOSE_DEPTH = 0.5
#: Region of the 150x150 aligned crop that is face (brow to chin, cheek to cheek): measured there
#: so background and hair do not dominate sharpness and brightness.
_FACE_REGION = (slice(35, 125), slice(35, 115))


@dataclass(frozen=True)
class Thresholds:
    """Every bar an image must clear. Sizes are pixels of the original (upright) image."""

    min_image_width: int = 80
    min_image_height: int = 80
    #: Detector score at which something counts as a face (for counting and MULTIPLE_FACES).
    detection_score: float = 0.8
    #: Detector score the main face must reach to be accepted (LOW_CONFIDENCE below).
    min_confidence: float = 0.85
    #: Another face at least this fraction of the main face's size makes MULTIPLE_FACES;
    #: smaller ones (people in the background) are reported but ignored.
    multi_face_ratio: float = 0.5
    min_face_size: float = 40.0  # sqrt(box w * box h)
    min_eye_distance: float = 15.0
    #: Variance of the Laplacian on the aligned face (blurred sample ~5, real photos >= 30).
    min_sharpness: float = 20.0
    min_brightness: float = 45.0  # mean grey level of the aligned face, 0..255
    max_brightness: float = 225.0
    max_yaw: float = 40.0  # degrees, estimated from the 5 landmarks
    max_pitch: float = 35.0
    max_roll: float = 50.0
    #: FACE_TRUNCATED when the box sticks out of the image by more than this share of its size.
    max_outside: float = 0.1
    #: Minimum distance in pixels from the face box to every image border (liveness presets).
    min_border: float = 0.0

    def with_overrides(self, overrides: dict[str, Any]) -> Thresholds:
        """Apply ``{"min_sharpness": 30, ...}``; unknown names are a configuration error."""
        known = {f.name: f.type for f in fields(self)}
        clean: dict[str, Any] = {}
        for key, value in overrides.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown threshold {key!r}", hint=f"known: {', '.join(sorted(known))}")
            try:
                clean[name] = int(value) if known[name] in ("int", int) else float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"threshold {key} needs a number, got {value!r}") from None
        return replace(self, **clean)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: Targets' documented image requirements (../shared/APIS.md), applied with ``--preset``.
PRESETS: dict[str, dict[str, float]] = {
    "default": {},
    "opencv-fr": {"min_image_width": 224, "min_image_height": 224},
    "opencv-fr-liveness": {
        "min_image_width": 600,
        "min_image_height": 800,
        "min_face_size": 150,
        "min_border": 15,
        "min_eye_distance": 50,
        "max_yaw": 30,
        "max_pitch": 30,
    },
    # Seed APIs (APIS.md). Images-per-person caps (3 for both) come from the sink
    # (max_faces_per_person); Persona's ~500 KB per image is a payload size, set by its sink.
    "opencv-fr-cloud": {"min_image_width": 224, "min_image_height": 224},
    "verifik": {},
    "persona": {},
    "aws-rekognition": {"min_image_width": 80, "min_image_height": 80, "min_face_size": 40},
    "azure-face": {"min_face_size": 36},
}


def thresholds_for(preset: str | None = None, overrides: dict[str, Any] | None = None) -> Thresholds:
    name = preset or "default"
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", hint=f"known presets: {', '.join(PRESETS)}")
    return Thresholds().with_overrides(PRESETS[name]).with_overrides(overrides or {})


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from five landmarks: a coarse geometric estimate.

    Roll is the eye line's angle. After undoing roll, yaw comes from how far the nose tip sits from
    the eyes' midpoint (relative to the eye distance), pitch from the nose tip's height between
    the eye and mouth lines, both through a nose depth of half the eye distance.
    """
    le, re, nose, lm, rm = np.asarray(landmarks, dtype=np.float64)
    roll = float(np.degrees(np.arctan2(re[1] - le[1], re[0] - le[0])))
    c, s = np.cos(np.radians(-roll)), np.sin(np.radians(-roll))
    rot = np.array([[c, -s], [s, c]])
    mid = (le + re) / 2
    pts = (np.asarray(landmarks, dtype=np.float64) - mid) @ rot.T
    eye_d = pts[1, 0] - pts[0, 0]
    mouth_y = (pts[3, 1] + pts[4, 1]) / 2
    if eye_d <= 1e-6 or mouth_y <= 1e-6:  # degenerate landmarks: profile or upside down
        return 90.0, 90.0, roll
    yaw = float(np.degrees(np.arctan(pts[2, 0] / eye_d / _NOSE_DEPTH)))
    t = pts[2, 1] / mouth_y
    pitch = float(np.degrees(np.arcsin(np.clip((t - _FRONTAL_NOSE_T) * 1.07 / _NOSE_DEPTH, -1, 1))))
    return yaw, pitch, roll


def crop_measurements(aligned_rgb: np.ndarray) -> dict[str, float]:
    """Sharpness and brightness of the aligned face crop."""
    grey = cv2.cvtColor(aligned_rgb, cv2.COLOR_RGB2GRAY)
    region = grey[_FACE_REGION]
    lap = cv2.Laplacian(grey, cv2.CV_32F)[_FACE_REGION]
    return {"sharpness": float(lap.var()), "brightness": float(region.mean())}


@dataclass
class GateResult:
    """Outcome of the one-face gate for one image."""

    reasons: list[ReasonCode]
    main: Face | None
    others: list[Face]  # every other detected face (comparable or ignored)
    comparable: int  # how many of ``others`` are comparable in size to the main face
    measurements: dict[str, float]


def gate_image_size(width: int, height: int, t: Thresholds) -> list[ReasonCode]:
    if width < t.min_image_width or height < t.min_image_height:
        return [ReasonCode.IMAGE_TOO_SMALL]
    return []


def gate_faces(faces: list[Face], width: int, height: int, t: Thresholds) -> GateResult:
    """Pick the main face and apply every threshold that needs only the detection.

    ``faces`` are in original-image pixels. The main face is the largest; faces below
    ``detection_score`` are not counted at all.
    """
    faces = [f for f in faces if f.score >= t.detection_score]
    reasons = gate_image_size(width, height, t)
    if not faces:
        return GateResult(reasons + [ReasonCode.NO_FACE], None, [], 0, {})
    main = max(faces, key=lambda f: f.size)
    others = [f for f in faces if f is not main]
    comparable = sum(1 for f in others if f.size >= t.multi_face_ratio * main.size)
    yaw, pitch, roll = head_pose(main.landmarks)
    x, y, w, h = (float(v) for v in main.box)
    border = min(x, y, width - (x + w), height - (y + h))
    m = {
        "face_size": main.size,
        "eye_distance": main.eye_distance,
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "border": border,
    }
    if comparable:
        reasons.append(ReasonCode.MULTIPLE_FACES)
    if main.score < t.min_confidence:
        reasons.append(ReasonCode.LOW_CONFIDENCE)
    if main.size < t.min_face_size or main.eye_distance < t.min_eye_distance:
        reasons.append(ReasonCode.FACE_TOO_SMALL)
    if abs(yaw) > t.max_yaw or abs(pitch) > t.max_pitch or abs(roll) > t.max_roll:
        reasons.append(ReasonCode.EXTREME_POSE)
    if -border > t.max_outside * main.size or (t.min_border > 0 and border < t.min_border):
        reasons.append(ReasonCode.FACE_TRUNCATED)
    return GateResult(reasons, main, others, comparable, m)


def gate_crop(measurements: dict[str, float], t: Thresholds) -> list[ReasonCode]:
    """Thresholds that need the aligned crop."""
    reasons: list[ReasonCode] = []
    if measurements["sharpness"] < t.min_sharpness:
        reasons.append(ReasonCode.LOW_SHARPNESS)
    if measurements["brightness"] < t.min_brightness:
        reasons.append(ReasonCode.LOW_BRIGHTNESS)
    elif measurements["brightness"] > t.max_brightness:
        reasons.append(ReasonCode.OVEREXPOSED)
    return reasons


def quality_score(face: Face | None, measurements: dict[str, float]) -> float:
    """One number to rank a person's accepted images (bigger, sharper, more frontal, surer: better)."""
    if face is None:
        return 0.0
    size = min(face.size, 300.0) / 300.0
    sharp = min(measurements.get("sharpness", 0.0), 300.0) / 300.0
    frontal = float(np.cos(np.radians(min(abs(measurements.get("yaw", 0.0)), 89.0))))
    return face.score * (0.4 + 0.6 * size) * (0.4 + 0.6 * sharp) * frontal
