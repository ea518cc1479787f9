"""PersonSpecs -> image checks -> per-person checks -> verdicts -> batches -> sink, streaming.

A check run is an enroll run without a sink, so both share this module: the stages and the
reporting are the same, which keeps `facecli check` an exact dry run of what enroll would accept.

Persons stream through bounded queues, so the first batch reaches the sink while later photos are
still being checked and memory is bounded by the queue and batch sizes, not by the run:

    planner (ledger: skip UNCHANGED)  ->  check thread (executor: local threads | Ray Data)
      -> per-person checks (RunChecks: against earlier persons of the run and the target)
      -> verdict -> batch -> sink (ledger: sent, then confirmed/failed) -> report lines

Report lines are written in source order as soon as a person and every person before it are final
(rejected, or its batch answered). Payloads (face crops) are dropped once a person is recorded.
Sink, ledger writes and per-person checks run on the calling thread; only the check stage (and
the check cache) runs on the check thread.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from facecli.errors import CollectionMissing, FacecliError, ReasonCode, Status, status_for
from facecli.pipeline.check import FaceChecker, ImageCheck
from facecli.pipeline.executor import Executor, LocalExecutor, check_stream
from facecli.pipeline.journal import Journal, check_config_key, person_content_hash
from facecli.pipeline.persons import DuplicateMatch, DuplicateRule, GalleryContext, PersonPolicy, RunChecks
from facecli.pipeline.scale import gallery_context, score_model_for
from facecli.pipeline.report import ItemResult, MultiReport, PersonResult, ReportWriter, RunSummary
from facecli.sinks.base import FacePayload, ItemOutcome, PersonPayload, Sink
from facecli.sources.spec import Discovery, PersonSpec

_DEBUG_BATCH_DELAY = float(os.environ.get("FACECLI_DEBUG_BATCH_DELAY", "0") or 0)

#: Codes on images that say something about the person as a whole (listed on the person line).
_PERSON_LEVEL = (ReasonCode.IDENTITY_MISMATCH, ReasonCode.DUPLICATE_IMAGE, ReasonCode.DUPLICATE_PERSON,
                 ReasonCode.POSSIBLE_DUPLICATE, ReasonCode.TOO_MANY_IMAGES)

#: Persons queued to the check thread, and checked persons queued back (each direction).
QUEUE_PERSONS = 32
#: The ledger plans (hashes, "already enrolled?") persons in chunks growing to this size, so the
#: target is asked about UNCHANGED persons in few batched questions and the first chunk is small.
PLAN_CHUNK = 1024


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
    #: Report lines can be written: rejected, skipped, or its batch was answered.
    final: bool = False
    #: Never completely checked (the run stopped first): left out of the report.
    dropped: bool = False
    #: The person's content hash for the ledger (set when a ledger is kept).
    content_hash: str = ""

    @property
    def accepted(self) -> list[ImageCheck]:
        return [i.check for i in self.items if i.status == Status.ACCEPTED and i.check is not None]


@dataclass
class RunResult:
    """What a run returns. With ``keep_items=False`` (the CLI) only what the summary tables list is
    kept (problem images and persons): a large run's results are in the report, not in memory."""

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


def _reporting(report: ReportWriter | None, journal: Journal | None, summary: RunSummary) -> ReportWriter | None:
    writers = [w for w in (report, journal.report(summary.run_id) if journal else None) if w is not None]
    return writers[0] if len(writers) == 1 else (MultiReport(writers) if writers else None)


def _worth_listing(item: ItemResult) -> bool:
    """An image the summary tables list (rejected, failed, warned, skipped other than UNCHANGED)."""
    return (item.status in (Status.REJECTED, Status.FAILED) or bool(item.warnings)
            or item.status == Status.SKIPPED and ReasonCode.UNCHANGED not in item.reasons)


