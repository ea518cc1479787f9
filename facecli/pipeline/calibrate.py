"""`facecli calibrate`: how well the recognizer separates *your* people, and the threshold for the
false-match rate you choose, measured on labelled photos (a folder per person, or a pairs file).

Pairs: a folder gives every same-person pair and every different-person pair (a random sample of
``MAX_DIFFERENT`` when there are more); a pairs file lists them, in LFW's format (``pairs.txt``:
``name n1 n2`` same, ``name1 n1 name2 n2`` different, images at ``IMAGES/name/name_000n.jpg``) or as
CSV (two photo columns and a same/different column, e.g. deepface's ``file_x,file_y,Decision``,
paths relative to the CSV). Each photo's main (largest) face is embedded once, the way search and
enroll see it; a photo without a face drops its pairs (counted).

Figures: ROC AUC; accuracy, true-match rate (TAR) and false-match rate (FAR) at the current
threshold; the best-accuracy threshold; the lowest threshold whose FAR on these pairs is at most
``far`` (with its TAR) beside the score model's threshold for that rate (fitted on LFW). A rate is
only *resolved* when there are at least 1/far different pairs; below that the threshold is just
above every different pair, and says so.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from facecli.errors import ConfigError
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.probes import embed_probes
from facecli.vision.scores import ScoreModel

#: Different-person pairs of a folder beyond which a random sample (fixed seed) is used.
MAX_DIFFERENT = 2_000_000
_YES = {"yes", "y", "true", "1", "same", "match", "genuine", "positive"}
_NO = {"no", "n", "false", "0", "different", "diff", "nomatch", "impostor", "negative"}
_LABEL_COLUMNS = ("decision", "same", "label", "match", "issame", "is_same", "same_person")


@dataclass
class LabelledPairs:
    """Photos and the pairs between them (indices into ``photos``) with same/different labels."""

    photos: list[str]
    pairs: np.ndarray  # (n, 2) int
    same: np.ndarray  # (n,) bool
    source: str
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, why) of pairs not used
    sampled: bool = False  # different pairs are a sample


def pairs_from_folder(root: str | Path, max_different: int = MAX_DIFFERENT, seed: int = 0) -> LabelledPairs:
    """A folder per person (or files named after the person: the enroll layouts)."""
    from facecli.sources.folder import discover_folder

    found = discover_folder(root)
    photos: list[str] = []
    owner: list[int] = []
    for i, person in enumerate(found.persons):
        photos += [str(p) for p in person.images]
        owner += [i] * len(person.images)
    problems = [(p.path, p.message) for p in found.problems]
    if len({o for o in owner}) < 2:
        raise ConfigError(f"{root}: calibration needs photos of at least two persons (a folder per person)")
    who = np.asarray(owner)
    same_pairs = [(a, b) for idx in _groups(who) for a, b in combinations(idx, 2)]
    if not same_pairs:
        raise ConfigError(f"{root}: no person has two photos, so there is no same-person pair",
                          hint="put two or more photos in each person's folder")
    n = len(photos)
    total_diff = (n * (n - 1)) // 2 - len(same_pairs)
    sampled = total_diff > max_different
    if sampled:
        rng = np.random.default_rng(seed)
        keys: set[int] = set()
        while len(keys) < max_different:
            a = rng.integers(0, n, size=max_different)
            b = rng.integers(0, n, size=max_different)
            ok = who[a] != who[b]
            lo, hi = np.minimum(a, b)[ok], np.maximum(a, b)[ok]
            keys.update((lo * n + hi).tolist())
        flat = np.fromiter(sorted(keys)[:max_different], dtype=np.int64)
        diff = np.stack([flat // n, flat % n], axis=1)
    else:
        a, b = np.triu_indices(n, 1)
        keep = who[a] != who[b]
        diff = np.stack([a[keep], b[keep]], axis=1)
    pairs = np.concatenate([np.asarray(same_pairs, dtype=np.int64).reshape(-1, 2), diff.astype(np.int64)])
    same = np.zeros(len(pairs), dtype=bool)
    same[: len(same_pairs)] = True
    return LabelledPairs(photos, pairs, same, str(root), problems, sampled)


def _groups(who: np.ndarray) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for i, o in enumerate(who.tolist()):
        out.setdefault(o, []).append(i)
    return list(out.values())


def pairs_from_file(path: str | Path, images: str | Path | None = None) -> LabelledPairs:
    """A pairs file: ``.csv`` (two photo columns and a label column), else LFW's pairs.txt format."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pairs file not found: {path}")
    rows = _csv_pairs(path) if path.suffix.lower() == ".csv" else _lfw_pairs(path, images)
    photos: dict[str, int] = {}
    pairs, same, problems = [], [], []
    for where, a, b, label in rows:
        missing = [p for p in (a, b) if not p.is_file()]
        if missing:
            problems.append((where, f"no such photo: {missing[0]}"))
            continue
        pairs.append((photos.setdefault(str(a), len(photos)), photos.setdefault(str(b), len(photos))))
        same.append(label)
    if not any(same) or all(same):
        raise ConfigError(f"{path}: calibration needs same-person and different-person pairs "
                          f"({sum(same)} same, {len(same) - sum(same)} different found)")
    return LabelledPairs(list(photos), np.asarray(pairs, dtype=np.int64), np.asarray(same, dtype=bool), str(path), problems)


