"""PersonSpecs -> image checks -> per-person checks -> verdicts (-> batches -> sink, in the enroll issue).

A check run is an enroll run without a sink, so both share this module: the stages and the
reporting are the same, which keeps `facecli check` an exact dry run of what enroll would accept.
Per-person checks need every image embedded first (a duplicate may be the last photo of the run),
so report lines are written once those checks are done.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from facecli.errors import CollectionMissing, FacecliError, ReasonCode, Status, status_for
from facecli.pipeline.check import FaceChecker, ImageCheck
from facecli.pipeline.journal import Journal, check_config_key, person_content_hash
from facecli.pipeline.persons import DuplicateMatch, DuplicateRule, GalleryContext, PersonPolicy, apply_person_checks
from facecli.pipeline.scale import gallery_context, score_model_for
from facecli.pipeline.report import ItemResult, MultiReport, PersonResult, ReportWriter, RunSummary
from facecli.sinks.base import FacePayload, ItemOutcome, PersonPayload, Sink
from facecli.sources.spec import Discovery, PersonSpec

_DEBUG_BATCH_DELAY = float(os.environ.get("FACECLI_DEBUG_BATCH_DELAY", "0") or 0)

#: Codes on images that say something about the person as a whole (listed on the person line).
_PERSON_LEVEL = (ReasonCode.IDENTITY_MISMATCH, ReasonCode.DUPLICATE_IMAGE, ReasonCode.DUPLICATE_PERSON,
                 ReasonCode.POSSIBLE_DUPLICATE, ReasonCode.TOO_MANY_IMAGES)


class Progress(Protocol):
    """Progress events; the CLI supplies a rich implementation, library users may pass none."""

    def start(self, images: int, persons: int) -> None: ...
    def image_done(self, item: ItemResult) -> None: ...
    def person_done(self, person: PersonResult) -> None: ...
    def start_sending(self, persons: int) -> None: ...
    def sent(self, persons: int) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def start(self, images: int, persons: int) -> None:
        pass

    def image_done(self, item: ItemResult) -> None:
        pass

    def person_done(self, person: PersonResult) -> None:
        pass

    def start_sending(self, persons: int) -> None:
        pass

    def sent(self, persons: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class CheckedPerson:
    spec: PersonSpec
    items: list[ItemResult] = field(default_factory=list)
    result: PersonResult | None = None

    @property
    def accepted(self) -> list[ImageCheck]:
        return [i.check for i in self.items if i.status == Status.ACCEPTED and i.check is not None]


@dataclass
class RunResult:
    summary: RunSummary
    items: list[ItemResult]
    persons: list[PersonResult]
    checked: list[CheckedPerson] = field(default_factory=list)


def person_verdict(spec: PersonSpec, items: list[ItemResult],
                   duplicates: list[DuplicateMatch] | None = None) -> PersonResult:
    """Accepted when at least one image is accepted and no person-level reason rejects the person."""
    accepted = sum(1 for i in items if i.status == Status.ACCEPTED)
    flagged = [r for r in _PERSON_LEVEL if any(r in i.reasons for i in items)]
    warned = [r for r in _PERSON_LEVEL if any(r in i.warnings for i in items)]
    reasons: list[ReasonCode] = []
    if ReasonCode.DUPLICATE_PERSON in flagged:
        reasons.append(ReasonCode.DUPLICATE_PERSON)
    if not accepted:
        reasons.append(ReasonCode.NO_ACCEPTED_IMAGE)
    if not reasons:
        status = Status.ACCEPTED
    elif items and all(i.status == Status.FAILED for i in items):
        status = Status.FAILED
    else:
        status = Status.REJECTED
    notes = [i.message for i in items if ReasonCode.DUPLICATE_PERSON in i.reasons]
    return PersonResult(
        person_id=spec.person_id,
        person_name=spec.person_name,
        status=status,
        reasons=reasons,
        images=len(items),
        accepted_images=accepted,
        message="; ".join(dict.fromkeys(notes)),
        warnings=list(dict.fromkeys(r for r in flagged + warned if r not in reasons)),
        duplicates=[d.to_json() for d in duplicates or []],
    )


def check_persons(
    discovery: Discovery,
    checker: FaceChecker,
    policy: PersonPolicy | None = None,
    progress: Progress | None = None,
    cache: CheckCache | None = None,
    stop: threading.Event | None = None,
    fail_fast: bool = False,
    rule: DuplicateRule | None = None,
    gallery: GalleryContext | None = None,
) -> tuple[list[CheckedPerson], list[ItemResult]]:
    """Check every image of every person, then the per-person checks, then each person's verdict.

    Returns the persons and the source's own problems (unreadable folders, invalid rows). With a
    ``cache``, images already checked under the same settings are not decoded again. When ``stop``
    is set the images in flight finish and persons not completely checked are left out.
    """
    progress = progress or NullProgress()
    persons = [CheckedPerson(p) for p in discovery.persons]
    progress.start(discovery.image_count + len(discovery.problems), len(persons))
    problems = [
        ItemResult(p.path, p.person_id, status_for([p.reason]), [p.reason], p.message, line=p.line)
        for p in discovery.problems
    ]
    for item in problems:
        progress.image_done(item)
    flat = [(cp, img) for cp in persons for img in cp.spec.images]
    cached: dict[int, ImageCheck] = {}
    if cache is not None:
        for n, (_, img) in enumerate(flat):
            hit = cache.lookup(Path(img))
            if hit is not None:
                cached[n] = hit
    fresh = checker.check_paths(img for n, (_, img) in enumerate(flat) if n not in cached)
    for n, (cp, _) in enumerate(flat):
        if stop is not None and stop.is_set():
            break
        check = cached.get(n) or next(fresh)
        if cache is not None and n not in cached:
            cache.store(check)
        item = ItemResult(check.path, cp.spec.person_id, check.status, list(check.reasons), check.message, check,
                          warnings=list(check.warnings))
        cp.items.append(item)
        progress.image_done(item)
        if fail_fast and item.status in (Status.REJECTED, Status.FAILED):
            break
    fresh.close()
    persons = [cp for cp in persons if len(cp.items) == len(cp.spec.images)]
    found = apply_person_checks(persons, policy or PersonPolicy(), rule, gallery)
    for cp in persons:
        cp.result = person_verdict(cp.spec, cp.items, found.duplicates.get(cp.spec.person_id))
        progress.person_done(cp.result)
    return persons, problems


class CheckCache:
    """Check results by (file content, check settings), kept in the run journal."""

    def __init__(self, journal: Journal, checker: FaceChecker, read_only: bool = False) -> None:
        self.journal = journal
        self.key = check_config_key(checker)
        self.read_only = read_only  # a dry run uses cached results but stores nothing

    def lookup(self, path: Path) -> ImageCheck | None:
        sha = self.journal.file_sha256(path, remember=not self.read_only)
        return self.journal.cached_check(sha, self.key, str(path), touch=not self.read_only) if sha else None

    def store(self, check: ImageCheck) -> None:
        if not self.read_only:
            self.journal.store_check(check, self.key)


def record(
    persons: list[CheckedPerson], problems: list[ItemResult], summary: RunSummary, report: ReportWriter | None
) -> None:
    """Count and report final results: problems first, then each person's images and the person."""
    for item in problems:
        summary.add_item(item)
        if report:
            report.write_item(item)
    for cp in persons:
        for item in cp.items:
            summary.add_item(item)
            if report:
                report.write_item(item)
        if cp.result:
            summary.add_person(cp.result)
            if report:
                report.write_person(cp.result)