class _CheckThread:
    """The check stage on its own thread: persons in (``todo``), checked persons out (``done``),
    both bounded. ``cancel`` stops it after the photos in flight."""

    def __init__(self, executor: Executor, cache: CheckCache | None, depth: int | None = None) -> None:
        self.executor, self.cache = executor, cache
        depth = depth or QUEUE_PERSONS
        self.todo: queue.Queue = queue.Queue(maxsize=depth)
        self.done: queue.Queue = queue.Queue(maxsize=depth)
        self.cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, name="facecli-check", daemon=True)

    def _persons(self) -> Iterator[CheckedPerson]:
        while not self.cancel.is_set():
            cp = self.todo.get()
            if cp is None:
                return
            yield cp

    def _put(self, msg: tuple) -> bool:
        while not self.cancel.is_set():
            try:
                self.done.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        reads = self.cache is not None and self.executor.reads_cache
        try:
            for cp, checks in check_stream(self._persons(), self.executor,
                                           lookup=(lambda p: self.cache.lookup(Path(p))) if reads else None,
                                           store=self.cache.store if self.cache is not None else None):
                if not self._put(("person", cp, checks)):
                    return
        except BaseException as exc:  # handed to the calling thread, which raises it
            self._put(("error", exc))
        self._put(("end",))

    def stop(self, wait: float = 30.0) -> None:
        """Stop taking persons, let the photos in flight finish, and wait for the thread."""
        self.cancel.set()
        while True:  # wake it if it waits for work
            try:
                self.todo.get_nowait()
            except queue.Empty:
                break
        try:
            self.todo.put_nowait(None)
        except queue.Full:
            pass
        if self.thread.is_alive():
            self.thread.join(wait)


