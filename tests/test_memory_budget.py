"""The decoding memory budget (issue 16): facecli's own pixel limits and messages, full-size decodes
capped lower than reduced ones, the process-wide pixels-in-flight budget, and library warnings
captured into the item instead of stderr."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from facecli.errors import ReasonCode
from facecli.imaging.budget import PixelBudget
from facecli.imaging.decode import DecodeFailure, DecodeLimits, decode_bytes, decode_image
from facecli.imaging.messages import captured
from facecli.imaging.resize import downscale

from .conftest import SAMPLES, needs_models


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def flat_png(width: int, height: int, grey: int = 120, rows: int | None = None) -> bytes:
    """An 8-bit RGB PNG of one grey, compressed row by row (a big image in a small file); ``rows``:
    write only that many rows (enough for a header-level test, truncated for a decode)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + bytes([grey]) * (3 * width)
    body = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    arr = (np.indices((height, width)).sum(0) % 256).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


class RecordingBudget(PixelBudget):
    def __init__(self, capacity: int = 10**9) -> None:
        super().__init__(capacity)
        self.reserved: list[int] = []

    def acquire(self, pixels: int, timeout: float | None = None) -> int:
        self.reserved.append(pixels)
        return super().acquire(pixels, timeout)


# --------------------------------------------------------------------------- limits and messages


def test_too_large_names_facecli_limit_and_the_measured_size():
    data = encoded(Image.new("RGB", (2000, 1000), (90, 90, 90)), "PNG")
    with pytest.raises(DecodeFailure) as exc:
        decode_bytes(data, DecodeLimits(max_megapixels=1.5))
    assert exc.value.reason == ReasonCode.IMAGE_TOO_LARGE
    msg = exc.value.message
    assert "2000x1000" in msg and "2.0 MP" in msg and "limit of 1.5 MP" in msg and "--max-megapixels" in msg


