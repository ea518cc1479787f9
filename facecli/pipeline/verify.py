"""1:1 verification (`facecli compare A B [C ...]`): the main face of each photo against the first's.

One pair is one comparison, so the decision is the pairwise match threshold (``MATCH_THRESHOLD``,
the best-accuracy point on LFW DevTrain pairs, or the user's own from `facecli calibrate`), and
the score model gives the false-match probability of one comparison (``ScoreModel.p_one``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facecli.errors import ReasonCode
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.probes import embed_probes
from facecli.vision.embed import similarity
from facecli.vision.scores import ScoreModel


@dataclass
class Verdict:
    """One photo of a comparison; the first photo is the reference (no score of its own)."""

    path: str
    box: list[float] | None = None
    faces: int = 0  # faces detected in the photo
    score: float | None = None
    same: bool | None = None
    false_match_probability: float | None = None
    reason: ReasonCode | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "box": self.box, "faces": self.faces}
        if self.score is not None:
            out |= {"score": round(self.score, 4), "same": self.same,
                    "false_match_probability": self.false_match_probability}
        if self.reason:
            out |= {"reason": str(self.reason), "message": self.message}
        return out


@dataclass
class Comparison:
    threshold: float
    threshold_source: str
    reference: Verdict
    others: list[Verdict] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.reference.reason is None and all(v.reason is None for v in self.others)

    @property
    def same_person(self) -> bool:
        """Every photo has a face and every one is the reference's person."""
        return self.usable and all(v.same for v in self.others)

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "threshold_source": self.threshold_source,
                "reference": self.reference.to_json(), "compared": [v.to_json() for v in self.others],
                "same_person": self.same_person}


def compare_paths(paths: list[str | Path], checker: FaceChecker, threshold: float, model: ScoreModel | None,
                  threshold_source: str = "default") -> Comparison:
    """Embed the main face of each photo (a photo with several faces: the largest one, the count
    kept) and compare each with the first. A photo without a usable face gets its reason."""
    verdicts: list[Verdict] = []
    embeddings = []
    for group in embed_probes(checker, paths, allow_multiple=True):
        for p in group:
            v = Verdict(p.path, faces=p.detected, reason=p.reason, message=p.message)
            if p.faces:
                v.box = p.faces[0].to_json()["box"]
                if p.competing:
                    v.message = f"{p.competing + 1} faces of similar size: compared the largest"
            verdicts.append(v)
            embeddings.append(p.embeddings[0] if p.embeddings is not None else None)
    ref, ref_emb = verdicts[0], embeddings[0]
    for v, e in zip(verdicts[1:], embeddings[1:]):
        if ref_emb is None or e is None:
            continue
        v.score = float(similarity(ref_emb, e))
        v.same = v.score >= threshold
        if model is not None:
            v.false_match_probability = float(f"{model.p_one(v.score):.3g}")
    return Comparison(threshold, threshold_source, ref, verdicts[1:])