class _Run:
    """One streaming check or enroll run: plans persons, feeds the check thread, decides each person
    as it comes back, batches accepted persons to ``send`` and writes report lines in source order."""

    def __init__(self, discovery: Discovery, checker: FaceChecker, policy: PersonPolicy, summary: RunSummary,
                 report: ReportWriter | None, progress: Progress, stop: threading.Event | None,
                 executor: Executor | None, cache: CheckCache | None, rule: DuplicateRule,
                 gallery: GalleryContext, keep_items: bool, fail_fast: bool) -> None:
        self.discovery, self.summary, self.report, self.progress = discovery, summary, report, progress
        self.stop_event = stop
        self.executor = executor or LocalExecutor(checker)
        self.cache = cache
        self.checks = RunChecks(policy, rule, gallery, run_faces=discovery.image_count)
        self.keep_items, self.fail_fast = keep_items, fail_fast
        self.ordered: deque[CheckedPerson | ItemResult] = deque()
        self.items: list[ItemResult] = []
        self.persons: list[PersonResult] = []
        self.checked: list[CheckedPerson] = []
        self.state: Counter = Counter()  # checked persons by current status, for the ledger's progress
        self.images_checked = 0
        self.unchanged = 0
        self.cancelled = False  # --fail-fast: stop taking work
        self._started = False
        self._early: list[ItemResult] = []  # source problems, shown once the progress has started
        self._skipped_images = 0
        self._skipped_persons = 0
        self.on_decided: Any = None  # (CheckedPerson) -> None: the enroll stage takes accepted persons
        self.on_ledger: Any = None  # (CheckedPerson) -> None: the content hash, before the verdict is used

    # -- progress ------------------------------------------------------------------------------

    def _start(self, sending: bool) -> None:
        """The progress bars, once the first person to check is known (their totals leave out
        persons skipped as UNCHANGED so far; later ones advance the bars as they pass)."""
        if self._started:
            return
        self._started = True
        d = self.discovery
        persons = len(d.persons) - self._skipped_persons
        self.progress.start(d.image_count - self._skipped_images + len(d.problems), persons)
        if sending:
            self.progress.start_sending(persons)
        for item in self._early:
            self.progress.image_done(item)
        self._early = []

    def _stopped(self) -> bool:
        return self.cancelled or (self.stop_event is not None and self.stop_event.is_set())

    # -- the flow ------------------------------------------------------------------------------

    def problems(self, problems: list[ItemResult]) -> None:
        for item in problems:
            self.ordered.append(item)
            self._early.append(item)

    def skipped(self, cp: CheckedPerson) -> None:
        cp.final = True
        self.ordered.append(cp)
        self.unchanged += 1
        if self._started:
            for item in cp.items:
                self.progress.image_done(item)
            self.progress.person_done(cp.result)
        else:
            self._skipped_images += len(cp.spec.images)
            self._skipped_persons += 1

    def run(self, plan: Iterator[CheckedPerson], sending: bool) -> None:
        """Feed planned persons to the check thread and decide each one as it comes back."""
        worker = _CheckThread(self.executor, self.cache)
        worker.thread.start()
        feeding = True
        try:
            while True:
                while feeding and not worker.todo.full() and not self._stopped():
                    cp = next(plan, None)
                    if cp is None:
                        feeding = False
                        worker.todo.put(None)
                        break
                    self._start(sending)
                    self.ordered.append(cp)
                    worker.todo.put(cp)
                if self._stopped():
                    break
                try:
                    msgs = [worker.done.get(timeout=0.02 if feeding else 0.5)]
                except queue.Empty:
                    continue
                while msgs[-1][0] == "person" and len(msgs) < QUEUE_PERSONS:  # what else is ready: one group
                    try:
                        msgs.append(worker.done.get_nowait())
                    except queue.Empty:
                        break
                group = [m[1] for m in msgs if m[0] == "person" and self._prepare(m[1], m[2])]
                if group:
                    self._decide(group)
                self.flush()
                if msgs[-1][0] == "end":
                    break
                if msgs[-1][0] == "error":
                    raise msgs[-1][1]
            self._start(sending)  # nothing was left to check: the bars say so
        finally:
            worker.stop(wait=2.0 if sys.exc_info()[0] is KeyboardInterrupt else 30.0)

    def _prepare(self, cp: CheckedPerson, checks: list[ImageCheck]) -> bool:
        """The person's items from its checks; False when it is left out (--fail-fast stopped the
        run before it, or inside it)."""
        if self.cancelled:
            cp.dropped = cp.final = True
            return False
        cp.items = [ItemResult(c.path, cp.spec.person_id, c.status, list(c.reasons), c.message, c,
                               warnings=list(c.warnings)) for c in checks]
        bad = [n for n, i in enumerate(cp.items) if i.status in (Status.REJECTED, Status.FAILED)]
        if self.fail_fast and bad:
            self.cancelled = True
            if bad[0] < len(cp.items) - 1:  # stopped inside this person: it was not completely checked
                for item in cp.items[: bad[0] + 1]:
                    self.progress.image_done(item)
                cp.dropped = cp.final = True
                return False
        for item in cp.items:
            self.progress.image_done(item)
        self.images_checked += len(cp.items)
        return True

    def _decide(self, group: list[CheckedPerson]) -> None:
        """Per-person checks (each person against every one before it), verdicts, then each accepted
        person to the enroll stage."""
        for cp, found in zip(group, self.checks.add_many(group)):
            cp.result = person_verdict(cp.spec, cp.items, found)
            self.state[str(cp.result.status)] += 1
            self.progress.person_done(cp.result)
            if self.on_ledger is not None:
                self.on_ledger(cp)
            if cp.result.status == Status.ACCEPTED and self.on_decided is not None:
                self.on_decided(cp)
            else:
                cp.final = True
                if self.on_decided is not None:
                    self.progress.sent(1)  # leaves the enroll stage without a batch

    def set_status(self, cp: CheckedPerson, before: Status) -> None:
        self.state[str(before)] -= 1
        self.state[str(cp.result.status)] += 1

    def counts(self) -> dict[str, int]:
        """Counts so far, for the ledger's ``runs`` row while the run goes."""
        return {"images_checked": self.images_checked, "persons_checked": sum(self.state.values()),
                "persons_enrolled": self.state["enrolled"], "persons_failed": self.state["failed"],
                "persons_rejected": self.state["rejected"], "persons_unchanged": self.unchanged}

    # -- report lines ----------------------------------------------------------------------------

    def flush(self, everything: bool = False) -> None:
        """Record every final person (and problem) at the head of the queue; ``everything``: the run
        is over, persons never checked are left out."""
        while self.ordered:
            head = self.ordered[0]
            if isinstance(head, CheckedPerson) and not head.final and not everything:
                return
            self.ordered.popleft()
            if isinstance(head, ItemResult):
                self._record_item(head)
            elif head.result is not None and not head.dropped:
                self._record(head)

    def _record_item(self, item: ItemResult) -> None:
        self.summary.add_item(item)
        if self.report:
            self.report.write_item(item)
        c = item.check
        if c is not None:  # sent or decided: the heavy parts are no longer needed
            c.payload = c.crop = c.image = None
        if self.keep_items:
            self.items.append(item)
        elif _worth_listing(item):  # what the tables print, without the check's measurements
            self.items.append(ItemResult(item.path, item.person_id, item.status, item.reasons, item.message,
                                         line=item.line, warnings=item.warnings))

    def _record(self, cp: CheckedPerson) -> None:
        for item in cp.items:
            self._record_item(item)
        self.summary.add_person(cp.result)
        if self.report:
            self.report.write_person(cp.result)
        r = cp.result
        if self.keep_items:
            self.persons.append(r)
            self.checked.append(cp)
        elif r.warnings or r.reasons and r.reasons != [ReasonCode.UNCHANGED] or r.status in (Status.REJECTED, Status.FAILED):
            self.persons.append(replace(r, duplicates=[]))  # the pairs are in the summary

    def result(self) -> RunResult:
        return RunResult(self.summary, self.items, self.persons, self.checked)


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
    executor: Executor | None = None,
    keep_items: bool = True,
) -> RunResult:
    """`facecli check` as a library call: check everything, write the report, return the results.

    ``executor``: where the check stage runs (default: this process, :class:`LocalExecutor`)."""
    summary = summary or RunSummary(command="check")
    summary.ignored_files = len(discovery.ignored)
    if journal:
        journal.start_run(summary, {})
    report = _reporting(report, journal, summary)
    cache = CheckCache(journal, checker) if journal else None
    policy = policy or PersonPolicy()
    progress = progress or NullProgress()
    rule = duplicate_rule(checker, policy)
    gallery = GalleryContext(note="not checked: `facecli check` has no target (enroll asks the target)")
    summary.duplicate_check = describe_duplicate_check(rule, gallery, discovery.image_count)
    run = _Run(discovery, checker, policy, summary, report, progress, stop, executor, cache, rule, gallery,
               keep_items, fail_fast)
    error: BaseException | None = None
    try:
        run.problems(_problem_items(discovery))
        run.run((CheckedPerson(spec) for spec in discovery.persons), sending=False)
    except BaseException as exc:
        error = exc
        raise
    finally:
        run.flush(everything=True)
        _finish(summary, report, progress, journal, stop, discovery, error=error)
    return run.result()


