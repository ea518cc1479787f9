"""Open any supported photo as 8-bit RGB at the resolution the pipeline needs, safely.

Why it is more than ``Image.open``: phone photos are 30-50 MP JPEGs, so we read the header first,
refuse decompression bombs before allocating anything, and let libjpeg's DCT scaling (PIL
``draft``) hand us a 1/2, 1/4 or 1/8 image directly instead of decoding full size and resizing.
Every failure becomes a :class:`DecodeFailure` with a stable reason code, never a crash.

Memory budget: peak memory per image is bounded by the pixels actually decoded. Baseline JPEG is
decoded reduced (draft); every other format (PNG, TIFF, WebP, HEIF, GIF, BMP, ICO, progressive
JPEG, whose decoder holds the whole image) is decoded once at full size, so it has a lower cap
(``max_megapixels_unreduced``), and is brought to the working size straight from that one buffer
(``Image.reduce``, in bands where a mode conversion is needed; no float copy of the full image),
which is freed before the detector runs. Each decode reserves its full-size pixels from a
process-wide :class:`~facecli.imaging.budget.PixelBudget`, so concurrent decodes (threads,
server requests) queue instead of multiplying memory. What Pillow and libtiff say about a damaged
file is captured into the image's ``warnings`` (or the failure message), never printed.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from facecli.errors import ReasonCode
from facecli.imaging import budget as pixel_budget
from facecli.imaging.messages import captured
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


#: Formats whose decoder can hand back a reduced image (libjpeg's DCT scaling; progressive JPEG still
#: holds the full image's coefficients, so it counts as decoded at full size).
REDUCIBLE_FORMATS = frozenset({"JPEG", "MPO"})

#: Cap (megapixels) for images decoded at full size (every format but baseline JPEG). At 50 MP Pillow
#: holds ~200 MB (4 bytes a pixel for RGB/RGBA); 50 MP still covers 48 MP phone HEIFs and A4 scans at
#: 600 dpi (35 MP). The CLI may expose it; until then DecodeLimits(max_megapixels_unreduced=...).
MAX_MEGAPIXELS_UNREDUCED = 50.0

#: Pixels converted at a time when a full-size image needs a mode conversion before reducing.
_BAND_PIXELS = 2_000_000


@dataclass(frozen=True)
class DecodeLimits:
    """Guards and the working resolution. Defaults suit phone photos and ID scans."""

    #: --max-megapixels: the largest image accepted at all (baseline JPEG is decoded reduced).
    max_megapixels: float = 100.0
    max_file_bytes: int = 64 * 1024 * 1024
    #: Longest side kept in memory. The detector runs at <= 640 px; alignment and payload crops
    #: come from this image, so it must keep a typical portrait's face well above 150 px.
    work_max_side: int = 1600
    #: The largest image of a format that has to be decoded at full size (see MAX_MEGAPIXELS_UNREDUCED).
    max_megapixels_unreduced: float = MAX_MEGAPIXELS_UNREDUCED


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


def decode_bytes(data: bytes, limits: DecodeLimits | None = None,
                 budget: pixel_budget.PixelBudget | None = None) -> DecodedImage:
    """Decode in-memory file bytes (also used by the server for uploaded images).

    ``budget``: where the decode reserves its full-size pixels (default: the process-wide budget)."""
    limits = limits or DecodeLimits()
    if not data:
        raise DecodeFailure(ReasonCode.DECODE_ERROR, "empty file (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise DecodeFailure(ReasonCode.IMAGE_TOO_LARGE, f"{len(data) / 1e6:.1f} MB is over the byte limit")
    _pillow_guard_above(limits)
    pixel_budget.tune_heap()
    with captured() as messages:
        try:
            with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as img:
                decoded = _decode_opened(img, data, limits, budget or pixel_budget.DEFAULT_BUDGET)
        except DecodeFailure as exc:
            failure = exc
        except Image.DecompressionBombError as exc:
            failure = DecodeFailure(ReasonCode.IMAGE_TOO_LARGE, _bomb_message(exc, limits))
        except UnidentifiedImageError:
            if data.startswith(_MAGIC) or data[8:12] in (b"WEBP", b"ftyp") or data[4:8] == b"ftyp":
                failure = DecodeFailure(ReasonCode.DECODE_ERROR, "corrupt image: header not readable")
            else:
                failure = DecodeFailure(ReasonCode.UNSUPPORTED_FORMAT, f"not a supported image (starts {data[:8]!r})")
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, MemoryError) as exc:
            msg = str(exc) or type(exc).__name__
            failure = DecodeFailure(ReasonCode.DECODE_ERROR, f"corrupt or truncated image: {msg}")
        else:
            decoded.warnings.extend(messages)
            return decoded
    if messages:  # what the library said about the file explains the failure
        failure = DecodeFailure(failure.reason, f"{failure.message} ({'; '.join(messages)})")
    raise failure


def _pillow_guard_above(limits: DecodeLimits) -> None:
    """Pillow refuses images over twice ``Image.MAX_IMAGE_PIXELS`` (179 MP) in ``Image.open``, with
    its own numbers; facecli's --max-megapixels decides, so Pillow's guard is raised above it."""
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and 2 * pillow < limits.max_megapixels * 1e6:
        Image.MAX_IMAGE_PIXELS = math.ceil(limits.max_megapixels * 1e6 / 2)


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb_message(exc: Exception, limits: DecodeLimits) -> str:
    found = _BOMB_PIXELS.search(str(exc))
    size = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "the image"
    return f"{size} is over facecli's limit of {limits.max_megapixels:g} MP (--max-megapixels); refused before decoding"


def _decode_opened(img: Image.Image, data: bytes, limits: DecodeLimits,
                   budget: pixel_budget.PixelBudget) -> DecodedImage:
    fmt = img.format or "?"
    width, height = img.size
    megapixels = width * height / 1e6
    if megapixels > limits.max_megapixels:
        raise DecodeFailure(
            ReasonCode.IMAGE_TOO_LARGE,
            f"{width}x{height} is {megapixels:.1f} MP, over facecli's limit of {limits.max_megapixels:g} MP "
            "(--max-megapixels)",
        )
    if fmt in REDUCIBLE_FORMATS and max(width, height) > limits.work_max_side:
        # draft() picks the smallest DCT scale whose result is >= the requested size; asking for
        # 3/4 of the working size lets a 1/4 scale win over 1/2 followed by a costly resize.
        r = 0.75 * limits.work_max_side / max(width, height)
        img.draft("RGB", (math.ceil(width * r), math.ceil(height * r)))
    # What the decoder holds at once: the drafted size, or the full image (a progressive JPEG
    # buffers every DCT coefficient of it even when drafted).
    progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    held = width * height if progressive else img.size[0] * img.size[1]
    if held > limits.max_megapixels_unreduced * 1e6:
        kind = "progressive JPEG" if progressive else fmt
        raise DecodeFailure(
            ReasonCode.IMAGE_TOO_LARGE,
            f"{width}x{height} is {megapixels:.1f} MP, over facecli's limit of {limits.max_megapixels_unreduced:g} MP "
            f"for {kind} images, which are decoded at full size (baseline JPEG: up to "
            f"{limits.max_megapixels:g} MP, --max-megapixels)",
        )
    with budget.reserve(held):
        try:
            img.load()
            orientation = _orientation(img)  # after load: PNG's getexif() decodes the whole image
            rgb = _work_rgb(img, limits.work_max_side)
        finally:
            img.close()  # the full-size buffer goes before the budget is released
    if orientation in (5, 6, 7, 8):
        source_w, source_h = height, width
    else:
        source_w, source_h = width, height
    if orientation != 1:
        rgb = np.asarray(Image.fromarray(rgb).transpose(_EXIF_TRANSPOSE[orientation]))
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb),
        source_width=source_w,
        source_height=source_h,
        format=fmt,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        orientation=orientation,
    )


#: EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _work_rgb(img: Image.Image, work_max_side: int) -> np.ndarray:
    """The loaded image as 8-bit RGB; over 1.25 times ``work_max_side``, brought to that size from
    its one full-size buffer: ``Image.reduce`` (box average) by an integer factor, converting the
    mode band by band when needed, then one small resize."""
    w, h = img.size
    grey_max = _grey_max(img)
    if max(w, h) <= work_max_side * 1.25:
        return np.asarray(_rgb_image(img, grey_max))
    factor = max(w, h) // work_max_side
    if factor < 2:
        rgb = np.asarray(_rgb_image(img, grey_max))
    elif img.mode == "RGB":
        rgb = np.asarray(img.reduce(factor))
    else:
        rows = max(1, _BAND_PIXELS // (w * factor)) * factor  # a multiple of factor: same result as whole
        rgb = np.concatenate([np.asarray(_rgb_image(img.crop((0, y, w, min(h, y + rows))), grey_max).reduce(factor))
                              for y in range(0, h, rows)])
    r = work_max_side / max(w, h)
    return downscale(rgb, max(1, round(w * r)), max(1, round(h * r)))


_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _grey_max(img: Image.Image) -> float:
    """The white level of 16/32-bit greyscale (65535 for 16-bit data, else 255), from the whole image."""
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode in ("I", "F"):
        return 65535.0 if float(img.getextrema()[1]) > 255 else 255.0
    return 255.0


def _rgb_image(img: Image.Image, grey_max: float = 255.0) -> Image.Image:
    """Normalise grayscale, palette, CMYK, 16-bit and alpha images (or a band of one) to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_GREY_MODES:
        grey = np.clip(np.asarray(img).astype(np.float32) * (255.0 / grey_max), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # a broken EXIF block must not lose an otherwise good photo
        return 1
