"""Per-person checks once images are embedded: the costliest enrollment mistakes, caught before upload.

- IDENTITY_MISMATCH: a photo filed under the wrong person (it does not match the person's others).
- DUPLICATE_IMAGE: the same photo twice in the run (byte-identical, or a pHash hit that the face
  embedding confirms). One copy is kept: the one its person's other photos agree with.
- DUPLICATE_PERSON: one face under two person_ids, in the run or against the target's gallery,
  at a score that a *different* person reaches with probability below the duplicate budget at
  this run's and gallery's size (the score model, ``vision/scores.py``); or the same photo.
- POSSIBLE_DUPLICATE (warning): between the review level and the rejection level.
- TOO_MANY_IMAGES: more accepted images than the target takes; the best ones are kept.

Each check either rejects (the default) or only warns, per policy. Images keep their own status
unless a rejecting policy applies; the reason then explains what changed it.

Two forms: :class:`RunChecks` (what `check` and `enroll` use) decides one person at a time as persons
stream through, so of two look-alike persons the later in source order is the one flagged;
:func:`apply_person_checks` decides a whole list at once (both persons of a pair are flagged; the
copy of a shared photo kept is the one its person agrees with), for analyses such as bench/scale.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from facecli.errors import ReasonCode, Status
from facecli.sinks.base import Match
from facecli.vision.embed import DUPLICATE_THRESHOLD, MATCH_THRESHOLD, l2_normalize
from facecli.vision.quality import quality_score
from facecli.vision.scores import DUPLICATE_BUDGET, REVIEW_BUDGET, ScoreModel

if TYPE_CHECKING:
    from facecli.pipeline.enroll import CheckedPerson
    from facecli.pipeline.report import ItemResult

POLICIES = ("reject", "warn")
#: pHash distance (of 63 bits) at or under which two images may be the same photo. Distinct photos
#: in deepface-pairs are >= 18 apart; a 1/3-size, quality-60 re-encode is ~2 away.
NEAR_DUPLICATE_BITS = 8
#: A pHash hit counts only when the two faces also score at least this: pHash alone calls 13 of
#: 3,000 distinct LFW photos near-identical (same pose and framing, different people, cosine ~0.85),
#: while re-encoded or resized copies of one photo score >= 0.98 (bench/scale.py, planted copies).
NEAR_DUPLICATE_MIN_SCORE = 0.95
#: Fallback POSSIBLE_DUPLICATE level when the recognizer has no score model.
REVIEW_THRESHOLD = MATCH_THRESHOLD


@dataclass(frozen=True)
class PersonPolicy:
    on_identity_mismatch: str = "reject"
    on_duplicate: str = "reject"
    max_images_per_person: int = 3  # 0: no limit. OpenCV FR cloud takes at most 3.
    match_threshold: float = MATCH_THRESHOLD
    #: Fixed DUPLICATE_PERSON / POSSIBLE_DUPLICATE scores. None (the default): derived from the
    #: score model at the run's and the gallery's size with the two budgets below.
    duplicate_threshold: float | None = None
    review_threshold: float | None = None
    #: Expected false DUPLICATE_PERSON rejections per person, and false POSSIBLE_DUPLICATE warnings.
    duplicate_budget: float = DUPLICATE_BUDGET
    review_budget: float = REVIEW_BUDGET


@dataclass
class DuplicateMatch:
    """The best score of one person against one other person (of the run or of the gallery)."""

    other_person_id: str
    score: float
    where: str  # "run" | "target"
    decision: str  # "duplicate" (DUPLICATE_PERSON) | "possible" (POSSIBLE_DUPLICATE) | "same_image"
    false_match_probability: float | None = None
    path: str | None = None  # this person's photo
    other_path: str | None = None  # the other person's photo (run only)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"other_person_id": self.other_person_id, "score": round(self.score, 4),
                               "where": self.where, "decision": self.decision}
        if self.false_match_probability is not None:
            out["false_match_probability"] = float(f"{self.false_match_probability:.3g}")
        if self.path:
            out["path"] = self.path
        if self.other_path:
            out["other_path"] = self.other_path
        return out


#: (accepted items, k, min_score) -> each item's matches in the target collection.
TargetSearch = Callable[[list["ItemResult"], int, float], list[list[Match]]]


@dataclass
class GalleryContext:
    """What the per-person checks know of the target collection."""

    faces: int = 0  # faces already in the collection (comparisons each new face makes)
    search: TargetSearch | None = None  # None: the target cannot be asked (``note`` says why)
    note: str = ""


class DuplicateRule:
    """Thresholds for DUPLICATE_PERSON and POSSIBLE_DUPLICATE at a given number of comparisons."""

    def __init__(self, policy: PersonPolicy, model: ScoreModel | None = None) -> None:
        self.policy = policy
        self.model = model

    def levels(self, comparisons: int) -> tuple[float, float]:
        """(reject, review) scores for a person whose faces make ``comparisons`` comparisons."""
        p, m = self.policy, self.model
        reject = p.duplicate_threshold if p.duplicate_threshold is not None else (
            m.threshold(comparisons, p.duplicate_budget) if m else DUPLICATE_THRESHOLD)
        review = p.review_threshold if p.review_threshold is not None else (
            m.threshold(comparisons, p.review_budget) if m else REVIEW_THRESHOLD)
        return reject, min(review, reject)

    def probability(self, score: float, comparisons: int) -> float | None:
        return self.model.p_any(score, comparisons) if self.model else None

    def describe(self, comparisons: int) -> str:
        reject, review = self.levels(comparisons)
        how = "score model" if self.model and self.policy.duplicate_threshold is None else "fixed"
        return f"{comparisons:,} comparisons: reject >= {reject:.4f}, review >= {review:.4f} ({how})"


def _flag(item: ItemResult, reason: ReasonCode, policy: str, message: str, status: Status = Status.REJECTED) -> None:
    if policy == "warn":
        item.warnings.append(reason)
    else:
        item.reasons.append(reason)
        item.status = status
    item.message = "; ".join(m for m in (item.message, message) if m)


def _warn(item: ItemResult, reason: ReasonCode, message: str) -> None:
    if reason not in item.warnings:
        item.warnings.append(reason)
    item.message = "; ".join(m for m in (item.message, message) if m)


def _accepted(cp: CheckedPerson) -> list[ItemResult]:
    return [i for i in cp.items if i.status == Status.ACCEPTED and i.check is not None and i.check.embedding is not None]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


def check_duplicate_images(persons: Sequence[CheckedPerson], policy: PersonPolicy) -> list[tuple[ItemResult, ItemResult, float]]:
    """Group copies of one photo (byte-identical, or a pHash hit confirmed by the face embedding)
    and flag every copy but one; returns (copy, kept, score) for copies under another person.

    The copy kept is the one its own person's other photos agree with (so a photo misfiled under a
    second person never costs the first person theirs), else the first in source order.
    """
    items: list[tuple[int, ItemResult]] = [(k, it) for k, cp in enumerate(persons) for it in _accepted(cp)]
    if len(items) < 2:
        return []
    hashes = np.array([it.check.phash if it.check.phash is not None else 0 for _, it in items], dtype=np.uint64)
    has_hash = np.array([it.check.phash is not None for _, it in items])
    emb = np.stack([it.check.embedding for _, it in items]).astype(np.float32)
    group = list(range(len(items)))  # representative index of each item's group
    by_sha: dict[str, int] = {}
    for n, (_, it) in enumerate(items):
        sha = it.check.sha256
        if sha and sha in by_sha:
            group[n] = by_sha[sha]
            continue
        if has_hash[n] and n:
            dist = np.bitwise_count(hashes[:n] ^ hashes[n])
            cand = np.nonzero((dist <= NEAR_DUPLICATE_BITS) & has_hash[:n])[0]
            cand = [int(c) for c in cand if _cos(emb[c], emb[n]) >= NEAR_DUPLICATE_MIN_SCORE]
            if cand:
                group[n] = group[cand[0]]
                continue
        if sha:
            by_sha[sha] = n
    members: dict[int, list[int]] = {}
    for n, g in enumerate(group):
        members.setdefault(g, []).append(n)
    cross: list[tuple[ItemResult, ItemResult, float]] = []
    for copies in (m for m in members.values() if len(m) > 1):
        in_group = set(copies)

        def support(n: int) -> tuple[bool, float, int]:
            k, it = items[n]
            others = [i for i, (kk, _) in enumerate(items) if kk == k and i not in in_group]
            if not others:
                return False, 0.0, -n
            fit = _cos(l2_normalize(emb[others].sum(0)), emb[n])
            return fit >= policy.match_threshold, fit, -n

        keep = max(copies, key=support)
        kept = items[keep][1]
        for n in copies:
            if n == keep:
                continue
            it = items[n][1]
            score = _cos(emb[n], emb[keep])
            if _flag_copy(it, kept.person_id, kept.path, it.check.sha256 == kept.check.sha256, score, policy):
                cross.append((it, kept, score))
    return cross


def _flag_copy(it: ItemResult, kept_person: str | None, kept_path: str, same_bytes: bool, score: float,
               policy: PersonPolicy) -> bool:
    """Flag ``it`` as a copy of the photo kept at ``kept_path``; True when that copy is another person's
    (the copy's person is then DUPLICATE_PERSON too)."""
    how = "byte-identical to" if it.check.sha256 and same_bytes else "near-identical to"
    if it.person_id == kept_person:
        _flag(it, ReasonCode.DUPLICATE_IMAGE, policy.on_duplicate, f"{how} {kept_path}")
        return False
    _flag(it, ReasonCode.DUPLICATE_IMAGE, policy.on_duplicate,
          f"{how} {kept_path} of person {kept_person} (score {score:.3f}); that copy is kept")
    _flag(it, ReasonCode.DUPLICATE_PERSON, policy.on_duplicate, "")
    return True


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
                      f"the person's two images do not match each other (score {scores[worst]:.3f} < "
                      f"{policy.match_threshold})")
            return
        _flag(items[worst], ReasonCode.IDENTITY_MISMATCH, policy.on_identity_mismatch,
              f"does not match the person's other images (score {scores[worst]:.3f} < {policy.match_threshold})")
        del items[worst]


