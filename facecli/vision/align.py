"""Five-point similarity alignment to the recognizer's template.

Why least squares (Umeyama) rather than cv2.estimateAffinePartial2D: that one runs RANSAC and can
drop a landmark; the recognizer was trained on crops aligned with all five points.
"""

from __future__ import annotations

import cv2
import numpy as np

#: dlib-resnet 150x150 template (PROVENANCE.md), landmark order: left eye, right eye, nose,
#: left mouth corner, right mouth corner (image-left/right).
DLIB_TEMPLATE_150 = np.array(
    [[47.5492, 46.5990], [100.4761, 46.5990], [74.0127, 76.5625], [50.4149, 103.0233], [97.6104, 103.0233]],
    dtype=np.float64,
)
CROP_SIZE = 150


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the least-squares similarity (rotation, uniform scale, shift) mapping src to dst."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * sign).sum() / var_s if var_s > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(rgb: np.ndarray, landmarks: np.ndarray, template: np.ndarray = DLIB_TEMPLATE_150,
               size: int = CROP_SIZE) -> np.ndarray:
    """Warp the face with these landmarks (pixels of ``rgb``) to a ``size`` x ``size`` RGB crop."""
    return align_face_scaled(rgb, landmarks, template, size)[0]


def align_face_scaled(rgb: np.ndarray, landmarks: np.ndarray, template: np.ndarray = DLIB_TEMPLATE_150,
                      size: int = CROP_SIZE) -> tuple[np.ndarray, float]:
    """``align_face`` and its ``crop_scale`` from one similarity transform (the check's hot path)."""
    m = similarity_transform(landmarks, template)
    crop = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return crop, _scale(m)


def crop_scale(landmarks: np.ndarray, template: np.ndarray = DLIB_TEMPLATE_150) -> float:
    """Crop pixels per image pixel of ``align_face`` for these landmarks: above 1 the crop is an
    upscale of a face smaller than the template, and holds no more detail than the face had."""
    return _scale(similarity_transform(landmarks, template))


def _scale(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
