"""LFW View 1 accuracy of facecli's own pipeline (decode -> YuNet -> 5-point alignment -> dlib-resnet).

Protocol (issue 9):
* verification: the threshold is chosen on ``pairsDevTrain.txt`` (1100 same + 1100 different
  pairs: the midpoint of the best-accuracy score interval), then accuracy, ROC AUC and TAR at
  FAR 1e-2 / 1e-3 are reported on ``pairsDevTest.txt`` (500 + 500; the pair whose image is absent
  upstream is skipped). With 500 different pairs, FAR 1e-3 means "no false accept at all".
* 1:N identification: one image (the lowest-numbered) of each DevTest person with >= 2 images is
  enrolled; every other image of them is searched against that gallery; top-1 accuracy.
* subject rule (benchmark only): LFW photos often hold several faces; the subject is the detected
  face whose box centre is nearest the image centre. When YuNet finds nothing at the pipeline's
  score threshold, the detector is re-run at ``--fallback-score`` (0.3) before giving up; an image
  with no face at all scores -1 against everything. The one-face gate's rejections are *not*
  applied (they would drop pairs); the table says how many images the gate would reject.

Everything else is the code ``facecli check`` and ``facecli search`` run: ``decode_image``,
``FaceChecker.detector``, ``align_face`` and ``FaceChecker.recognizer`` (same batching).

    FACECLI_MODELS_DIR=../shared/models python bench/lfw.py                # the default settings
    FACECLI_MODELS_DIR=../shared/models python bench/lfw.py --levers       # baseline + each lever
    FACECLI_MODELS_DIR=../shared/models python bench/lfw.py --fit-template # DevTrain-only template fit

Detections are cached under ``--cache`` (default /tmp/facecli_lfw) so that re-runs only redo
alignment and embedding.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/dlib_shape5.py, bench/lfw_data.py

from lfw_data import detect_subject, subject_face  # noqa: E402  (LFW's subject rule, one copy)

from facecli.imaging.decode import decode_image
from facecli.pipeline.check import CheckConfig, FaceChecker
from facecli.vision.align import DLIB_TEMPLATE_150, align_face, align_face_scaled
from facecli.vision.detect import Face
from facecli.vision.embed import MATCH_THRESHOLD
from facecli.vision.quality import crop_measurements, gate_crop, gate_faces

SHARED = Path(os.environ.get("FACECLI_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LFW = SHARED / "datasets" / "lfw-view1"
ANCHORS = (("dlib ResNet, published (dlib 68-point chips, full precision)", 0.9938),
           ("SFace, published (OpenCV Zoo)", 0.9940))


# -- data ----------------------------------------------------------------------------------------

def image_rel(name: str, num: int | str) -> str:
    return f"{name}/{name}_{int(num):04d}.jpg"


def read_pairs(path: Path, root: Path = LFW) -> tuple[list[tuple[str, str, bool]], int]:
    """Pairs in the standard LFW format -> [(rel_a, rel_b, same)], and how many were skipped
    because an image is absent."""
    lines = path.read_text().split("\n")
    pairs: list[tuple[str, str, bool]] = []
    skipped = 0
    for line in lines[1:]:
        f = line.split()
        if len(f) == 3:
            p = (image_rel(f[0], f[1]), image_rel(f[0], f[2]), True)
        elif len(f) == 4:
            p = (image_rel(f[0], f[1]), image_rel(f[2], f[3]), False)
        else:
            continue
        if (root / "images" / p[0]).is_file() and (root / "images" / p[1]).is_file():
            pairs.append(p)
        else:
            skipped += 1
    return pairs, skipped


def devtest_subset(root: Path = LFW, n_same: int = 100, n_diff: int = 100) -> list[tuple[str, str, bool]]:
    """The fixed CI subset: the first ``n_same`` same and ``n_diff`` different DevTest pairs
    (pairs with an absent image skipped)."""
    pairs, _ = read_pairs(root / "pairsDevTest.txt", root)
    return [p for p in pairs if p[2]][:n_same] + [p for p in pairs if not p[2]][:n_diff]


# -- the subject of each photo --------------------------------------------------------------------

@dataclass
class Subject:
    landmarks: np.ndarray | None  # (5, 2) pixels of the decoded image
    score: float
    faces: int  # faces YuNet found at the pipeline's threshold
    fallback: bool  # found only at the lower fallback score
    gate_rejects: bool  # the one-face gate (check) would reject this photo


def detect_subjects(checker: FaceChecker, root: Path, rels: list[str], fallback_score: float = 0.3) -> dict[str, Subject]:
    det = checker.detector
    out: dict[str, Subject] = {}
    for rel in rels:
        image = decode_image(root / "images" / rel, checker.config.limits)
        faces = [f.scaled(image.scale) for f in det.detect(image.rgb)]
        w, h = image.source_width, image.source_height
        main = subject_face(faces, w, h)
        fallback = False
        if main is None:
            main = detect_subject(det, image, fallback_score)
            fallback = main is not None
        gate = gate_faces(faces, w, h, checker.thresholds)
        rejects = bool(gate.reasons)
        if gate.main is not None and not rejects:
            crop, upscale = align_face_scaled(image.rgb, gate.main.landmarks / image.scale)
            rejects = bool(gate_crop(crop_measurements(crop, upscale), checker.thresholds))
        out[rel] = Subject(None if main is None else main.landmarks / image.scale,
                           0.0 if main is None else main.score, len(faces), fallback, rejects)
    return out


def load_subjects(path: Path) -> dict[str, Subject] | None:
    if not path.is_file():
        return None
    try:
        return {k: Subject(*v) for k, v in pickle.loads(path.read_bytes()).items()}
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError):
        return None  # an old or foreign cache: detect again


def load_images(root: Path, rels: list[str], limits) -> dict[str, np.ndarray]:
    return {rel: decode_image(root / "images" / rel, limits).rgb for rel in rels}


def embed_subjects(checker: FaceChecker, images: dict[str, np.ndarray], subjects: dict[str, Subject],
                   rels: list[str], template: np.ndarray | None = None, batch: int = 32) -> tuple[np.ndarray, float]:
    """Aligned, embedded subjects in ``rels`` order (NaN rows where no face), and ms per face for
    align + embed with the recognizer's current settings (flip TTA included)."""
    template = DLIB_TEMPLATE_150 if template is None else template
    out = np.full((len(rels), checker.recognizer.dim), np.nan, dtype=np.float32)
    idx = [i for i, r in enumerate(rels) if subjects[r].landmarks is not None]
    t0 = time.perf_counter()
    for s in range(0, len(idx), batch):
        chunk = idx[s : s + batch]
        crops = np.stack([align_face(images[rels[i]], subjects[rels[i]].landmarks, template) for i in chunk])
        out[chunk] = checker.recognizer.embed(crops)
    ms = (time.perf_counter() - t0) * 1e3 / max(1, len(idx))
    return out, ms