def _lfw_pairs(path: Path, images: str | Path | None) -> list[tuple[str, Path, Path, bool]]:
    root = Path(images) if images else (path.parent / "images" if (path.parent / "images").is_dir() else path.parent)

    def photo(name: str, num: str) -> Path:
        return root / name / f"{name}_{int(num):04d}.jpg"

    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        f = line.split()
        try:
            if len(f) == 3:
                out.append((f"{path}:{n}", photo(f[0], f[1]), photo(f[0], f[2]), True))
            elif len(f) == 4:
                out.append((f"{path}:{n}", photo(f[0], f[1]), photo(f[2], f[3]), False))
        except ValueError:  # not a number: a header or a stray line
            continue
    if not out:
        raise ConfigError(f"{path}: no pairs in LFW format ('name n1 n2' or 'name1 n1 name2 n2' per line)",
                          hint="or give a .csv with two photo columns and a same/different column")
    return out


def _csv_pairs(path: Path) -> list[tuple[str, Path, Path, bool]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        lower = [h.lower() for h in header]
        label = next((lower.index(c) for c in _LABEL_COLUMNS if c in lower), None)
        files = [i for i in range(len(header)) if i != label][:2]
        if label is None or len(files) < 2:
            raise ConfigError(f"{path}: expected two photo columns and a label column ({', '.join(_LABEL_COLUMNS)})",
                              hint="e.g. file_x,file_y,Decision with Yes/No")
        out = []
        for n, row in enumerate(reader, 2):
            if len(row) <= max(label, *files):
                continue
            value = row[label].strip().lower()
            if value not in _YES | _NO:
                continue
            a, b = (Path(row[i].strip()) for i in files)
            out.append((f"{path}:{n}", a if a.is_absolute() else path.parent / a,
                        b if b.is_absolute() else path.parent / b, value in _YES))
    return out


def embed_photos(checker: FaceChecker, photos: list[str]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """(embeddings with NaN rows for photos without a usable face, [(photo, why)] of those)."""
    emb = np.full((len(photos), checker.recognizer.dim), np.nan, dtype=np.float32)
    skipped: list[tuple[str, str]] = []
    i = 0
    for group in embed_probes(checker, photos, allow_multiple=True):
        for p in group:
            if p.embeddings is not None:
                emb[i] = p.embeddings[0]
            else:
                skipped.append((p.path, f"{p.reason}: {p.message}"))
            i += 1
    return emb, skipped


def pair_scores(emb: np.ndarray, pairs: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Cosine score per pair (NaN where a photo had no face)."""
    out = np.empty(len(pairs), dtype=np.float32)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = np.einsum("ij,ij->i", emb[p[:, 0]], emb[p[:, 1]])
    return out


# -- metrics -------------------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve: P(a same pair scores above a different pair), ties counting half
    (the Mann-Whitney statistic, from ranks: O(n log n))."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if not n_pos or not n_neg:
        raise ValueError("ROC AUC needs same and different pairs")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = mid_rank[inverse]
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def best_accuracy_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The midpoint of the widest score interval with the best accuracy (how MATCH_THRESHOLD was
    chosen on LFW DevTrain)."""
    order = np.argsort(scores, kind="stable")
    s, y = np.asarray(scores)[order], np.asarray(same)[order]
    # a threshold between s[k-1] and s[k]: pairs 0..k-1 called different, k.. called same
    correct = np.concatenate([[0], np.cumsum(~y)]) + np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    best = np.flatnonzero(correct == correct.max())
    lo = np.where(best > 0, s[np.maximum(best - 1, 0)], s[0] - 1e-3)
    hi = np.where(best < len(s), s[np.minimum(best, len(s) - 1)], s[-1] + 1e-3)
    k = int(np.argmax(hi - lo))
    return float((lo[k] + hi[k]) / 2)


def rates(scores: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, TAR (same pairs at or above) and FAR (different pairs at or above) at a threshold."""
    called = scores >= threshold
    return {"accuracy": float((called == same).mean()), "tar": float(called[same].mean()),
            "far": float(called[~same].mean())}


def threshold_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """The lowest 4-decimal threshold at which at most ``far`` of the different pairs score at or above it."""
    neg = np.sort(np.asarray(scores)[~same])[::-1]
    allowed = int(math.floor(far * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float(math.floor(float(neg[-1]) * 1e4) / 1e4)
    return float(math.floor(float(neg[allowed]) * 1e4 + 1) / 1e4)


@dataclass
class Calibration:
    source: str
    photos: int
    skipped_photos: list[tuple[str, str]]
    skipped_pairs: list[tuple[str, str]]
    same_pairs: int
    different_pairs: int
    sampled: bool
    roc_auc: float
    current: dict[str, Any]
    best: dict[str, Any]
    at_far: dict[str, Any]
    scores: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "photos": self.photos,
                "photos_without_face": [{"path": p, "reason": r} for p, r in self.skipped_photos],
                "pairs": {"same": self.same_pairs, "different": self.different_pairs, "different_sampled": self.sampled,
                          "skipped": len(self.skipped_pairs)},
                "roc_auc": round(self.roc_auc, 6), "current": self.current, "best_accuracy": self.best,
                "at_far": self.at_far, "scores": self.scores}


def calibrate(labelled: LabelledPairs, emb: np.ndarray, skipped_photos: list[tuple[str, str]], current: float,
              current_source: str, far: float, model: ScoreModel | None) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """The figures, plus the scores and labels of the pairs used (for the plot)."""
    if not 0 < far < 1:
        raise ConfigError(f"--far must be between 0 and 1, got {far}")
    scores = pair_scores(emb, labelled.pairs)
    ok = ~np.isnan(scores)
    dropped = [(f"{labelled.photos[a]} / {labelled.photos[b]}", "a photo without a usable face")
               for (a, b) in labelled.pairs[~ok][:1000].tolist()]
    s, y = scores[ok].astype(np.float64), labelled.same[ok]
    if not y.any() or y.all():
        raise ConfigError("after dropping photos without a usable face, same and different pairs are both needed")
    n_diff = int((~y).sum())
    t_far = threshold_at_far(s, y, far)
    best = best_accuracy_threshold(s, y)
    at_far = {"far_target": far, "threshold": t_far, **_rounded(rates(s, y, t_far)),
              "resolved": n_diff * far >= 1,
              "score_model_threshold": None if model is None else round(model.threshold(1, far), 4)}
    cur = {"threshold": current, "source": current_source, **_rounded(rates(s, y, current)),
           "score_model_far": None if model is None else float(f"{model.p_one(current):.3g}")}
    summary = {"same_mean": round(float(s[y].mean()), 4), "same_min": round(float(s[y].min()), 4),
               "different_mean": round(float(s[~y].mean()), 4), "different_max": round(float(s[~y].max()), 4)}
    result = Calibration(labelled.source, len(labelled.photos), skipped_photos, labelled.problems + dropped,
                         int(y.sum()), n_diff, labelled.sampled, roc_auc(s, y), cur,
                         {"threshold": round(best, 4), **_rounded(rates(s, y, best))}, at_far, summary)
    return result, s, y


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in d.items()}


# -- the plot ------------------------------------------------------------------------------------


def plot_histograms(scores: np.ndarray, same: np.ndarray, marks: list[tuple[str, float, tuple[int, int, int]]],
                    path: str | Path, title: str = "", width: int = 960, height: int = 540) -> Path:
    """Same-person and different-person score histograms (each normalised to its own count) with
    vertical lines at ``marks`` [(label, score, colour)], as a PNG drawn with Pillow."""
    from PIL import Image, ImageDraw

    from facecli.imaging.annotate import load_font

    left, right, top, bottom = 70, 20, 70, 60
    lo = math.floor(min(float(scores.min()), *(m[1] for m in marks)) * 20) / 20
    hi = 1.0
    bins = np.linspace(lo, hi, int(round((hi - lo) / 0.005)) + 1)
    h_same = np.histogram(scores[same], bins)[0] / max(1, int(same.sum()))
    h_diff = np.histogram(scores[~same], bins)[0] / max(1, int((~same).sum()))
    ymax = max(float(h_same.max()), float(h_diff.max()), 1e-9) * 1.1
    img = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    font, small = load_font(16), load_font(13)

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (width - left - right)

    def y(v: float) -> float:
        return height - bottom - v / ymax * (height - top - bottom)

    for hist, colour in ((h_diff, (230, 120, 30, 150)), (h_same, (40, 110, 220, 150))):
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        for i, v in enumerate(hist):
            if v > 0:
                d.rectangle([x(bins[i]), y(v), x(bins[i + 1]) - 1, y(0)], fill=colour)
        img = Image.alpha_composite(img, layer)
    d = ImageDraw.Draw(img)
    d.line([(left, y(0)), (width - right, y(0))], fill="black", width=1)
    d.line([(left, top), (left, y(0))], fill="black", width=1)
    tick = 0.05 if hi - lo > 0.3 else 0.02
    v = math.ceil(lo / tick) * tick
    while v <= hi + 1e-9:
        d.line([(x(v), y(0)), (x(v), y(0) + 5)], fill="black")
        d.text((x(v) - 14, y(0) + 8), f"{v:.2f}", fill="black", font=small)
        v += tick
    for frac in (0.25, 0.5, 0.75, 1.0):
        yy = y(ymax / 1.1 * frac)
        d.text((6, yy - 7), f"{ymax / 1.1 * frac:.0%}", fill="black", font=small)
    d.text((left, height - 24), "score (cosine similarity)", fill="black", font=small)
    for n, (label, value, colour) in enumerate(marks):
        for yy in range(top, int(y(0)), 8):  # dashed
            d.line([(x(value), yy), (x(value), min(yy + 4, y(0)))], fill=colour, width=2)
        d.text((left + 10, top + 22 * n + 4), f"{label}: {value:.4f}", fill=colour, font=small)
    d.rectangle([width - 250, 12, width - 236, 26], fill=(40, 110, 220))
    d.text((width - 230, 11), f"same person ({int(same.sum()):,} pairs)", fill="black", font=small)
    d.rectangle([width - 250, 34, width - 236, 48], fill=(230, 120, 30))
    d.text((width - 230, 33), f"different ({int((~same).sum()):,} pairs)", fill="black", font=small)
    if title:
        d.text((left, 14), re.sub(r"\s+", " ", title)[:80], fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(out, "PNG")
    return out
