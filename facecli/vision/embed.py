"""Face embeddings: aligned crops -> L2-normalised float32 vectors, batched; one similarity function.

Scores: facecli reports cosine similarity of L2-normalised dlib-resnet embeddings. This model's
cosines are compressed (different people still score ~0.75-0.9), so the decision threshold is
``MATCH_THRESHOLD``, calibrated on LFW View 1 DevTrain (see README, "Match threshold").
"""

from __future__ import annotations

import numpy as np

from facecli.vision.models import ResolvedModel
from facecli.vision.runtime import make_session

#: Cosine similarity at or above which two faces are the same person, for the default pipeline
#: (no flip TTA). Chosen on LFW View 1 pairsDevTrain.txt (bench/lfw.py: midpoint of the widest
#: best-accuracy interval, 0.9077, rounded; same DevTrain accuracy, 98.95%); tests/test_accuracy.py
#: checks it on DevTest pairs and tests/test_check.py on deepface-pairs (99.7% there: one
#: different pair scores 0.919). With flip TTA on, DevTrain picks 0.910.
MATCH_THRESHOLD = 0.908

#: Score at or above which two *different* person_ids are flagged DUPLICATE_PERSON. Stricter than
#: MATCH_THRESHOLD because a false duplicate rejects a legitimate person: the former match threshold,
#: which no different-person pair of deepface-pairs reaches (at 0.908, 4 of its 13 identities'
#: first images are flagged as duplicates of another identity).
DUPLICATE_THRESHOLD = 0.923


class Recognizer:
    """dlib-resnet: [N,150,150,3] RGB uint8 aligned crops -> [N,128] unit vectors."""

    def __init__(self, model: ResolvedModel, threads: int | None = None, device: str = "cpu",
                 max_batch: int = 32, flip: bool = False) -> None:
        self.model = model
        self.session = make_session(model.path, threads, device, sha256=model.file.sha256)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.crop_size = model.file.input_size[0] if model.file.input_size else 150
        self.max_batch = max_batch
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        #: Horizontal-flip test-time augmentation: each face is embedded as itself and mirrored, and
        #: the two unit vectors are summed (then normalised). Twice the recognizer work per face.
        self.flip = flip

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed a stack of crops; the model takes raw 0..255 RGB (normalisation is in-graph)."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        out = np.empty((len(crops), self.dim), dtype=np.float32)
        step = max(1, self.max_batch // 2) if self.flip else self.max_batch
        for i in range(0, len(crops), step):
            chunk = crops[i : i + step]
            if self.flip:  # one run over the faces and their mirror images
                chunk = np.concatenate([chunk, chunk[:, :, ::-1]])
            blob = np.ascontiguousarray(chunk.transpose(0, 3, 1, 2), dtype=np.float32)
            raw = self.session.run([self.output_name], {self.input_name: blob})[0]
            if self.flip:
                n = len(raw) // 2
                raw = l2_normalize(raw[:n]) + l2_normalize(raw[n:])
            out[i : i + len(raw)] = raw
        return l2_normalize(out)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity of unit vectors: (D,)x(D,) -> float, (N,D)x(M,D) -> (N,M)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim == 1 and b.ndim == 1:
        return float(a @ b)
    return np.atleast_2d(a) @ np.atleast_2d(b).T


def is_match(score: float, threshold: float = MATCH_THRESHOLD) -> bool:
    return score >= threshold
