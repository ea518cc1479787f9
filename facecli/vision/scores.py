"""The score model: a cosine score -> the probability that it is a *false* match, for 1 and for N
comparisons. Every decision that compares against many (duplicates in a run plus the gallery,
search in a gallery) asks this module for its threshold at that N instead of using a fixed
pairwise threshold (DESIGN.md section 3: at N persons the expected number of false pairs grows
with N, so a fixed threshold rejects more and more distinct people as the run grows).

The model is a table of the recognizer's different-person score tail: for each score s on a grid,
log10 P(score >= s) over every cross-person pair of lfw-view1 DevTrain photos (~5.9 million pairs,
empirical down to ~1e-6), continued past the data by an exponential tail (log10 P linear in s)
fitted to the last decades. It is built by ``bench/fit_score_model.py`` and shipped as package
data (``facecli/vision/score_models/<recognizer sha256[:12]>.json``), one per recognizer: a model
file without a table gets no score model and the fixed thresholds of ``vision/embed.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

#: Expected false DUPLICATE_PERSON rejections per person of a run: 1 in 10,000 persons.
DUPLICATE_BUDGET = 1e-4
#: Expected false POSSIBLE_DUPLICATE warnings per person: the review list an administrator reads.
REVIEW_BUDGET = 0.01
#: Chance that a person who is *not* enrolled matches anyone in the gallery at search's default.
SEARCH_BUDGET = 0.01
#: Top two persons of a search closer than this (cosine) are within the score's noise: "ambiguous".
#: (The same pair of photos moves by up to ~0.01 under re-encoding, resizing or a mirror image.)
AMBIGUOUS_MARGIN = 0.01
#: A probability is never reported below this: beyond the data the tail is an extrapolation.
P_FLOOR = 1e-15


@dataclass(frozen=True)
class ScoreModel:
    """Different-person score tail of one recognizer, as a monotone table."""

    recognizer: str
    sha256: str
    scores: np.ndarray  # ascending grid
    log10_p: np.ndarray  # log10 P(different-person score >= s), non-increasing
    meta: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreModel:
        s = np.asarray(data["scores"], dtype=np.float64)
        lp = np.asarray(data["log10_p"], dtype=np.float64)
        if s.ndim != 1 or s.shape != lp.shape or len(s) < 2 or np.any(np.diff(s) <= 0) or np.any(np.diff(lp) > 0):
            raise ValueError("score model table must be an ascending score grid with a non-increasing tail")
        return cls(str(data["recognizer"]), str(data["sha256"]), s, lp,
                   {k: v for k, v in data.items() if k not in ("scores", "log10_p")})

    def to_json(self) -> dict[str, Any]:
        return {**self.meta, "recognizer": self.recognizer, "sha256": self.sha256,
                "scores": [round(float(v), 5) for v in self.scores],
                "log10_p": [round(float(v), 4) for v in self.log10_p]}

    # -- score -> probability ------------------------------------------------------------------

    def p_one(self, score: float) -> float:
        """P(a different person scores >= ``score``) for one comparison."""
        lp = float(np.interp(score, self.scores, self.log10_p, left=0.0, right=self.log10_p[-1]))
        return min(1.0, max(P_FLOOR, 10.0 ** lp))

    def p_any(self, score: float, n: int) -> float:
        """P(at least one of ``n`` different-person comparisons scores >= ``score``)."""
        p = self.p_one(score)
        n = max(1, int(n))
        return max(P_FLOOR, min(1.0, -math.expm1(n * math.log1p(-min(p, 1 - 1e-16)))))

    # -- budget -> threshold -------------------------------------------------------------------

    def threshold(self, n: int, budget: float) -> float:
        """The lowest score at which ``n`` different-person comparisons stay under ``budget``
        false matches (P(any) <= budget)."""
        if not 0 < budget < 1:
            raise ValueError(f"budget must be between 0 and 1, got {budget}")
        n = max(1, int(n))
        p1 = -math.expm1(math.log1p(-budget) / n)  # per-comparison probability
        target = math.log10(max(p1, P_FLOOR))
        lp = self.log10_p
        if target >= lp[0]:
            return float(self.scores[0])
        if target <= lp[-1]:
            return float(self.scores[-1])
        # first grid point at or below the target, then interpolate within its interval
        k = int(np.argmax(lp <= target))
        s0, s1, l0, l1 = self.scores[k - 1], self.scores[k], lp[k - 1], lp[k]
        return float(s1 if l0 == l1 else s0 + (target - l0) * (s1 - s0) / (l1 - l0))

    def describe(self) -> str:
        return (f"score model of {self.recognizer} ({self.sha256[:12]}): fitted on "
                f"{self.meta.get('pairs', '?')} different-person pairs of {self.meta.get('source', '?')}")


@lru_cache(maxsize=8)
def load_score_model(recognizer_sha256: str) -> ScoreModel | None:
    """The shipped table for this recognizer file, or None when none was fitted for it."""
    name = f"{recognizer_sha256[:12]}.json"
    try:
        text = resources.files("facecli.vision").joinpath("score_models", name).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    model = ScoreModel.from_json(json.loads(text))
    if model.sha256 != recognizer_sha256:
        return None
    return model
