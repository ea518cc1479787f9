"""Streaming enroll: time to the first enrolled person, throughput and peak RSS as the run grows.

Builds a folder of N persons (one photo each: the 4,991 lfw-view1 photos repeated under new ids,
as hard links, or copies where links cannot be made; `--follow-symlinks` is not needed) and runs
`facecli enroll` on it as a separate process, into the local engine (a fresh SQLite file) and into
`facecli serve` (a separate process on a free 127.0.0.1 port). Repeats of a photo are the same
photo under another id, so the runs use `--on-duplicate warn` (every person is sent; the duplicate
check still runs) and `--no-cache` (a repeated photo is checked again, not read from the cache).

Measured per run: seconds from the process start to the first `enrolled` person line in the report
(lines are written as persons finish), to the end, photos/s, and the enroll process's peak RSS
(``ru_maxrss``, written by a wrapper at exit; with `--executor ray` that is the driver only).
`--code DIR` runs another checkout of facecli (e.g. the code before streaming:
``git clone /work/main /tmp/old_facecli`` at the old commit) with the same photos and targets.
With several executors the report lines of each size are compared with the first executor's.

    FACECLI_MODELS_DIR=../shared/models nice python bench/enroll_stream.py --sizes 1000,5000,20000
    ... --code /tmp/old_facecli --label before        # the same against an old checkout
    ... --executors local,ray --targets local          # Ray Data on a local Ray vs local threads
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from remote_throughput import KEY, free_port, start_server, stop_server  # bench/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LFW = SHARED / "datasets" / "lfw-view1" / "images"

#: Runs the facecli CLI and writes this process's peak RSS (KiB) to $BENCH_RSS_FILE at exit.
CHILD = """
import atexit, os, resource, sys
def _rss():
    with open(os.environ["BENCH_RSS_FILE"], "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(_rss)
from facecli.cli.app import main
sys.argv = ["facecli"] + sys.argv[1:]
main()
"""


def build_tree(root: Path, n: int) -> Path:
    photos = sorted(LFW.rglob("*.jpg"))
    tree = root / f"persons-{n}"
    if tree.is_dir():
        return tree
    for k in range(n):
        d = tree / f"p{k:06d}"
        d.mkdir(parents=True)
        src = photos[k % len(photos)]
        try:
            os.link(src, d / src.name)
        except OSError:
            shutil.copy(src, d / src.name)
    return tree


def run_one(tree: Path, n: int, target: str, executor: str, code: Path, work: Path) -> dict:
    """One `facecli enroll` run; returns its figures."""
    report = work / f"report-{n}-{target}-{executor}-{code.name}.jsonl"
    rss_file = work / "rss.txt"
    for f in (report, rss_file):
        f.unlink(missing_ok=True)
    server = None
    args = [str(tree), "--report", str(report), "--on-duplicate", "warn", "--on-identity-mismatch", "warn",
            "--no-cache", "--journal", str(work / f"journal-{n}-{target}-{executor}-{code.name}.db"), "-q",
            "--max-failures", "100%"]
    if executor != "local":
        args += ["--executor", executor]
    db = work / f"target-{n}-{target}-{executor}-{code.name}.db"
    db.unlink(missing_ok=True)
    if target == "local":
        args += ["--db", str(db), "--create-collection"]
    else:
        port = free_port()
        server = start_server(db, port, threads=2, workers=2)  # facecli serve's defaults on this machine
        args += ["--to", f"http://127.0.0.1:{port}", "--create-collection"]
    env = dict(os.environ, BENCH_RSS_FILE=str(rss_file), FACECLI_API_KEY=KEY, PYTHONPATH=str(code))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "enroll", *args], env=env, cwd=code,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    try:
        while proc.poll() is None:
            if first is None and report.is_file():
                with report.open() as f:
                    if any('"kind": "person"' in line and '"status": "enrolled"' in line for line in f):
                        first = time.monotonic() - t0
            time.sleep(0.1)
        total = time.monotonic() - t0
        err = proc.stderr.read().decode()
    finally:
        if server is not None:
            stop_server(server)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"enroll exited {proc.returncode}: {err[-3000:]}")
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    if first is None:  # the old code writes every line at the end: its first person is at the end
        first = total
    enrolled = sum(1 for x in lines if x["kind"] == "person" and x["status"] == "enrolled")
    return {"persons": n, "target": target, "executor": executor, "code": str(code), "first_enrolled_s": round(first, 2),
            "total_s": round(total, 1), "photos_per_s": round(n / total, 1), "enrolled": enrolled,
            "peak_rss_mb": round(int(rss_file.read_text()) / 1024, 1), "report": str(report)}


def same_lines(a: str, b: str) -> bool:
    def norm(path: str) -> list[dict]:
        return [json.loads(x) for x in Path(path).read_text().splitlines()]

    return norm(a) == norm(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000,20000", help="persons per run, comma-separated")
    ap.add_argument("--targets", default="local,serve", help="local (SQLite engine) and/or serve (facecli serve)")
    ap.add_argument("--executors", default="local", help="local and/or ray (a local Ray on this machine's cores)")
    ap.add_argument("--code", type=Path, default=REPO, help="the facecli checkout to run (default: this one)")
    ap.add_argument("--label", default="", help="a name for this code in the output")
    ap.add_argument("--work", type=Path, default=None, help="folder for the trees, targets and reports (kept)")
    ap.add_argument("--out", type=Path, default=None, help="append each run's figures as a JSON line")
    args = ap.parse_args()
    models = os.environ.get("FACECLI_MODELS_DIR")
    if models:  # the runs start in other folders (--code)
        os.environ["FACECLI_MODELS_DIR"] = str(Path(models).resolve())
    if not LFW.is_dir():
        raise SystemExit(f"{LFW} is absent")
    work = args.work or Path(tempfile.mkdtemp(prefix="enroll_stream_"))
    work.mkdir(parents=True, exist_ok=True)
    label = args.label or args.code.name
    print(f"{'code':>10} {'target':>7} {'executor':>8} {'persons':>8} {'first enrolled s':>17} {'total s':>8} "
          f"{'photos/s':>9} {'peak RSS MB':>12}")
    for n in (int(x) for x in args.sizes.split(",")):
        tree = build_tree(work, n)
        for target in args.targets.split(","):
            reference = None
            for executor in args.executors.split(","):
                r = run_one(tree, n, target, executor, args.code.resolve(), work) | {"label": label}
                same = "" if reference is None else (
                    " (report lines identical to local)" if same_lines(reference, r["report"]) else " (REPORT DIFFERS)")
                r["same_report_as_first_executor"] = None if reference is None else same.startswith(" (report lines identical")
                reference = reference or r["report"]
                print(f"{label:>10} {target:>7} {executor:>8} {n:>8,} {r['first_enrolled_s']:>17} {r['total_s']:>8} "
                      f"{r['photos_per_s']:>9} {r['peak_rss_mb']:>12}{same}", flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
