"""Build ``dlib_resnet_faceapi_rec_u8.onnx`` from face-api's TF.js weights (``facecli models fetch``).

dlib publishes its ResNet face-recognition model only in dlib's own format; the face-api project
ported it to TF.js (npm ``@vladmandic/face-api``, MIT). This module turns that port's two weight
files into the ONNX graph facecli runs:

* input ``input`` float32 ``[N,3,150,150]``, RGB, raw 0..255; mean subtraction and ``/255`` are
  in-graph; output ``embedding`` ``[N,128]`` (not normalised);
* the architecture mirrors ``src/faceRecognitionNet/*.ts`` of the package: a 7x7/2 conv, a 3x3/2
  max-pool, 14 residual blocks (the "down" ones add a zero-padded 2x2 average-pooled shortcut),
  a global average and a 256x128 matrix;
* weights stay as the port's 8-bit codes (``uint8`` + per-tensor ``scale``/``min`` from the
  manifest's ``quantization``) and are dequantised in-graph; the few tensors the port stores as
  float32 stay float32. Each layer's affine "scale" is folded into its convolution in-graph, so
  onnxruntime constant-folds the whole weight path once at load.

The build is deterministic: the same two input files give a byte-identical ONNX file (node order,
tensor names, opset 13, IR version 8 and producer are fixed), equal to the file in
../shared/models. Needs the ``onnx`` package (``pip install 'facecli[build-models]'``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facecli.errors import ModelError

#: The npm tarball the weights come from (MIT), and the two files used from it, all pinned.
FACEAPI_PACKAGE = "@vladmandic/face-api"
FACEAPI_VERSION = "1.7.15"
FACEAPI_TARBALL_URL = "https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz"
FACEAPI_TARBALL_SHA256 = "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
FACEAPI_TARBALL_SIZE = 12677476
MANIFEST_MEMBER = "package/model/face_recognition_model-weights_manifest.json"
WEIGHTS_MEMBER = "package/model/face_recognition_model.bin"
MANIFEST_SHA256 = "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b"
WEIGHTS_SHA256 = "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"

OUTPUT_FILE = "dlib_resnet_faceapi_rec_u8.onnx"
PRODUCER = "facecli-modeleval-convert_faceapi_rec"
GRAPH_NAME = "faceapi_recognition_net"
DOC = (
    "ONNX rebuild of face-api.js FaceRecognitionNet (dlib ResNet-29 port) from npm "
    "@vladmandic/face-api@1.7.15 model/face_recognition_model.bin (MIT). Input RGB 0..255 NCHW "
    "150x150 dlib-style face chip; output 128-d descriptor."
)
OPSET = 13
IR_VERSION = 8
MEAN_RGB = (122.782, 117.001, 104.298)
INPUT_SIZE = 150

#: (block name, is "down" block), in forward order (FaceRecognitionNet.ts).
_BLOCKS: tuple[tuple[str, bool], ...] = (
    ("conv32_1", False), ("conv32_2", False), ("conv32_3", False),
    ("conv64_down", True), ("conv64_1", False), ("conv64_2", False), ("conv64_3", False),
    ("conv128_down", True), ("conv128_1", False), ("conv128_2", False),
    ("conv256_down", True), ("conv256_1", False), ("conv256_2", False),
    ("conv256_down_out", True),
)


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ModelError(
            "building the dlib-resnet model needs the `onnx` package, which is not installed",
            hint="install facecli's build-models extra (pip install onnx), then run "
            "`facecli models fetch dlib-resnet` again; or copy a built file in with "
            "`facecli models import DIR`",
        ) from exc
    return onnx


@dataclass(frozen=True)
class _Weight:
    name: str
    shape: tuple[int, ...]
    #: uint8 codes (quantized) or float32 values, in TF.js layout (filters HWIO)
    data: np.ndarray
    scale: float | None = None
    min: float | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_weights(manifest: bytes, weights: bytes, *, check_hashes: bool = True) -> dict[str, _Weight]:
    """Split the TF.js weight file into named tensors (manifest order, uint8 codes kept)."""
    if check_hashes:
        if _sha256(manifest) != MANIFEST_SHA256:
            raise ModelError("face-api weights manifest fails its sha256 check",
                             hint=f"expected {MANIFEST_SHA256} ({MANIFEST_MEMBER} of "
                             f"{FACEAPI_PACKAGE}@{FACEAPI_VERSION})")
        if _sha256(weights) != WEIGHTS_SHA256:
            raise ModelError("face-api weight file fails its sha256 check",
                             hint=f"expected {WEIGHTS_SHA256} ({WEIGHTS_MEMBER} of "
                             f"{FACEAPI_PACKAGE}@{FACEAPI_VERSION})")
    groups = json.loads(manifest)
    out: dict[str, _Weight] = {}
    offset = 0
    for group in groups:
        for spec in group["weights"]:
            shape = tuple(int(d) for d in spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            q = spec.get("quantization")
            if q is not None:
                if q.get("dtype") != "uint8":
                    raise ModelError(f"face-api weight {spec['name']}: unsupported quantization {q}")
                arr = np.frombuffer(weights, dtype=np.uint8, count=count, offset=offset)
                offset += count
                out[spec["name"]] = _Weight(spec["name"], shape, arr.reshape(shape),
                                            float(q["scale"]), float(q["min"]))
            else:
                if spec.get("dtype", "float32") != "float32":
                    raise ModelError(f"face-api weight {spec['name']}: unsupported dtype {spec['dtype']}")
                arr = np.frombuffer(weights, dtype="<f4", count=count, offset=offset)
                offset += 4 * count
                out[spec["name"]] = _Weight(spec["name"], shape, arr.reshape(shape).astype(np.float32))
    if offset != len(weights):
        raise ModelError(f"face-api weight file: {len(weights) - offset} bytes left after the manifest's tensors")
    return out


class _GraphBuilder:
    """Emits nodes and initializers in creation order with counter-suffixed names (deterministic)."""

    def __init__(self, onnx: Any, weights: dict[str, _Weight]) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.w = weights
        self.n = 0
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, prefix: str, arr: np.ndarray) -> str:
        name = self.fresh(prefix)
        # np.ascontiguousarray would turn a 0-d scalar into shape (1,): copy instead.
        self.inits.append(self.numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], **attrs))
        return output

    def op(self, op: str, inputs: list[str], prefix: str, **attrs: Any) -> str:
        return self.node(op, inputs, self.fresh(prefix), **attrs)

    def op_const(self, op: str, x: str, prefix: str, cprefix: str, c: np.ndarray) -> str:
        out = self.fresh(prefix)
        return self.node(op, [x, self.const(cprefix, c)], out)

    def deq(self, name: str) -> str:
        """uint8 codes -> float32 ``q * scale + min`` in-graph."""
        w = self.w[name]
        if not w.quantized:
            raise ModelError(f"face-api weight {name} is expected to be quantized")
        q = self.const("q", w.data)
        cast = self.op("Cast", [q], "cast", to=self.onnx.TensorProto.FLOAT)
        mul = self.op_const("Mul", cast, "mul", "s", np.array(w.scale, dtype=np.float32))
        return self.op_const("Add", mul, "deq", "m", np.array(w.min, dtype=np.float32))

    def conv_layer(self, x: str, prefix: str, stride: int, relu: bool, valid: bool) -> str:
        """convLayer.ts: relu?((conv(x, W) + b) * sw + sb), with sw folded into W and b."""
        w = self.w[f"{prefix}/conv/filters"]
        kh, kw = w.shape[0], w.shape[1]
        out = self.fresh(prefix.replace("/", "_"))
        sw = self.deq(f"{prefix}/scale/weights")
        wfold = self.fresh("wfold")
        if w.quantized:
            filt = self.op("Transpose", [self.deq(w.name)], "tr", perm=[3, 2, 0, 1])  # HWIO -> OIHW
        else:
            filt = self.const("f", w.data.transpose(3, 2, 0, 1))
        rs = self.op_const("Reshape", self.deq(f"{prefix}/scale/weights"), "rs", "shape",
                           np.array([-1, 1, 1, 1], dtype=np.int64))
        self.node("Mul", [filt, rs], wfold)
        bmul = self.fresh("bmul")
        self.node("Mul", [self.deq(f"{prefix}/conv/bias"), sw], bmul)
        bfold = self.fresh("bfold")
        self.node("Add", [bmul, self.deq(f"{prefix}/scale/biases")], bfold)
        pad = [0, 0, 0, 0] if valid else [kh // 2, kw // 2, kh // 2, kw // 2]
        self.node("Conv", [x, wfold, bfold], out, kernel_shape=[kh, kw], pads=pad, strides=[stride, stride])
        return self.op("Relu", [out], "relu") if relu else out

    def residual(self, x: str, prefix: str) -> str:
        out = self.conv_layer(x, f"{prefix}/conv1", 1, True, False)
        out = self.conv_layer(out, f"{prefix}/conv2", 1, False, False)
        out = self.op("Add", [out, x], "add")
        return self.op("Relu", [out], "relu")

    def residual_down(self, x: str, prefix: str, size: int, channels: int) -> tuple[str, int, int]:
        """residualLayer.ts residualDown; returns (output, spatial size, channels)."""
        out_ch = self.w[f"{prefix}/conv1/conv/filters"].shape[3]
        out = self.conv_layer(x, f"{prefix}/conv1", 2, True, True)
        out = self.conv_layer(out, f"{prefix}/conv2", 1, False, False)
        conv_size = (size - 3) // 2 + 1
        pool_size = (size - 2) // 2 + 1
        pooled = self.op("AveragePool", [x], "avgpool", kernel_shape=[2, 2], strides=[2, 2])
        if conv_size != pool_size:  # zero row at the bottom, zero column at the right
            out = self.op_const("Pad", out, "padhw", "pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int64))
        if channels != out_ch:  # zero channels after the pooled ones
            pooled = self.op_const("Pad", pooled, "padc", "pads",
                                   np.array([0, 0, 0, 0, 0, out_ch - channels, 0, 0], dtype=np.int64))
        out = self.op("Add", [pooled, out], "add")
        return self.op("Relu", [out], "relu"), pool_size, out_ch

    def build(self) -> Any:
        helper, tp = self.helper, self.onnx.TensorProto
        x = self.op_const("Sub", "input", "sub", "mean", np.array(MEAN_RGB, dtype=np.float32).reshape(1, 3, 1, 1))
        x = self.op_const("Div", x, "div", "c255", np.array(255.0, dtype=np.float32))
        x = self.conv_layer(x, "conv32_down", 2, True, True)
        x = self.op("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2])
        size = ((INPUT_SIZE - 7) // 2 + 1 - 3) // 2 + 1
        channels = self.w["conv32_down/conv/filters"].shape[3]
        for block, down in _BLOCKS:
            if down:
                x, size, channels = self.residual_down(x, block, size, channels)
            else:
                x = self.residual(x, block)
        x = self.op("GlobalAveragePool", [x], "gap")
        x = self.op("Flatten", [x], "flat", axis=1)
        self.node("MatMul", [x, self.deq("fc")], "embedding")
        graph = helper.make_graph(
            self.nodes, GRAPH_NAME,
            [helper.make_tensor_value_info("input", tp.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE])],
            [helper.make_tensor_value_info("embedding", tp.FLOAT, ["N", 128])],
            initializer=self.inits,
        )
        model = helper.make_model(graph, producer_name=PRODUCER, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        model.doc_string = DOC
        return model


def build_model(manifest: bytes, weights: bytes, *, check_hashes: bool = True) -> bytes:
    """The serialized ONNX model for the face-api recognition weights (deterministic bytes)."""
    onnx = _import_onnx()
    parsed = parse_weights(manifest, weights, check_hashes=check_hashes)
    model = _GraphBuilder(onnx, parsed).build()
    onnx.checker.check_model(model)
    return model.SerializeToString()


def read_tarball(tgz: bytes | Path, *, check_hash: bool = True) -> tuple[bytes, bytes]:
    """(manifest, weights) from the npm tarball of @vladmandic/face-api@1.7.15."""
    data = tgz if isinstance(tgz, bytes) else Path(tgz).read_bytes()
    if check_hash and _sha256(data) != FACEAPI_TARBALL_SHA256:
        raise ModelError(f"{FACEAPI_PACKAGE}@{FACEAPI_VERSION} tarball fails its sha256 check",
                         hint=f"expected {FACEAPI_TARBALL_SHA256} ({FACEAPI_TARBALL_URL})")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            files = {}
            for member in (MANIFEST_MEMBER, WEIGHTS_MEMBER):
                f = tar.extractfile(member)
                if f is None:
                    raise KeyError(member)
                files[member] = f.read()
    except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
        raise ModelError(f"cannot read the face-api weights from the npm tarball: {exc}") from exc
    return files[MANIFEST_MEMBER], files[WEIGHTS_MEMBER]


def build_from_tarball(tgz: bytes | Path) -> bytes:
    manifest, weights = read_tarball(tgz)
    return build_model(manifest, weights)
