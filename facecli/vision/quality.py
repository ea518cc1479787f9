"""The one-face gate: measurements of the main face and the thresholds that turn them into reasons.

All thresholds live here (``Thresholds``) with their defaults; config files, presets and CLI flags
override fields by name. Measurements are returned with every item so a user can see how far a
rejected photo was from the bar and tune the bar for their own cameras.

Defaults were set on ../shared/datasets (deepface-pairs, compreface-samples) and sample_images:
every real single-face photo there passes, every derived bad case fails with its own reason; the
multi-face rule and the sharpness scale were then measured on LFW press photos (README,
"Thresholds and presets").
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
    #: MULTIPLE_FACES needs another face that competes with the main one (``other_face_verdict``):
    #: at least this fraction of the main face's size (smaller ones, people in the background,
    #: are reported but ignored),
    multi_face_ratio: float = 0.5
    #: ... kept at least this share of its own size from every image border (a face the frame
    #: cuts was not framed as a subject; at 0, a box that crosses the border),
    multi_face_border: float = 0.0
    #: ... and not dominated: under this fraction of the main face's size while the main face is
    #: central and nearer the image centre than it (the subject of a press photo or a portrait).
    multi_face_dominated: float = 0.8
    #: The main face is central when its box centre lies within this many main-face sizes of the
    #: image centre.
    multi_face_central: float = 0.5
    min_face_size: float = 40.0  # sqrt(box w * box h)
    min_eye_distance: float = 15.0
    #: Variance of the Laplacian on the aligned face at the face's own resolution
    #: (``crop_measurements``): blurred sample ~5; real photos >= 25 (LFW), most >= 100.
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


def crop_measurements(aligned_rgb: np.ndarray, upscale: float = 1.0) -> dict[str, float]:
    """Sharpness and brightness of the aligned face crop.

    ``upscale`` is the crop's pixels per image pixel (``align.crop_scale``). When the crop is an
    upscale of a smaller face, the Laplacian is taken after shrinking it back to the face's own
    resolution: interpolation adds no detail but spreads every edge over more pixels, so on the
    upscaled crop a sharp 60 px face measured like a blurred one, and a smaller copy of an
    accepted photo was refused as blurred. Faces at or above the template's size are measured on
    the crop itself, the resolution the recognizer sees.
    """
    grey = cv2.cvtColor(aligned_rgb, cv2.COLOR_RGB2GRAY)
    brightness = float(grey[_FACE_REGION].mean())
    side = grey.shape[0]
    if upscale > 1.0:
        n = max(16, round(side / upscale))
        grey = cv2.resize(grey, (n, n), interpolation=cv2.INTER_AREA)
    k = grey.shape[0] / side
    rows, cols = (slice(round(r.start * k), round(r.stop * k)) for r in _FACE_REGION)
    lap = cv2.Laplacian(grey, cv2.CV_32F)[rows, cols]
    return {"sharpness": float(lap.var()), "brightness": brightness}


@dataclass
class GateResult:
    """Outcome of the one-face gate for one image."""

    reasons: list[ReasonCode]
    main: Face | None
    others: list[Face]  # every other detected face (competing or ignored)
    comparable: int  # how many of ``others`` compete with the main face (``other_face_verdict``)
    measurements: dict[str, float]
    #: The other faces' measured sizes and why each competes or not, for the item's message.
    message: str = ""


def gate_image_size(width: int, height: int, t: Thresholds) -> list[ReasonCode]:
    if width < t.min_image_width or height < t.min_image_height:
        return [ReasonCode.IMAGE_TOO_SMALL]
    return []


def _border(face: Face, width: int, height: int) -> float:
    """Distance from the face box to the nearest image border (negative: the box crosses it)."""
    x, y, w, h = (float(v) for v in face.box)
    return min(x, y, width - (x + w), height - (y + h))


def _centre_offset(face: Face, width: int, height: int) -> float:
    x, y, w, h = (float(v) for v in face.box)
    return float(np.hypot(x + w / 2 - width / 2, y + h / 2 - height / 2))


def other_face_verdict(main: Face, other: Face, width: int, height: int, t: Thresholds) -> str | None:
    """None when ``other`` competes with the main face (the photo is ambiguous), else why not:
    ``"small"``, ``"cut"`` (by the image border) or ``"dominated"`` (by a central, larger main face).

    Why these three (measured on LFW press photos, README "Thresholds and presets"): people in
    the background are small; a face cut by the frame was not framed as a subject; and a face
    clearly smaller than a central main face is a bystander. Two similar faces side by side,
    neither central, still compete, as do faces the frame keeps in a group photo.
    """
    ratio = other.size / main.size
    if ratio < t.multi_face_ratio:
        return "small"
    if _border(other, width, height) < t.multi_face_border * other.size:
        return "cut"
    if ratio < t.multi_face_dominated:
        offset = _centre_offset(main, width, height)
        if offset <= t.multi_face_central * main.size and offset < _centre_offset(other, width, height):
            return "dominated"
    return None


_IGNORED = {"small": "small", "cut": "cut by the border", "dominated": "smaller than the central main face"}


def _faces_message(main: Face, others: list[Face], verdicts: list[str | None]) -> str:
    """'3 faces (2 of similar size: 0.92, 0.81 of the main face)' or what was ignored and why."""
    if not others:
        return ""
    ratios = [o.size / main.size for o in others]
    competing = sorted((r for r, v in zip(ratios, verdicts) if v is None), reverse=True)
    if competing:
        listed = ", ".join(f"{r:.2f}" for r in competing)
        return f"{len(others) + 1} faces ({len(competing)} of similar size: {listed} of the main face)"
    listed = ", ".join(f"{r:.2f} {_IGNORED[v]}" for r, v in sorted(zip(ratios, verdicts), key=lambda p: -p[0]))
    return f"{len(others)} other face(s) ignored (size vs the main face: {listed})"


def gate_faces(faces: list[Face], width: int, height: int, t: Thresholds) -> GateResult:
    """Pick the main face and apply every threshold that needs only the detection.

    ``faces`` are in original-image pixels. The main face is the largest; faces below
    ``detection_score`` are not counted at all. MULTIPLE_FACES when another face competes with
    it (``other_face_verdict``).
    """
    faces = [f for f in faces if f.score >= t.detection_score]
    reasons = gate_image_size(width, height, t)
    if not faces:
        return GateResult(reasons + [ReasonCode.NO_FACE], None, [], 0, {})
    main = max(faces, key=lambda f: f.size)
    others = [f for f in faces if f is not main]
    verdicts = [other_face_verdict(main, f, width, height, t) for f in others]
    comparable = sum(1 for v in verdicts if v is None)
    yaw, pitch, roll = head_pose(main.landmarks)
    border = _border(main, width, height)
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
    return GateResult(reasons, main, others, comparable, m, _faces_message(main, others, verdicts))


def explain(reason: ReasonCode, m: dict[str, float], t: Thresholds, width: int | None = None,
            height: int | None = None, main: Face | None = None) -> str:
    """The measured value against its limit, for the report and the terminal: 'sharpness 4.7 <
    20 (min_sharpness)'. '' for reasons whose message comes from elsewhere (MULTIPLE_FACES: the
    gate's face list; NO_FACE needs none)."""
    R = ReasonCode
    if reason == R.IMAGE_TOO_SMALL and width is not None and height is not None:
        return f"image {width}x{height} < {t.min_image_width}x{t.min_image_height} (min_image_width/height)"
    if reason == R.NO_FACE:
        return f"no face with detector score >= {t.detection_score:g} (detection_score)"
    if reason == R.LOW_SHARPNESS and "sharpness" in m:
        return f"sharpness {m['sharpness']:.1f} < {t.min_sharpness:g} (min_sharpness)"
    if reason == R.LOW_BRIGHTNESS and "brightness" in m:
        return f"brightness {m['brightness']:.0f} < {t.min_brightness:g} (min_brightness)"
    if reason == R.OVEREXPOSED and "brightness" in m:
        return f"brightness {m['brightness']:.0f} > {t.max_brightness:g} (max_brightness)"
    if reason == R.LOW_CONFIDENCE and main is not None:
        return f"face detector score {main.score:.2f} < {t.min_confidence:g} (min_confidence)"
    if reason == R.FACE_TOO_SMALL and "face_size" in m:
        if m["face_size"] < t.min_face_size:
            return f"face {m['face_size']:.0f} px < {t.min_face_size:g} (min_face_size)"
        return f"eye distance {m.get('eye_distance', 0):.0f} px < {t.min_eye_distance:g} (min_eye_distance)"
    if reason == R.EXTREME_POSE and "yaw" in m:
        over = [f"{k} {m[k]:+.0f} deg beyond +-{lim:g} (max_{k})" for k, lim in
                (("yaw", t.max_yaw), ("pitch", t.max_pitch), ("roll", t.max_roll)) if abs(m.get(k, 0)) > lim]
        return "; ".join(over)
    if reason == R.FACE_TRUNCATED and "border" in m and "face_size" in m:
        if t.min_border > 0 and m["border"] < t.min_border:
            return f"face {m['border']:.0f} px from the image border < {t.min_border:g} (min_border)"
        out = -m["border"] / max(m["face_size"], 1e-9)
        return f"face box {out:.0%} outside the image > {t.max_outside:.0%} of its size (max_outside)"
    return ""


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
