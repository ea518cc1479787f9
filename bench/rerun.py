"""Second, unchanged enroll run vs the first one (target: <= 10%), and the ledger's cost per image.

    FACECLI_MODELS_DIR=../shared/models python bench/rerun.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from facecli.pipeline.check import CheckConfig, FaceChecker  # noqa: E402
from facecli.pipeline.enroll import EnrollOptions, run_enroll  # noqa: E402
from facecli.pipeline.journal import Journal  # noqa: E402
from facecli.pipeline.persons import PersonPolicy  # noqa: E402
from facecli.sinks.local import LocalSink  # noqa: E402
from facecli.sources.folder import discover_folder  # noqa: E402

PAIRS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "deepface-pairs"
POLICY = PersonPolicy(on_duplicate="warn", on_identity_mismatch="warn")


def one_run(checker: FaceChecker, db: Path, journal_path: Path | None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    discovery = discover_folder(PAIRS)
    sink = LocalSink(db, writer=True)
    journal = Journal(journal_path) if journal_path else None
    try:
        res = run_enroll(discovery, checker, sink, EnrollOptions(create_collection=True), policy=POLICY, journal=journal)
    finally:
        sink.close()
        if journal:
            journal.close()
    return time.perf_counter() - t0, res.summary.to_json()


def main() -> None:
    checker = FaceChecker.open(CheckConfig())
    n = discover_folder(PAIRS).image_count
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one_run(checker, tmp / "warm.db", None)  # warm-up: sessions, page cache
        no_journal, _ = one_run(checker, tmp / "a.db", None)
        first, s1 = one_run(checker, tmp / "b.db", tmp / "j.db")
        second, s2 = one_run(checker, tmp / "b.db", tmp / "j.db")
    print(f"deepface-pairs: {n} images, {sum(s1['persons'].values())} persons")
    print(f"  first run (journal)        {first:7.2f} s  enrolled {s1['persons']['enrolled']}")
    print(f"  second run, unchanged      {second:7.3f} s  skipped {s2['persons']['skipped']} "
          f"(ratio {second / first:.1%} of the first; target <= 10%)")
    print(f"  first run without journal  {no_journal:7.2f} s")
    print(f"  journal overhead           {(first - no_journal) / n * 1e3:7.2f} ms per image")


if __name__ == "__main__":
    main()
