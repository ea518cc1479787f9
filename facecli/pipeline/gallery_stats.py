"""`facecli collections stats NAME`: what a gallery holds, and how close its own people come.

The *different-person tail*: for each face (all of them, or a random sample), the score of the
nearest face of another person in the same collection. It is what a search for that person would
see as the runner-up, and the gallery's own check of the score model: at the search bar the model
sets for this size, about the search budget's share of the faces should have another person above
it. Many more means look-alikes (or one person enrolled twice: the closest pairs are listed).
Needs the embeddings, so the engines only (local SQLite, PostgreSQL); a server's API gives persons
and counts, not embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facecli.pipeline.scale import gallery_size, same_scores
from facecli.sinks.base import Sink
from facecli.vision.scores import SEARCH_BUDGET, ScoreModel, load_score_model

#: Faces whose nearest other person is measured, by default (all of them in smaller galleries).
DEFAULT_SAMPLE = 2000
#: Closest different-person pairs listed.
CLOSEST = 5


@dataclass
class GalleryStats:
    collection: str
    target: str
    persons: int | None
    faces: int | None
    faces_per_person: dict[str, float] | None
    model: dict[str, Any]
    search_bar: dict[str, Any] | None
    tail: dict[str, Any] | None = None
    closest_pairs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"collection": self.collection, "target": self.target, "persons": self.persons, "faces": self.faces,
                "faces_per_person": self.faces_per_person, "model": self.model, "search_bar": self.search_bar,
                "tail": self.tail, "closest_pairs": self.closest_pairs, "notes": self.notes}


def _spread(counts: list[int] | np.ndarray) -> dict[str, float] | None:
    c = np.asarray(counts, dtype=np.float64)
    if not len(c):
        return None
    return {"min": int(c.min()), "median": float(np.median(c)), "max": int(c.max()), "mean": round(float(c.mean()), 3)}


def nearest_other_person(owner: np.ndarray, matrix: np.ndarray, rows: np.ndarray,
                         block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """For each face in ``rows``: the best score against a face of another person, and that face
    (-inf / -1 when the gallery holds nobody else)."""
    n = len(matrix)
    step = max(1, block // max(1, n))
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    where = np.full(len(rows), -1, dtype=np.int64)
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        sims = matrix[r] @ matrix.T
        sims[owner[r][:, None] == owner[None, :]] = -np.inf
        j = np.argmax(sims, axis=1)
        best[s : s + step] = sims[np.arange(len(r)), j]
        where[s : s + step] = np.where(np.isfinite(best[s : s + step]), j, -1)
    return best, where


def gallery_stats(sink: Sink, collection: str, recognizer: dict[str, str], sample: int = DEFAULT_SAMPLE,
                  budget: float = SEARCH_BUDGET, seed: int = 0) -> GalleryStats:
    """``recognizer``: {"name", "sha256"} of this facecli's recognizer (its score model reads the
    scores when the target's are its cosines)."""
    fingerprint = getattr(sink, "score_fingerprint", lambda: None)()
    same = same_scores(sink, recognizer["sha256"])
    model: ScoreModel | None = load_score_model(recognizer["sha256"]) if same else None
    model_info = {"recognizer": recognizer["name"], "sha256": recognizer["sha256"], "target_fingerprint": fingerprint,
                  "same_scores": same, "score_model": None if model is None else model.describe()}
    target = str(getattr(sink, "target", sink.name))
    stats = GalleryStats(collection, target, None, None, None, model_info, None)
    if not same:
        stats.notes.append(f"{target} does not name this facecli's recognizer: its scores are on its own scale, "
                           "so there is no search bar from the score model")
    face_embeddings = getattr(sink, "face_embeddings", None)
    if face_embeddings is not None:
        persons, owner, matrix = face_embeddings(collection)
        counts = np.bincount(owner, minlength=len(persons)) if len(persons) else np.zeros(0, dtype=np.int64)
        counted = getattr(sink, "counts", None)
        total_persons = counted(collection)[0] if counted is not None else len(persons)
        counts = np.concatenate([counts, np.zeros(max(0, total_persons - len(persons)), dtype=np.int64)])
        stats.persons, stats.faces, stats.faces_per_person = int(total_persons), int(len(matrix)), _spread(counts)
    else:
        _from_listing(sink, collection, stats)
        persons = owner = matrix = None
    size = stats.faces if face_embeddings is not None else gallery_size(sink, collection)
    if model is not None and size:
        bar = model.threshold(max(1, size), budget)
        stats.search_bar = {"threshold": round(bar, 4), "budget": budget, "gallery": size,
                            "unit": "faces" if face_embeddings is not None else "persons"}
    if matrix is None:
        stats.notes.append(f"the different-person tail is not available for this target: {target} gives no embeddings "
                           "(the local engine and PostgreSQL do)")
        return stats
    if len(persons) < 2:
        stats.notes.append("the different-person tail needs faces of at least two persons")
        return stats
    rng = np.random.default_rng(seed)
    rows = np.arange(len(matrix)) if len(matrix) <= sample else np.sort(rng.choice(len(matrix), sample, replace=False))
    best, where = nearest_other_person(owner, np.asarray(matrix, dtype=np.float32), rows)
    ok = where >= 0
    b = best[ok].astype(np.float64)
    tail: dict[str, Any] = {"faces_measured": int(ok.sum()), "sampled": bool(len(rows) < len(matrix))}
    tail |= {f"p{q}": round(float(np.percentile(b, q)), 4) for q in (50, 90, 99)}
    tail["max"] = round(float(b.max()), 4)
    if stats.search_bar is not None and model is not None:
        bar = stats.search_bar["threshold"]
        others = len(matrix) - counts[owner[rows[ok]]]  # each face meets every face of the other persons
        tail["above_bar"] = round(float((b >= bar).mean()), 6)
        tail["expected_above_bar"] = round(float(np.mean([model.p_any(bar, int(n)) for n in others])), 6)
    stats.tail = tail
    order = np.argsort(-best)
    seen: set[tuple[str, str]] = set()
    for i in order[: 10 * CLOSEST]:
        if where[i] < 0:
            break
        a, c = persons[owner[rows[i]]], persons[owner[where[i]]]
        key = (min(a, c), max(a, c))
        if key in seen:
            continue
        seen.add(key)
        pair = {"person_a": key[0], "person_b": key[1], "score": round(float(best[i]), 4)}
        if model is not None:
            pair["false_match_probability_1to1"] = float(f"{model.p_one(float(best[i])):.3g}")
        if stats.search_bar is not None:
            pair["above_search_bar"] = bool(best[i] >= stats.search_bar["threshold"])
        stats.closest_pairs.append(pair)
        if len(stats.closest_pairs) >= CLOSEST:
            break
    return stats


