"""YuNet face detection with onnxruntime: boxes, five landmarks and scores.

Pre/post-processing follows ../shared/models/PROVENANCE.md exactly (and matches
cv2.FaceDetectorYN, which a test checks). Running the ONNX graph ourselves keeps one runtime for
both models, lets the pipeline choose threads and providers, and accepts both YuNet exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facecli.imaging.resize import downscale
from facecli.vision.models import ResolvedModel
from facecli.vision.runtime import make_session

STRIDES = (8, 16, 32)
DEFAULT_SCORE_THRESHOLD = 0.8  # PROVENANCE.md: better recall than OpenCV's 0.9, no false positives
NMS_IOU = 0.3
DETECT_MAX_SIDE = 640


@dataclass
class Face:
    """One detected face. Coordinates are pixels of whatever image they refer to (see ``scaled``)."""

    box: np.ndarray  # (4,) float32: x, y, width, height
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, left mouth, right mouth (image-left/right)
    score: float

    @property
    def size(self) -> float:
        """Geometric mean of the box sides: one number to compare faces by."""
        return float(np.sqrt(max(self.box[2], 0) * max(self.box[3], 0)))

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    def scaled(self, factor: float) -> Face:
        return Face(self.box * factor, self.landmarks * factor, self.score)

    def to_json(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
            "det_score": round(self.score, 4),
        }


class Detector:
    """Holds one onnxruntime session; ``detect`` is called once per image."""

    def __init__(
        self,
        model: ResolvedModel,
        threads: int | None = None,
        device: str = "cpu",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_side: int = DETECT_MAX_SIDE,
    ) -> None:
        self.model = model
        self.session = make_session(model.path, threads, device)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.score_threshold = score_threshold
        self.fixed_size = model.file.input_size if model.file.input_kind == "fixed" else None
        self.max_side = max(self.fixed_size) if self.fixed_size else max_side

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """RGB uint8 -> padded BGR float32 NCHW blob, and the resize factor applied."""
        h, w = rgb.shape[:2]
        r = min(1.0, self.max_side / max(h, w))
        if r < 1.0:
            small = downscale(rgb, max(1, round(w * r)), max(1, round(h * r)))
        else:
            small = rgb
        sh, sw = small.shape[:2]
        if self.fixed_size:
            pw, ph = self.fixed_size
        else:
            pw, ph = -(-sw // 32) * 32, -(-sh // 32) * 32
        blob = np.zeros((1, 3, ph, pw), dtype=np.float32)
        blob[0, :, :sh, :sw] = small.transpose(2, 0, 1)[::-1]  # RGB -> BGR planes, one copy
        return blob, (sw / w if r < 1.0 else 1.0)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in ``rgb``'s pixel coordinates, best score first."""
        blob, r = self.prepare(rgb)
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: blob})))
        faces = decode_outputs(outputs, blob.shape[3], blob.shape[2], self.score_threshold)
        if r != 1.0:
            faces = [f.scaled(1.0 / r) for f in faces]
        return faces


def decode_outputs(outputs: dict[str, np.ndarray], width: int, height: int, score_threshold: float) -> list[Face]:
    """YuNet's per-stride grids -> faces after NMS, in network-input pixels."""
    boxes: list[np.ndarray] = []
    kpss: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for s in STRIDES:
        cols = width // s
        cls = outputs[f"cls_{s}"][0, :, 0]
        obj = outputs[f"obj_{s}"][0, :, 0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        keep = np.nonzero(score >= score_threshold)[0]
        if keep.size == 0:
            continue
        row = (keep // cols).astype(np.float32)
        col = (keep % cols).astype(np.float32)
        b = outputs[f"bbox_{s}"][0, keep]
        cx = (col + b[:, 0]) * s
        cy = (row + b[:, 1]) * s
        bw = np.exp(b[:, 2]) * s
        bh = np.exp(b[:, 3]) * s
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
        k = outputs[f"kps_{s}"][0, keep].reshape(-1, 5, 2)
        kpss.append(np.stack([(k[:, :, 0] + col[:, None]) * s, (k[:, :, 1] + row[:, None]) * s], axis=2))
        scores.append(score[keep])
    if not boxes:
        return []
    all_boxes = np.concatenate(boxes).astype(np.float32)
    all_kps = np.concatenate(kpss).astype(np.float32)
    all_scores = np.concatenate(scores).astype(np.float32)
    keep = cv2.dnn.NMSBoxes(all_boxes.tolist(), all_scores.tolist(), score_threshold, NMS_IOU, top_k=5000)
    order = sorted(np.asarray(keep, dtype=int).reshape(-1).tolist(), key=lambda i: -all_scores[i])
    return [Face(all_boxes[i].copy(), all_kps[i].copy(), float(all_scores[i])) for i in order]
