"""The model registry and `facecli models` operations: list, verify, download (resume, hash check), import.

Nothing here touches the network: downloads go to a throw-away HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from facecli.errors import ConfigError, ModelError
from facecli.vision import models as reg

from .conftest import MODELS, needs_models

YUNET_2023 = "face_detection_yunet_2023mar.onnx"
YUNET_2026 = "face_detection_yunet_2026may.onnx"
DLIB = "dlib_resnet_faceapi_rec_u8.onnx"
JSON_KEYS = {"name", "role", "file", "sha256", "size", "license", "status", "path"}


class FileServer:
    """A tiny HTTP/1.0 file server with Range support and failure knobs, for download tests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: dict[str, int] = {}  # name -> send only this many bytes, once, then hang up
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.drop_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def no_models_env(monkeypatch, tmp_path):
    """FACECLI_MODELS_DIR points at an empty folder; the user cache (XDG_CACHE_HOME) is per test."""
    empty = tmp_path / "env-models"
    empty.mkdir()
    monkeypatch.setenv("FACECLI_MODELS_DIR", str(empty))
    return empty


def _file(name: str) -> reg.ModelFile:
    return next(mf for spec in reg.REGISTRY.values() for mf in spec.files if mf.file == name)


def _fake_file(monkeypatch, name: str, data: bytes) -> reg.ModelFile:
    """Re-pin registry file ``name`` to ``data`` (for tests that need no real model)."""
    for key, spec in list(reg.REGISTRY.items()):
        files = tuple(reg.ModelFile(**{**mf.__dict__, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
                      if mf.file == name else mf for mf in spec.files)
        monkeypatch.setitem(reg.REGISTRY, key, reg.ModelSpec(**{**spec.__dict__, "files": files}))
    return _file(name)


# -- registry --------------------------------------------------------------------------------


def test_registry_defaults_and_optional_sface():
    assert reg.DEFAULT_MODELS == ("yunet", "dlib-resnet")
    assert reg.YUNET.fetch_file.file == YUNET_2023
    assert reg.YUNET.fetch_file.sha256 == "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
    assert reg.DLIB_RESNET.fetch_file.build is not None and reg.DLIB_RESNET.fetch_file.url is None
    sface = reg.REGISTRY["sface"]
    assert not sface.validated and sface.role == "recognizer" and sface.license.startswith("Apache-2.0")
    assert sface.files[0].input_size == (112, 112) and sface.files[0].url
    assert all(reg.REGISTRY[n].validated for n in reg.DEFAULT_MODELS)
    # every pinned hash is a full sha256
    assert all(len(mf.sha256) == 64 for s in reg.REGISTRY.values() for mf in s.files)


@needs_models
def test_registry_hashes_match_shared_sha256sums():
    sums = dict(line.split()[::-1] for line in (MODELS / "SHA256SUMS").read_text().splitlines() if line.strip())
    for name, digest in sums.items():
        mf = _file(name)
        assert mf.sha256 == digest and mf.size == (MODELS / name).stat().st_size


def test_missing_hint_names_every_way_out(no_models_env):
    with pytest.raises(ModelError) as e:
        reg.resolve_model("dlib-resnet")
    text = f"{e.value.message} {e.value.hint}"
    for needle in ("facecli models fetch dlib-resnet", "facecli models import", "FACECLI_MODELS_DIR", "onnx"):
        assert needle in text
    assert "[" not in e.value.hint  # printed as rich markup: brackets would vanish


@needs_models
def test_list_statuses_present_missing_corrupt(no_models_env):
    cache = reg.user_models_dir()
    cache.mkdir(parents=True)
    shutil.copy(MODELS / DLIB, cache / DLIB)
    (cache / YUNET_2023).write_bytes((MODELS / YUNET_2023).read_bytes()[:1000])
    rows = {e.file.file: e for e in reg.list_models()}
    assert list(rows) == [mf.file for s in reg.REGISTRY.values() for mf in s.files]
    assert rows[DLIB].status == "present" and rows[DLIB].path == cache / DLIB
    assert rows[YUNET_2023].status == "corrupt" and rows[YUNET_2023].path == cache / YUNET_2023
    assert rows[YUNET_2026].status == "missing" and rows[YUNET_2026].path is None
    assert set(rows[DLIB].to_json()) == JSON_KEYS
    # an explicit --models-dir comes first
    assert {e.file.file: e.status for e in reg.list_models(MODELS)}[YUNET_2023] == "present"


@needs_models
def test_verify_reports_a_truncated_copy_as_corrupt(no_models_env):
    shutil.copy(MODELS / DLIB, no_models_env / DLIB)
    (no_models_env / YUNET_2026).write_bytes((MODELS / YUNET_2026).read_bytes()[:-1])
    got = {(e.file.file, e.status) for e in reg.verify_models()}
    assert got == {(DLIB, "present"), (YUNET_2026, "corrupt")}
    with pytest.raises(ModelError, match="fail the sha256 check"):
        reg.resolve_model("yunet")


# -- download -----------------------------------------------------------------------------------


def test_download_verifies_and_renames_atomically(server, tmp_path):
    data = bytes(range(256)) * 400
    server.files["f.bin"] = data
    dest = tmp_path / "d" / "f.bin"
    seen = []
    reg.download(f"{server.url}/f.bin", dest, hashlib.sha256(data).hexdigest(), len(data),
                 on_progress=lambda label, done, total: seen.append((done, total)))
    assert dest.read_bytes() == data
    assert not dest.with_name("f.bin.part").exists()
    assert seen[-1] == (len(data), len(data))
    assert server.requests == [("f.bin", None)]


def test_download_resumes_a_partial_file_with_range(server, tmp_path):
    data = b"0123456789" * 5000
    server.files["f.bin"] = data
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data[:12345])
    reg.download(f"{server.url}/f.bin", dest, hashlib.sha256(data).hexdigest(), len(data))
    assert dest.read_bytes() == data
    assert server.requests == [("f.bin", "bytes=12345-")]


def test_download_retries_a_dropped_connection_by_resuming(server, tmp_path):
    data = hashlib.sha256(b"x").digest() * 4000
    server.files["f.bin"] = data
    server.drop_after["f.bin"] = 50_000
    dest = tmp_path / "f.bin"
    reg.download(f"{server.url}/f.bin", dest, hashlib.sha256(data).hexdigest(), len(data))
    assert dest.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=50000-"]


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    data = b"abc" * 10000
    server.files["f.bin"] = data
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"zzz" * 100)  # stale bytes: must not survive
    reg.download(f"{server.url}/f.bin", dest, hashlib.sha256(data).hexdigest(), len(data))
    assert dest.read_bytes() == data


