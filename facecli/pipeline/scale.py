"""Decisions at the scale of the run and of the gallery (DESIGN.md section 3): which score model
applies, how big the target collection is, and whether the target can be asked about duplicates.

A target's scores are read through the score model only when they are cosines of the same
recognizer: the embedded engines (they store this facecli's embeddings) and a `facecli serve`
whose /health names the same recognizer sha256. Any other server scores on its own scale; it is
then not asked, and the summary says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from facecli.pipeline.persons import GalleryContext
from facecli.sinks.base import Match, SearchProbe, Sink
from facecli.vision.embed import MATCH_THRESHOLD
from facecli.vision.scores import AMBIGUOUS_MARGIN, SEARCH_BUDGET, ScoreModel, load_score_model

if TYPE_CHECKING:
    from facecli.pipeline.check import FaceChecker
    from facecli.pipeline.report import ItemResult


def score_model_for(checker: FaceChecker) -> ScoreModel | None:
    """The shipped score model of the checker's recognizer file (None: fixed thresholds apply)."""
    return load_score_model(checker.recognizer.model.file.sha256)


def same_scores(sink: Sink, recognizer_sha256: str) -> bool:
    """True when the target's search scores are this recognizer's cosines."""
    fp = getattr(sink, "score_fingerprint", None)
    if fp is None:
        return False
    got = fp()
    return got == "local" or got == recognizer_sha256


def gallery_size(sink: Sink, collection: str) -> int | None:
    size = getattr(sink, "gallery_size", None)
    return size(collection) if size is not None else None


def gallery_context(sink: Sink, collection: str, recognizer_sha256: str) -> GalleryContext:
    """How the duplicate check reaches the target collection, or why it cannot."""
    if not same_scores(sink, recognizer_sha256):
        return GalleryContext(note=f"not checked: {getattr(sink, 'target', sink.name)} does not score with "
                                   "this facecli's recognizer, so its scores cannot be read as false-match odds")
    size = gallery_size(sink, collection)
    if size is None:
        return GalleryContext(note="not checked: the collection does not exist yet or cannot be counted")
    if size == 0:
        return GalleryContext(note="checked: the collection is empty")
    search_many = getattr(sink, "search_many", None)

    def search(items: list[ItemResult], k: int, min_score: float) -> list[list[Match]]:
        if search_many is not None:
            return search_many(collection, np.stack([i.check.embedding for i in items]), k, min_score)
        return [sink.search(collection, SearchProbe(embedding=i.check.embedding, jpeg=i.check.payload), k, min_score)
                if (i.check.payload is not None or not getattr(sink, "takes_images", True)) else []
                for i in items]

    return GalleryContext(faces=size, search=search, note=f"checked against {size:,} faces in the collection")


@dataclass(frozen=True)
class SearchDecision:
    """How `facecli search` decides at the gallery's size."""

    min_score: float
    gallery: int | None  # faces (or persons) searched; None: unknown
    model: ScoreModel | None
    budget: float = SEARCH_BUDGET
    explicit: bool = False  # --min-score given

    def describe(self) -> str:
        if self.explicit:
            return f"--min-score {self.min_score:.4f}"
        if self.model is None or self.gallery is None:
            return f"fixed match threshold {self.min_score:.4f} (no score model for this target)"
        return (f"{self.min_score:.4f}: a person who is not enrolled matches anyone of {self.gallery:,} faces "
                f"with probability <= {self.budget:g}")

    def annotate(self, matches: list[Match]) -> list[dict[str, Any]]:
        """Matches (best first, possibly below the bar) -> the ones that pass, each with its
        false-match probability at this gallery's size, the margin to the next person and whether
        the top two are within the score's noise."""
        out: list[dict[str, Any]] = []
        for i, m in enumerate(matches):
            if m.score < self.min_score:
                break
            nxt = matches[i + 1].score if i + 1 < len(matches) else None
            d = m.to_json()
            if self.model is not None and self.gallery:
                d["false_match_probability"] = float(f"{self.model.p_any(m.score, self.gallery):.3g}")
            d["margin"] = None if nxt is None else round(m.score - nxt, 4)
            d["ambiguous"] = nxt is not None and m.score - nxt < AMBIGUOUS_MARGIN
            out.append(d)
        return out


def search_decision(sink: Sink, collection: str, checker: FaceChecker, min_score: float | None = None,
                    budget: float = SEARCH_BUDGET, fixed: float = MATCH_THRESHOLD) -> SearchDecision:
    """The default --min-score: the score at which a person who is not enrolled has at most
    ``budget`` chance of matching anyone in a collection of this size (``fixed``, the match
    threshold, where the target's scores cannot be read through the score model)."""
    sha = checker.recognizer.model.file.sha256
    model = score_model_for(checker) if same_scores(sink, sha) else None
    size = gallery_size(sink, collection) if model is not None else None
    if min_score is not None:
        return SearchDecision(min_score, size, model, budget, explicit=True)
    if model is None or size is None:
        return SearchDecision(fixed, size, None, budget)
    return SearchDecision(model.threshold(max(1, size), budget), size, model, budget)
