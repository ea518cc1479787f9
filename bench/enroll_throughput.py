"""`enroll` into the local engine vs `check` alone on the same photos (target: within 10%).

    FACECLI_MODELS_DIR=../shared/models python bench/enroll_throughput.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from facecli.pipeline.check import CheckConfig, FaceChecker  # noqa: E402
from facecli.pipeline.enroll import EnrollOptions, run_check, run_enroll  # noqa: E402
from facecli.pipeline.persons import PersonPolicy  # noqa: E402
from facecli.sinks.local import LocalSink  # noqa: E402
from facecli.sources.folder import discover_folder  # noqa: E402

PAIRS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "deepface-pairs"
POLICY = PersonPolicy(on_duplicate="warn", on_identity_mismatch="warn")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    checker = FaceChecker.open(CheckConfig())
    discovery = discover_folder(PAIRS)
    run_check(discovery, checker, policy=POLICY)  # warm-up
    checks, enrolls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            t0 = time.perf_counter()
            run_check(discovery, checker, policy=POLICY)
            checks.append(time.perf_counter() - t0)
            sink = LocalSink(Path(tmp) / f"{i}.db", writer=True)
            t0 = time.perf_counter()
            res = run_enroll(discovery, checker, sink, EnrollOptions(create_collection=True), policy=POLICY)
            enrolls.append(time.perf_counter() - t0)
            sink.close()
    n = discovery.image_count
    c, e = statistics.median(checks), statistics.median(enrolls)
    print(f"deepface-pairs: {n} images, {res.summary.persons['enrolled']} persons enrolled (median of {args.repeat})")
    print(f"  check   {n / c:6.1f} images/s")
    print(f"  enroll  {n / e:6.1f} images/s   enroll/check time ratio {e / c:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