# -- metrics ---------------------------------------------------------------------------------------

def pair_scores(emb: dict[str, np.ndarray], pairs: list[tuple[str, str, bool]]) -> tuple[np.ndarray, np.ndarray]:
    a = np.stack([emb[p[0]] for p in pairs])
    b = np.stack([emb[p[1]] for p in pairs])
    s = np.nan_to_num((a * b).sum(1), nan=-1.0)  # no face: never a match
    same = np.array([p[2] for p in pairs])
    return s, same


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Midpoint of the widest score interval with the best accuracy."""
    order = np.argsort(scores)
    s, y = scores[order], same[order]
    # threshold between s[k-1] and s[k]: pairs 0..k-1 called different, k.. called same
    correct = np.concatenate([[0], np.cumsum(~y)]) + np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    cand = [k for k in range(len(s) + 1) if correct[k] == correct.max()]
    best_k, best_gap = cand[0], -1.0
    for k in cand:
        lo = s[k - 1] if k > 0 else s[0] - 1e-3
        hi = s[k] if k < len(s) else s[-1] + 1e-3
        if hi - lo > best_gap:
            best_k, best_gap = k, hi - lo
    lo = s[best_k - 1] if best_k > 0 else s[0] - 1e-3
    hi = s[best_k] if best_k < len(s) else s[-1] + 1e-3
    return float((lo + hi) / 2)


def accuracy(scores: np.ndarray, same: np.ndarray, thr: float) -> float:
    return float(((scores >= thr) == same).mean())


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    pos, neg = scores[same], scores[~same]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    neg = np.sort(scores[~same])[::-1]
    k = int(np.floor(far * len(neg)))  # false accepts allowed
    thr = neg[k] if k < len(neg) else -np.inf
    return float((scores[same] > thr).mean())


def top1(emb: dict[str, np.ndarray], root: Path = LFW, enroll: int = 1, min_images: int = 2,
         rule: str = "mean", probe_from: int | None = None) -> tuple[float, int, int]:
    """(top-1 accuracy, gallery size, probes) of the 1:N search on DevTest persons with at least
    ``min_images`` images: the ``enroll`` lowest-numbered images of each are enrolled, the other
    images (from the ``probe_from``-th on, default ``enroll``) are searched. ``rule``: a person scores the cosine to the mean of its (unit) enrolled
    embeddings ("mean"), or its best face's ("best": what facecli's engines do with several faces)."""
    people: dict[str, list[str]] = {}
    for line in (root / "peopleDevTest.txt").read_text().split("\n")[1:]:
        f = line.split()
        if len(f) == 2:
            rels = [r for r in (image_rel(f[0], i) for i in range(1, int(f[1]) + 1)) if r in emb]
            if len(rels) >= max(min_images, enroll + 1):
                people[f[0]] = rels
    names = sorted(people)
    probes = [(emb[r], i) for i, n in enumerate(names) for r in people[n][probe_from or enroll:]]
    q = np.stack([p[0] for p in probes])
    truth = np.array([p[1] for p in probes])
    faces = np.nan_to_num(np.stack([[emb[r] for r in people[n][:enroll]] for n in names]), nan=0.0)
    if rule == "best":
        sim = np.einsum("qd,pfd->qpf", q, faces).max(2)
    else:
        gallery = faces.sum(1)
        gallery /= np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
        sim = q @ gallery.T
    sim = np.nan_to_num(sim, nan=-1.0)
    return float((sim.argmax(1) == truth).mean()), len(names), len(probes)


@dataclass
class Row:
    name: str
    thr: float
    train_acc: float
    acc: float
    acc_default: float
    auc: float
    tar2: float
    tar3: float
    top1: float
    ms: float


def evaluate(name: str, emb: dict[str, np.ndarray], train: list, test: list, ms: float,
             default_thr: float = MATCH_THRESHOLD, root: Path = LFW) -> Row:
    st, yt = pair_scores(emb, train)
    thr = best_threshold(st, yt)
    s, y = pair_scores(emb, test)
    return Row(name, thr, accuracy(st, yt, thr), accuracy(s, y, thr), accuracy(s, y, default_thr), roc_auc(s, y),
               tar_at_far(s, y, 1e-2), tar_at_far(s, y, 1e-3), top1(emb, root)[0], ms)


def print_table(rows: list[Row], default_thr: float) -> None:
    head = (f"| setting | DevTrain thr | DevTrain acc | DevTest acc | DevTest acc @{default_thr:.3f} | ROC AUC "
            f"| TAR@FAR=1e-2 | TAR@FAR=1e-3 | 1:N top-1 | align+embed ms/face |")
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        print(f"| {r.name} | {r.thr:.4f} | {r.train_acc:.2%} | **{r.acc:.2%}** | {r.acc_default:.2%} | {r.auc:.4f} "
              f"| {r.tar2:.2%} | {r.tar3:.2%} | {r.top1:.2%} | {r.ms:.1f} |")
    for label, acc in ANCHORS:
        print(f"| {label} | | | {acc:.2%} | | | | | | |")


# -- template fit (DevTrain only) -----------------------------------------------------------------

def template_from(params: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(log scale, dx, dy) applied to ``base`` about its centroid."""
    c = base.mean(0)
    return (base - c) * np.exp(params[0]) + c + params[1:3]