def test_pillow_bomb_guard_reports_facecli_numbers(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    data = flat_png(20000, 10000, rows=2)  # 200 MP: over Pillow's own 179 MP guard
    with pytest.raises(DecodeFailure) as exc:
        decode_bytes(data)
    msg = exc.value.message
    assert exc.value.reason == ReasonCode.IMAGE_TOO_LARGE
    assert "200.0 MP" in msg and "limit of 100 MP" in msg and "--max-megapixels" in msg
    assert "178956970" not in msg and "89478485" not in msg  # Pillow's internal limit, never quoted
    # a --max-megapixels above Pillow's guard is facecli's to apply (here the full-size-decode cap)
    with pytest.raises(DecodeFailure) as exc:
        decode_bytes(data, DecodeLimits(max_megapixels=300))
    assert "200.0 MP" in exc.value.message and "limit of 50 MP for PNG" in exc.value.message


def test_full_size_formats_have_a_lower_cap_than_draft_decoded_jpeg():
    limits = DecodeLimits(max_megapixels_unreduced=1.0, work_max_side=400)
    big = gradient(1600, 1200)  # 1.9 MP
    for fmt, kw in (("PNG", {}), ("JPEG", {"progressive": True}), ("WEBP", {})):
        with pytest.raises(DecodeFailure) as exc:
            decode_bytes(encoded(big, fmt, **kw), limits)
        assert exc.value.reason == ReasonCode.IMAGE_TOO_LARGE
        assert "1.9 MP" in exc.value.message and "limit of 1 MP for" in exc.value.message
        assert ("progressive JPEG" if fmt == "JPEG" else fmt) in exc.value.message
    budget = RecordingBudget()
    img = decode_bytes(encoded(big, "JPEG", quality=85), limits, budget)  # baseline: DCT-scaled to 1/4
    assert img.rgb.shape == (300, 400, 3) and (img.source_width, img.source_height) == (1600, 1200)
    assert budget.reserved == [400 * 300]  # only the reduced image was ever decoded
    assert budget.in_flight == 0


def test_full_size_decode_reserves_full_pixels_and_reduces_from_one_buffer():
    budget = RecordingBudget()
    img = decode_bytes(encoded(gradient(2400, 1800), "PNG"), DecodeLimits(work_max_side=400), budget)
    assert budget.reserved == [2400 * 1800] and budget.in_flight == 0
    assert img.rgb.shape == (300, 400, 3) and img.scale == pytest.approx(6.0)
    assert img.rgb.dtype == np.uint8 and img.rgb.flags.c_contiguous


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_banded_mode_conversion_matches_whole_image_conversion(mode):
    """Large non-RGB images are converted band by band before reducing: same pixels as converting
    the whole image first."""
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 255, (900, 1300, 3), dtype=np.uint8))
    if mode == "I;16":
        src = Image.fromarray(rng.integers(0, 65535, (900, 1300), dtype=np.uint16))
    else:
        src = base.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    img = decode_bytes(encoded(src, fmt), DecodeLimits(work_max_side=200))
    if mode == "I;16":
        whole = Image.fromarray((np.asarray(src).astype(np.float32) * (255 / 65535)).astype(np.uint8)).convert("RGB")
    elif mode in ("RGBA", "LA"):
        whole = Image.alpha_composite(Image.new("RGBA", src.size, (255,) * 4), src.convert("RGBA")).convert("RGB")
    else:
        whole = src.convert("RGB")
    assert img.rgb.shape == (138, 200, 3)
    assert np.array_equal(img.rgb, downscale(np.asarray(whole.reduce(1300 // 200)), 200, 138))


def test_exif_orientation_applied_after_reducing():
    src = gradient(2000, 1200)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(src.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())
    img = decode_bytes(data, DecodeLimits(work_max_side=500))
    assert img.orientation == 6 and (img.source_width, img.source_height) == (2000, 1200)
    assert img.rgb.shape == (300, 500, 3)


# --------------------------------------------------------------------------- the pixel budget


def test_pixel_budget_blocks_beyond_capacity_and_releases():
    budget = PixelBudget(100)
    first = budget.acquire(60)
    with pytest.raises(TimeoutError):
        budget.acquire(60, timeout=0.05)
    assert budget.in_flight == 60 and budget.waiting == 0
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(60)))
    waiter.start()
    time.sleep(0.05)
    assert not got and budget.waiting == 1  # queued, not refused
    budget.release(first)
    waiter.join(5)
    assert got == [60] and budget.in_flight == 60
    budget.release(60)
    with budget.reserve(10**9) as n:  # bigger than the whole budget: runs alone instead of failing
        assert n == 100 and budget.in_flight == 100
    assert budget.in_flight == 0


def test_pixel_budget_is_first_come_first_served():
    budget = PixelBudget(100)
    held = budget.acquire(90)
    order: list[str] = []

    def take(name: str, n: int) -> None:
        with budget.reserve(n):
            order.append(name)

    big = threading.Thread(target=take, args=("big", 80))
    big.start()
    time.sleep(0.05)
    small = threading.Thread(target=take, args=("small", 5))  # would fit now, but queues behind "big"
    small.start()
    time.sleep(0.05)
    assert order == []
    budget.release(held)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]


def test_decodes_wait_for_the_budget():
    budget = PixelBudget(1_000_000)
    data = encoded(gradient(800, 600), "PNG")
    held = budget.acquire(900_000)
    done: list[tuple] = []
    t = threading.Thread(target=lambda: done.append(decode_bytes(data, budget=budget).rgb.shape))
    t.start()
    time.sleep(0.2)
    assert not done and budget.waiting == 1  # 480,000 pixels do not fit next to 900,000
    budget.release(held)
    t.join(10)
    assert done == [(600, 800, 3)] and budget.in_flight == 0


_RSS_SCRIPT = textwrap.dedent("""
    import sys, threading
    from facecli.imaging.budget import PixelBudget
    from facecli.imaging.decode import decode_bytes
    data = open(sys.argv[1], "rb").read()
    def status(key):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024
    decode_bytes(open(sys.argv[2], "rb").read())  # warm up imports and allocators
    before = status("VmRSS")
    budget = PixelBudget(30_000_000)  # one 25 MP image at a time
    threads = [threading.Thread(target=decode_bytes, args=(data,), kwargs={"budget": budget}) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(status("VmHWM") - before, status("VmRSS") - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_concurrent_large_decodes_stay_within_one_image(tmp_path):
    """4 threads decode a 25 MP PNG (Pillow holds 100 MB of it): the budget lets one in at a time,
    so the peak is about one image, not four, and the memory is returned afterwards."""
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(flat_png(5000, 5000))
    small.write_bytes(flat_png(64, 64))
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(big), str(small)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, OPENCV_LOG_LEVEL="ERROR"))
    assert out.returncode == 0, out.stderr
    peak, after = (int(x) / 2**20 for x in out.stdout.split())
    assert peak < 200, f"peak +{peak:.0f} MB for 4 concurrent 25 MP decodes (one image: ~100 MB)"
    assert after < 50, f"+{after:.0f} MB still held after the decodes"


# --------------------------------------------------------------------------- library warnings


def corrupt_exif_jpeg() -> bytes:
    """A good photo whose EXIF IFD announces 5 entries but holds 1 ("Corrupt EXIF data")."""
    exif = (b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 5)
            + struct.pack("<HHI4s", 0x0112, 3, 1, b"\x01\x00\x00\x00"))
    return encoded(Image.open(SAMPLES / "grace_hopper.jpg"), "JPEG", quality=90, exif=exif)


def corrupt_lzw_tiff() -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = bytearray(encoded(Image.fromarray(arr), "TIFF", compression="tiff_lzw"))
    for k in range(200, 2000, 37):
        data[k] ^= 0x5A
    return bytes(data)


def test_warnings_go_to_the_image_not_stderr(capfd):
    for _ in range(2):  # the second file with the same defect gets the message too
        img = decode_bytes(corrupt_exif_jpeg())
        assert any("Corrupt EXIF data" in w for w in img.warnings), img.warnings
    clean = decode_bytes(encoded(gradient(64, 64), "JPEG"))
    assert clean.warnings == []
    out, err = capfd.readouterr()
    assert "EXIF" not in err and out == ""


def test_libtiff_messages_go_into_the_failure_message(capfd):
    with pytest.raises(DecodeFailure) as exc:
        decode_bytes(corrupt_lzw_tiff())
    assert exc.value.reason == ReasonCode.DECODE_ERROR
    assert "libtiff:" in exc.value.message
    _, err = capfd.readouterr()
    assert err == ""  # libtiff writes to the C stderr by default: capfd sees file descriptor 2


def test_capture_is_per_thread_and_leaves_other_warnings_alone():
    bad, good = corrupt_exif_jpeg(), encoded(gradient(64, 64), "JPEG")
    results: dict[int, list[str]] = {}

    def work(i: int) -> None:
        results[i] = decode_bytes(bad if i % 2 else good).warnings

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert all(bool(w) == bool(i % 2) for i, w in results.items()), results
    with pytest.warns(UserWarning, match="outside"):  # outside a capture warnings behave as before
        warnings.warn("outside", UserWarning)


def test_captured_collects_pillow_log_and_warnings(capfd):
    with captured() as messages:
        logging.getLogger("PIL.SomePlugin").warning("odd tag %d", 7)
        warnings.warn("Truncated File Read", UserWarning)
        warnings.warn("Truncated File Read", UserWarning)  # once per file
        warnings.warn("bomb", Image.DecompressionBombWarning)  # facecli's own limit applies instead
    assert messages == ["odd tag 7", "Truncated File Read"]
    assert capfd.readouterr().err == ""


def test_captured_messages_are_bounded_and_escaped():
    with captured() as messages:
        for i in range(50):  # e.g. libtiff on a file with thousands of unknown tags
            logging.getLogger("PIL.TiffImagePlugin").warning("unknown tag %d \x1b[31m%s", i, "x" * 1000)
    assert len(messages) == 9 and messages[-1] == "(more library messages left out)"
    assert all("\x1b" not in m and len(m) <= 300 * 4 for m in messages)
    assert "\\x1b[31m" in messages[0]


@needs_models
def test_check_reports_library_warnings_in_the_item_and_prints_nothing(tmp_path):
    person = tmp_path / "photos" / "ada"
    person.mkdir(parents=True)
    (person / "exif.jpg").write_bytes(corrupt_exif_jpeg())
    (person / "lzw.tif").write_bytes(corrupt_lzw_tiff())
    (person / "huge.png").write_bytes(flat_png(8000, 7000))
    report = tmp_path / "r.jsonl"
    out = subprocess.run([sys.executable, "-m", "facecli", "check", str(tmp_path / "photos"), "--no-journal", "-q",
                          "--report", str(report)], capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, FACECLI_MODELS_DIR=os.environ.get("FACECLI_MODELS_DIR", "")))
    assert out.returncode == 1, out.stderr
    assert out.stderr == ""
    items = {os.path.basename(r["path"]): r for r in map(json.loads, report.read_text().splitlines())
             if r.get("kind") == "image"}
    assert items["exif.jpg"]["status"] == "accepted" and "Corrupt EXIF data" in items["exif.jpg"]["message"]
    assert items["lzw.tif"]["reasons"] == ["DECODE_ERROR"] and "libtiff:" in items["lzw.tif"]["message"]
    assert items["huge.png"]["reasons"] == ["IMAGE_TOO_LARGE"]
    assert "56.0 MP" in items["huge.png"]["message"] and "limit of 50 MP for PNG" in items["huge.png"]["message"]
