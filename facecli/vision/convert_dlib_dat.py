"""Build a full-precision dlib-resnet ONNX file from dlib's own ``dlib_face_recognition_resnet_model_v1.dat``.

The default recognizer (:mod:`facecli.vision.convert_dlib`) keeps face-api's 8-bit copy of the
weights. dlib's original float32 file is public domain (CC0) and ships in PyPI's
``face_recognition_models`` package (``face_recognition_models/models/``). This module reads
dlib's serialization of that network and emits the *same* ONNX graph as the TF.js converter
(it reuses its graph builder), with float32 initializers instead of dequantised uint8 codes.

dlib's format, as far as this file needs it (``dlib/serialize.h``, ``dlib/dnn/tensor.h``,
``dlib/dnn/layers.h``):

* integers are "packed": one byte ``size | 0x80 if negative``, then ``size`` little-endian bytes;
* strings: a packed length, then the bytes; each layer starts with its version string;
* a tensor (version 2): packed ``2``, four packed dimensions, then raw little-endian float32s;
* ``con_4``: the params tensor (filters ``[out, in, kh, kw]`` then biases), then packed
  num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x;
* ``affine_``: the params tensor (gamma for every channel, then beta);
* ``fc_2``: packed num_outputs, num_inputs, then the params tensor ``[num_inputs, num_outputs]``
  (the network's ``fc_no_bias`` has no bias).

The file holds the layers from the input to the output: 29 ``con_4`` each followed by its
``affine_``, then ``fc_2``. They are matched to the face-api layer names in that order and every
shape, stride and padding is checked against the architecture, so a different file fails loudly
instead of building a wrong model.

Usage (an optional, local build step; nothing downloads)::

    pip install face_recognition_models onnx
    python -m facecli.vision.convert_dlib_dat [DAT] [OUT.onnx]

DAT defaults to the installed package's file; OUT defaults to the user cache dir's
``dlib_resnet_v1_f32.onnx``, where facecli's model resolution finds it.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from facecli.errors import ModelError
from facecli.vision import convert_dlib

#: dlib_face_recognition_resnet_model_v1.dat as shipped by face_recognition_models 0.3.0 (CC0).
DAT_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DAT_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"  # the file this converter was verified on
DAT_SIZE = 22466066
OUTPUT_FILE = "dlib_resnet_v1_f32.onnx"
PRODUCER = "facecli-convert_dlib_dat"
DOC = (
    "ONNX build of dlib's dlib_face_recognition_resnet_model_v1 (CC0) from dlib's float32 .dat "
    "(PyPI face_recognition_models). Input RGB 0..255 NCHW 150x150 dlib-style face chip; output "
    "128-d descriptor. Same graph as the face-api rebuild, full-precision weights."
)

_TAG_CON = b"\x01\x05con_4"
_TAG_AFFINE = b"\x01\x07affine_"
_TAG_FC = b"\x01\x04fc_2"
_TAG_INPUT = b"\x01\x15input_rgb_image_sized"


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.d = data
        self.pos = pos

    def int(self) -> int:
        head = self.d[self.pos]
        size, neg = head & 0x0F, head & 0x80
        if size > 8 or self.pos + 1 + size > len(self.d):
            raise ModelError(f"dlib .dat: bad packed integer at byte {self.pos}")
        v = int.from_bytes(self.d[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -v if neg else v

    def float_details(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0**exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ModelError(f"dlib .dat: tensor version {version} at byte {self.pos} (expected 2)")
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims))
        end = self.pos + 4 * n
        if n <= 0 or end > len(self.d):
            raise ModelError(f"dlib .dat: bad tensor {dims} at byte {self.pos}")
        arr = np.frombuffer(self.d, dtype="<f4", count=n, offset=self.pos).astype(np.float32)
        self.pos = end
        return arr


def _find_all(data: bytes, tag: bytes) -> list[int]:
    out, i = [], data.find(tag)
    while i >= 0:
        out.append(i + len(tag))
        i = data.find(tag, i + 1)
    return out


def _layer_names() -> list[str]:
    names = ["conv32_down"]
    for block, _down in convert_dlib._BLOCKS:
        names += [f"{block}/conv1", f"{block}/conv2"]
    return names


def _expected_shapes() -> list[tuple[int, int, int, int, int]]:
    """(out, in, k, stride, padding) of each convolution, input to output (dlib's anet_type)."""
    shapes = [(32, 3, 7, 2, 0)]
    ch = 32
    for block, down in convert_dlib._BLOCKS:
        out = {"conv32": 32, "conv64": 64, "conv128": 128, "conv256": 256}[block.split("_")[0]]
        shapes += [(out, ch, 3, 2 if down else 1, 0 if down else 1), (out, out, 3, 1, 1)]
        ch = out
    return shapes


def parse_dat(data: bytes) -> dict[str, Any]:
    """dlib's .dat -> face-api-named float32 weights (TF.js layouts) for the shared graph builder."""
    inp = _find_all(data, _TAG_INPUT)
    if len(inp) != 1:
        raise ModelError("not a dlib face-recognition network file (no input_rgb_image_sized layer)")
    r = _Reader(data, inp[0])
    mean = tuple(r.float_details() for _ in range(3))
    if not np.allclose(mean, convert_dlib.MEAN_RGB, atol=1e-3):
        raise ModelError(f"dlib .dat: input mean {mean} differs from {convert_dlib.MEAN_RGB}")
    cons, affines, fcs = _find_all(data, _TAG_CON), _find_all(data, _TAG_AFFINE), _find_all(data, _TAG_FC)
    names, shapes = _layer_names(), _expected_shapes()
    if len(cons) != len(names) or len(affines) != len(names) or len(fcs) != 1:
        raise ModelError(f"dlib .dat: {len(cons)} con_4 / {len(affines)} affine_ / {len(fcs)} fc_2 layers; "
                         f"expected {len(names)} / {len(names)} / 1 (dlib_face_recognition_resnet_model_v1)")
    W = convert_dlib._Weight
    out: dict[str, Any] = {}
    for name, (o, i, k, stride, pad), c_at, a_at in zip(names, shapes, cons, affines):
        if not c_at < a_at:
            raise ModelError(f"dlib .dat: layer order differs from the architecture at {name}")
        r = _Reader(data, c_at)
        params = r.tensor()
        meta = [r.int() for _ in range(7)]  # num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x
        if meta != [o, k, k, stride, stride, pad, pad] or params.size != o * i * k * k + o:
            raise ModelError(f"dlib .dat: {name}: con_ {meta} with {params.size} params, expected "
                             f"{[o, k, k, stride, stride, pad, pad]} with {o * i * k * k + o}")
        filt = params[: o * i * k * k].reshape(o, i, k, k).transpose(2, 3, 1, 0)  # OIHW -> HWIO
        out[f"{name}/conv/filters"] = W(f"{name}/conv/filters", filt.shape, np.ascontiguousarray(filt))
        out[f"{name}/conv/bias"] = W(f"{name}/conv/bias", (o,), params[o * i * k * k :].copy())
        r = _Reader(data, a_at)
        gb = r.tensor()
        if gb.size != 2 * o:
            raise ModelError(f"dlib .dat: {name}: affine_ has {gb.size} params, expected {2 * o}")
        out[f"{name}/scale/weights"] = W(f"{name}/scale/weights", (o,), gb[:o].copy())
        out[f"{name}/scale/biases"] = W(f"{name}/scale/biases", (o,), gb[o:].copy())
    r = _Reader(data, fcs[0])
    n_out, n_in = r.int(), r.int()
    fc = r.tensor()
    if (n_out, n_in) != (128, 256) or fc.size != 256 * 128:
        raise ModelError(f"dlib .dat: fc_2 {n_in}x{n_out} with {fc.size} params, expected 256x128")
    out["fc"] = W("fc", (256, 128), fc.reshape(256, 128))
    return out


class _FloatGraphBuilder(convert_dlib._GraphBuilder):
    """The face-api graph with float32 initializers: ``deq`` becomes a plain constant."""

    def deq(self, name: str) -> str:
        w = self.w[name]
        if w.quantized:
            return super().deq(name)
        return self.const("w", np.asarray(w.data, dtype=np.float32))


def build_model(data: bytes) -> bytes:
    """Serialized ONNX model (deterministic bytes) for dlib's .dat file."""
    onnx = convert_dlib._import_onnx()
    model = _FloatGraphBuilder(onnx, parse_dat(data)).build()
    model.producer_name = PRODUCER
    model.doc_string = DOC
    onnx.checker.check_model(model)
    return model.SerializeToString()


def default_dat() -> Path | None:
    """The .dat file of an installed ``face_recognition_models`` package, if any."""
    try:
        import face_recognition_models  # type: ignore[import-not-found]
    except ImportError:
        return None
    p = Path(face_recognition_models.__file__).parent / "models" / DAT_FILE
    return p if p.is_file() else None


def default_output() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("facecli")) / "models" / OUTPUT_FILE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dat = Path(argv[0]) if argv else default_dat()
    if dat is None or not dat.is_file():
        print("dlib .dat not found: pip install face_recognition_models, or pass its path", file=sys.stderr)
        return 2
    out = Path(argv[1]) if len(argv) > 1 else default_output()
    onnx_bytes = build_model(dat.read_bytes())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(onnx_bytes)
    tmp.replace(out)
    print(f"{out}  sha256 {hashlib.sha256(onnx_bytes).hexdigest()}  {len(onnx_bytes)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
