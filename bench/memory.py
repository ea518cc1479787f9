"""Peak memory of `facecli check` and `facecli serve` on decompression-amplifying images (issue 16).

A 9990x9990 PNG (99.8 MP, under the 100 MP ``--max-megapixels`` guard) is ~300 kB on disk but 300-400 MB
once decoded. The bench generates it (a sample face pasted into a flat canvas, streamed through zlib so
this script never holds the full image), then measures:

- ``facecli check`` (a subprocess; peak RSS from ``wait4``'s rusage) on a normal photo, on that PNG,
  on a PNG at the full-size-decode cap and on a 9990x9990 baseline JPEG (decoded reduced, via draft);
- ``facecli serve`` (a subprocess on 127.0.0.1, a free port, a fresh database) during and after a burst
  of 6 concurrent ``PUT /persons`` requests of 4 such images each: starting RSS (after one warm-up
  request), peak (VmHWM) and RSS 3 s after the burst; a fresh server per image kind.

Prints the figures next to the ones measured before the memory budget (issue 16: 1.1 GB for check,
3.6 GB serving, 1.5 GB still held after the burst). Linux only (/proc).

    FACECLI_MODELS_DIR=../shared/models python bench/memory.py [--skip-serve] [--keep DIR]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_throughput import KEY, free_port, start_server  # noqa: E402  (one way to start `facecli serve`)

from facecli.imaging.decode import DecodeLimits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FACE = ROOT / "sample_images" / "grace_hopper.jpg"
SIDE = 9990  # 99.8 MP: just under the default --max-megapixels 100
REQUESTS, IMAGES_PER_REQUEST = 6, 4

#: Measured before the memory budget (issue 16), MB.
BEFORE = {"check": 1100, "serve_peak": 3600, "serve_after": 1500}
TARGET = {"check": 450, "serve_peak": 1000, "serve_after": 150}


# --------------------------------------------------------------------------- images


def write_png(path: Path, width: int, height: int, face: np.ndarray, level: int = 9) -> None:
    """An 8-bit RGB PNG of a grey canvas with ``face`` in the middle, written row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    fh, fw = face.shape[:2]
    top, left = (height - fh) // 2, (width - fw) // 2
    plain = b"\x00" + bytes([128]) * (3 * width)
    comp = zlib.compressobj(level)
    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        pending = []
        for y in range(height):
            if top <= y < top + fh:
                row = np.full((width, 3), 128, np.uint8)
                row[left:left + fw] = face[y - top]
                pending.append(comp.compress(b"\x00" + row.tobytes()))
            else:
                pending.append(comp.compress(plain))
            if sum(map(len, pending)) > 1 << 20:
                f.write(chunk(b"IDAT", b"".join(pending)))
                pending = []
        pending.append(comp.flush())
        f.write(chunk(b"IDAT", b"".join(pending)) + chunk(b"IEND", b""))


_JPEG_SCRIPT = """
import sys
from PIL import Image
side, face, out = int(sys.argv[1]), Image.open(sys.argv[2]).convert("RGB"), sys.argv[3]
canvas = Image.new("RGB", (side, side), (128, 128, 128))
canvas.paste(face, ((side - face.width) // 2, (side - face.height) // 2))
canvas.save(out, "JPEG", quality=85)
"""


def make_images(tmp: Path, cap_mp: float) -> dict[str, Path]:
    face = np.asarray(Image.open(FACE).convert("RGB"))
    out = {"photo": tmp / "photo" / "p1" / "face.jpg", "png": tmp / "png" / "p1" / "big.png",
           "png_at_cap": tmp / "png_at_cap" / "p1" / "cap.png", "jpeg": tmp / "jpeg" / "p1" / "big.jpg"}
    for p in out.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    out["photo"].write_bytes(FACE.read_bytes())
    write_png(out["png"], SIDE, SIDE, face)
    cap_side = int((cap_mp * 1e6) ** 0.5) - 1
    write_png(out["png_at_cap"], cap_side, cap_side, face)
    # the JPEG encoder needs the whole canvas: made in a child so this process stays small
    subprocess.run([sys.executable, "-c", _JPEG_SCRIPT, str(SIDE), str(FACE), str(out["jpeg"])], check=True)
    return out


