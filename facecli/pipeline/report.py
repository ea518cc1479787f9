"""Results of a run: per-image and per-person records, the summary, and report writers.

Report lines are a stable contract (DESIGN.md section 4): scripts parse them, so fields are only
ever added. Writers stream (one line per finished item, flushed) so a killed run still leaves a
report of everything it finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from facecli.errors import ConfigError, ReasonCode, Status
from facecli.pipeline.check import ImageCheck


@dataclass
class ItemResult:
    """Final word on one image (or one source problem such as an unreadable folder)."""

    path: str
    person_id: str | None
    status: Status
    reasons: list[ReasonCode] = field(default_factory=list)
    message: str = ""
    check: ImageCheck | None = None
    line: int | None = None
    #: Codes raised under a "warn" policy: reported, but the status is unchanged.
    warnings: list[ReasonCode] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "image"}
        if self.check is not None:
            out.update(self.check.to_json())
        else:
            out.update({"path": self.path, "faces": 0, "box": None, "landmarks": None, "det_score": None, "quality": {}})
        out.update(
            {
                "path": self.path,
                "person_id": self.person_id,
                "status": str(self.status),
                "reasons": [str(r) for r in self.reasons],
                "message": self.message,
                "warnings": [str(w) for w in self.warnings],
            }
        )
        if self.line is not None:
            out["line"] = self.line
        return out


@dataclass
class PersonResult:
    person_id: str
    person_name: str
    status: Status
    reasons: list[ReasonCode] = field(default_factory=list)
    images: int = 0
    accepted_images: int = 0
    message: str = ""
    warnings: list[ReasonCode] = field(default_factory=list)
    #: Other persons (of the run or the gallery) this one looks like, most similar first:
    #: ``DuplicateMatch.to_json()`` dicts (other_person_id, score, where, decision, ...).
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    #: What the target did: created | updated | unchanged (the target said so, or the run ledger
    #: skipped the person as UNCHANGED); None when nothing was sent.
    action: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "person",
            "person_id": self.person_id,
            "person_name": self.person_name,
            "status": str(self.status),
            "reasons": [str(r) for r in self.reasons],
            "images": self.images,
            "accepted_images": self.accepted_images,
            "message": self.message,
            "warnings": [str(w) for w in self.warnings],
            "duplicates": self.duplicates,
            "action": self.action,
        }


IMAGE_STATUSES = ("accepted", "rejected", "failed", "skipped", "enrolled")
ACTIONS = ("created", "updated", "unchanged")
PERSON_STATUSES = ("accepted", "enrolled", "rejected", "failed", "skipped")


@dataclass
class RunSummary:
    command: str
    target: str | None = None
    collection: str | None = None
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    images: Counter = field(default_factory=Counter)
    persons: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    ignored_files: int = 0
    retries: int = 0
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)
    duration_s: float = 0.0
    #: Pairs of persons that look alike (DUPLICATE_PERSON, POSSIBLE_DUPLICATE, same photo).
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    #: How the duplicate decisions were made: score model, levels, whether the target was asked.
    duplicate_check: dict[str, Any] = field(default_factory=dict)
    warnings: Counter = field(default_factory=Counter)
    #: The run ledger's "already enrolled" skips: how many, and whether the target confirmed them.
    ledger: dict[str, Any] = field(default_factory=dict)
    #: Set when the run found nothing to do (an empty source, nothing to retry): why, in words.
    nothing_to_do: str = ""
    #: --dry-run: persons the real run would create / update, and those it would not send.
    would: dict[str, int] = field(default_factory=dict)
    #: Persons the target created / updated / left unchanged in this run.
    actions: Counter = field(default_factory=Counter)
    _run_pairs: set = field(default_factory=set, repr=False)

    def add_item(self, item: ItemResult) -> None:
        self.images[str(item.status)] += 1
        for r in item.reasons:
            self.reasons[str(r)] += 1
        for w in item.warnings:
            self.warnings[str(w)] += 1

    def add_person(self, person: PersonResult) -> None:
        self.persons[str(person.status)] += 1
        if person.action:
            self.actions[person.action] += 1
        for d in person.duplicates:
            if d.get("where") == "run":
                key = frozenset((person.person_id, d["other_person_id"]))
                if key in self._run_pairs:
                    continue  # a pair inside the run is listed once
                self._run_pairs.add(key)
            self.duplicates.append({"person_id": person.person_id, **d})

    def duplicate_pairs(self) -> list[dict[str, Any]]:
        """Most similar first."""
        return sorted(self.duplicates, key=lambda d: -d["score"])

    def finish(self) -> None:
        self.duration_s = time.monotonic() - self.started

    @property
    def problems(self) -> int:
        """Images that did not end fine (rejected or failed)."""
        return self.images["rejected"] + self.images["failed"]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "target": self.target,
            "collection": self.collection,
            "images": {s: self.images.get(s, 0) for s in IMAGE_STATUSES},
            "persons": {s: self.persons.get(s, 0) for s in PERSON_STATUSES},
            "reasons": dict(sorted(self.reasons.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "duplicates": self.duplicate_pairs(),
            "duplicate_check": self.duplicate_check,
            "ignored_files": self.ignored_files,
            "duration_s": round(self.duration_s, 3),
            "retries": self.retries,
            "interrupted": self.interrupted,
            "ledger": self.ledger,
            "nothing_to_do": self.nothing_to_do,
            **({"actions": {**{a: 0 for a in ACTIONS}, **self.actions}} if self.command == "enroll" else {}),
            **({"would": self.would} if self.would else {}),
        }


class ReportWriter(Protocol):
    def write_item(self, item: ItemResult) -> None: ...
    def write_person(self, person: PersonResult) -> None: ...
    def close(self, summary: RunSummary) -> None: ...


class JsonlReport:
    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def _line(self, obj: dict) -> None:
        self.fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.fh.flush()

    def write_item(self, item: ItemResult) -> None:
        self._line(item.to_json())

    def write_person(self, person: PersonResult) -> None:
        self._line(person.to_json())

    def close(self, summary: RunSummary) -> None:
        self.fh.close()


#: The quality measurements of an image line (``ImageCheck.quality``), one ``quality_<name>`` CSV
#: column each, in this order (vision/quality.py: gate_faces, crop_measurements).
QUALITY_KEYS = ("face_size", "eye_distance", "yaw", "pitch", "roll", "border", "sharpness", "brightness")
#: The CSV report's columns: every key of the JSON Lines image and person lines, ``quality``
#: flattened. A fixed list (new keys are appended), so files from different runs line up; a cell
#: a line does not have (a person row's ``box``, an image row's ``images``) is empty.
CSV_COLUMNS = ("kind", "path", "person_id", "person_name", "status", "action", "reasons", "warnings", "message",
               "width", "height", "format", "sha256", "faces", "det_score", "box", "landmarks",
               *(f"quality_{k}" for k in QUALITY_KEYS), "other_faces", "images", "accepted_images", "duplicates",
               "line")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: str) -> str:
    """Neutralise cells a spreadsheet would run as a formula (CSV injection): a text cell that starts
    with ``= + - @``, a tab or a CR (a file name, person id or server message from outside) gets a
    leading apostrophe, which spreadsheets read as "this is text". JSON cells start with ``[``/``{``."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def csv_cell(value: Any) -> str:
    """One CSV cell: empty for None; a list of strings (reason codes) joined with ``;``; other lists
    and objects (box, landmarks, other_faces, duplicates, metadata) as compact JSON; true/false;
    numbers as they are; text neutralised with :func:`spreadsheet_safe`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)  # a number, negative ones too (a yaw of -8.3), is no formula
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return spreadsheet_safe(";".join(value))
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return spreadsheet_safe(str(value))


def csv_fields(line: dict[str, Any]) -> dict[str, Any]:
    """A report line with ``quality`` flattened into ``quality_<name>`` keys."""
    flat = {k: v for k, v in line.items() if k != "quality"}
    flat.update({f"quality_{k}": v for k, v in (line.get("quality") or {}).items()})
    return flat


def write_csv(fh: IO[str], columns: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> None:
    """A header and one row per dict, cells as in the CSV report (listings' ``--csv``)."""
    writer = csv.writer(fh)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])


class CsvReport:
    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.writer = csv.writer(fh)
        self.writer.writerow(CSV_COLUMNS)

    def _row(self, obj: dict) -> None:
        flat = csv_fields(obj)
        self.writer.writerow([csv_cell(flat.get(c)) for c in CSV_COLUMNS])
        self.fh.flush()

    def write_item(self, item: ItemResult) -> None:
        self._row(item.to_json())

    def write_person(self, person: PersonResult) -> None:
        self._row(person.to_json())

    def close(self, summary: RunSummary) -> None:
        self.fh.close()


#: What XML 1.0 cannot carry (C0 controls but tab/LF/CR, lone surrogates from undecodable file
#: names, U+FFFE/U+FFFF): shown as visible escapes so a hostile file name cannot break the report.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(value: str) -> str:
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", value)


class JUnitReport:
    """JUnit XML, one testcase per image, so CI systems show rejected photos as failures."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.items: list[ItemResult] = []

    def write_item(self, item: ItemResult) -> None:
        self.items.append(item)

    def write_person(self, person: PersonResult) -> None:
        pass

    def close(self, summary: RunSummary) -> None:
        import xml.etree.ElementTree as ET

        failures = sum(1 for i in self.items if i.status == Status.REJECTED)
        errors = sum(1 for i in self.items if i.status == Status.FAILED)
        skipped = sum(1 for i in self.items if i.status == Status.SKIPPED)
        suites = ET.Element("testsuites", name="facecli")
        suite = ET.SubElement(suites, "testsuite", name=f"facecli {summary.command}", tests=str(len(self.items)),
                              failures=str(failures), errors=str(errors), skipped=str(skipped),
                              time=f"{summary.duration_s:.3f}")
        for i in self.items:
            case = ET.SubElement(suite, "testcase", classname=_xml_text(i.person_id or ""), name=_xml_text(i.path))
            codes, message = ", ".join(map(str, i.reasons)), _xml_text(i.message)
            if i.status == Status.REJECTED:
                ET.SubElement(case, "failure", message=codes, type="rejected").text = message
            elif i.status == Status.FAILED:
                ET.SubElement(case, "error", message=codes, type="failed").text = message
            elif i.status == Status.SKIPPED:
                ET.SubElement(case, "skipped", message=codes or message)
        ET.indent(suites)
        self.fh.write(ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n")
        self.fh.close()


class MultiReport:
    """Several writers fed the same lines (the user's report file and the run journal)."""

    def __init__(self, writers: list[ReportWriter]) -> None:
        self.writers = writers

    def write_item(self, item: ItemResult) -> None:
        for w in self.writers:
            w.write_item(item)

    def write_person(self, person: PersonResult) -> None:
        for w in self.writers:
            w.write_person(person)

    def close(self, summary: RunSummary) -> None:
        for w in self.writers:
            w.close(summary)


#: Report formats by file extension (``.json`` is JSON Lines too: one object per line).
REPORT_FORMATS = {".jsonl": "JSON Lines", ".json": "JSON Lines", ".csv": "CSV", ".xml": "JUnit XML",
                  ".html": "HTML review page"}


def check_report_path(path: str | Path) -> Path:
    """Refuse a report path before any work is done: an unknown extension, or a place that
    cannot be written (ConfigError, exit 2). Creates the parent folder; leaves no file behind."""
    p = Path(path)
    if p.suffix.lower() not in REPORT_FORMATS:
        raise ConfigError(f"--report {p}: unknown report format {p.suffix or '(no extension)'!r}",
                          hint="name the file .jsonl (or .json) for JSON Lines, .csv for CSV, .xml for JUnit XML, "
                               ".html for the review page")
    if p.is_dir():
        raise ConfigError(f"--report {p} is a folder")
    existed = p.exists()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    except OSError as exc:
        raise ConfigError(f"--report {p} cannot be written: {exc.strerror or exc}",
                          hint="choose a writable folder") from None
    if not existed:
        p.unlink(missing_ok=True)
    return p


def open_report(path: str | Path) -> ReportWriter:
    """A writer chosen by file name: ``.csv`` CSV, ``.xml`` JUnit XML, ``.jsonl``/``.json`` JSON
    Lines; any other extension, or a path that cannot be written, is a ConfigError."""
    p = check_report_path(path)
    if p.suffix.lower() == ".html":  # written at close (facecli.pipeline.review)
        from facecli.pipeline.review import HtmlReportWriter

        return HtmlReportWriter(p)
    try:
        # backslashreplace: a lone surrogate (a file name that is not UTF-8) is written as the JSON
        # escape it stands for (\udcff) instead of failing the write; everything else is exact
        fh = io.open(p, "w", encoding="utf-8", errors="backslashreplace", newline="")
    except OSError as exc:
        raise ConfigError(f"--report {p} cannot be written: {exc.strerror or exc}") from None
    if p.suffix.lower() == ".csv":
        return CsvReport(fh)
    if p.suffix.lower() == ".xml":
        return JUnitReport(fh)
    return JsonlReport(fh)
