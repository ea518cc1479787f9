"""Open any supported photo as 8-bit RGB at the resolution the pipeline needs, safely.

Why it is more than ``Image.open``: phone photos are 30-50 MP JPEGs, so we read the header first,
refuse decompression bombs before allocating anything, and let libjpeg's DCT scaling (PIL
``draft``) hand us a 1/2, 1/4 or 1/8 image directly instead of decoding full size and resizing.
Every failure becomes a :class:`DecodeFailure` with a stable reason code, never a crash.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facecli.errors import ReasonCode
from facecli.imaging.resize import downscale

try:  # HEIC/HEIF phone photos (iPhone default); optional at import so a broken wheel never blocks JPEGs
    import pillow_heif

    pillow_heif.register_heif_opener()
    _HEIF = True
except Exception:  # pragma: no cover - depends on the platform wheel
    _HEIF = False

#: Pillow format names we accept. Restricting Image.open to these also keeps risky plugins
#: (EPS via Ghostscript, PSD, ...) out of reach of untrusted files.
#: (Multi-picture JPEGs from phones are opened by the JPEG plugin and reported as "MPO".)
Image.init()
SUPPORTED_FORMATS: tuple[str, ...] = tuple(
    f for f in ("JPEG", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "ICO", "HEIF", "AVIF") if f in Image.OPEN
)

#: File extensions discovery treats as images (content is still sniffed, never trusted).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".ico",
     ".heic", ".heif", ".hif"}
)

_EXPECTED_FORMAT_BY_EXT = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".webp": "WEBP",
    ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF", ".ico": "ICO", ".heic": "HEIF",
    ".heif": "HEIF", ".hif": "HEIF",
}

# Leading bytes of formats we know: a file that starts like an image but cannot be identified is
# corrupt (DECODE_ERROR), anything else is simply not an image (UNSUPPORTED_FORMAT).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00")


@dataclass(frozen=True)
class DecodeLimits:
    """Guards and the working resolution. Defaults suit phone photos and ID scans."""

    max_megapixels: float = 100.0
    max_file_bytes: int = 64 * 1024 * 1024
    #: Longest side kept in memory. The detector runs at <= 640 px; alignment and payload crops
    #: come from this image, so it must keep a typical portrait's face well above 150 px.
    work_max_side: int = 1600


@dataclass
class DecodedImage:
    """An upright 8-bit RGB image plus what is needed to map back to the source file."""

    rgb: np.ndarray  # (H, W, 3) uint8, C-contiguous, upright (EXIF applied)
    source_width: int  # of the upright full-resolution image
    source_height: int
    format: str
    data: bytes = field(repr=False)  # the file bytes: hashed once, re-used for payloads
    sha256: str = ""
    orientation: int = 1
    warnings: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """Source pixels per decoded pixel (>= 1 when the fast path downscaled)."""
        return self.source_width / self.rgb.shape[1]


class DecodeFailure(Exception):
    """One file could not become an image; carries the item's reason code."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def read_file(path: Path, limits: DecodeLimits) -> bytes:
    """Read a file's bytes once, mapping OS errors to reason codes."""
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise DecodeFailure(
                ReasonCode.IMAGE_TOO_LARGE,
                f"file is {size / 1e6:.1f} MB, over the {limits.max_file_bytes / 1e6:.0f} MB limit",
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise DecodeFailure(ReasonCode.FILE_NOT_FOUND, f"no such file: {path}") from None
    except IsADirectoryError:
        raise DecodeFailure(ReasonCode.UNREADABLE, f"is a directory: {path}") from None
    except PermissionError:
        raise DecodeFailure(ReasonCode.UNREADABLE, f"permission denied: {path}") from None
    except OSError as exc:
        raise DecodeFailure(ReasonCode.UNREADABLE, f"cannot read {path}: {exc.strerror or exc}") from None


def decode_image(path: str | Path, limits: DecodeLimits | None = None) -> DecodedImage:
    """Read and decode one file. Raises :class:`DecodeFailure` for any per-item problem."""
    path = Path(path)
    limits = limits or DecodeLimits()
    data = read_file(path, limits)
    decoded = decode_bytes(data, limits)
    expected = _EXPECTED_FORMAT_BY_EXT.get(path.suffix.lower())
    actual = "JPEG" if decoded.format == "MPO" else decoded.format
    if expected and expected != actual:
        decoded.warnings.append(f"extension {path.suffix} but content is {decoded.format}")
    return decoded


def decode_bytes(data: bytes, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode in-memory file bytes (also used by the server for uploaded images)."""
    limits = limits or DecodeLimits()
    if not data:
        raise DecodeFailure(ReasonCode.DECODE_ERROR, "empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise DecodeFailure(ReasonCode.IMAGE_TOO_LARGE, f"{len(data) / 1e6:.1f} MB is over the byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            return _decode_opened(img, data, limits)
    except DecodeFailure:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeFailure(ReasonCode.IMAGE_TOO_LARGE, f"refused before decoding: {exc}") from None
    except UnidentifiedImageError:
        if data.startswith(_MAGIC) or data[8:12] in (b"WEBP", b"ftyp") or data[4:8] == b"ftyp":
            raise DecodeFailure(ReasonCode.DECODE_ERROR, "corrupt image: header not readable") from None
        raise DecodeFailure(ReasonCode.UNSUPPORTED_FORMAT, f"not a supported image (starts {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, MemoryError) as exc:
        msg = str(exc) or type(exc).__name__
        raise DecodeFailure(ReasonCode.DECODE_ERROR, f"corrupt or truncated image: {msg}") from None


def _decode_opened(img: Image.Image, data: bytes, limits: DecodeLimits) -> DecodedImage:
    fmt = img.format or "?"
    width, height = img.size
    megapixels = width * height / 1e6
    if megapixels > limits.max_megapixels:
        raise DecodeFailure(
            ReasonCode.IMAGE_TOO_LARGE,
            f"{width}x{height} is {megapixels:.0f} MP, over the {limits.max_megapixels:g} MP limit",
        )
    orientation = _orientation(img)
    if fmt in ("JPEG", "MPO") and max(width, height) > limits.work_max_side:
        # draft() picks the smallest DCT scale whose result is >= the requested size; asking for
        # 3/4 of the working size lets a 1/4 scale win over 1/2 followed by a costly resize.
        r = 0.75 * limits.work_max_side / max(width, height)
        img.draft("RGB", (math.ceil(width * r), math.ceil(height * r)))
    img.load()
    if orientation in (5, 6, 7, 8):
        source_w, source_h = height, width
    else:
        source_w, source_h = width, height
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    rgb = _to_rgb8(img)
    if max(rgb.shape[:2]) > limits.work_max_side * 1.25:
        r = limits.work_max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * r)), max(1, round(rgb.shape[0] * r)))
        rgb = downscale(rgb, *size)
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb),
        source_width=source_w,
        source_height=source_h,
        format=fmt,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        orientation=orientation,
    )


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # a broken EXIF block must not lose an otherwise good photo
        return 1


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Normalise grayscale, palette, CMYK, 16-bit and alpha images to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float32)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))