def size(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            return f"{img.width}x{img.height}"


# --------------------------------------------------------------------------- measuring


def status_mb(pid: int, key: str) -> float:
    """VmRSS / VmHWM of a live process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def check_peak_mb(folder: Path) -> tuple[float, str]:
    """Peak RSS of one `facecli check FOLDER` run (wait4's ru_maxrss of that child) + its summary."""
    with tempfile.TemporaryFile() as errf:  # a file, not a pipe: nothing can block while stdout is read
        proc = subprocess.Popen([sys.executable, "-m", "facecli", "check", str(folder), "--no-journal", "--json",
                                 "-q"], stdout=subprocess.PIPE, stderr=errf)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest child so far
        proc.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"facecli check failed ({proc.returncode}): {err.decode()[-2000:]}")
    reasons = json.loads(out).get("reasons", {})
    stderr_note = f"; stderr: {err.decode().strip()[:200]!r}" if err.strip() else ""
    return usage.ru_maxrss / 1024, (", ".join(f"{k} x{v}" for k, v in reasons.items()) or "accepted") + stderr_note


def put_persons(url: str, prefix: str, image: bytes, n: int) -> list[str]:
    b64 = base64.b64encode(image).decode()
    body = {"collection_name": "mem", "face_storage_type": "NoStorage",
            "persons": [{"person_id": f"{prefix}-{i}", "person_name": prefix, "face_base_64": b64} for i in range(n)]}
    r = httpx.put(f"{url}/persons", json=body, headers={"x-api-key": KEY}, timeout=600)
    r.raise_for_status()
    return [f"{x['code']}" + (f" ({x['message'][:90]})" if x["code"] != "OK" else "") for x in r.json()]


def serve_burst(tmp: Path, kind: str, image: Path, warmup: bytes) -> dict:
    port = free_port()
    db = tmp / f"serve-{kind}.db"
    for stale in tmp.glob(f"{db.name}*"):  # a kept folder from an earlier run
        stale.unlink()
    proc = start_server(db, port, threads=2, workers=2)  # --inference-workers 2: serve's default
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.post(f"{url}/collection", json={"name": "mem"}, headers={"x-api-key": KEY}, timeout=30).raise_for_status()
        put_persons(url, "warmup", warmup, 1)
        time.sleep(1)
        start = status_mb(proc.pid, "VmRSS")
        data = image.read_bytes()
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(status_mb(proc.pid, "VmRSS"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(REQUESTS) as pool:
            answers = list(pool.map(lambda i: put_persons(url, f"r{i}", data, IMAGES_PER_REQUEST), range(REQUESTS)))
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
        time.sleep(3)
        after = status_mb(proc.pid, "VmRSS")
        peak = status_mb(proc.pid, "VmHWM")
    finally:
        proc.kill()  # a throwaway database: no need for a clean shutdown
        proc.wait()
    codes = Counter(c for a in answers for c in a)
    return {"start": start, "peak": peak, "sampled_peak": max(samples, default=start), "after": after,
            "seconds": elapsed, "codes": codes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-serve", action="store_true", help="measure facecli check only")
    ap.add_argument("--keep", type=Path, help="generate the images into this folder and keep them")
    ap.add_argument("--serve-kinds", default="png,png_at_cap,jpeg", help="images sent to facecli serve")
    args = ap.parse_args()
    cap_mp = DecodeLimits().max_megapixels_unreduced

    with tempfile.TemporaryDirectory() as t:
        tmp = args.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        images = make_images(tmp, cap_mp)
        print(f"generated in {time.perf_counter() - t0:.1f} s: " + ", ".join(
            f"{k} {size(p)} {p.stat().st_size / 1e3:.0f} kB" for k, p in images.items()))

        print(f"\nfacecli check, peak RSS (target <= {TARGET['check']} MB on the {SIDE}x{SIDE} PNG; "
              f"before the budget: {BEFORE['check']} MB)")
        check_png = None
        for kind, path in images.items():
            peak, what = check_peak_mb(path.parents[1])
            check_png = peak if kind == "png" else check_png
            print(f"  {kind:<11} {peak:7.0f} MB   {what}")

        if not args.skip_serve:
            print(f"\nfacecli serve, {REQUESTS} concurrent PUT /persons x {IMAGES_PER_REQUEST} images "
                  f"(targets: peak <= {TARGET['serve_peak']} MB, after <= start + {TARGET['serve_after']} MB; "
                  f"before the budget: peak {BEFORE['serve_peak']} MB, {BEFORE['serve_after']} MB held after)")
            warmup = images["photo"].read_bytes()
            for kind in args.serve_kinds.split(","):
                r = serve_burst(tmp, kind, images[kind], warmup)
                codes = ", ".join(f"{v} x {k}" for k, v in r["codes"].items())
                print(f"  {kind:<11} start {r['start']:5.0f} MB  peak {r['peak']:5.0f} MB (sampled "
                      f"{r['sampled_peak']:.0f})  after {r['after']:5.0f} MB (+{r['after'] - r['start']:.0f})  "
                      f"{r['seconds']:.1f} s   {codes}")
        if check_png is not None:
            verdict = "OK" if check_png <= TARGET["check"] else "OVER TARGET"
            print(f"\ncheck on the {SIDE}x{SIDE} PNG: {check_png:.0f} MB vs {BEFORE['check']} MB before "
                  f"({check_png / BEFORE['check']:.2f}x) - {verdict}")


if __name__ == "__main__":
    main()