def test_download_hash_mismatch_deletes_and_names_the_file(server, tmp_path):
    server.files["f.bin"] = b"evil" * 100
    dest = tmp_path / "f.bin"
    with pytest.raises(ModelError) as e:
        reg.download(f"{server.url}/f.bin", dest, "0" * 64, 400)
    assert "f.bin" in e.value.message and "sha256" in e.value.message
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()


def test_download_http_error_is_a_model_error(server, tmp_path):
    with pytest.raises(ModelError, match="HTTP 404"):
        reg.download(f"{server.url}/nope.bin", tmp_path / "nope.bin", "0" * 64, 10)


# -- fetch ----------------------------------------------------------------------------------------


@needs_models
def test_fetch_yunet_from_a_mirror_into_the_user_cache(server, no_models_env):
    server.files[YUNET_2023] = (MODELS / YUNET_2023).read_bytes()
    r = reg.fetch_model("yunet", mirror=server.url)
    assert r.action == "downloaded" and r.path == reg.user_models_dir() / YUNET_2023
    assert reg.resolve_model("yunet").path == r.path  # what `facecli check` will now use
    assert reg.fetch_model("yunet", mirror=server.url).action == "present"
    assert len(server.requests) == 1


def test_fetch_refuses_unknown_names():
    with pytest.raises(ConfigError):
        reg.fetch_model("insightface")


def test_fetch_dlib_without_onnx_says_what_to_install(server, tmp_path, monkeypatch):
    monkeypatch.setattr(reg, "_missing_requirements", lambda recipe: ["onnx"])
    with pytest.raises(ModelError) as e:
        reg.fetch_model("dlib-resnet", tmp_path, mirror=server.url)
    assert "onnx" in e.value.message and "build-models" in e.value.hint and "facecli models import" in e.value.hint
    assert server.requests == []  # nothing downloaded before saying so


# -- import -----------------------------------------------------------------------------------


def test_import_copies_verified_files_and_refuses_a_wrong_hash(tmp_path, monkeypatch):
    good = _fake_file(monkeypatch, YUNET_2026, b"good detector")
    _fake_file(monkeypatch, DLIB, b"good recognizer")
    src = tmp_path / "usb"
    src.mkdir()
    (src / YUNET_2026).write_bytes(b"good detector")
    (src / DLIB).write_bytes(b"tampered recognizer")
    (src / "renamed.onnx").write_bytes(b"good recognizer")  # recognised by its hash
    (src / "other.onnx").write_bytes(b"something else")
    dest = tmp_path / "dest"
    r = reg.import_models(src, dest)
    assert sorted((n, s.name, d.name) for n, s, d in r.imported) == [("dlib-resnet", "renamed.onnx", DLIB),
                                                                     ("yunet", YUNET_2026, YUNET_2026)]
    assert [(p.name, "sha256" in why) for p, why in r.refused] == [(DLIB, True)]
    assert [p.name for p in r.ignored] == ["other.onnx"]
    assert (dest / YUNET_2026).read_bytes() == b"good detector" and reg.file_status(dest / YUNET_2026, good) == "present"
    assert (dest / DLIB).read_bytes() == b"good recognizer"
    assert not list(dest.glob("*.part"))
    again = reg.import_models(src, dest)
    assert not again.imported and {n for n, _ in again.present} == {"yunet", "dlib-resnet"}


def test_import_of_an_empty_folder_names_the_expected_files(tmp_path):
    with pytest.raises(ModelError) as e:
        reg.import_models(tmp_path, tmp_path / "dest")
    assert DLIB in e.value.hint
    with pytest.raises(ConfigError):
        reg.import_models(tmp_path / "missing")