def fit_objective(emb: dict[str, np.ndarray], train: list) -> tuple[float, float, float]:
    s, y = pair_scores(emb, train)
    thr = best_threshold(s, y)
    # d' (separation of the two score distributions) is smooth; accuracy and AUC are reported too
    d = (s[y].mean() - s[~y].mean()) / np.sqrt(0.5 * (s[y].var() + s[~y].var()))
    return accuracy(s, y, thr), roc_auc(s, y), float(d)


# -- main ------------------------------------------------------------------------------------------

#: DevTrain-only fit of the template's scale/shift (``--fit-template``, ROC AUC objective): the
#: best point found. Its DevTrain gain was within noise, so it is measured, not adopted.
FITTED_PARAMS = np.array([0.0, -1.5, -0.75])


def mirror_subjects(checker: FaceChecker, images: dict[str, np.ndarray], subjects: dict[str, Subject]) -> dict[str, Subject]:
    """Landmark test-time augmentation: detect on the mirror image too and average the landmarks."""
    flip = [1, 0, 2, 4, 3]
    out: dict[str, Subject] = {}
    for rel, sub in subjects.items():
        lm = sub.landmarks
        rgb = images[rel]
        h, w = rgb.shape[:2]
        fm = subject_face(checker.detector.detect(np.ascontiguousarray(rgb[:, ::-1])), w, h)
        if fm is not None and lm is not None:
            back = fm.landmarks[flip].astype(np.float64)
            back[:, 0] = (w - 1) - back[:, 0]
            if np.abs(back - lm).max() < 0.3 * np.linalg.norm(lm[1] - lm[0]):
                lm = (lm + back) / 2
        out[rel] = Subject(lm, sub.score, sub.faces, sub.fallback, sub.gate_rejects)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=LFW)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/facecli_lfw"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fallback-score", type=float, default=0.3)
    ap.add_argument("--levers", action="store_true", help="baseline, then each lever on its own, then the defaults")
    ap.add_argument("--fit-template", action="store_true", help="fit scale/shift of the template on DevTrain")
    ap.add_argument("--f32", type=Path, default=None,
                    help="full-precision dlib-resnet ONNX (python -m facecli.vision.convert_dlib_dat) for its lever row")
    ap.add_argument("--shape5", type=Path, default=None,
                    help="dlib's shape_predictor_5_face_landmarks.dat (PyPI face_recognition_models) for the "
                         "dlib-landmarks lever row (default: the installed package's file, if any)")
    args = ap.parse_args()
    if not args.root.is_dir():
        sys.exit(f"{args.root} not found (../shared/datasets/lfw-view1)")

    train, skip_tr = read_pairs(args.root / "pairsDevTrain.txt", args.root)
    test, skip_te = read_pairs(args.root / "pairsDevTest.txt", args.root)
    rels = sorted({r for p in train + test for r in p[:2]})
    cfg = CheckConfig(threads=args.threads)
    checker = FaceChecker.open(cfg)
    default_rec = checker.recognizer
    default_flip = default_rec.flip

    args.cache.mkdir(parents=True, exist_ok=True)
    det_key = hashlib.sha256(f"{checker.detector.model.path}{checker.thresholds.to_dict()}{args.fallback_score}".encode()).hexdigest()[:12]
    det_cache = args.cache / f"subjects_{det_key}.pkl"
    t0 = time.perf_counter()
    subjects = load_subjects(det_cache)
    if subjects is None or not set(rels) <= set(subjects):
        subjects = detect_subjects(checker, args.root, rels, args.fallback_score)
        det_cache.write_bytes(pickle.dumps({k: tuple(vars(v).values()) for k, v in subjects.items()}))
    images = load_images(args.root, rels, cfg.limits)
    print(f"LFW View 1: {len(rels)} images; DevTrain {len(train)} pairs, DevTest {len(test)} pairs "
          f"({skip_tr + skip_te} skipped: image absent); detect+load {time.perf_counter() - t0:.0f} s")
    none = [r for r in rels if subjects[r].landmarks is None]
    print(f"subject found at score >= {checker.thresholds.detection_score}: "
          f"{sum(1 for r in rels if subjects[r].landmarks is not None and not subjects[r].fallback)}; "
          f"only at >= {args.fallback_score}: {sum(1 for r in rels if subjects[r].fallback)}; no face: {len(none)} {none[:5]}")
    print(f"photos with > 1 face: {sum(1 for r in rels if subjects[r].faces > 1)}; "
          f"the one-face gate (facecli check) would reject {sum(1 for r in rels if subjects[r].gate_rejects)} (not applied here)")

    if args.fit_template:
        fit_template(checker, images, subjects, rels, train)
        return

    def run(name: str, template: np.ndarray = DLIB_TEMPLATE_150, flip: bool = False, rec=None, subj=None) -> Row:
        checker.recognizer = rec or default_rec
        keep = checker.recognizer.flip
        checker.recognizer.flip = flip
        try:
            arr, ms = embed_subjects(checker, images, subj or subjects, rels, template)
        finally:
            checker.recognizer.flip = keep
            checker.recognizer = default_rec
        row = evaluate(name, dict(zip(rels, arr)), train, test, ms, root=args.root)
        print(f"  .. {name}: DevTest {row.acc:.2%}", flush=True)
        return row

    rows: list[Row] = []
    if args.levers:
        rows.append(run("baseline: u8 weights, PROVENANCE template, no TTA"))
        rows.append(run("alignment: DevTrain-fitted template shift (dx -1.5, dy -0.75 px)",
                        template_from(FITTED_PARAMS, DLIB_TEMPLATE_150)))
        t1 = time.perf_counter()
        mirrored = mirror_subjects(checker, images, subjects)
        det_ms = (time.perf_counter() - t1) * 1e3 / len(rels)
        rows.append(run(f"landmarks: mean of image + mirror detections (+{det_ms:.1f} ms detect)", subj=mirrored))
        shape5 = args.shape5 or _installed_shape5()
        if shape5 is not None:
            import dlib_shape5

            predictor = dlib_shape5.ShapePredictor(shape5)
            t1 = time.perf_counter()
            dlib_subjects = {r: Subject(None if s.landmarks is None else predictor.landmarks(images[r], s.landmarks),
                                        s.score, s.faces, s.fallback, s.gate_rejects) for r, s in subjects.items()}
            sp_ms = (time.perf_counter() - t1) * 1e3 / len(rels)
            rows.append(run(f"landmarks: dlib's 5-point shape predictor + its chip template (+{sp_ms:.1f} ms)",
                            dlib_shape5.chip_template(), subj=dlib_subjects))
        if args.f32 is not None:
            from facecli.vision.embed import Recognizer
            from facecli.vision.models import DEFAULT_RECOGNIZER, resolve_model

            threads = default_rec.session.get_session_options().intra_op_num_threads
            f32 = Recognizer(resolve_model(DEFAULT_RECOGNIZER, args.f32, None), threads=threads)
            rows.append(run("weights: full-precision float32 (dlib .dat)", rec=f32))
        rows.append(run("flip TTA (sum of image + mirror embeddings)", flip=True))
    rows.append(run(f"defaults (flip TTA {'on' if default_flip else 'off'})", flip=default_flip))
    print(f"\nrecognizer: {default_rec.model.path.name}; detector score >= {checker.thresholds.detection_score}; "
          f"default match threshold {MATCH_THRESHOLD}; threads {default_rec.session.get_session_options().intra_op_num_threads}")
    print_table(rows, MATCH_THRESHOLD)
    emb = dict(zip(rels, embed_subjects(checker, images, subjects, rels)[0]))
    one, persons, probes = top1(emb, args.root, enroll=1, min_images=3, probe_from=2)  # the same probes
    mean = top1(emb, args.root, enroll=2, min_images=3)[0]
    best = top1(emb, args.root, enroll=2, min_images=3, rule="best")[0]
    print(f"\nenrollment from several photos (DevTest persons with >= 3 photos: {persons}; their 3rd and later photos searched: {probes}): "
          f"1:N top-1 {one:.2%} with the 1st photo enrolled; with the 1st and 2nd: {best:.2%} by the best face "
          f"(facecli's engines), {mean:.2%} by the mean embedding")