def _nothing_to_do(summary: RunSummary, discovery: Discovery, retry_failed: bool = False) -> str:
    """Why a run that touched no image had nothing to do (empty when it did something)."""
    if sum(summary.images.values()) or summary.interrupted:
        return ""
    if retry_failed and discovery.persons:
        return "nothing to retry: no person of this source failed at this target and collection on its last attempt"
    ignored = f" ({summary.ignored_files} file(s) ignored: not image files, or symbolic links)" \
        if summary.ignored_files else ""
    return f"nothing to do: the source holds no photos{ignored}"


def _finish(summary: RunSummary, report: ReportWriter | None, progress: Progress | None,
            journal: Journal | None, stop: threading.Event | None, discovery: Discovery | None = None,
            retry_failed: bool = False, error: BaseException | None = None) -> None:
    summary.finish()
    summary.interrupted = bool(stop is not None and stop.is_set()) or isinstance(error, KeyboardInterrupt)
    if discovery is not None:
        summary.nothing_to_do = _nothing_to_do(summary, discovery, retry_failed)
    if report:
        report.close(summary)
    if progress:
        progress.close()
    if journal:
        if summary.interrupted:
            journal.finish_run(summary, "interrupted")
        elif error is not None:
            text = error.message if isinstance(error, FacecliError) else f"{type(error).__name__}: {error}"
            journal.finish_run(summary, "failed", text)
        else:
            journal.finish_run(summary, "done")


