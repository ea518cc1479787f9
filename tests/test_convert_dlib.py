"""Building dlib_resnet_faceapi_rec_u8.onnx from face-api's TF.js weights (`facecli models fetch dlib-resnet`).

The weights come from the npm tarball of @vladmandic/face-api@1.7.15, obtained with `npm pack`
(the npm registry is reachable from CI) and cached in pytest's cache dir; set FACECLI_FACEAPI_TGZ
to a copy of the tarball to run these tests offline. Without either they skip, saying why.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from facecli.errors import ModelError
from facecli.vision import convert_dlib as conv
from facecli.vision import models as reg

from .conftest import DATASETS, MODELS, needs_data, needs_models
from .test_models import FileServer

onnx = pytest.importorskip("onnx", reason="the onnx package (facecli[build-models] / [dev]) is not installed")
ort = pytest.importorskip("onnxruntime")

TGZ_NAME = "vladmandic-face-api-1.7.15.tgz"
NPM_TIMEOUT_S = 90


def _verified(p: Path) -> bool:
    return p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == conv.FACEAPI_TARBALL_SHA256


@pytest.fixture(scope="session")
def faceapi_tgz(request, tmp_path_factory) -> Path:
    env = os.environ.get("FACECLI_FACEAPI_TGZ")
    if env:
        if not _verified(Path(env)):
            pytest.fail(f"FACECLI_FACEAPI_TGZ={env} is not the pinned {conv.FACEAPI_PACKAGE}@{conv.FACEAPI_VERSION} tarball")
        return Path(env)
    store = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cache = Path(store.mkdir("faceapi-tgz")) if store is not None else tmp_path_factory.mktemp("faceapi-tgz")
    tgz = cache / TGZ_NAME
    if _verified(tgz):
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: cannot obtain the face-api weights (or set FACECLI_FACEAPI_TGZ)")
    spec = f"{conv.FACEAPI_PACKAGE}@{conv.FACEAPI_VERSION}"
    try:
        # few, short retries: without registry access this skips in seconds, not minutes
        res = subprocess.run([npm, "pack", spec, "--loglevel=error", "--fetch-retries=1",
                              "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=3000"],
                             cwd=cache, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm pack {spec}` took longer than {NPM_TIMEOUT_S} s (no access to the npm registry?)")
    if res.returncode != 0 or not tgz.is_file():
        lines = [ln for ln in (res.stderr or res.stdout).splitlines() if "code" in ln or "Error" in ln]
        pytest.skip(f"`npm pack {spec}` failed (exit {res.returncode}): {' | '.join(lines[:2])[:300]}")
    if not _verified(tgz):
        pytest.fail(f"`npm pack {spec}` gave a tarball whose sha256 is not the pinned {conv.FACEAPI_TARBALL_SHA256}")
    return tgz


@pytest.fixture(scope="session")
def built(faceapi_tgz) -> bytes:
    return conv.build_from_tarball(faceapi_tgz)


def test_build_is_deterministic_and_matches_the_registry_pin(faceapi_tgz, built):
    assert hashlib.sha256(built).hexdigest() == reg.DLIB_RESNET.files[0].sha256
    assert len(built) == reg.DLIB_RESNET.files[0].size
    manifest, weights = conv.read_tarball(faceapi_tgz)
    assert conv.build_model(manifest, weights) == built  # same inputs, same bytes


@needs_models
def test_build_is_byte_identical_to_the_shared_file(built):
    assert built == (MODELS / conv.OUTPUT_FILE).read_bytes()


def test_graph_contract(built):
    m = onnx.load_from_string(built)
    assert [o.version for o in m.opset_import] == [13] and m.ir_version == 8
    (inp,), (out,) = m.graph.input, m.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, dims(inp)) == ("input", ["N", 3, 150, 150])
    assert (out.name, dims(out)) == ("embedding", ["N", 128])
    kinds = {t.data_type for t in m.graph.initializer}
    assert onnx.TensorProto.UINT8 in kinds  # 8-bit codes kept, dequantised in-graph
    assert sum(n.op_type == "Conv" for n in m.graph.node) == 29


def test_corrupt_weights_are_refused(faceapi_tgz):
    manifest, weights = conv.read_tarball(faceapi_tgz)
    with pytest.raises(ModelError, match="sha256"):
        conv.build_model(manifest, weights[:-1] + b"\x00")
    with pytest.raises(ModelError, match="sha256"):
        conv.read_tarball(faceapi_tgz.read_bytes()[:-10])
    # a manifest that does not account for every byte is refused even without the pin
    doc = json.loads(manifest)
    doc[0]["weights"] = doc[0]["weights"][:-1]
    with pytest.raises(ModelError, match="bytes left"):
        conv.parse_weights(json.dumps(doc).encode(), weights, check_hashes=False)


def _session(model: bytes | Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


@needs_models
@needs_data
def test_embeddings_match_the_shared_model_on_real_aligned_faces(built, checker):
    from facecli.imaging.decode import decode_image

    pairs = DATASETS / "deepface-pairs"
    crops = []
    for p in sorted(pairs.glob("img*.jpg"))[:12]:
        item = checker._gate(str(p), decode_image(str(p), checker.config.limits), 0.0)
        if item.crop is not None:
            crops.append(item.crop)
    assert len(crops) >= 8
    blob = np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2), dtype=np.float32)
    ours = _session(built).run(["embedding"], {"input": blob})[0]
    ref = _session(MODELS / conv.OUTPUT_FILE).run(["embedding"], {"input": blob})[0]
    assert ours.shape == (len(crops), 128)
    assert float(np.abs(ours - ref).max()) <= 1e-4


def test_fetch_downloads_and_builds_from_a_mirror(faceapi_tgz, tmp_path, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = FileServer()
    try:
        recipe = reg.DLIB_RESNET.files[0].build
        server.files[recipe.source_file] = faceapi_tgz.read_bytes()
        statuses = []
        r = reg.fetch_model("dlib-resnet", tmp_path, mirror=server.url, on_status=statuses.append)
    finally:
        server.close()
    assert r.action == "built" and r.path == tmp_path / conv.OUTPUT_FILE
    assert reg.file_status(r.path, reg.DLIB_RESNET.files[0]) == "present"
    assert not (tmp_path / recipe.source_file).exists()  # the 12 MB tarball is not kept
    assert statuses and "building" in statuses[0]


def test_read_tarball_reports_a_tarball_without_the_weights(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ModelError, match="cannot read the face-api weights"):
        conv.read_tarball(buf.getvalue(), check_hash=False)