def _cross_pairs(emb: np.ndarray, owner: np.ndarray, threshold: float, block: int = 2048):
    """(i, j, score) with i < j, different owners, score >= threshold; blockwise to bound memory."""
    for start in range(0, len(emb), block):
        sims = emb[start : start + block] @ emb.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if i < c and owner[i] != owner[c]:
                yield i, int(c), float(sims[r, c])


@dataclass
class _Candidate:
    score: float
    item: ItemResult
    where: str
    other_path: str | None = None


def check_duplicate_persons(persons: Sequence[CheckedPerson], policy: PersonPolicy, rule: DuplicateRule | None = None,
                            gallery: GalleryContext | None = None) -> dict[str, list[DuplicateMatch]]:
    """Compare every person's accepted faces with the other persons of the run and with the target
    collection; decide each person at its own number of comparisons. Returns {person_id: matches}."""
    rule = rule or DuplicateRule(policy)
    gallery = gallery or GalleryContext()
    refs: list[tuple[int, ItemResult]] = [(k, it) for k, cp in enumerate(persons) for it in _accepted(cp)
                                          if ReasonCode.DUPLICATE_IMAGE not in it.warnings]
    if not refs:
        return {}
    owner = np.array([k for k, _ in refs])
    faces_of = np.bincount(owner, minlength=len(persons))
    total = len(refs)

    def comparisons(k: int) -> int:
        return max(1, int(faces_of[k]) * (total - int(faces_of[k]) + gallery.faces))

    scan = min(rule.levels(comparisons(k))[1] for k in set(owner.tolist()))
    cands: dict[int, dict[str, _Candidate]] = {}  # person index -> other id -> best candidate

    def note(k: int, other: str, c: _Candidate) -> None:
        _note(cands.setdefault(k, {}), other, c)

    if len(refs) >= 2:
        emb = np.stack([it.check.embedding for _, it in refs]).astype(np.float32)
        for i, j, score in _cross_pairs(emb, owner, scan):
            (ki, a), (kj, b) = refs[i], refs[j]
            note(ki, b.person_id or "", _Candidate(score, a, "run", b.path))
            note(kj, a.person_id or "", _Candidate(score, b, "run", a.path))
    if gallery.search is not None and gallery.faces > 0:
        items = [it for _, it in refs]
        for (k, it), matches in zip(refs, gallery.search(items, 4, scan)):
            for m in matches:
                if m.person_id != it.person_id and m.score >= scan:
                    note(k, m.person_id, _Candidate(m.score, it, "target"))
    out: dict[str, list[DuplicateMatch]] = {}
    for k, others in cands.items():
        found = _decide(others, comparisons(k), rule, policy)
        if found:
            out[persons[k].spec.person_id] = found
    return out