def _counts(persons: list[CheckedPerson], skipped: int = 0) -> dict[str, int]:
    """Counts so far, for the ledger's ``runs`` row while the run goes."""
    states = [str(cp.result.status) for cp in persons if cp.result]
    return {"images_checked": sum(len(cp.items) for cp in persons), "persons_checked": len(states),
            "persons_enrolled": states.count("enrolled"), "persons_failed": states.count("failed"),
            "persons_rejected": states.count("rejected"), "persons_unchanged": skipped}


def _result(summary: RunSummary, persons: list[CheckedPerson], problems: list[ItemResult]) -> RunResult:
    items = problems + [i for cp in persons for i in cp.items]
    return RunResult(summary, items, [cp.result for cp in persons if cp.result], persons)


def _reporting(report: ReportWriter | None, journal: Journal | None, summary: RunSummary) -> ReportWriter | None:
    writers = [w for w in (report, journal.report(summary.run_id) if journal else None) if w is not None]
    return writers[0] if len(writers) == 1 else (MultiReport(writers) if writers else None)


def run_check(
    discovery: Discovery,
    checker: FaceChecker,
    report: ReportWriter | None = None,
    progress: Progress | None = None,
    policy: PersonPolicy | None = None,
    summary: RunSummary | None = None,
    journal: Journal | None = None,
    stop: threading.Event | None = None,
    fail_fast: bool = False,
) -> RunResult:
    """`facecli check` as a library call: check everything, write the report, return the results."""
    summary = summary or RunSummary(command="check")
    summary.ignored_files = len(discovery.ignored)
    if journal:
        journal.start_run(summary, {})
    report = _reporting(report, journal, summary)
    cache = CheckCache(journal, checker) if journal else None
    policy = policy or PersonPolicy()
    rule = duplicate_rule(checker, policy)
    gallery = GalleryContext(note="not checked: `facecli check` has no target (enroll asks the target)")
    summary.duplicate_check = describe_duplicate_check(rule, gallery, discovery.image_count)
    persons: list[CheckedPerson] = []
    problems: list[ItemResult] = []
    error: BaseException | None = None
    try:
        persons, problems = check_persons(discovery, checker, policy, progress, cache, stop, fail_fast, rule, gallery)
    except BaseException as exc:
        error = exc
        raise
    finally:
        record(persons, problems, summary, report)
        _finish(summary, report, progress, journal, stop, discovery, error=error)
    return _result(summary, persons, problems)


def duplicate_rule(checker: FaceChecker, policy: PersonPolicy) -> DuplicateRule:
    return DuplicateRule(policy, score_model_for(checker))