def _problem_items(discovery: Discovery) -> list[ItemResult]:
    return [ItemResult(p.path, p.person_id, status_for([p.reason]), [p.reason], p.message, line=p.line)
            for p in discovery.problems]


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
            "gallery_faces": gallery.faces, "target": gallery.note,
            "order": "incremental: each person is compared with the persons before it in source order and with "
                     "the target; of two look-alike persons the later one is flagged"}

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
    #: Persons in the first batch (default: ``batch_size``): a remote target's batch is several
    #: requests in flight at once, and the first person need not wait for all of them to fill.
    first_batch_size: int | None = None


def person_payload(cp: CheckedPerson) -> PersonPayload:
    spec = cp.spec
    faces = [
        FacePayload(image_sha256=c.sha256 or "", source_path=c.path, embedding=c.embedding, jpeg=c.payload,
                    quality={k: round(v, 3) for k, v in c.quality.items()} | {"det_score": round(c.face.score, 4)})
        for c in cp.accepted
    ]
    return PersonPayload(spec.person_id, spec.person_name, faces, dict(spec.metadata), spec.gender,
                         spec.date_of_birth, spec.nationality, spec.notes)


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
    keeps the ledger's word, and the summary says it was not checked. Called once per planning
    chunk of a run: the summary's ``ledger`` counts add up."""
    if not person_ids:
        return set()
    ask = getattr(sink, "held_ids", None)
    held = ask(collection, person_ids) if ask is not None else None
    before = summary.ledger
    if held is None:
        n = before.get("unchanged", 0) + len(person_ids)
        summary.ledger = {"unchanged": n, "checked_at_target": False, "missing_at_target": 0,
                          "note": f"{n} person(s) skipped as UNCHANGED on the run ledger's word: "
                                  "this target cannot say which persons it holds (--force re-sends them)"}
        return set(person_ids)
    missing = [pid for pid in person_ids if pid not in held]
    gone = before.get("missing_at_target", 0) + len(missing)
    summary.ledger = {"unchanged": before.get("unchanged", 0) + len(person_ids) - len(missing),
                      "checked_at_target": True, "missing_at_target": gone,
                      "note": f"{gone} person(s) the ledger had as enrolled are no longer at the target: "
                              "re-sent" if gone else ""}
    return set(person_ids) - set(missing)


