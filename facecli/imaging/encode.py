"""Face images for targets: crop around the face, resize, re-encode as a clean JPEG under a byte cap.

Why re-encode: servers want one face per image and have payload limits; a 5 MB phone photo with
GPS in its EXIF is the wrong thing to upload. A fresh JPEG carries no metadata at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facecli.imaging.resize import downscale


@dataclass(frozen=True)
class PayloadSpec:
    """What image of an accepted face a target gets. ``kind``: "face" (crop), "thumbnail", "full"."""

    kind: str = "face"
    face_fraction: float = 0.4
    min_side: int = 224
    max_side: int = 1024
    quality: int = 90
    max_bytes: int | None = 1_000_000


def payload_jpeg(rgb: np.ndarray, box: np.ndarray, spec: PayloadSpec) -> bytes:
    """The encoded image ``spec`` asks for; ``box`` in pixels of ``rgb``."""
    if spec.kind == "thumbnail":
        return thumbnail_jpeg(rgb, box)
    if spec.kind == "full":
        h, w = rgb.shape[:2]
        return encode_jpeg(face_crop(rgb, np.array([0, 0, w, h]), 1.0, spec.min_side, spec.max_side) if max(h, w) > spec.max_side else rgb,
                           spec.quality, spec.max_bytes)
    return encode_jpeg(face_crop(rgb, box, spec.face_fraction, spec.min_side, spec.max_side), spec.quality, spec.max_bytes)


def face_crop(rgb: np.ndarray, box: np.ndarray, face_fraction: float = 0.4, min_side: int = 224,
              max_side: int = 1024) -> np.ndarray:
    """A square crop centred on ``box`` (pixels of ``rgb``) where the face is ~``face_fraction``
    of the width, clipped to the image, then scaled into [min_side, max_side]."""
    h, w = rgb.shape[:2]
    x, y, bw, bh = (float(v) for v in box)
    side = max(bw, bh) / face_fraction
    cx, cy = x + bw / 2, y + bh / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    crop = rgb[y0:y1, x0:x1]
    ch, cw = crop.shape[:2]
    longest = max(ch, cw)
    if longest > max_side:
        r = max_side / longest
        crop = downscale(crop, max(1, round(cw * r)), max(1, round(ch * r)))
    elif min(ch, cw) < min_side:
        r = min_side / max(1, min(ch, cw))
        crop = np.asarray(Image.fromarray(crop).resize((round(cw * r), round(ch * r)), Image.Resampling.BICUBIC))
    return crop


def encode_jpeg(rgb: np.ndarray, quality: int = 90, max_bytes: int | None = None) -> bytes:
    """JPEG bytes without any metadata; lowers quality, then size, until under ``max_bytes``."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    q = quality
    while True:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q, optimize=True)
        data = buf.getvalue()
        if max_bytes is None or len(data) <= max_bytes:
            return data
        if q > 60:
            q -= 10
        elif min(img.size) > 64:
            img = img.resize((max(1, img.width * 3 // 4), max(1, img.height * 3 // 4)), Image.Resampling.LANCZOS)
        else:
            return data  # cannot get smaller: the caller's cap is unreasonable; the target decides


def thumbnail_jpeg(rgb: np.ndarray, box: np.ndarray, side: int = 160) -> bytes:
    return encode_jpeg(face_crop(rgb, box, face_fraction=0.5, min_side=0, max_side=side), quality=85)