def _installed_shape5() -> Path | None:
    try:
        import face_recognition_models  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(face_recognition_models.__file__).parent / "models" / "shape_predictor_5_face_landmarks.dat"
    return path if path.is_file() else None


def fit_template(checker: FaceChecker, images: dict, subjects: dict, rels: list[str], train: list) -> None:
    """Coordinate search over (log scale, dx, dy) of the PROVENANCE template, DevTrain pairs only."""
    train_rels = sorted({r for p in train for r in p[:2]})
    base = DLIB_TEMPLATE_150
    checker.recognizer.flip = False
    seen: dict[tuple, tuple[float, float, float]] = {}

    def score(p: np.ndarray) -> tuple[float, float, float]:
        key = tuple(np.round(p, 4))
        if key not in seen:
            arr, _ = embed_subjects(checker, images, subjects, train_rels, template_from(p, base))
            seen[key] = fit_objective(dict(zip(train_rels, arr)), train)
            print(f"  scale x{np.exp(p[0]):.3f} dx {p[1]:+.2f} dy {p[2]:+.2f}: DevTrain acc {seen[key][0]:.2%} "
                  f"AUC {seen[key][1]:.5f} d' {seen[key][2]:.4f}", flush=True)
        return seen[key]

    p = np.zeros(3)
    steps = np.array([0.04, 1.5, 1.5])
    for _ in range(2):
        for j in range(3):
            while True:
                cur = score(p)
                moved = False
                for sign in (1, -1):
                    q = p.copy()
                    q[j] += sign * steps[j]
                    if score(q)[1] > cur[1]:  # DevTrain ROC AUC
                        p, moved = q, True
                        break
                if not moved:
                    break
        steps /= 2
    print(f"best: scale x{np.exp(p[0]):.4f} dx {p[1]:+.3f} dy {p[2]:+.3f} -> {score(p)}")
    print("template:", np.round(template_from(p, base), 4).tolist())


if __name__ == "__main__":
    main()