def _note(cands: dict[str, _Candidate], other: str, c: _Candidate) -> None:
    """Keep the best candidate per other person."""
    best = cands.get(other)
    if best is None or c.score > best.score:
        cands[other] = c


def _decide(cands: dict[str, _Candidate], n: int, rule: DuplicateRule, policy: PersonPolicy) -> list[DuplicateMatch]:
    """One person's look-alikes (best candidate per other person) at ``n`` comparisons: flag the
    matching image DUPLICATE_PERSON at the rejection level, POSSIBLE_DUPLICATE at the review level."""
    reject, review = rule.levels(n)
    found: list[DuplicateMatch] = []
    for other, c in sorted(cands.items(), key=lambda kv: -kv[1].score):
        if c.score < review:
            continue
        p = rule.probability(c.score, n)
        odds = f", P(false) {p:.1e} at {n:,} comparisons" if p is not None else ""
        where = "in the gallery" if c.where == "target" else f"({c.other_path})"
        if c.score >= reject:
            found.append(DuplicateMatch(other, c.score, c.where, "duplicate", p, c.item.path, c.other_path))
            if ReasonCode.DUPLICATE_PERSON not in c.item.reasons + c.item.warnings:
                _flag(c.item, ReasonCode.DUPLICATE_PERSON, policy.on_duplicate,
                      f"same face as person {other} {where}: score {c.score:.3f} >= {reject:.3f}{odds}")
        else:
            found.append(DuplicateMatch(other, c.score, c.where, "possible", p, c.item.path, c.other_path))
            if ReasonCode.POSSIBLE_DUPLICATE not in c.item.warnings:
                _warn(c.item, ReasonCode.POSSIBLE_DUPLICATE,
                      f"looks like person {other} {where}: score {c.score:.3f} (review >= {review:.3f}, "
                      f"reject >= {reject:.3f}{odds})")
    return found


