"""onnxruntime sessions: created once per model, with explicit threads and providers.

Why explicit threads: onnxruntime defaults to every core for intra-op work, which fights the
decode threads that overlap with inference; the pipeline decides the split.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnxruntime as ort
import platformdirs

from facecli.errors import ConfigError, ModelError

DEVICES = ("auto", "cpu", "cuda")


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}", hint=f"use one of {', '.join(DEVICES)}")
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                "device cuda requested but onnxruntime has no CUDA provider",
                hint="install onnxruntime-gpu with a matching CUDA, or use --device cpu",
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _options(threads: int | None, level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    return opts


def optimized_cache_dir() -> Path:
    """Where onnxruntime-optimised copies of the models are kept (no biometric data)."""
    return Path(platformdirs.user_cache_dir("facecli")) / "ort"


def optimized_cache_path(path: Path, sha256: str) -> Path:
    """Keyed by the model's hash and the file itself (path, size, mtime) and onnxruntime's version."""
    st = path.stat()
    key = hashlib.sha256(f"{sha256}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    return optimized_cache_dir() / f"{key}-ort{ort.__version__}.onnx"


def _cached_graph(path: Path, sha256: str | None) -> Path:
    """A graph already optimised by this onnxruntime version, when the model is worth it.

    Why: the recognizer's 8-bit weights are dequantised by constant folding at every session
    start (~0.15 s, a tenth of a cold `facecli search`). The folded graph (portable "extended"
    level; the hardware-specific layout pass still runs at load) is saved once, keyed by the
    verified model's sha256 and the onnxruntime version, and loads in ~0.02 s.
    """
    if not sha256 or path.stat().st_size < (1 << 20):
        return path
    cached = optimized_cache_path(path, sha256)
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        opts = _options(1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        opts.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        os.replace(tmp, cached)
        return cached
    except Exception:  # a read-only cache dir or a full disk only costs start-up time
        return path


def make_session(path: Path, threads: int | None = None, device: str = "cpu",
                 sha256: str | None = None) -> ort.InferenceSession:
    """One session per model; ``sha256`` (of a verified file) enables the optimised-graph cache."""
    providers = providers_for(device)
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = _cached_graph(path, sha256) if providers == ["CPUExecutionProvider"] else path
    try:
        return ort.InferenceSession(str(source), sess_options=_options(threads, level), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        if source != path:  # a damaged cache entry: drop it and use the model itself
            source.unlink(missing_ok=True)
            return make_session(path, threads, device)
        raise ModelError(f"cannot load model {path}: {exc}") from exc
