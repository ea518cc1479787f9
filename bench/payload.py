"""Does the face crop facecli sends hold exactly the face it accepted? (issue 15, point 9)

Every lfw-view1 photo (4,991, 3,094 persons) is checked with ``--payload face`` as ``facecli enroll``
does for a remote target; each accepted photo's payload then goes through ``analyse()``, the very
function ``facecli serve`` runs on an upload (decode, detect, one-face rule). Printed: how many
accepted crops the server would refuse, with the payload check on (today) and for the plain crop
the client built before it (the former behaviour), and what the check costs per photo.

    FACECLI_MODELS_DIR=../shared/models python bench/payload.py [--limit N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from lfw_data import LFW, all_images  # noqa: E402

from facecli.imaging.encode import PayloadSpec, payload_jpeg  # noqa: E402
from facecli.pipeline.check import CheckConfig, FaceChecker  # noqa: E402
from facecli.server.app import analyse  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
    args = ap.parse_args()
    paths = [str(LFW / "images" / p) for p in all_images()]
    if args.limit:
        paths = paths[: args.limit]
    models = os.environ.get("FACECLI_MODELS_DIR")
    spec = PayloadSpec()
    checker = FaceChecker.open(CheckConfig(models_dir=models, payload=spec, keep_images=True))
    plain = FaceChecker.open(CheckConfig(models_dir=models))
    t0 = time.perf_counter()
    results = list(checker.check_paths(paths))
    t_checked = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(plain.check_paths(paths))
    t_plain = time.perf_counter() - t0
    accepted = [r for r in results if r.accepted]
    refused_by_check = [r for r in results if "the face crop for the target" in r.message]
    refused_ids = {id(r) for r in refused_by_check}
    now, before = Counter(), Counter()
    examples: list[str] = []
    for r in results:
        if r.image is None or r.face is None:
            continue
        box = r.face.box / r.image.scale
        if r.accepted:
            a = analyse(checker, r.payload, strict=True)
            now[a.code or "accepted"] += 1
        if r.accepted or id(r) in refused_ids:
            old = payload_jpeg(r.image.rgb, box, spec)
            code = analyse(checker, old, strict=True).code
            before[code or "accepted"] += 1
            if code:
                examples.append(os.path.relpath(r.path, LFW / "images"))
        r.image = None
    persons = {r.path.split(os.sep)[-2] for r in accepted}
    print(f"photos checked: {len(results)}; accepted with a verified face payload: {len(accepted)} "
          f"({len(persons)} persons)")
    print(f"refused by the client's payload check (crop held another face even when tightened): "
          f"{len(refused_by_check)}")
    print(f"server verdict on the payloads sent now:      {dict(now)}")
    print(f"server verdict on the plain crops (former):   {dict(before)}; e.g. {', '.join(examples[:5])}")
    print(f"check with payload + verification: {1000 * t_checked / len(results):.1f} ms/photo; "
          f"without payload: {1000 * t_plain / len(results):.1f} ms/photo "
          f"(ratio {t_checked / max(t_plain, 1e-9):.2f})")


if __name__ == "__main__":
    main()