class _Sender:
    """The enroll stage: accepted persons -> batches (by count and encoded bytes) -> the sink, each
    batch marked ``sent`` in the ledger before the request and ``confirmed``/``failed`` after."""

    def __init__(self, run: _Run, sink: Sink, options: EnrollOptions, target: str,
                 journal: Journal | None, exists: Any) -> None:
        self.run, self.sink, self.options, self.target, self.journal = run, sink, options, target, journal
        self.exists = exists  # --dry-run: the target's "which of these ids do you hold"
        self.batch: list[tuple[CheckedPerson, PersonPayload]] = []
        self.nbytes = 0
        self.would: Counter = Counter()
        self.halted = False  # --fail-fast: a batch had a failed person; send nothing more
        self.size = options.first_batch_size or options.batch_size  # the first batch may be smaller

    def add(self, cp: CheckedPerson) -> None:
        payload = person_payload(cp)
        size = sum(len(f.jpeg or b"") for f in payload.faces)
        if self.batch and self.nbytes + size > self.options.max_batch_bytes:
            self.send()  # a single oversized person still goes alone
        self.batch.append((cp, payload))
        self.nbytes += size
        if len(self.batch) >= self.size:
            self.send()

    def send(self) -> None:
        batch, self.batch, self.nbytes = self.batch, [], 0
        self.size = self.options.batch_size
        if not batch:
            return
        run, o, coll = self.run, self.options, self.options.collection
        if self.halted or (run.stop_event is not None and run.stop_event.is_set()):
            for cp, _ in batch:
                self._not_sent(cp)
            return
        if o.dry_run:
            known = (self.exists(coll, [p.person_id for _, p in batch]) if self.exists else None) or set()
            for cp, p in batch:
                action = "update" if p.person_id in known else "create"
                self.would[action] += 1
                cp.result.message = f"dry run: would {action} {p.person_id} with {len(p.faces)} face(s)"
                cp.final = True
            return
        ids = [p.person_id for _, p in batch]
        hashes = {cp.spec.person_id: cp.content_hash for cp, _ in batch}
        if self.journal:
            self.journal.mark(self.target, coll, run.summary.run_id, [(i, hashes[i], "sent", None, "") for i in ids])
        outcomes = {x.person_id: x for x in self.sink.upsert(coll, [p for _, p in batch])}
        for cp, p in batch:
            before = cp.result.status
            apply_outcome(cp, outcomes.get(p.person_id) or ItemOutcome(
                p.person_id, Status.FAILED, ReasonCode.SERVER_ERROR, message="no result for this person"))
            run.set_status(cp, before)
            cp.final = True
        if self.journal:
            self.journal.mark(self.target, coll, run.summary.run_id, [
                (cp.spec.person_id, hashes[cp.spec.person_id],
                 "confirmed" if cp.result.status == Status.ENROLLED else "failed",
                 cp.result.reasons[-1] if cp.result.reasons else None, cp.result.message) for cp, _ in batch])
            self.journal.run_progress(run.summary.run_id, run.counts())
        run.progress.sent(len(batch))
        if o.fail_fast and any(cp.result.status != Status.ENROLLED for cp, _ in batch):
            self.halted = run.cancelled = True
        if _DEBUG_BATCH_DELAY:  # lets crash-safety tests kill a run between batches
            time.sleep(_DEBUG_BATCH_DELAY)

    @staticmethod
    def _not_sent(cp: CheckedPerson) -> None:
        cp.result.status = Status.SKIPPED
        cp.result.message = "not sent: the run stopped first; re-run to resume"
        cp.final = True

    def close(self) -> None:
        """The last, partial batch; persons still unsent (the run stopped) are SKIPPED."""
        self.send()
        for cp, _ in self.batch:
            self._not_sent(cp)
        self.batch = []


def _plan(discovery: Discovery, run: _Run, ledger: Journal | None, journal: Journal | None, sink: Sink,
          target: str, options: EnrollOptions, opts_key: dict[str, Any],
          retry_only: set[str] | None) -> Iterator[CheckedPerson]:
    """Persons to check, in source order; with a ledger, persons confirmed at this target with the
    same content (and still held there: one question per chunk) are recorded UNCHANGED instead."""
    coll = options.collection
    persons = [s for s in discovery.persons if retry_only is None or s.person_id in retry_only]
    start, size = 0, 64
    while start < len(persons):
        chunk = persons[start : start + size]
        start, size = start + size, min(PLAN_CHUNK, size * 2)
        hashed: dict[str, str] = {}
        confirmed: list[str] = []
        if ledger is not None and not options.force:
            for spec in chunk:
                state = ledger.person_state(target, coll, spec.person_id)
                if state is None or state[0] != "confirmed":
                    continue  # hashed once checked (the files are then in the page cache)
                hashed[spec.person_id] = h = _content_hash(ledger, journal, target, coll, spec, opts_key)
                if state[1] == h:
                    confirmed.append(spec.person_id)
        unchanged = still_held(sink, coll, confirmed, run.summary)
        for spec in chunk:
            if spec.person_id in unchanged:
                run.skipped(_skipped(spec, "already enrolled with the same content"))
                continue
            cp = CheckedPerson(spec, content_hash=hashed.get(spec.person_id, ""))
            yield cp


