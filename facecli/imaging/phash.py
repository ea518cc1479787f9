"""Perceptual hash (pHash): near-identical images -> nearby 64-bit hashes.

Why: the same photo is often exported twice (resized, re-compressed, renamed). Byte hashes miss
that; a DCT hash of the 32x32 grey image survives it. Computed once per decoded image (~0.1 ms).
"""

from __future__ import annotations

import cv2
import numpy as np

from facecli.imaging.resize import downscale


def phash(rgb: np.ndarray) -> int:
    grey = cv2.cvtColor(downscale(rgb, 32, 32) if rgb.shape[0] >= 32 and rgb.shape[1] >= 32 else cv2.resize(rgb, (32, 32)),
                        cv2.COLOR_RGB2GRAY)
    coeffs = cv2.dct(grey.astype(np.float32))[:8, :8].flatten()[1:]  # low frequencies, DC dropped
    bits = coeffs > np.median(coeffs)
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
