"""1:N search of the face(s) in a photo against a collection, on any sink."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facecli.errors import ReasonCode
from facecli.imaging.decode import DecodeFailure, decode_image
from facecli.imaging.encode import PayloadSpec, payload_jpeg
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.scale import SearchDecision
from facecli.sinks.base import Match, SearchProbe, Sink
from facecli.vision.align import align_face
from facecli.vision.detect import Face
from facecli.vision.quality import gate_faces


@dataclass
class FaceMatches:
    """One searched face: the matches that pass the decision, each annotated (score, its
    false-match probability at the gallery's size, margin to the next person, ambiguous); none when
    nobody in the collection passes the bar. ``index``: 1 for the main (largest) face, then the
    others by size."""

    face: Face
    matches: list[dict]
    index: int = 1

    def to_json(self) -> dict:
        return {"index": self.index, "box": self.face.to_json()["box"], "det_score": round(self.face.score, 4),
                "matches": self.matches}


@dataclass
class SearchResult:
    query: str
    faces: list[FaceMatches] = field(default_factory=list)
    reason: ReasonCode | None = None  # why nothing was searched
    message: str = ""

    @property
    def found(self) -> bool:
        return any(f.matches for f in self.faces)

    def to_json(self) -> dict:
        out: dict = {"query": self.query, "faces": [f.to_json() for f in self.faces]}
        if self.reason:
            out["reason"] = str(self.reason)
            out["message"] = self.message
        return out


def search_image(path: str | Path, checker: FaceChecker, sink: Sink, collection: str, k: int = 5,
                 min_score: float = 0.0, all_faces: bool = False, decision: SearchDecision | None = None) -> SearchResult:
    """Detect, then search the main face (or, with ``all_faces``, every counted face).

    With a ``decision`` (the CLI's), its bar replaces ``min_score`` and one more person is asked
    for, so the last reported match still has a margin to the next."""
    decision = decision or SearchDecision(min_score, None, None, explicit=True)
    fetch_min = 0.0 if decision.model is not None else decision.min_score
    result = SearchResult(str(path))
    try:
        image = decode_image(path, checker.config.limits)
    except DecodeFailure as exc:
        result.reason, result.message = exc.reason, exc.message
        return result
    faces = [f.scaled(image.scale) for f in checker.detector.detect(image.rgb)]
    gate = gate_faces(faces, image.source_width, image.source_height, checker.thresholds)
    if gate.main is None:
        result.reason, result.message = ReasonCode.NO_FACE, "no face found"
        return result
    if gate.comparable and not all_faces:
        result.reason = ReasonCode.MULTIPLE_FACES
        result.message = f"{gate.comparable + 1} faces of similar size; use --all-faces to search each"
        return result
    # with --all-faces every face found is searched and reported, those without a match too
    chosen = [gate.main] + (sorted(gate.others, key=lambda f: -f.size) if all_faces else [])
    crops = [align_face(image.rgb, f.landmarks / image.scale) for f in chosen]
    embeddings = checker.recognizer.embed(crops)
    spec = PayloadSpec()
    for index, (face, emb) in enumerate(zip(chosen, embeddings), 1):
        jpeg = payload_jpeg(image.rgb, face.box / image.scale, spec) if getattr(sink, "takes_images", True) else None
        probe = SearchProbe(embedding=emb, jpeg=jpeg)
        matches = sink.search(collection, probe, k + 1, fetch_min)
        result.faces.append(FaceMatches(face, decision.annotate(matches)[:k], index))
    return result
