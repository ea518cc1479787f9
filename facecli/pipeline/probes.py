"""Photos asked about rather than enrolled (search, compare, calibrate): the faces of each photo and
their embeddings, through the check stage's overlapped decode -> detect -> embed stream
(``FaceChecker.check_paths``), in chunks so the caller can search a chunk in one request.

A probe is not held to the enrollment gate: a blurred or turned face is still searched (the score
and its false-match probability say how much it is worth). Only a photo without a face, one that
cannot be read, or -- unless the caller allows it -- one where another face competes with the main
one (``MULTIPLE_FACES``) gets a reason instead of faces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from facecli.errors import ReasonCode
from facecli.imaging.decode import DecodedImage
from facecli.pipeline.check import FaceChecker, ImageCheck, MultiFace
from facecli.vision.align import align_face
from facecli.vision.detect import Face
from facecli.vision.quality import gate_faces


@dataclass
class ProbeFaces:
    """One probe photo: the faces asked about (main face first, then the others by size) and their
    embeddings, or the reason there are none. ``image`` is the decoded photo while the caller needs
    it (payloads, drawing); callers drop it as soon as they can."""

    path: str
    faces: list[Face] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # (len(faces), D)
    image: DecodedImage | None = None
    reason: ReasonCode | None = None
    message: str = ""
    #: Faces detected in the photo (the main one included), and how many of the others compete with it.
    detected: int = 0
    competing: int = 0
    check: ImageCheck | None = None


class _NoEmbedding:
    """Stands in for the recognizer when the faces are not embedded here (a server that detects
    and embeds what it is sent): the check stage's embedding call costs nothing."""

    def __init__(self, recognizer: Any) -> None:
        self.model, self.dim = recognizer.model, recognizer.dim

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return np.zeros((len(crops), self.dim), dtype=np.float32)


def probe_checker(checker: FaceChecker, embed: bool = True) -> FaceChecker:
    """The same models, with the decoded image kept on each result and no payload made."""
    cfg = replace(checker.config, keep_images=True, payload=None, multi_face=str(MultiFace.REJECT))
    return FaceChecker(checker.detector, checker.recognizer if embed else _NoEmbedding(checker.recognizer), cfg)


def embed_probes(checker: FaceChecker, paths: Iterable[str | Path], *, all_faces: bool = False,
                 allow_multiple: bool = False, chunk: int = 16, embed: bool = True) -> Iterator[list[ProbeFaces]]:
    """Probes in input order, ``chunk`` at a time. ``all_faces``: every detected face is embedded;
    else the main (largest) face only, and a photo where another face competes gets
    MULTIPLE_FACES unless ``allow_multiple`` (compare: the main face is compared, the count is kept).
    ``embed=False``: faces are found but not embedded (``embeddings`` stays None)."""
    stream = probe_checker(checker, embed).check_paths(paths)
    group: list[ProbeFaces] = []
    for item in stream:
        group.append(_probe(item, checker, all_faces, allow_multiple))
        if len(group) >= chunk:
            if embed:
                _embed_missing(checker, group)
            yield group
            group = []
    if group:
        if embed:
            _embed_missing(checker, group)
        yield group


def _probe(item: ImageCheck, checker: FaceChecker, all_faces: bool, allow_multiple: bool) -> ProbeFaces:
    p = ProbeFaces(item.path, image=item.image, check=item)
    item.image = None  # the probe holds it now, and drops it
    if item.face is None:
        if ReasonCode.NO_FACE in item.reasons or not item.reasons:
            p.reason, p.message = ReasonCode.NO_FACE, "no face found"
        else:  # the file could not be read
            p.reason, p.message = item.reasons[0], item.message
        return p
    p.detected = 1 + len(item.other_faces)
    if item.other_faces and item.width and item.height:
        p.competing = gate_faces([item.face, *item.other_faces], item.width, item.height, checker.thresholds).comparable
    if p.competing and not (all_faces or allow_multiple):
        p.reason = ReasonCode.MULTIPLE_FACES
        p.message = f"{p.competing + 1} faces of similar size; use --all-faces to search each"
        return p
    p.faces = [item.face] + (sorted(item.other_faces, key=lambda f: -f.size) if all_faces else [])
    return p


def _embed_missing(checker: FaceChecker, group: list[ProbeFaces]) -> None:
    """Every face of the chunk gets its embedding: the check stage's for an accepted main face, one
    recognizer batch for the rest (faces the enrollment gate refused, the other faces)."""
    crops: list[np.ndarray] = []
    where: list[tuple[ProbeFaces, int]] = []
    for p in group:
        if not p.faces:
            continue
        p.embeddings = np.zeros((len(p.faces), checker.recognizer.dim), dtype=np.float32)
        have = p.check.embedding if p.check is not None else None
        for i, face in enumerate(p.faces):
            if i == 0 and have is not None:
                p.embeddings[0] = have
                continue
            if p.image is None:  # cannot happen: the image is kept until here
                raise RuntimeError(f"{p.path}: the decoded image was dropped before embedding")
            crops.append(align_face(p.image.rgb, face.landmarks / p.image.scale))
            where.append((p, i))
    if crops:
        embedded = checker.recognizer.embed(np.stack(crops))
        for (p, i), e in zip(where, embedded):
            p.embeddings[i] = e
