"""Second, unchanged enroll run vs the first one (target: <= 10%), and the ledger's cost per image.

The second run asks the target in one batched query which of the ledger's persons it still holds
(``held_ids``) before skipping them as UNCHANGED; its time is printed separately.

    FACECLI_MODELS_DIR=../shared/models python bench/rerun.py           # deepface-pairs (64 photos)
    FACECLI_MODELS_DIR=../shared/models python bench/rerun.py --lfw     # all lfw-view1: 3,094 persons
"""

from __future__ import annotations

import argparse
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

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PAIRS = DATASETS / "deepface-pairs"
LFW = DATASETS / "lfw-view1" / "images"
POLICY = PersonPolicy(on_duplicate="warn", on_identity_mismatch="warn")


class TimedSink(LocalSink):
    """The local sink, timing the target check (``held_ids``) of a re-run."""

    held_s = 0.0

    def held_ids(self, collection, person_ids):
        t0 = time.perf_counter()
        try:
            return super().held_ids(collection, person_ids)
        finally:
            TimedSink.held_s += time.perf_counter() - t0


def one_run(checker: FaceChecker, db: Path, journal_path: Path | None, root: Path = PAIRS) -> tuple[float, dict]:
    t0 = time.perf_counter()
    discovery = discover_folder(root)
    sink = TimedSink(db, writer=True)
    journal = Journal(journal_path) if journal_path else None
    try:
        res = run_enroll(discovery, checker, sink, EnrollOptions(create_collection=True), policy=POLICY, journal=journal)
    finally:
        sink.close()
        if journal:
            journal.close()
    return time.perf_counter() - t0, res.summary.to_json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", action="store_true", help="all of lfw-view1 (3,094 persons) instead of deepface-pairs")
    args = ap.parse_args()
    root, label = (LFW, "lfw-view1") if args.lfw else (PAIRS, "deepface-pairs")
    checker = FaceChecker.open(CheckConfig())
    n = discover_folder(root).image_count
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.lfw:  # the small set: warm-up and a no-journal baseline are cheap
            one_run(checker, tmp / "warm.db", None, root)
            no_journal, _ = one_run(checker, tmp / "a.db", None, root)
        first, s1 = one_run(checker, tmp / "b.db", tmp / "j.db", root)
        TimedSink.held_s = 0.0
        second, s2 = one_run(checker, tmp / "b.db", tmp / "j.db", root)
    print(f"{label}: {n} images, {sum(s1['persons'].values())} persons")
    print(f"  first run (journal)        {first:7.2f} s  enrolled {s1['persons']['enrolled']}")
    print(f"  second run, unchanged      {second:7.3f} s  skipped {s2['persons']['skipped']} "
          f"(ratio {second / first:.1%} of the first; target <= 10%)")
    print(f"  of which the target check  {TimedSink.held_s:7.3f} s for {s2.get('ledger', {}).get('unchanged', 0)} "
          f"persons held ({s2.get('ledger', {}).get('missing_at_target', 0)} missing)")
    if not args.lfw:
        print(f"  first run without journal  {no_journal:7.2f} s")
        print(f"  journal overhead           {(first - no_journal) / n * 1e3:7.2f} ms per image")


if __name__ == "__main__":
    main()
