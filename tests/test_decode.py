import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from facecli.errors import ReasonCode
from facecli.imaging.decode import DecodeFailure, DecodeLimits, decode_bytes, decode_image

from .conftest import DATASETS, SAMPLES, needs_data

FORMATS = DATASETS / "formats"


@needs_data
@pytest.mark.parametrize("ext", ["bmp", "gif", "ico", "jpeg", "png", "tiff", "webp"])
def test_every_einstein_format_decodes(ext):
    img = decode_image(FORMATS / f"einstein.{ext}")
    assert img.rgb.shape == (256, 256, 3) and img.rgb.dtype == np.uint8
    assert (img.source_width, img.source_height) == (256, 256)
    assert img.rgb.std() > 10  # real picture content, not a blank frame


@needs_data
@pytest.mark.parametrize(
    "name,reason",
    [("corrupted.png", ReasonCode.DECODE_ERROR), ("truncated.jpg", ReasonCode.DECODE_ERROR),
     ("empty.png", ReasonCode.UNSUPPORTED_FORMAT)],
)
def test_bad_files_give_a_reason(name, reason):
    with pytest.raises(DecodeFailure) as exc:
        decode_image(FORMATS / name)
    assert exc.value.reason == reason and exc.value.message


def test_missing_empty_and_directory(tmp_path):
    with pytest.raises(DecodeFailure) as exc:
        decode_image(tmp_path / "nope.jpg")
    assert exc.value.reason == ReasonCode.FILE_NOT_FOUND
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DecodeFailure) as exc:
        decode_image(tmp_path / "empty.jpg")
    assert exc.value.reason == ReasonCode.DECODE_ERROR
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(DecodeFailure) as exc:
        decode_image(tmp_path / "dir.jpg")
    assert exc.value.reason == ReasonCode.UNREADABLE


def _png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height zero pixels, streamed so it is never in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(2000)) + comp.flush()  # first rows only: still "huge"
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_without_allocating():
    data = _png_bomb(30000, 30000)
    assert len(data) < 200_000
    tracemalloc.start()
    with pytest.raises(DecodeFailure) as exc:
        decode_bytes(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert exc.value.reason == ReasonCode.IMAGE_TOO_LARGE
    assert peak < 20_000_000  # the full image would be 900 MB


def test_megapixel_limit_is_configurable():
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), (90, 90, 90)).save(buf, "PNG")
    with pytest.raises(DecodeFailure) as exc:
        decode_bytes(buf.getvalue(), DecodeLimits(max_megapixels=1.0))
    assert exc.value.reason == ReasonCode.IMAGE_TOO_LARGE
    assert decode_bytes(buf.getvalue(), DecodeLimits(max_megapixels=3.0)).rgb.shape == (1000, 2000, 3)


def test_file_byte_limit(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(b"\xff\xd8\xff" + b"\0" * 5000)
    with pytest.raises(DecodeFailure) as exc:
        decode_image(p, DecodeLimits(max_file_bytes=1000))
    assert exc.value.reason == ReasonCode.IMAGE_TOO_LARGE


def test_not_an_image_is_unsupported(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("name,id\nAda,1\n")
    with pytest.raises(DecodeFailure) as exc:
        decode_image(p)
    assert exc.value.reason == ReasonCode.UNSUPPORTED_FORMAT


def test_unsupported_but_valid_format(tmp_path):
    p = tmp_path / "x.ppm"
    Image.new("RGB", (64, 64)).save(p, "PPM")
    with pytest.raises(DecodeFailure) as exc:
        decode_image(p)
    assert exc.value.reason == ReasonCode.UNSUPPORTED_FORMAT


def test_mislabelled_file_decodes_by_content_with_a_warning(tmp_path):
    p = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(p, "PNG")
    img = decode_image(p)
    assert img.format == "PNG" and img.rgb.shape == (48, 64, 3)
    assert any("content is PNG" in w for w in img.warnings)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16", "LA"])
def test_modes_normalised_to_rgb8(mode, tmp_path):
    base = Image.new("RGB", (40, 30), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16))
        fmt = "PNG"
    else:
        img = base.convert(mode)
        fmt = "TIFF" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    out = decode_bytes(buf.getvalue())
    assert out.rgb.shape == (30, 40, 3) and out.rgb.dtype == np.uint8
    if mode == "I;16":
        assert 150 < out.rgb.mean() < 160  # 40000/65535*255 = 155.6, not clipped to 255
    elif mode in ("L", "LA"):
        assert abs(int(out.rgb[0, 0, 0]) - int(out.rgb[0, 0, 2])) == 0
    else:
        assert abs(int(out.rgb[0, 0, 0]) - 200) < 8 and abs(int(out.rgb[0, 0, 2]) - 50) < 8


def test_transparent_pixels_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert decode_bytes(buf.getvalue()).rgb.min() == 255


def test_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    rgb = decode_bytes(buf.getvalue()).rgb
    assert rgb[..., 0].mean() > 200 and rgb[..., 2].mean() < 50


def test_heic_decodes(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    p = tmp_path / "phone.heic"
    try:
        Image.new("RGB", (320, 240), (30, 120, 220)).save(p, "HEIF", quality=90)
    except Exception as exc:  # an encoder-less wheel can still decode
        pytest.skip(f"pillow-heif {pillow_heif.__version__} cannot encode here: {exc}")
    img = decode_image(p)
    assert img.format == "HEIF" and img.rgb.shape == (240, 320, 3)
    assert abs(int(img.rgb[..., 2].mean()) - 220) < 10


def test_large_jpeg_uses_dct_scaling_and_keeps_source_size(tmp_path):
    p = tmp_path / "big.jpg"
    arr = (np.indices((3000, 4000)).sum(0) % 256).astype(np.uint8)
    Image.fromarray(arr).convert("RGB").save(p, quality=80)
    img = decode_image(p, DecodeLimits(work_max_side=1000))
    assert (img.source_width, img.source_height) == (4000, 3000)
    assert img.rgb.shape == (750, 1000, 3)  # libjpeg's 1/4 scale, straight from the DCT
    assert img.scale == pytest.approx(4.0)


def test_exif_orientation_applied():
    upright = decode_image(SAMPLES / "grace_hopper.jpg")
    rotated = decode_image(SAMPLES / "grace_hopper_2.jpg")  # mirrored, stored rotated, EXIF 6
    assert rotated.orientation == 6
    assert rotated.rgb.shape == upright.rgb.shape
    assert (rotated.source_width, rotated.source_height) == (upright.source_width, upright.source_height)
    diff = np.abs(rotated.rgb[:, ::-1].astype(int) - upright.rgb.astype(int)).mean()
    assert diff < 3


def test_exif_orientation_with_dct_scaling(tmp_path):
    src = Image.open(SAMPLES / "grace_hopper.jpg").resize((2048, 2400))
    stored = src.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    stored.save(p, quality=92, exif=exif.tobytes())
    img = decode_image(p, DecodeLimits(work_max_side=1024))
    assert (img.source_width, img.source_height) == (2048, 2400)
    assert img.rgb.shape[0] > img.rgb.shape[1]  # upright: taller than wide