def _content_hash(ledger: Journal, journal: Journal | None, target: str, collection: str, spec: PersonSpec,
                  opts_key: dict[str, Any]) -> str:
    """The person's content hash; with a journal, also which images (by hash) are the person's
    (`persons delete` drops their cached checks by it)."""
    shas = [ledger.file_sha256(Path(p), remember=journal is not None) for p in spec.images]
    if journal:
        journal.map_images(target, collection, spec.person_id, shas)
    return person_content_hash(spec, shas, opts_key)


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
    executor: Executor | None = None,
    keep_items: bool = True,
) -> RunResult:
    """`facecli enroll` as a library call: check, per-person checks, then batches to the sink, streaming.

    With a ``journal``: persons already confirmed at this target with the same content are skipped
    (UNCHANGED) without reading their images again, unchanged images are not decoded again, and
    every batch is marked ``sent`` before the request and ``confirmed``/``failed`` after, so a run
    killed at any point re-sends at most the batch that was in flight. ``executor``: where the
    check stage runs (default: this process).
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
    run: _Run | None = None
    sender: _Sender | None = None
    error: BaseException | None = None
    try:
        if not options.dry_run:
            sink.ensure_collection(coll, options.create_collection)  # fail before the work
        else:  # read-only: a dry run fails where the real run would (reachable, key accepted, collection)
            try:
                sink.ensure_collection(coll, False)
            except CollectionMissing:
                if not options.create_collection:
                    raise
        retry_only = ledger.failed_persons(target, coll) if ledger and options.retry_failed else None
        todo = discovery if retry_only is None else Discovery(
            [s for s in discovery.persons if s.person_id in retry_only], [], discovery.ignored)
        cache = CheckCache(ledger, checker, read_only=journal is None) if ledger else None
        rule = duplicate_rule(checker, policy)
        gallery = gallery_context(sink, coll, checker.recognizer.model.file.sha256)
        summary.duplicate_check = describe_duplicate_check(rule, gallery, todo.image_count)
        run = _Run(todo, checker, policy, summary, report, progress, stop, executor, cache, rule, gallery,
                   keep_items, options.fail_fast)
        sender = _Sender(run, sink, options, target, journal,
                         getattr(sink, "held_ids", None) if options.dry_run else None)
        opts_key = {"check": check_config_key(checker), "policy": policy,
                    "storage": getattr(sink, "face_storage_type", None)}
        if journal:
            def hash_person(cp: CheckedPerson) -> None:
                if not cp.content_hash:
                    cp.content_hash = _content_hash(ledger, journal, target, coll, cp.spec, opts_key)
            run.on_ledger = hash_person
        run.on_decided = sender.add
        run.problems(_problem_items(todo))
        run.run(_plan(todo, run, ledger, journal, sink, target, options, opts_key, retry_only),
                sending=not options.dry_run)
        sender.close()
        if journal:
            journal.run_progress(summary.run_id, run.counts())
        if options.dry_run:
            summary.would = {"create": sender.would["create"], "update": sender.would["update"],
                             "unchanged": run.unchanged, "rejected": run.state["rejected"],
                             "failed": run.state["failed"]}
    except BaseException as exc:
        error = exc
        raise
    finally:
        summary.retries = int(getattr(sink, "retries", 0) or 0)  # remote sinks count their HTTP retries
        if sender is not None and error is not None:
            for cp, _ in sender.batch:  # stopped by an error before this batch went out
                sender._not_sent(cp)
        if run is not None:
            run.flush(everything=True)
        _finish(summary, report, progress, journal, stop, discovery, options.retry_failed, error)
    return run.result() if run is not None else RunResult(summary, [], [])
