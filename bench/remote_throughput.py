"""Enrolling into `facecli serve` over loopback: batching + concurrency vs one request per person.

Starts `facecli serve` as a separate process (as deployed: its own interpreter and cores) on a free
127.0.0.1 port with a fresh database, checks deepface-pairs once on the client (one person per
photo; the payload JPEGs are made at check time, as `facecli enroll` does), then sends the same
persons with each client setting, alternating settings over --repeat rounds so that both see the
same machine load. Prints persons/s of the sending stage (the check stage is identical for all
settings and printed once), the ratio to the sequential baseline, and payload bytes per person vs
the original files.

    FACECLI_MODELS_DIR=../shared/models python bench/remote_throughput.py [--repeat 2] [--server-threads 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import httpx  # noqa: E402

from facecli.imaging.encode import PayloadSpec  # noqa: E402
from facecli.pipeline.check import CheckConfig, FaceChecker  # noqa: E402
from facecli.sinks.base import FacePayload, PersonPayload  # noqa: E402
from facecli.sinks.opencv_fr import OpenCVFRSink  # noqa: E402
from facecli.sinks.transport import encode_json  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
PAIRS = SHARED / "datasets" / "deepface-pairs"
KEY = "bench-key"

#: (label, persons per request, requests in flight)
SETTINGS = [
    ("sequential: 1 person/request, 1 in flight", 1, 1),
    ("batched: 16 persons/request, 1 in flight", 16, 1),
    ("batched + concurrent: 8 persons/request, 4 in flight", 8, 4),
    ("default: 50 persons/request, 4 in flight", 50, 4),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int, threads: int, workers: int) -> subprocess.Popen:
    env = dict(os.environ, FACECLI_SERVER_API_KEYS=KEY)
    proc = subprocess.Popen([sys.executable, "-m", "facecli", "serve", "--port", str(port), "--db", str(db),
                             "--threads", str(threads), "--inference-workers", str(workers), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"facecli serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("facecli serve did not start within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def payloads(spec: PayloadSpec, threads: int) -> tuple[list[PersonPayload], float]:
    checker = FaceChecker.open(CheckConfig(threads=threads, payload=spec))
    paths = sorted(PAIRS.glob("*.jpg"))
    t0 = time.perf_counter()
    checks = list(checker.check_paths(paths))
    elapsed = time.perf_counter() - t0
    persons = [PersonPayload(Path(c.path).stem, Path(c.path).stem,
                             [FacePayload(c.sha256 or "", c.path, jpeg=c.payload)], {"file": Path(c.path).name})
               for c in checks if c.accepted]
    return persons, elapsed


def send(url: str, collection: str, persons: list[PersonPayload], batch: int, conc: int) -> tuple[float, int]:
    sink = OpenCVFRSink(url, KEY, batch_size=batch, concurrency=conc)
    try:
        sink.ensure_collection(collection, create=True)
        t0 = time.perf_counter()
        if batch == 1 and conc == 1:  # the baseline: one request per person, one after the other
            outcomes = [o for p in persons for o in sink.upsert(collection, [p])]
        else:
            outcomes = sink.upsert(collection, persons)
        elapsed = time.perf_counter() - t0
    finally:
        sink.close()
    bad = [o for o in outcomes if o.status != "enrolled"]
    if bad:
        raise SystemExit(f"{len(bad)} person(s) not enrolled, e.g. {bad[0]}")
    return elapsed, sink.retries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--server-threads", type=int, default=2, help="onnxruntime threads per model in the server")
    ap.add_argument("--inference-workers", type=int, default=2)
    ap.add_argument("--client-threads", type=int, default=2)
    args = ap.parse_args()

    persons, check_s = payloads(PayloadSpec(kind="face"), args.client_threads)
    full, _ = payloads(PayloadSpec(kind="full"), args.client_threads)
    originals = [os.path.getsize(p.faces[0].source_path) for p in persons]
    face_bytes = [len(p.faces[0].jpeg or b"") for p in persons]
    full_bytes = [len(p.faces[0].jpeg or b"") for p in full]
    body = OpenCVFRSink("http://127.0.0.1:1", KEY)._person_json  # request JSON per person (base64 + fields)
    wire = [len(encode_json(body(p))) for p in persons]
    n = len(persons)

    print(f"deepface-pairs: {n} persons (one accepted photo each); client check stage {check_s:.2f} s "
          f"({n / check_s:.1f} photos/s, the same for every setting below)")
    print("payload bytes per person (median / mean):")
    print(f"  original files            {statistics.median(originals) / 1e3:8.1f} kB / {statistics.mean(originals) / 1e3:8.1f} kB")
    print(f"  --payload face (default)  {statistics.median(face_bytes) / 1e3:8.1f} kB / {statistics.mean(face_bytes) / 1e3:8.1f} kB"
          f"   ({statistics.mean(face_bytes) / statistics.mean(originals):.0%} of the originals)")
    print(f"    as sent (base64 + JSON) {statistics.median(wire) / 1e3:8.1f} kB / {statistics.mean(wire) / 1e3:8.1f} kB")
    print(f"  --payload full            {statistics.median(full_bytes) / 1e3:8.1f} kB / {statistics.mean(full_bytes) / 1e3:8.1f} kB"
          f"   ({statistics.mean(full_bytes) / statistics.mean(originals):.0%})")

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(Path(tmp) / "bench.db", port, args.server_threads, args.inference_workers)
        url = f"http://127.0.0.1:{port}"
        try:
            send(url, "warmup", persons[:4], 4, 1)
            times: dict[str, list[float]] = {label: [] for label, *_ in SETTINGS}
            for r in range(args.repeat):
                for label, batch, conc in SETTINGS:
                    elapsed, retries = send(url, f"r{r}-b{batch}-c{conc}", persons, batch, conc)
                    times[label].append(elapsed)
        finally:
            stop_server(proc)
    base = statistics.median(times[SETTINGS[0][0]])
    print(f"\nsending {n} persons to facecli serve on loopback (server: {args.server_threads} threads/model, "
          f"{args.inference_workers} inference workers; median of {args.repeat}; {os.cpu_count()} CPUs):")
    for label, *_ in SETTINGS:
        t = statistics.median(times[label])
        print(f"  {label:55s} {t:6.2f} s  {n / t:6.1f} persons/s  x{base / t:.2f}")


if __name__ == "__main__":
    main()