def cap_images(cp: CheckedPerson, limit: int) -> None:
    """Keep the ``limit`` best accepted images; skip the rest with TOO_MANY_IMAGES."""
    items = _accepted(cp)
    if limit <= 0 or len(items) <= limit:
        return
    ranked = sorted(items, key=lambda i: quality_score(i.check.face, i.check.quality), reverse=True)
    for it in ranked[limit:]:
        _flag(it, ReasonCode.TOO_MANY_IMAGES, "reject", f"more than {limit} accepted images; kept the best", Status.SKIPPED)


@dataclass
class PersonChecks:
    """What the per-person checks found beyond each item's own reasons."""

    duplicates: dict[str, list[DuplicateMatch]] = field(default_factory=dict)


def apply_person_checks(persons: Sequence[CheckedPerson], policy: PersonPolicy, rule: DuplicateRule | None = None,
                        gallery: GalleryContext | None = None) -> PersonChecks:
    """Run every per-person check in a fixed order. Identity first, so that a photo misfiled
    under a second person is rejected there and the first person keeps it."""
    for cp in persons:
        check_identity(cp, policy)
    cross = check_duplicate_images(persons, policy)
    dups = check_duplicate_persons(persons, policy, rule, gallery)
    for copy, kept, score in cross:
        dups.setdefault(copy.person_id or "", []).insert(
            0, DuplicateMatch(kept.person_id or "", score, "run", "same_image", None, copy.path, kept.path))
    for cp in persons:
        cap_images(cp, policy.max_images_per_person)
    return PersonChecks(dups)