def describe_duplicate_check(rule: DuplicateRule, gallery: GalleryContext, run_faces: int) -> dict:
    """For the summary: how DUPLICATE_PERSON was decided for a typical one-face person of this run."""
    n = max(1, run_faces - 1 + gallery.faces)
    reject, review = rule.levels(n)
    model = rule.model
    return {"score_model": model.sha256[:12] if model else None,
            "duplicate_budget": rule.policy.duplicate_budget, "review_budget": rule.policy.review_budget,
            "comparisons_per_face": n, "reject_at": round(reject, 4), "review_at": round(review, 4),
            "gallery_faces": gallery.faces, "target": gallery.note}


@dataclass(frozen=True)
class EnrollOptions:
    collection: str = "default"
    create_collection: bool = False
    batch_size: int = 50
    #: Cap on the encoded images in one batch (remote targets have undocumented payload limits).
    max_batch_bytes: int = 16 * 1024 * 1024
    dry_run: bool = False
    force: bool = False  # ignore the journal's "already enrolled" records
    retry_failed: bool = False  # only persons whose last attempt failed at the target
    fail_fast: bool = False  # stop after the first batch with a failed person


def person_payload(cp: CheckedPerson) -> PersonPayload:
    spec = cp.spec
    faces = [
        FacePayload(image_sha256=c.sha256 or "", source_path=c.path, embedding=c.embedding, jpeg=c.payload,
                    quality={k: round(v, 3) for k, v in c.quality.items()} | {"det_score": round(c.face.score, 4)})
        for c in cp.accepted
    ]
    return PersonPayload(spec.person_id, spec.person_name, faces, dict(spec.metadata), spec.gender,
                         spec.date_of_birth, spec.nationality, spec.notes)


def batches(payloads: list[tuple[CheckedPerson, PersonPayload]], size: int, max_bytes: int):
    """Split by person count and by encoded bytes; a single oversized person still goes alone."""
    batch: list[tuple[CheckedPerson, PersonPayload]] = []
    nbytes = 0
    for cp, p in payloads:
        b = sum(len(f.jpeg or b"") for f in p.faces)
        if batch and (len(batch) >= size or nbytes + b > max_bytes):
            yield batch
            batch, nbytes = [], 0
        batch.append((cp, p))
        nbytes += b
    if batch:
        yield batch


def apply_outcome(cp: CheckedPerson, outcome: ItemOutcome) -> None:
    """Carry the target's answer for one person onto the person and its accepted images."""
    assert cp.result is not None
    accepted = [i for i in cp.items if i.status == Status.ACCEPTED]
    if outcome.status == Status.ENROLLED:
        cp.result.status = Status.ENROLLED
        cp.result.action = outcome.action or "enrolled"
        cp.result.message = "; ".join(m for m in (cp.result.message, outcome.action or "") if m)
        for i in accepted:
            i.status = Status.ENROLLED
        return
    reason = outcome.reason or ReasonCode.SERVER_ERROR
    detail = " ".join(x for x in (outcome.server_code or "", outcome.message) if x)
    cp.result.status = Status.FAILED
    cp.result.reasons.append(reason)
    cp.result.message = "; ".join(m for m in (cp.result.message, detail) if m)
    for i in accepted:
        i.status = Status.FAILED
        i.reasons.append(reason)
        i.message = "; ".join(m for m in (i.message, detail) if m)


def _skipped(spec: PersonSpec, message: str) -> CheckedPerson:
    cp = CheckedPerson(spec)
    cp.items = [ItemResult(str(p), spec.person_id, Status.SKIPPED, [ReasonCode.UNCHANGED], message) for p in spec.images]
    cp.result = PersonResult(spec.person_id, spec.person_name, Status.SKIPPED, [ReasonCode.UNCHANGED],
                             images=len(spec.images), message=message, action="unchanged")
    return cp


