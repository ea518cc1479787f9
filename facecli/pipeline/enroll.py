"""PersonSpecs -> image checks -> person verdicts (-> batches -> sink, in the enroll issue).

A check run is an enroll run without a sink, so both share this module: the stages and the
reporting are the same, which keeps `facecli check` an exact dry run of what enroll would accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from facecli.errors import ReasonCode, Status, status_for
from facecli.pipeline.check import FaceChecker, ImageCheck
from facecli.pipeline.report import ItemResult, PersonResult, ReportWriter, RunSummary
from facecli.sources.spec import Discovery, PersonSpec


class Progress(Protocol):
    """Progress events; the CLI supplies a rich implementation, library users may pass none."""

    def start(self, images: int, persons: int) -> None: ...
    def image_done(self, item: ItemResult) -> None: ...
    def person_done(self, person: PersonResult) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    def start(self, images: int, persons: int) -> None:
        pass

    def image_done(self, item: ItemResult) -> None:
        pass

    def person_done(self, person: PersonResult) -> None:
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


def person_verdict(spec: PersonSpec, items: list[ItemResult]) -> PersonResult:
    """A person is accepted when at least one image is accepted and no person-level reason says no."""
    accepted = sum(1 for i in items if i.status == Status.ACCEPTED)
    if accepted:
        status, reasons = Status.ACCEPTED, []
    elif items and all(i.status == Status.FAILED for i in items):
        status, reasons = Status.FAILED, [ReasonCode.NO_ACCEPTED_IMAGE]
    else:
        status, reasons = Status.REJECTED, [ReasonCode.NO_ACCEPTED_IMAGE]
    return PersonResult(
        person_id=spec.person_id,
        person_name=spec.person_name,
        status=status,
        reasons=reasons,
        images=len(items),
        accepted_images=accepted,
    )


def check_persons(
    discovery: Discovery,
    checker: FaceChecker,
    summary: RunSummary,
    report: ReportWriter | None = None,
    progress: Progress | None = None,
) -> tuple[list[CheckedPerson], list[ItemResult]]:
    """Check every image of every person (in source order) and give each person a verdict."""
    progress = progress or NullProgress()
    persons = [CheckedPerson(p) for p in discovery.persons]
    problems: list[ItemResult] = []
    progress.start(discovery.image_count + len(discovery.problems), len(persons))

    def emit(item: ItemResult) -> None:
        summary.add_item(item)
        if report:
            report.write_item(item)
        progress.image_done(item)

    for prob in discovery.problems:
        item = ItemResult(prob.path, prob.person_id, status_for([prob.reason]), [prob.reason], prob.message, line=prob.line)
        problems.append(item)
        emit(item)

    flat: list[tuple[CheckedPerson, str]] = [(cp, str(img)) for cp in persons for img in cp.spec.images]
    results = checker.check_paths(path for _, path in flat)
    remaining = {id(cp): len(cp.spec.images) for cp in persons}
    for (cp, _), check in zip(flat, results):
        item = ItemResult(check.path, cp.spec.person_id, check.status, list(check.reasons), check.message, check)
        cp.items.append(item)
        emit(item)
        remaining[id(cp)] -= 1
        if remaining[id(cp)] == 0:
            _finish_person(cp, summary, report, progress)
    for cp in persons:
        if not cp.spec.images:
            _finish_person(cp, summary, report, progress)
    return persons, problems


def _finish_person(cp: CheckedPerson, summary: RunSummary, report: ReportWriter | None, progress: Progress) -> None:
    cp.result = person_verdict(cp.spec, cp.items)
    summary.add_person(cp.result)
    if report:
        report.write_person(cp.result)
    progress.person_done(cp.result)


def run_check(
    discovery: Discovery,
    checker: FaceChecker,
    report: ReportWriter | None = None,
    progress: Progress | None = None,
    summary: RunSummary | None = None,
) -> RunResult:
    """`facecli check` as a library call: check everything, write the report, return the results."""
    summary = summary or RunSummary(command="check")
    summary.ignored_files = len(discovery.ignored)
    try:
        persons, problems = check_persons(discovery, checker, summary, report, progress)
    finally:
        summary.finish()
        if report:
            report.close(summary)
        if progress:
            progress.close()
    items = problems + [i for cp in persons for i in cp.items]
    return RunResult(summary, items, [cp.result for cp in persons if cp.result])