class _Grow:
    """A growing numpy array (amortised doubling) of rows of one shape and dtype."""

    def __init__(self, dtype: Any, width: int | None = None) -> None:
        self.dtype, self.width = dtype, width
        self._a: np.ndarray | None = None
        self.n = 0

    def append(self, row: Any) -> None:
        if self._a is None:
            self._a = np.zeros((64, self.width) if self.width else 64, self.dtype)
        elif self.n == len(self._a):
            self._a = np.concatenate([self._a, np.zeros_like(self._a)])
        self._a[self.n] = row
        self.n += 1

    @property
    def view(self) -> np.ndarray:
        if self._a is None:
            return np.zeros((0, self.width) if self.width else 0, self.dtype)
        return self._a[: self.n]


class RunChecks:
    """The per-person checks for a streaming run: one person at a time, against the persons already
    seen in this run and the target collection.

    ``add(person)`` runs what :func:`apply_person_checks` runs for a whole list (identity, the same
    photo twice, one face under two ids, the image cap) but decides the new person alone: a look-alike
    pair (or a photo under two ids) is flagged on the *later* person in source order; the earlier one
    was decided, and may have been sent, before the later was seen. Decisions are made at the run's
    size known up front (``run_faces``: the photos discovery listed) plus the gallery's, so the bar is
    the one the summary states from the start. Memory: per accepted face of the run its embedding
    (4 bytes a dimension), pHash, sha256, person id and path; no image, crop or payload.
    """

    def __init__(self, policy: PersonPolicy, rule: DuplicateRule | None = None,
                 gallery: GalleryContext | None = None, run_faces: int = 0) -> None:
        self.policy = policy
        self.rule = rule or DuplicateRule(policy)
        self.gallery = gallery or GalleryContext()
        self.run_faces = run_faces
        self._emb: _Grow | None = None  # made at the first face (its width is the recognizer's)
        self._phash = _Grow(np.uint64)
        self._has_phash = _Grow(bool)
        self._ref = _Grow(bool)  # counts in DUPLICATE_PERSON comparisons
        self._group = _Grow(np.int64)  # index of the first copy of each face's photo
        self._owner: list[str] = []
        self._path: list[str] = []
        self._sha: list[str | None] = []
        self._by_sha: dict[str, int] = {}
        self._in_run: set[str] = set()  # persons with faces in the run index: not asked of the target

    @property
    def faces(self) -> int:
        return self._phash.n

    def add(self, cp: CheckedPerson) -> list[DuplicateMatch]:
        """Check one person (its items are flagged in place); returns its look-alikes, most similar first."""
        return self.add_many([cp])[0]

    def add_many(self, persons: Sequence[CheckedPerson]) -> list[list[DuplicateMatch]]:
        """Check persons in order, each against every person before it (earlier calls and earlier in
        this one): the same decisions as one ``add`` each, with one matrix product (and one gallery
        search) for the group instead of one pass over the run's faces per person."""
        staged: list[tuple[CheckedPerson, list[DuplicateMatch], list[ItemResult], int]] = []
        for cp in persons:
            check_identity(cp, self.policy)
            start = self.faces
            same, added = self._duplicate_images(cp)
            refs = [it for it in _accepted(cp) if ReasonCode.DUPLICATE_IMAGE not in it.warnings]
            ref_ids = {id(it) for it in refs}
            for n, it in enumerate(added, start):  # the person's faces count for later persons only
                self._ref.view[n] = id(it) in ref_ids
            staged.append((cp, same, refs, start))
        probes = [it for *_, refs, _ in staged for it in refs]
        levels = [self._levels(len(refs), start) for _, _, refs, start in staged]
        floor = min((scan for refs_n, (_, scan) in zip(staged, levels) if refs_n[2]), default=1.0)
        run_hits = self._run_hits(probes, floor)
        asked = self._gallery_hits(probes, floor)
        out: list[list[DuplicateMatch]] = []
        col = 0
        for (cp, same, refs, start), (n, scan) in zip(staged, levels):
            cands: dict[str, _Candidate] = {}
            for c, it in enumerate(refs, col):
                for r, score in run_hits.get(c, ()):
                    if r < start and self._ref.view[r] and score >= scan:
                        _note(cands, self._owner[r], _Candidate(score, it, "run", self._path[r]))
                for m in asked[c] if asked else ():
                    if m.person_id != it.person_id and m.person_id not in self._in_run and m.score >= scan:
                        _note(cands, m.person_id, _Candidate(m.score, it, "target"))
            col += len(refs)
            out.append(same + (_decide(cands, n, self.rule, self.policy) if refs else []))
            if refs:
                self._in_run.add(cp.spec.person_id)
            cap_images(cp, self.policy.max_images_per_person)
        return out

    def _levels(self, faces: int, start: int) -> tuple[int, float]:
        """(comparisons, scan score) for a person of ``faces`` faces: F x (the run's faces - F + the gallery's)."""
        n = max(1, faces * (max(self.run_faces, start + faces) - faces + self.gallery.faces))
        return n, self.rule.levels(n)[1]

    def _run_hits(self, probes: list[ItemResult], floor: float, block: int = 65536) -> dict[int, list[tuple[int, float]]]:
        """Probe column -> (face index, score) of the run's faces scoring >= ``floor``; blockwise."""
        hits: dict[int, list[tuple[int, float]]] = {}
        if not probes or self._emb is None:
            return hits
        p = np.stack([np.asarray(it.check.embedding, np.float32) for it in probes])
        emb = self._emb.view
        for r0 in range(0, len(emb), block):
            sims = emb[r0 : r0 + block] @ p.T
            for r, c in zip(*np.nonzero(sims >= floor)):
                hits.setdefault(int(c), []).append((r0 + int(r), float(sims[r, c])))
        return hits

    def _gallery_hits(self, probes: list[ItemResult], floor: float) -> list[list[Match]] | None:
        if not probes or self.gallery.search is None or self.gallery.faces <= 0:
            return None
        k = 4 + min(len(self._in_run), 4)  # room for this run's persons, which the target may hold by now
        return self.gallery.search(probes, k, floor)

    def _duplicate_images(self, cp: CheckedPerson) -> tuple[list[DuplicateMatch], list[ItemResult]]:
        """Copies of a photo already seen (in this person or an earlier one): each later copy is
        flagged, the first is kept. Returns the cross-person copies and the faces added to the index."""
        out: list[DuplicateMatch] = []
        added = _accepted(cp)
        for it in added:
            c = it.check
            emb = np.asarray(c.embedding, dtype=np.float32)
            if self._emb is None:
                self._emb = _Grow(np.float32, emb.shape[0])
            n = self.faces
            rep = self._by_sha.get(c.sha256) if c.sha256 else None
            if rep is None and c.phash is not None and n:
                dist = np.bitwise_count(self._phash.view ^ np.uint64(c.phash))
                cand = np.nonzero((dist <= NEAR_DUPLICATE_BITS) & self._has_phash.view)[0]
                hit = cand[self._emb.view[cand] @ emb >= NEAR_DUPLICATE_MIN_SCORE] if len(cand) else cand
                rep = int(self._group.view[hit[0]]) if len(hit) else None
            self._emb.append(emb)
            self._phash.append(c.phash or 0)
            self._has_phash.append(c.phash is not None)
            self._ref.append(False)
            self._group.append(n if rep is None else rep)
            self._owner.append(cp.spec.person_id)
            self._path.append(it.path)
            self._sha.append(c.sha256)
            if rep is None:
                if c.sha256:
                    self._by_sha[c.sha256] = n
                continue
            score = float(self._emb.view[rep] @ emb)
            if _flag_copy(it, self._owner[rep], self._path[rep], c.sha256 == self._sha[rep], score, self.policy):
                out.append(DuplicateMatch(self._owner[rep], score, "run", "same_image", None, it.path, self._path[rep]))
        return out, added
