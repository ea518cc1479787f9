"""Pictures for people: a photo with boxes and labels drawn on it (Pillow's ImageDraw only).

Used by `facecli search --draw DIR`. Text that came from outside (person names) is drawn, never
interpreted; control and other non-printable characters are dropped first.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Box colours: a face that matched someone, a face without a match.
MATCH_COLOUR = (40, 200, 80)
NO_MATCH_COLOUR = (240, 160, 30)
PROBLEM_COLOUR = (220, 50, 50)


@dataclass
class BoxLabel:
    box: tuple[float, float, float, float]  # x, y, width, height in pixels of the image drawn on
    text: str
    matched: bool


def printable(text: str, limit: int = 60) -> str:
    """``text`` without control/format characters, cut to ``limit`` characters."""
    clean = "".join(c for c in str(text) if unicodedata.category(c)[0] != "C")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def annotate(rgb: np.ndarray, labels: list[BoxLabel], caption: str = "", max_side: int = 1280) -> Image.Image:
    """The photo (shrunk to ``max_side``) with each box outlined and its label above it, and an
    optional caption band at the top (what went wrong with the photo)."""
    img = Image.fromarray(rgb)
    f = min(1.0, max_side / max(img.size))
    if f < 1.0:
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    side = max(img.size)
    size = max(11, side // 40)
    font = load_font(size)
    width = max(2, side // 300)
    for lab in labels:
        x, y, w, h = (v * f for v in lab.box)
        colour = MATCH_COLOUR if lab.matched else NO_MATCH_COLOUR
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        text = printable(lab.text)
        if not text:
            continue
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, b - t
        ty = y - th - 2 * width if y - th - 2 * width >= 0 else min(img.height - th - 2 * width, y + h + width)
        tx = min(max(0.0, x), max(0.0, img.width - tw - 2 * width))
        draw.rectangle([tx, ty, tx + tw + 2 * width, ty + th + 2 * width], fill=colour)
        draw.text((tx + width - l, ty + width - t), text, fill=(0, 0, 0), font=font)
    if caption:
        text = printable(caption, 120)
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        draw.rectangle([0, 0, min(img.width, r - l + 2 * width), b - t + 2 * width], fill=PROBLEM_COLOUR)
        draw.text((width - l, width - t), text, fill=(255, 255, 255), font=font)
    return img


def save_jpeg(img: Image.Image, path: Path, quality: int = 88) -> None:
    """Write atomically (a half-written picture never shows under its final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.convert("RGB").save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)
