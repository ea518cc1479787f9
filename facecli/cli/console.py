"""Terminal output: progress bars (only on a TTY), summary tables and JSON.

Diagnostics and progress go to stderr; results (tables, --json objects) go to stdout, so
`facecli check --json ... | jq` always sees exactly one JSON object.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from facecli.errors import REASON_HELP, FacecliError, ReasonCode
from facecli.pipeline.report import ItemResult, PersonResult, RunSummary

#: Characters a terminal would act on rather than show: C0 controls (NUL, ESC, BEL, backspace,
#: CR, LF, tab...), DEL, C1 controls (0x80-0x9f, e.g. the 8-bit CSI) and the Unicode bidi
#: overrides and isolates that reorder what is shown; also lone surrogates (file names that are not
#: UTF-8), which a terminal cannot be sent. Each is shown as a visible escape (``\x1b``, ``\udcff``).
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))} | {
    c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029,
                                *range(0xD800, 0xE000))}
_KEEP_NEWLINES = {k: v for k, v in _CONTROL_ESCAPES.items() if k != 0x0A}


def safe_text(value: Any, newlines: bool = False) -> str:
    """``value`` as text that is safe to print: terminal control characters escaped visibly and Rich
    markup escaped. For every value that came from outside (server answers, person ids and names,
    metadata, file names, messages quoting them) printed to a terminal; ``--json`` output stays exact.
    ``newlines``: keep line breaks (multi-line messages)."""
    return escape(str(value).translate(_KEEP_NEWLINES if newlines else _CONTROL_ESCAPES))


out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

STATUS_STYLE = {"accepted": "green", "enrolled": "green", "rejected": "yellow", "failed": "red", "skipped": "dim"}


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_error(exc: FacecliError) -> None:
    """Messages are plain text (they may hold `facecli[extra]`, paths, ids): escaped, not markup."""
    err.print(f"[bold red]error:[/] {safe_text(exc.message, newlines=True)}", markup=True, highlight=False)
    if exc.hint:
        err.print(f"[dim]hint:[/] {safe_text(exc.hint, newlines=True)}", markup=True, highlight=False)


#: Characters of a file path the progress line shows (cut in the middle: see shorten_path).
PATH_WIDTH = 40


def shorten_path(path: str, width: int = PATH_WIDTH) -> str:
    """``path`` in at most ``width`` characters, cut in the middle so that its start and its file name
    stay readable: ``photos/…/IMG_0001.jpg``, whole folders kept where they fit; a file name longer
    than ``width`` keeps its start and its end (the extension)."""
    if len(path) <= width:
        return path
    cut = max(path.rfind("/"), path.rfind("\\")) + 1
    head, name = path[:cut], path[cut:]
    room = width - len(name) - 2  # for "…" and the separator before the name
    if head and room >= 1:
        keep = head[:room]
        folder_end = max(keep.rfind("/"), keep.rfind("\\"))
        keep = keep[:folder_end + 1] if folder_end >= 0 else keep  # whole folders, when one fits
        return f"{keep}…{head[-1]}{name}"
    tail = width // 2
    return f"{name[:width - 1 - tail]}…{name[-tail:]}"


def task_rate(task: Task) -> float | None:
    """Items per second: the average since the start for the first seconds (the pipeline delivers
    images in bursts, so a short window would say thousands per second), then rich's moving average
    over the last 30 s (follows a run that slows down once cached checks are used up)."""
    elapsed = task.finished_time or task.elapsed
    if not elapsed or not task.completed:
        return None
    if task.finished or elapsed < 5 or task.speed is None:
        return task.completed / elapsed
    return task.speed


class RateColumn(ProgressColumn):
    """``12.3 images/s`` for tasks with a ``unit`` field; blank for the others."""

    def render(self, task: Task) -> Text:
        unit, rate = task.fields.get("unit"), task_rate(task)
        if not unit or rate is None:
            return Text("")
        return Text(f"{rate:.1f} {unit}/s" if rate < 10 else f"{rate:,.0f} {unit}/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """``eta 0:01:23`` from :func:`task_rate`; once finished, the time it took."""

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text(str(timedelta(seconds=int(task.finished_time or 0))), style="progress.elapsed")
        rate = task_rate(task)
        if not rate or task.total is None:
            return Text("eta -:--:--", style="progress.remaining")
        return Text(f"eta {timedelta(seconds=int((task.total - task.completed) / rate))}", style="progress.remaining")


class RichProgress:
    """Pipeline progress events -> rich bars on stderr; disabled when stderr is not a terminal.

    Bars: images (rate, ETA, the file being checked), persons (advancing as each person's images are
    all checked: the pipeline checks images person by person, and gives the verdicts at the end) and,
    for enroll, persons sent. A run with nothing to check shows no bar; with ``summary`` (enroll) it
    says how many persons were unchanged instead."""

    def __init__(self, enabled: bool, label: str = "checking", summary: RunSummary | None = None,
                 console: Console | None = None) -> None:
        self.console = console or err
        self.enabled = enabled and self.console.is_terminal
        self.label = label
        self.summary = summary
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._checked = False  # whether any image was there to check
        self._images_left = 0
        self._persons_seen: set[str | None] = set()
        self._verdicts = 0

    def _add(self, key: str, description: str, total: int, unit: str = "") -> None:
        if not self.enabled or not total:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(), RateColumn(),
                EtaColumn(), TextColumn("{task.fields[detail]}"),
                console=self.console, transient=False)
            self._progress.start()
        self._tasks[key] = self._progress.add_task(description, total=total, detail="", unit=unit)

    def _update(self, key: str, **kwargs: Any) -> None:
        if self._progress is not None and key in self._tasks:
            self._progress.update(self._tasks[key], **kwargs)

    def start(self, images: int, persons: int) -> None:
        self._checked = images > 0
        self._images_left = images
        if images:
            self._add("images", f"{self.label} images", images, unit="images")
            self._add("persons", "persons checked", persons)

    def image_done(self, item: ItemResult) -> None:
        self._images_left -= 1
        self._update("images", advance=1, detail=safe_text(shorten_path(item.path)))
        if item.check is not None:  # an image of a person (not a source problem such as an invalid row)
            self._persons_seen.add(item.person_id)
        # Every person seen is complete but the one whose images are being checked (until the last image).
        done = len(self._persons_seen) - (1 if self._images_left > 0 and self._persons_seen else 0)
        self._update("persons", completed=max(done, self._verdicts))

    def person_done(self, person: PersonResult) -> None:
        self._verdicts += 1
        self._update("persons", completed=max(self._verdicts, len(self._persons_seen)))

    def start_sending(self, persons: int) -> None:
        self._add("sending", "enrolling persons", persons, unit="persons")

    def sent(self, persons: int) -> None:
        self._update("sending", advance=persons)

    def refresh(self) -> None:
        if self._progress is not None:
            self._progress.refresh()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self.enabled and not self._checked and self.summary is not None:
            unchanged = self.summary.actions.get("unchanged", 0)
            if unchanged:
                self.console.print(f"{unchanged} person(s) unchanged, nothing to check")


def quiet_dup_note(summary: RunSummary) -> bool:
    """Nothing was compared (no accepted image): the duplicate line would only be noise."""
    return not (summary.images.get("accepted", 0) or summary.images.get("enrolled", 0))


def summary_tables(summary: RunSummary, items: list[ItemResult], show: int,
                   persons: list[PersonResult] | None = None) -> None:
    """Counts per status and per reason, then the first ``show`` problem items; one line when
    the run had nothing to do."""
    if summary.nothing_to_do:
        out.print(f"{summary.command}: {safe_text(summary.nothing_to_do)}")
        return
    where = f" into {safe_text(summary.target or '')}, collection {safe_text(summary.collection or '')}" \
        if summary.command == "enroll" and summary.target else ""
    t = Table(title=f"{summary.command} {summary.run_id}{where}", title_justify="left")
    t.add_column("status")
    t.add_column("images", justify="right")
    t.add_column("persons", justify="right")
    for status in ("accepted", "enrolled", "skipped", "rejected", "failed"):
        n_img, n_per = summary.images.get(status, 0), summary.persons.get(status, 0)
        if n_img or n_per:
            style = STATUS_STYLE[status]
            t.add_row(f"[{style}]{status}[/]", str(n_img), str(n_per))
    out.print(t)
    if summary.command == "enroll" and (summary.actions or summary.images.get("enrolled")):
        told = ", ".join(f"{summary.actions.get(a, 0)} {a}" for a in ("created", "updated", "unchanged"))
        other = summary.actions.get("enrolled", 0)
        out.print(f"persons: {told}" + (f", {other} enrolled (the target did not say created or updated)" if other else ""))
    if summary.reasons:
        r = Table(title="reasons", title_justify="left")
        r.add_column("code")
        r.add_column("images", justify="right")
        r.add_column("meaning")
        for code, n in summary.reasons.most_common():
            r.add_row(code, str(n), REASON_HELP.get(ReasonCode(code), "") if code in ReasonCode.__members__ else "")
        out.print(r)
    bad = [i for i in items if str(i.status) in ("rejected", "failed") or i.warnings
           or i.status == "skipped" and ReasonCode.UNCHANGED not in i.reasons]  # unchanged is not a problem
    if bad and show:
        b = Table(title=f"problems (first {min(show, len(bad))} of {len(bad)}; full list with --report)", title_justify="left")
        b.add_column("path", overflow="fold")
        b.add_column("person")
        b.add_column("status")
        b.add_column("reasons")
        b.add_column("message", overflow="fold")
        for i in bad[:show]:
            codes = ", ".join([*map(str, i.reasons), *(f"{w} (warn)" for w in i.warnings)])
            b.add_row(safe_text(i.path), safe_text(i.person_id or ""), f"[{STATUS_STYLE[str(i.status)]}]{i.status}[/]",
                      codes, safe_text(i.message))
        out.print(b)
    # Persons whose verdict says more than their single image already did.
    bad_persons = [p for p in persons or [] if p.warnings or p.images > 1 and str(p.status) in ("rejected", "failed")
                   or any(r not in (ReasonCode.NO_ACCEPTED_IMAGE, ReasonCode.UNCHANGED) for r in p.reasons)]
    if bad_persons and show:
        pt = Table(title=f"persons with problems (first {min(show, len(bad_persons))} of {len(bad_persons)})", title_justify="left")
        pt.add_column("person")
        pt.add_column("status")
        pt.add_column("images", justify="right")
        pt.add_column("reasons")
        pt.add_column("warnings")
        pt.add_column("message", overflow="fold")
        for p in bad_persons[:show]:
            pt.add_row(safe_text(p.person_id), f"[{STATUS_STYLE[str(p.status)]}]{p.status}[/]",
                       f"{p.accepted_images}/{p.images}", ", ".join(map(str, p.reasons)), ", ".join(map(str, p.warnings)),
                       safe_text(p.message))
        out.print(pt)
    pairs = summary.duplicate_pairs()
    if pairs and show:
        d = Table(title=f"look-alike persons, most similar first ({min(show, len(pairs))} of {len(pairs)}; "
                        "review POSSIBLE_DUPLICATE pairs)", title_justify="left")
        for col in ("person", "looks like", "where", "score", "P(false)", "decision"):
            d.add_column(col, justify="right" if col in ("score", "P(false)") else "left")
        for pr in pairs[:show]:
            p_false = pr.get("false_match_probability")
            d.add_row(safe_text(pr["person_id"]), safe_text(pr["other_person_id"]),
                      "gallery" if pr["where"] == "target" else "this run", f"{pr['score']:.4f}",
                      "" if p_false is None else f"{p_false:.1e}", pr["decision"])
        out.print(d)
    dc = summary.duplicate_check
    if dc and not quiet_dup_note(summary):
        out.print(f"[dim]duplicates: reject >= {dc['reject_at']}, review >= {dc['review_at']} at "
                  f"{dc['comparisons_per_face']:,} comparisons per face"
                  f"{' (score model ' + dc['score_model'] + ')' if dc.get('score_model') else ' (fixed)'}; "
                  f"target {safe_text(dc['target'])}[/]")
    if summary.ledger.get("note"):
        style = "yellow" if summary.ledger.get("checked_at_target") is False else "dim"
        out.print(f"[{style}]ledger: {safe_text(summary.ledger['note'])}[/]")
    if summary.ignored_files:
        out.print(f"[dim]{summary.ignored_files} file(s) ignored (not image files, or symbolic links); not checked[/]")
    out.print(f"[dim]{summary.duration_s:.1f} s[/]")
