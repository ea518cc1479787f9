"""Fast antialiased downscaling.

Why not cv2.INTER_AREA: it costs ~10 ms for a 1600 px photo here, more than running the detector.
Halving with INTER_LINEAR (which averages each 2x2 block exactly at scale 0.5) down to less than
twice the target, then one bilinear step, gives the same antialiasing for ~1 ms.
"""

from __future__ import annotations

import cv2
import numpy as np


def downscale(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize ``img`` down to ``width`` x ``height`` (no-op when already that size)."""
    h, w = img.shape[:2]
    while w >= 2 * width and h >= 2 * height:
        w, h = w // 2, h // 2
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    if (w, h) != (width, height):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return img