def still_held(sink: Sink, collection: str, person_ids: list[str], summary: RunSummary) -> set[str]:
    """Of the persons the ledger says are confirmed with the same content, those the target still
    holds: one batched question (``held_ids``), so a deleted database, person or re-created
    collection is re-sent instead of being reported "already enrolled". A target that cannot tell
    keeps the ledger's word, and the summary says it was not checked."""
    if not person_ids:
        return set()
    ask = getattr(sink, "held_ids", None)
    held = ask(collection, person_ids) if ask is not None else None
    if held is None:
        summary.ledger = {"unchanged": len(person_ids), "checked_at_target": False, "missing_at_target": 0,
                          "note": f"{len(person_ids)} person(s) skipped as UNCHANGED on the run ledger's word: "
                                  "this target cannot say which persons it holds (--force re-sends them)"}
        return set(person_ids)
    missing = [pid for pid in person_ids if pid not in held]
    summary.ledger = {"unchanged": len(person_ids) - len(missing), "checked_at_target": True,
                      "missing_at_target": len(missing),
                      "note": f"{len(missing)} person(s) the ledger had as enrolled are no longer at the target: "
                              "re-sent" if missing else ""}
    return set(person_ids) - set(missing)


def run_enroll(
    discovery: Discovery,
    checker: FaceChecker,
    sink: Sink,
    options: EnrollOptions | None = None,
    report: ReportWriter | None = None,
    progress: Progress | None = None,
    policy: PersonPolicy | None = None,
    summary: RunSummary | None = None,
    journal: Journal | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """`facecli enroll` as a library call: check, per-person checks, then batches to the sink.

    With a ``journal``: persons already confirmed at this target with the same content are skipped
    (UNCHANGED) without reading their images again, unchanged images are not decoded again, and
    every batch is marked ``sent`` before the request and ``confirmed``/``failed`` after, so a run
    killed at any point re-sends at most the batch that was in flight.
    """
    options = options or EnrollOptions()
    policy = policy or PersonPolicy()
    progress = progress or NullProgress()
    # A dry run reads the ledger (so it predicts UNCHANGED persons and reuses cached checks like the
    # real run) but writes nothing to it: ``ledger`` is for reading, ``journal`` for writing.
    ledger, journal = journal, (None if options.dry_run else journal)
    summary = summary or RunSummary(command="enroll", collection=options.collection)
    summary.ignored_files = len(discovery.ignored)
    target = summary.target or getattr(sink, "target", sink.name)
    coll = options.collection
    if journal:
        journal.start_run(summary, {"options": options, "policy": policy})
    report = _reporting(report, journal, summary)
    persons: list[CheckedPerson] = []
    problems: list[ItemResult] = []
    skipped: list[CheckedPerson] = []
    hashes: dict[str, str] = {}
    error: BaseException | None = None
    try:
        exists = getattr(sink, "held_ids", None) if options.dry_run else None
        if not options.dry_run:
            sink.ensure_collection(coll, options.create_collection)  # fail before the work
        else:  # read-only: a dry run fails where the real run would (reachable, key accepted, collection)
            try:
                sink.ensure_collection(coll, False)
            except CollectionMissing:
                if not options.create_collection:
                    raise
        todo = discovery
        if ledger:
            opts_key = {"check": check_config_key(checker), "policy": policy,
                        "storage": getattr(sink, "face_storage_type", None)}
            retry_only = ledger.failed_persons(target, coll) if options.retry_failed else None
            specs, confirmed = [], []
            for spec in discovery.persons:
                if retry_only is not None and spec.person_id not in retry_only:
                    continue
                shas = [ledger.file_sha256(Path(p), remember=journal is not None) for p in spec.images]
                h = person_content_hash(spec, shas, opts_key)
                hashes[spec.person_id] = h
                if journal:  # which images (by hash) are this person's: `persons delete` drops their cached checks
                    journal.map_images(target, coll, spec.person_id, shas)
                specs.append(spec)
                if not options.force and ledger.person_state(target, coll, spec.person_id) == ("confirmed", h):
                    confirmed.append(spec.person_id)
            unchanged = still_held(sink, coll, confirmed, summary)
            keep = []
            for spec in specs:
                if spec.person_id in unchanged:
                    skipped.append(_skipped(spec, "already enrolled with the same content"))
                else:
                    keep.append(spec)
            todo = Discovery(keep, [] if retry_only is not None else discovery.problems, discovery.ignored)
        cache = CheckCache(ledger, checker, read_only=journal is None) if ledger else None
        rule = duplicate_rule(checker, policy)
        gallery = gallery_context(sink, coll, checker.recognizer.model.file.sha256)
        summary.duplicate_check = describe_duplicate_check(rule, gallery, todo.image_count)
        persons, problems = check_persons(todo, checker, policy, progress, cache, stop, options.fail_fast,
                                          rule, gallery)
        if journal:
            journal.run_progress(summary.run_id, _counts(persons, len(skipped)))
        ready = [(cp, person_payload(cp)) for cp in persons if cp.result and cp.result.status == Status.ACCEPTED]
        progress.start_sending(len(ready))
        if options.dry_run:
            known = (exists(coll, [p.person_id for _, p in ready]) if exists else None) or set()
            for cp, p in ready:
                cp.result.message = f"dry run: would {'update' if p.person_id in known else 'create'} " \
                                    f"{p.person_id} with {len(p.faces)} face(s)"
            update = sum(1 for _, p in ready if p.person_id in known)
            summary.would = {"create": len(ready) - update, "update": update, "unchanged": len(skipped),
                             "rejected": sum(1 for cp in persons if cp.result and cp.result.status == Status.REJECTED),
                             "failed": sum(1 for cp in persons if cp.result and cp.result.status == Status.FAILED)}
            ready = []
        for batch in batches(ready, options.batch_size, options.max_batch_bytes):
            if stop is not None and stop.is_set():
                break
            ids = [p.person_id for _, p in batch]
            if journal:
                journal.mark(target, coll, summary.run_id, [(i, hashes.get(i, ""), "sent", None, "") for i in ids])
            outcomes = {o.person_id: o for o in sink.upsert(coll, [p for _, p in batch])}
            for cp, p in batch:
                apply_outcome(cp, outcomes.get(p.person_id) or ItemOutcome(
                    p.person_id, Status.FAILED, ReasonCode.SERVER_ERROR, message="no result for this person"))
            if journal:
                journal.mark(target, coll, summary.run_id, [
                    (cp.spec.person_id, hashes.get(cp.spec.person_id, ""),
                     "confirmed" if cp.result.status == Status.ENROLLED else "failed",
                     cp.result.reasons[-1] if cp.result.reasons else None, cp.result.message) for cp, _ in batch])
            if journal:
                journal.run_progress(summary.run_id, _counts(persons, len(skipped)))
            progress.sent(len(batch))
            if options.fail_fast and any(cp.result.status != Status.ENROLLED for cp, _ in batch):
                break
            if _DEBUG_BATCH_DELAY:  # lets crash-safety tests kill a run between batches
                time.sleep(_DEBUG_BATCH_DELAY)
        for cp, _ in ready:
            if cp.result.status == Status.ACCEPTED:  # interrupted before its batch went out
                cp.result.status = Status.SKIPPED
                cp.result.message = "not sent: the run stopped first; re-run to resume"
    except BaseException as exc:
        error = exc
        raise
    finally:
        summary.retries = int(getattr(sink, "retries", 0) or 0)  # remote sinks count their HTTP retries
        persons = skipped + persons
        record(persons, problems, summary, report)
        _finish(summary, report, progress, journal, stop, discovery, options.retry_failed, error)
    return _result(summary, persons, problems)
