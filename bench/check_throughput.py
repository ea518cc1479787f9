"""Throughput of the check pipeline vs a naive baseline that uses the same models.

Naive = what most tools do: cv2.imread at full resolution, resize to <= 640, detect, then embed the
main face with one recognizer call per image. facecli = FaceChecker.check_paths: JPEG DCT scaling,
decode threads overlapping inference, batched embedding. Both run in this process, on this machine,
one after the other, after a warm-up.

    FACECLI_MODELS_DIR=../shared/models python bench/check_throughput.py [--repeat 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402

from facecli.pipeline.check import CheckConfig, FaceChecker  # noqa: E402
from facecli.vision.align import align_face  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
SETS = {
    "compreface-samples (18 phone/web photos, up to 4912x7360)": SHARED / "datasets" / "compreface-samples",
    "deepface-pairs (64 photos)": SHARED / "datasets" / "deepface-pairs",
}


def naive(checker: FaceChecker, paths: list[Path]) -> dict[str, float]:
    t_dec = t_det = t_emb = 0.0
    for p in paths:
        t0 = time.perf_counter()
        bgr = cv2.imread(str(p))  # full resolution, EXIF applied
        t1 = time.perf_counter()
        if bgr is None:
            t_dec += t1 - t0
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        r = min(1.0, 640 / max(h, w))
        small = cv2.resize(rgb, (round(w * r), round(h * r))) if r < 1 else rgb
        t2 = time.perf_counter()
        faces = checker.detector.detect(small)
        t3 = time.perf_counter()
        if faces:
            main = max(faces, key=lambda f: f.size)
            crop = align_face(rgb, main.landmarks / r)
            checker.recognizer.embed(crop[None])
        t4 = time.perf_counter()
        t_dec += t2 - t0
        t_det += t3 - t2
        t_emb += t4 - t3
    n = len(paths)
    return {"total": t_dec + t_det + t_emb, "decode": t_dec / n, "detect": t_det / n, "align+embed": t_emb / n}


def ours(checker: FaceChecker, paths: list[Path]) -> dict[str, float]:
    t0 = time.perf_counter()
    results = list(checker.check_paths(paths))
    total = time.perf_counter() - t0
    n = len(paths)

    def mean(key: str) -> float:
        return sum(r.timings.get(key, 0.0) for r in results) / n

    return {"total": total, "decode": mean("decode"), "detect": mean("detect"),
            "align+embed": mean("align") + mean("embed")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="facecli's onnxruntime threads (default: its own)")
    ap.add_argument("--decode-workers", type=int, default=None)
    args = ap.parse_args()
    checker = FaceChecker.open(CheckConfig(threads=args.threads, decode_workers=args.decode_workers))
    # The baseline runs onnxruntime the way most tools do: one stream, every core for each model.
    naive_models = FaceChecker.open(CheckConfig(threads=os.cpu_count()))
    print(f"cores={os.cpu_count()}; facecli: onnxruntime threads={checker.recognizer.session.get_session_options().intra_op_num_threads} "
          f"decode workers={checker.config.decode_workers}; naive: onnxruntime threads={os.cpu_count()}; "
          f"repeat={args.repeat} (median of runs)")
    for label, folder in SETS.items():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        ours(checker, paths[:4])  # warm-up: sessions, page cache
        naive(naive_models, paths[:4])
        runs = {"naive": [], "facecli": []}
        for _ in range(args.repeat):
            runs["naive"].append(naive(naive_models, paths))
            runs["facecli"].append(ours(checker, paths))
        print(f"\n{label}: {len(paths)} images")
        print(f"  {'':8} {'images/s':>9} {'decode ms':>10} {'detect ms':>10} {'align+embed ms':>15}")
        ips = {}
        for name, rs in runs.items():
            total = statistics.median(r["total"] for r in rs)
            ips[name] = len(paths) / total
            stage = {k: statistics.median(r[k] for r in rs) * 1e3 for k in ("decode", "detect", "align+embed")}
            print(f"  {name:8} {ips[name]:9.1f} {stage['decode']:10.1f} {stage['detect']:10.1f} {stage['align+embed']:15.1f}")
        print(f"  ratio facecli/naive: {ips['facecli'] / ips['naive']:.2f}x")
        print("  (facecli stage times are per image inside overlapped threads; they add up to more than wall time)")


if __name__ == "__main__":
    main()
