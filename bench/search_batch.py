"""Searching many photos: one `facecli search DIR` process vs one `facecli search IMAGE` process per
photo, against the embedded engine and through `facecli serve` on loopback.

Gallery: one photo each of the first --persons lfw-view1 people (by name) who have two photos or
more and whose first photo the check accepts, enrolled into a fresh SQLite file through the library
(the check stage, then the engine).
Probes (--probes, default 1,000): the other photos of those people (up to --genuine) and photos of
people who are not enrolled (the rest), copied into one folder.

One process: `facecli search PROBES --db DB --json -k 1` (process start and model loading
included), timed end to end. One process per photo: --sample photos (default 30) searched one
`facecli search PHOTO` each, timed, and extrapolated to all the probes (said so in the output).
Then the same two through `facecli serve` (a separate process on a free 127.0.0.1 port serving the
same database; the client sends one face-search request per face, --concurrency in flight).

    FACECLI_MODELS_DIR=../shared/models nice python bench/search_batch.py [--probes 1000] [--sample 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfw_data import LFW, all_images  # noqa: E402
from remote_throughput import KEY, free_port, start_server, stop_server  # noqa: E402

from facecli.engine.engine import Engine, EngineFace, EnginePerson  # noqa: E402
from facecli.pipeline.check import CheckConfig, FaceChecker  # noqa: E402


def choose(persons: int, probes: int, genuine: int) -> tuple[dict[str, str], list[tuple[str, str | None]], object]:
    """({person: photo to enroll}, [(probe photo, its enrolled person or None)], the checks): the
    first --persons people (by name) with two photos or more whose first photo the check accepts."""
    by_person: dict[str, list[str]] = {}
    for rel in all_images():
        by_person.setdefault(rel.split("/")[0], []).append(rel)
    multi = [p for p in sorted(by_person) if len(by_person[p]) >= 2]
    checker = FaceChecker.open(CheckConfig())
    checks = dict(zip(multi, checker.check_paths(LFW / "images" / by_person[p][0] for p in multi)))
    chosen = [p for p in multi if checks[p].embedding is not None][:persons]
    if len(chosen) < persons:
        raise SystemExit(f"lfw-view1 has only {len(chosen)} people with two photos or more and an accepted first one")
    enrolled = {p: by_person[p][0] for p in chosen}
    same = [(rel, p) for p in chosen for rel in by_person[p][1:]][:genuine]
    strangers = [(by_person[p][0], None) for p in sorted(by_person) if p not in enrolled][: probes - len(same)]
    return enrolled, same + strangers, checks


def enroll(db: Path, enrolled: dict[str, str], checks: dict) -> int:
    with Engine(db) as engine:
        engine.create_collection("default", exist_ok=True)
        engine.upsert_persons("default", [EnginePerson(p, p.replace("_", " "),
                                                       faces=[EngineFace(checks[p].embedding, checks[p].sha256 or "")])
                                          for p in enrolled])
        persons, _ = engine.counts("default")
    print(f"enrolled {persons} persons (the first photo of each, accepted by the check)")
    return persons


def run(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "facecli", "search", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"facecli search exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, proc


def measure(label: str, target: list[str], folder: Path, photos: list[Path], truth: dict[str, str | None],
            sample: int, env: dict[str, str]) -> tuple[float, float]:
    one_s, proc = run([str(folder), *target, "--json", "-k", "1"], env)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    if len(lines) != len(photos):
        raise SystemExit(f"{label}: {len(lines)} results for {len(photos)} photos")
    right = wrong = strangers_matched = 0
    for r in lines:
        who = truth[Path(r["query"]).name]
        top = next((f["matches"][0]["person_id"] for f in r["faces"] if f["matches"]), None)
        if who is None:
            strangers_matched += top is not None
        elif top == who:
            right += 1
        elif top is not None:
            wrong += 1
    genuine = sum(1 for v in truth.values() if v is not None)
    step = max(1, len(photos) // sample)
    picked = photos[::step][:sample]
    per = [run([str(p), *target, "--json", "-k", "1"], env)[0] for p in picked]
    per_s = statistics.mean(per) * len(photos)
    print(f"\n{label}: {len(photos)} photos")
    print(f"  one process:          {one_s:7.1f} s  {len(photos) / one_s:7.1f} images/s"
          f"  (bar {lines[0]['min_score']}: enrolled people's other photos -> right person {right}/{genuine},"
          f" wrong person {wrong}; strangers matched {strangers_matched}/{len(photos) - genuine})")
    print(f"  one process per photo: {per_s:7.1f} s  {len(photos) / per_s:7.1f} images/s  (extrapolated from "
          f"{len(picked)} processes: mean {statistics.mean(per):.2f} s, min {min(per):.2f}, max {max(per):.2f})")
    print(f"  ratio: x{per_s / one_s:.1f}")
    return one_s, per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--genuine", type=int, default=600, help="probes that are other photos of enrolled people")
    ap.add_argument("--sample", type=int, default=30, help="per-photo processes actually run (then extrapolated)")
    ap.add_argument("--no-serve", action="store_true", help="skip the `facecli serve` half")
    args = ap.parse_args()
    enrolled, probes, checks = choose(args.persons, args.probes, args.genuine)
    env = dict(os.environ, FACECLI_API_KEY=KEY)
    with tempfile.TemporaryDirectory(prefix="facecli-search-bench-") as tmp:
        tmp_path = Path(tmp)
        db = tmp_path / "gallery.db"
        enroll(db, enrolled, checks)
        folder = tmp_path / "probes"
        folder.mkdir()
        photos, truth = [], {}
        for rel, who in probes:
            dst = folder / Path(rel).name
            shutil.copyfile(LFW / "images" / rel, dst)
            photos.append(dst)
            truth[dst.name] = who
        print(f"probes: {len(photos)} lfw-view1 photos ({sum(v is not None for v in truth.values())} of enrolled people, "
              f"the rest of people not enrolled); {os.cpu_count()} CPUs")
        local = measure("local engine (--db)", ["--db", str(db)], folder, photos, truth, args.sample, env)
        if not args.no_serve:
            port = free_port()
            server = start_server(db, port, threads=1, workers=2)
            try:
                remote = measure("facecli serve on 127.0.0.1 (--to http://...)", ["--to", f"http://127.0.0.1:{port}"],
                                 folder, photos, truth, args.sample, env)
            finally:
                stop_server(server)
    print("\nsummary (images/s, one process vs one process per photo):")
    print(f"  local: {len(photos) / local[0]:.1f} vs {len(photos) / local[1]:.2f}: x{local[1] / local[0]:.1f}")
    if not args.no_serve:
        print(f"  serve: {len(photos) / remote[0]:.1f} vs {len(photos) / remote[1]:.2f}: x{remote[1] / remote[0]:.1f}")


if __name__ == "__main__":
    main()
