"""Every lfw-view1 photo through facecli's own code, cached: the data behind the score model
(bench/fit_score_model.py) and the bulk-scale bench (bench/scale.py).

Per photo it keeps the *subject* embedding (the detected face nearest the image centre, LFW's
labelling rule; YuNet re-run at a lower score when nothing is found at the pipeline's) and the
split of its person: ``train`` for people in peopleDevTrain.txt, ``test`` for peopleDevTest.txt.
The score model is fitted on ``train`` people only; every decision is evaluated on ``test`` people.

The cache key is the recognizer's verified sha256 and the detector's, so a new model file is
embedded again; the gate is not involved (bench/scale.py runs the real check for that).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import numpy as np
import platformdirs

from facecli.imaging.decode import decode_image
from facecli.pipeline.check import CheckConfig, FaceChecker
from facecli.vision.align import align_face
from facecli.vision.detect import Face

SHARED = Path(os.environ.get("FACECLI_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LFW = SHARED / "datasets" / "lfw-view1"
CACHE = Path(platformdirs.user_cache_dir("facecli")) / "bench"


def people(split: str, root: Path = LFW) -> dict[str, int]:
    """{name: image count} of peopleDevTrain.txt (``train``) or peopleDevTest.txt (``test``)."""
    name = {"train": "peopleDevTrain.txt", "test": "peopleDevTest.txt"}[split]
    out: dict[str, int] = {}
    for line in (root / name).read_text().split("\n")[1:]:
        f = line.split()
        if len(f) == 2:
            out[f[0]] = int(f[1])
    return out


def all_images(root: Path = LFW) -> list[str]:
    """Relative paths ``Name/Name_NNNN.jpg`` of every photo present, sorted (person, number)."""
    return sorted(str(p.relative_to(root / "images")) for p in (root / "images").glob("*/*.jpg"))


def subject_face(faces: list[Face], width: int, height: int) -> Face | None:
    """The face whose box centre is nearest the image centre (LFW's subject rule)."""
    if not faces:
        return None
    cx, cy = width / 2, height / 2
    return min(faces, key=lambda f: (f.box[0] + f.box[2] / 2 - cx) ** 2 + (f.box[1] + f.box[3] / 2 - cy) ** 2)


def detect_subject(det, image, fallback_score: float = 0.3) -> Face | None:
    """The subject (original-image pixels) of a decoded photo: YuNet at its own score, then once
    more at ``fallback_score`` when it found nothing."""
    w, h = image.source_width, image.source_height
    main = subject_face([f.scaled(image.scale) for f in det.detect(image.rgb)], w, h)
    if main is None and fallback_score < det.score_threshold:
        keep = det.score_threshold
        det.score_threshold = fallback_score
        try:
            main = subject_face([f.scaled(image.scale) for f in det.detect(image.rgb)], w, h)
        finally:
            det.score_threshold = keep
    return main


@dataclass
class LfwEmbeddings:
    rels: list[str]
    person: np.ndarray  # (n,) person names
    split: np.ndarray  # (n,) "train" | "test" | "" (in neither list)
    emb: np.ndarray  # (n, d) float32 unit vectors; NaN rows where no face was found at all

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.emb[:, 0])

    def subset(self, split: str) -> LfwEmbeddings:
        keep = (self.split == split) & self.found
        return LfwEmbeddings([r for r, k in zip(self.rels, keep) if k], self.person[keep], self.split[keep], self.emb[keep])


def _embed_all(checker: FaceChecker, root: Path, rels: list[str], fallback_score: float = 0.3) -> np.ndarray:
    det = checker.detector
    out = np.full((len(rels), checker.recognizer.dim), np.nan, dtype=np.float32)
    crops: list[np.ndarray] = []
    where: list[int] = []

    def flush() -> None:
        if crops:
            out[where] = checker.recognizer.embed(np.stack(crops))
            crops.clear()
            where.clear()

    for i, rel in enumerate(rels):
        image = decode_image(root / "images" / rel, checker.config.limits)
        main = detect_subject(det, image, fallback_score)
        if main is None:
            continue
        crops.append(align_face(image.rgb, main.landmarks / image.scale))
        where.append(i)
        if len(crops) >= 32:
            flush()
    flush()
    return out


def load_flip(config: CheckConfig, cache: Path = CACHE, root: Path = LFW) -> LfwEmbeddings:
    """The same with the recognizer's flip TTA on (``config.flip_tta``)."""
    return load(config.models_dir, cache, root, config=config)


def load(models_dir: str | None = None, cache: Path = CACHE, root: Path = LFW, quiet: bool = False,
         config: CheckConfig | None = None) -> LfwEmbeddings:
    """All of lfw-view1 embedded (cached after the first call, ~35 s on 2 cores)."""
    checker = FaceChecker.open(config or CheckConfig(models_dir=models_dir))
    key = f"{checker.recognizer.model.file.sha256[:12]}_{checker.detector.model.file.sha256[:12]}"
    if checker.recognizer.flip:
        key += "_flip"
    path = cache / f"lfw_subjects_{key}.npz"
    rels = all_images(root)
    train, test = people("train", root), people("test", root)
    person = np.array([r.split("/")[0] for r in rels])
    split = np.array(["train" if p in train else "test" if p in test else "" for p in person])
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        if list(z["rels"]) == rels:
            return LfwEmbeddings(rels, person, split, z["emb"])
    t0 = time.perf_counter()
    emb = _embed_all(checker, root, rels)
    if not quiet:
        print(f"embedded {len(rels)} LFW photos in {time.perf_counter() - t0:.0f} s (cached in {path})")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, rels=np.array(rels), emb=emb)
    os.replace(tmp, path)
    return LfwEmbeddings(rels, person, split, emb)
