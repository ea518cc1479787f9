#!/usr/bin/env python3
"""Regenerate the demo images in this folder from public-domain files shipped by PyPI packages.

Sources (see README.md for provenance and licenses):
  * matplotlib  mpl-data/sample_data/grace_hopper.jpg  (512x600, US Navy photo, public domain)
  * scikit-image  skimage/data/astronaut.png           (512x512, NASA photo, public domain)

These packages are NOT facecli dependencies. Use a separate virtual environment:

    python3 -m venv /tmp/venv-samples
    /tmp/venv-samples/bin/pip install matplotlib scikit-image pillow numpy
    /tmp/venv-samples/bin/python sample_images/make_samples.py

The output is deterministic for a given Pillow/libjpeg build (no timestamps, fixed parameters,
no randomness). Face coordinates used for cropping were measured once with YuNet
(face_detection_yunet_2023mar.onnx) and are hard-coded, so no model is needed here.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

OUT = Path(__file__).resolve().parent
QUALITY = 90

# YuNet boxes [x, y, w, h] in the source images (measured, see module docstring).
HOPPER_FACE = (183, 120, 170, 212)  # in grace_hopper.jpg, 512x600
ASTRONAUT_FACE = (178, 63, 90, 113)  # in astronaut.png, 512x512

BLUR_SIGMA = 6  # Gaussian blur radius (Pillow's GaussianBlur takes the standard deviation)
DARK_FACTOR = 0.12  # pixel values multiplied by this
TINY_SIZE = (60, 70)  # same aspect as the 512x600 portrait
TRUNCATE_FRACTION = 0.40  # keep this share of the JPEG's bytes
EXIF_ORIENTATION = 0x0112


def source_paths() -> tuple[Path, Path]:
    import matplotlib  # only to locate its data folder
    import skimage  # only to locate its data folder

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    astronaut = Path(os.path.dirname(skimage.__file__)) / "data" / "astronaut.png"
    for p in (hopper, astronaut):
        if not p.is_file():
            sys.exit(f"missing source file: {p}")
    return hopper, astronaut


HOPPER_NOTE = ("Derived from grace_hopper.jpg as shipped in matplotlib (US Navy photo, public domain; "
               "https://commons.wikimedia.org/wiki/File:Grace_Hopper.jpg)")
ASTRONAUT_NOTE = ("Derived from astronaut.png as shipped in scikit-image "
                  "(NASA photo of Eileen Collins, public domain)")


def save_jpeg(im: Image.Image, name: str, note: str, **kw) -> Path:
    path = OUT / name
    # A provenance comment, no ICC profile, no EXIF unless given.
    im.convert("RGB").save(path, "JPEG", quality=QUALITY, optimize=True,
                           comment=f"facecli sample_images/{name}. {note}".encode(), **kw)
    return path


def face_tile(im: Image.Image, face: tuple[int, int, int, int], face_w: int,
              tile: tuple[int, int]) -> Image.Image:
    """Scale `im` so the face box is `face_w` px wide, then crop a `tile` around the face."""
    x, y, w, h = face
    s = face_w / w
    big = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.LANCZOS)
    cx, cy = (x + w / 2) * s, (y + h / 2) * s
    tw, th = tile
    left = int(round(cx - tw / 2))
    top = int(round(cy - th * 0.45))
    left = min(max(0, left), big.width - tw)
    top = min(max(0, top), big.height - th)
    return big.crop((left, top, left + tw, top + th))


def main() -> None:
    hopper_src, astronaut_src = source_paths()
    hopper = Image.open(hopper_src).convert("RGB")
    astronaut = Image.open(astronaut_src).convert("RGB")
    made: list[Path] = []

    # --- good images -------------------------------------------------------------------------
    # grace_hopper.jpg: the package file byte for byte.
    shutil.copyfile(hopper_src, OUT / "grace_hopper.jpg")
    made.append(OUT / "grace_hopper.jpg")

    # astronaut.jpg: crop so that Eileen Collins' head and shoulders are the subject
    # (drops the flag and the shuttle model). 260x330, native resolution.
    made.append(save_jpeg(astronaut.crop((100, 0, 360, 330)), "astronaut.jpg", ASTRONAUT_NOTE))

    # grace_hopper_2.jpg: a second image of the same person (flat layout: `_2` groups it with
    # grace_hopper.jpg). The portrait mirrored left-right, so it is not a near-duplicate photo,
    # with its pixels stored rotated 90 deg counter-clockwise and EXIF Orientation = 6 ("rotate
    # 90 CW to display"): only an EXIF-aware reader sees an upright face.
    mirrored = hopper.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored = mirrored.transpose(Image.Transpose.ROTATE_90)  # 600x512, head pointing left
    made.append(save_jpeg(stored, "grace_hopper_2.jpg", HOPPER_NOTE, exif=exif.tobytes()))

    # --- bad cases: one "person" each --------------------------------------------------------
    # two_faces.jpg: both portraits side by side, faces scaled to the same width (120 px).
    left = face_tile(hopper, HOPPER_FACE, 120, (300, 380))
    right = face_tile(astronaut, ASTRONAUT_FACE, 120, (300, 380))
    pair = Image.new("RGB", (600, 380))
    pair.paste(left, (0, 0))
    pair.paste(right, (300, 0))
    made.append(save_jpeg(pair, "two_faces.jpg", f"{HOPPER_NOTE}; {ASTRONAUT_NOTE}"))

    # no_face.jpg: lower part of the astronaut photo (flag, suit, mission patch, helmet).
    made.append(save_jpeg(astronaut.crop((0, 300, 512, 512)), "no_face.jpg", ASTRONAUT_NOTE))

    # tiny.jpg: the portrait downscaled to 60x70 px.
    made.append(save_jpeg(hopper.resize(TINY_SIZE, Image.Resampling.LANCZOS), "tiny.jpg", HOPPER_NOTE))

    # blurred.jpg: strong Gaussian blur; YuNet still finds the face (score ~0.93).
    made.append(save_jpeg(hopper.filter(ImageFilter.GaussianBlur(BLUR_SIGMA)), "blurred.jpg", HOPPER_NOTE))

    # dark.jpg: pixel values * 0.12; YuNet still finds the face (score ~0.94).
    dark = np.asarray(hopper, dtype=np.float32) * DARK_FACTOR
    dark_im = Image.fromarray(np.clip(np.round(dark), 0, 255).astype(np.uint8), "RGB")
    made.append(save_jpeg(dark_im, "dark.jpg", HOPPER_NOTE))

    # truncated.jpg: the first 40% of grace_hopper.jpg's bytes (no EOI marker) -> decode error.
    data = (OUT / "grace_hopper.jpg").read_bytes()
    (OUT / "truncated.jpg").write_bytes(data[: int(len(data) * TRUNCATE_FRACTION)])
    made.append(OUT / "truncated.jpg")

    # Self-check of the EXIF case: transposed back it is the upright (mirrored) portrait.
    with Image.open(OUT / "grace_hopper_2.jpg") as im:
        upright = ImageOps.exif_transpose(im)
        assert upright.size == hopper.size, (upright.size, hopper.size)
        diff = np.abs(np.asarray(upright, np.int16) - np.asarray(mirrored, np.int16)).mean()
        assert diff < 3.0, diff

    for p in made:
        print(f"{p.stat().st_size:8d}  {p.name}")


if __name__ == "__main__":
    main()
