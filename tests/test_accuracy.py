"""Recognition accuracy regression test on a fixed LFW View 1 DevTest subset (issue 9).

The full benchmark is ``bench/lfw.py``; this runs its subject rule and scoring on the first 100
same and the first 100 different pairs of pairsDevTest.txt with the default settings (template,
flip TTA, recognizer, ``MATCH_THRESHOLD``), so that a change that costs accuracy fails CI.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from facecli.imaging.decode import decode_image
from facecli.vision.align import align_face
from facecli.vision.embed import MATCH_THRESHOLD

from .conftest import DATASETS, REPO

LFW = DATASETS / "lfw-view1"

pytestmark = pytest.mark.skipif(
    not (LFW / "pairsDevTest.txt").is_file(),
    reason=f"{LFW} is absent (LFW View 1 lives in ../shared/datasets, beside the repo)",
)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_lfw", REPO / "bench" / "lfw.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_lfw", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_lfw_devtest_subset_accuracy_at_the_default_threshold(checker):
    lfw = _bench()
    pairs = lfw.devtest_subset(LFW, 100, 100)
    assert len(pairs) == 200 and sum(p[2] for p in pairs) == 100
    rels = sorted({r for p in pairs for r in p[:2]})
    crops = []
    for rel in rels:
        image = decode_image(LFW / "images" / rel, checker.config.limits)
        faces = [f.scaled(image.scale) for f in checker.detector.detect(image.rgb)]
        face = lfw.subject_face(faces, image.source_width, image.source_height)
        assert face is not None, rel
        crops.append(align_face(image.rgb, face.landmarks / image.scale))
    emb = dict(zip(rels, checker.recognizer.embed(np.stack(crops))))
    scores, same = lfw.pair_scores(emb, pairs)
    accuracy = lfw.accuracy(scores, same, MATCH_THRESHOLD)
    assert accuracy >= 0.99, f"accuracy {accuracy:.3f} at threshold {MATCH_THRESHOLD}"
    assert lfw.roc_auc(scores, same) >= 0.995  # measured 0.9983
