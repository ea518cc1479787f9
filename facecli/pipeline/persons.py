"""Per-person checks once images are embedded: the costliest enrollment mistakes, caught before upload.

- IDENTITY_MISMATCH: a photo filed under the wrong person (it does not match the person's others).
- DUPLICATE_IMAGE: the same photo twice in the run (byte-identical, or near-identical: pHash).
- DUPLICATE_PERSON: one face under two person_ids (would be enrolled twice).
- TOO_MANY_IMAGES: more accepted images than the target takes; the best ones are kept.

Each check either rejects (the default) or only warns, per policy. Images keep their own status
unless a rejecting policy applies; the reason then explains what changed it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from facecli.errors import ReasonCode, Status
from facecli.imaging.phash import hamming
from facecli.vision.embed import DUPLICATE_THRESHOLD, MATCH_THRESHOLD, l2_normalize
from facecli.vision.quality import quality_score

if TYPE_CHECKING:
    from facecli.pipeline.enroll import CheckedPerson
    from facecli.pipeline.report import ItemResult

POLICIES = ("reject", "warn")
#: pHash distance (of 63 bits) at or under which two images are the same photo. Distinct photos
#: in deepface-pairs are >= 18 apart; a 1/3-size, quality-60 re-encode is ~2 away.
NEAR_DUPLICATE_BITS = 8


@dataclass(frozen=True)
class PersonPolicy:
    on_identity_mismatch: str = "reject"
    on_duplicate: str = "reject"
    max_images_per_person: int = 3  # 0: no limit. OpenCV FR cloud takes at most 3.
    match_threshold: float = MATCH_THRESHOLD
    duplicate_threshold: float = DUPLICATE_THRESHOLD


def _flag(item: ItemResult, reason: ReasonCode, policy: str, message: str, status: Status = Status.REJECTED) -> None:
    if policy == "warn":
        item.warnings.append(reason)
    else:
        item.reasons.append(reason)
        item.status = status
    item.message = "; ".join(m for m in (item.message, message) if m)


def _accepted(cp: CheckedPerson) -> list[ItemResult]:
    return [i for i in cp.items if i.status == Status.ACCEPTED and i.check is not None and i.check.embedding is not None]


def check_duplicate_images(persons: Sequence[CheckedPerson], policy: PersonPolicy) -> None:
    """Later copies of an image already seen in the run (in source order) are flagged."""
    seen_sha: dict[str, ItemResult] = {}
    seen_hash: list[tuple[int, ItemResult]] = []
    for cp in persons:
        for item in _accepted(cp):
            c = item.check
            first = seen_sha.get(c.sha256) if c.sha256 else None
            how = "byte-identical to"
            if first is None and c.phash is not None:
                first = next((it for h, it in seen_hash if hamming(h, c.phash) <= NEAR_DUPLICATE_BITS), None)
                how = "near-identical to"
            if first is not None:
                who = "" if first.person_id == item.person_id else f" (person {first.person_id})"
                _flag(item, ReasonCode.DUPLICATE_IMAGE, policy.on_duplicate, f"{how} {first.path}{who}")
                continue
            if c.sha256:
                seen_sha[c.sha256] = item
            if c.phash is not None:
                seen_hash.append((c.phash, item))


def check_identity(cp: CheckedPerson, policy: PersonPolicy) -> None:
    """Flag images that do not match the centroid of the person's other images.

    Iterative: the worst outlier is flagged and removed before the next round, so one mislabelled
    photo cannot drag the centroid and get good photos flagged. With two images left that
    disagree, there is no majority: both are flagged.
    """
    items = _accepted(cp)
    while len(items) >= 2:
        emb = np.stack([i.check.embedding for i in items])
        total = emb.sum(0)
        scores = [float(l2_normalize(total - e) @ e) for e in emb]
        worst = int(np.argmin(scores))
        if scores[worst] >= policy.match_threshold:
            return
        if len(items) == 2:
            for it in items:
                _flag(it, ReasonCode.IDENTITY_MISMATCH, policy.on_identity_mismatch,
                      f"the person's two images do not match each other (score {scores[worst]:.3f})")
            return
        _flag(items[worst], ReasonCode.IDENTITY_MISMATCH, policy.on_identity_mismatch,
              f"does not match the person's other images (score {scores[worst]:.3f} < {policy.match_threshold})")
        del items[worst]


def _cross_pairs(emb: np.ndarray, owner: np.ndarray, threshold: float, block: int = 2048) -> Iterator[tuple[int, int, float]]:
    """(i, j, score) with i < j, different owners, score >= threshold; blockwise to bound memory."""
    for start in range(0, len(emb), block):
        sims = emb[start : start + block] @ emb.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if i < c and owner[i] != owner[c]:
                yield i, int(c), float(sims[r, c])


def check_duplicate_persons(persons: Sequence[CheckedPerson], policy: PersonPolicy) -> dict[str, set[str]]:
    """Flag faces that match a face of another person_id; returns {person_id: {other ids}}."""
    refs: list[tuple[int, ItemResult]] = [(k, it) for k, cp in enumerate(persons) for it in _accepted(cp)]
    if len(refs) < 2:
        return {}
    emb = np.stack([it.check.embedding for _, it in refs]).astype(np.float32)
    owner = np.array([k for k, _ in refs])
    clashes: dict[str, set[str]] = {}
    for i, j, score in _cross_pairs(emb, owner, policy.duplicate_threshold):
        a, b = refs[i][1], refs[j][1]
        for it, other in ((a, b), (b, a)):
            clashes.setdefault(it.person_id or "", set()).add(other.person_id or "")
            if ReasonCode.DUPLICATE_PERSON not in it.reasons + it.warnings:
                _flag(it, ReasonCode.DUPLICATE_PERSON, policy.on_duplicate,
                      f"same face as person {other.person_id} ({other.path}, score {score:.3f})")
    return clashes


def cap_images(cp: CheckedPerson, limit: int) -> None:
    """Keep the ``limit`` best accepted images; skip the rest with TOO_MANY_IMAGES."""
    items = _accepted(cp)
    if limit <= 0 or len(items) <= limit:
        return
    ranked = sorted(items, key=lambda i: quality_score(i.check.face, i.check.quality), reverse=True)
    for it in ranked[limit:]:
        _flag(it, ReasonCode.TOO_MANY_IMAGES, "reject", f"more than {limit} accepted images; kept the best", Status.SKIPPED)


def apply_person_checks(persons: Sequence[CheckedPerson], policy: PersonPolicy) -> dict[str, set[str]]:
    """Run every per-person check in a fixed order; returns DUPLICATE_PERSON clashes."""
    check_duplicate_images(persons, policy)
    for cp in persons:
        check_identity(cp, policy)
    clashes = check_duplicate_persons(persons, policy)
    for cp in persons:
        cap_images(cp, policy.max_images_per_person)
    return clashes
