"""onnxruntime sessions: created once per model, with explicit threads and providers.

Why explicit threads: onnxruntime defaults to every core for intra-op work, which fights the
decode threads that overlap with inference; the pipeline decides the split.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

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


def make_session(path: Path, threads: int | None = None, device: str = "cpu") -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers_for(device))
    except ConfigError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"cannot load model {path}: {exc}") from exc