def _from_listing(sink: Sink, collection: str, stats: GalleryStats) -> None:
    """Counts a server's listing gives (`facecli serve` lists; an OpenCV FR Server may not)."""
    list_persons = getattr(sink, "list_persons", None)
    if list_persons is None:
        stats.notes.append("this target cannot list persons")
        return
    from facecli.errors import TargetError

    try:
        total, rows = list_persons(collection, None, 0)
    except TargetError as exc:
        stats.notes.append(f"persons not listed: {exc.message}")
        return
    stats.persons = int(total)
    faces = [r.faces for r in rows if isinstance(r.faces, int)]
    if len(faces) == len(rows):
        stats.faces = int(sum(faces))
        stats.faces_per_person = _spread(faces)


def this_recognizer(models_dir: str | None = None) -> dict[str, str]:
    """{"name", "sha256"} of the recognizer this facecli embeds with: the file found (verified by
    the registry), else the registry's first file for it (stats need no model loaded)."""
    from facecli.errors import FacecliError
    from facecli.vision.models import DEFAULT_RECOGNIZER, REGISTRY, resolve_model

    try:
        file = resolve_model(DEFAULT_RECOGNIZER, None, models_dir).file
    except FacecliError:
        file = REGISTRY[DEFAULT_RECOGNIZER].files[0]
    return {"name": DEFAULT_RECOGNIZER, "sha256": file.sha256}
