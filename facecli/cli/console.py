"""Terminal output: progress bars (only on a TTY), summary tables and JSON.

Diagnostics and progress go to stderr; results (tables, --json objects) go to stdout, so
`facecli check --json ... | jq` always sees exactly one JSON object.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from facecli.errors import REASON_HELP, FacecliError, ReasonCode
from facecli.pipeline.report import ItemResult, PersonResult, RunSummary

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

STATUS_STYLE = {"accepted": "green", "enrolled": "green", "rejected": "yellow", "failed": "red", "skipped": "dim"}


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_error(exc: FacecliError) -> None:
    """Messages are plain text (they may hold `facecli[extra]`, paths, ids): escaped, not markup."""
    err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
    if exc.hint:
        err.print(f"[dim]hint:[/] {escape(exc.hint)}", markup=True, highlight=False)


class RichProgress:
    """Pipeline progress events -> rich bars on stderr. Disabled when stderr is not a terminal."""

    def __init__(self, enabled: bool, label: str = "checking") -> None:
        self.enabled = enabled and err.is_terminal
        self.label = label
        self._progress: Progress | None = None
        self._images = self._persons = None

    def start(self, images: int, persons: int) -> None:
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._progress.start()
        self._images = self._progress.add_task(f"{self.label} images", total=images, detail="")
        self._persons = self._progress.add_task("persons", total=persons, detail="")

    def image_done(self, item: ItemResult) -> None:
        if self._progress is not None:
            self._progress.update(self._images, advance=1, detail=item.path[-40:])

    def person_done(self, person: PersonResult) -> None:
        if self._progress is not None:
            self._progress.update(self._persons, advance=1, detail="")

    def start_sending(self, persons: int) -> None:
        if self._progress is not None:
            self._sending = self._progress.add_task("enrolling persons", total=persons, detail="")

    def sent(self, persons: int) -> None:
        if self._progress is not None:
            self._progress.update(self._sending, advance=persons)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def quiet_dup_note(summary: RunSummary) -> bool:
    """Nothing was compared (no accepted image): the duplicate line would only be noise."""
    return not (summary.images.get("accepted", 0) or summary.images.get("enrolled", 0))


def summary_tables(summary: RunSummary, items: list[ItemResult], show: int,
                   persons: list[PersonResult] | None = None) -> None:
    """Counts per status and per reason, then the first ``show`` problem items; one line when
    the run had nothing to do."""
    if summary.nothing_to_do:
        out.print(f"{summary.command}: {escape(summary.nothing_to_do)}")
        return
    t = Table(title=f"{summary.command}: {summary.run_id}", title_justify="left")
    t.add_column("status")
    t.add_column("images", justify="right")
    t.add_column("persons", justify="right")
    for status in ("accepted", "enrolled", "skipped", "rejected", "failed"):
        n_img, n_per = summary.images.get(status, 0), summary.persons.get(status, 0)
        if n_img or n_per:
            style = STATUS_STYLE[status]
            t.add_row(f"[{style}]{status}[/]", str(n_img), str(n_per))
    out.print(t)
    if summary.reasons:
        r = Table(title="reasons", title_justify="left")
        r.add_column("code")
        r.add_column("images", justify="right")
        r.add_column("meaning")
        for code, n in summary.reasons.most_common():
            r.add_row(code, str(n), REASON_HELP.get(ReasonCode(code), "") if code in ReasonCode.__members__ else "")
        out.print(r)
    bad = [i for i in items if str(i.status) in ("rejected", "failed", "skipped") or i.warnings]
    if bad and show:
        b = Table(title=f"problems (first {min(show, len(bad))} of {len(bad)}; full list with --report)", title_justify="left")
        b.add_column("path", overflow="fold")
        b.add_column("person")
        b.add_column("status")
        b.add_column("reasons")
        b.add_column("message", overflow="fold")
        for i in bad[:show]:
            codes = ", ".join([*map(str, i.reasons), *(f"{w} (warn)" for w in i.warnings)])
            b.add_row(i.path, i.person_id or "", f"[{STATUS_STYLE[str(i.status)]}]{i.status}[/]", codes, i.message)
        out.print(b)
    # Persons whose verdict says more than their single image already did.
    bad_persons = [p for p in persons or [] if p.warnings or p.images > 1 and str(p.status) in ("rejected", "failed")
                   or any(r != ReasonCode.NO_ACCEPTED_IMAGE for r in p.reasons)]
    if bad_persons and show:
        pt = Table(title=f"persons with problems (first {min(show, len(bad_persons))} of {len(bad_persons)})", title_justify="left")
        pt.add_column("person")
        pt.add_column("status")
        pt.add_column("images", justify="right")
        pt.add_column("reasons")
        pt.add_column("warnings")
        pt.add_column("message", overflow="fold")
        for p in bad_persons[:show]:
            pt.add_row(p.person_id, f"[{STATUS_STYLE[str(p.status)]}]{p.status}[/]", f"{p.accepted_images}/{p.images}",
                       ", ".join(map(str, p.reasons)), ", ".join(map(str, p.warnings)), p.message)
        out.print(pt)
    pairs = summary.duplicate_pairs()
    if pairs and show:
        d = Table(title=f"look-alike persons, most similar first ({min(show, len(pairs))} of {len(pairs)}; "
                        "review POSSIBLE_DUPLICATE pairs)", title_justify="left")
        for col in ("person", "looks like", "where", "score", "P(false)", "decision"):
            d.add_column(col, justify="right" if col in ("score", "P(false)") else "left")
        for pr in pairs[:show]:
            p_false = pr.get("false_match_probability")
            d.add_row(escape(pr["person_id"]), escape(pr["other_person_id"]),
                      "gallery" if pr["where"] == "target" else "this run", f"{pr['score']:.4f}",
                      "" if p_false is None else f"{p_false:.1e}", pr["decision"])
        out.print(d)
    dc = summary.duplicate_check
    if dc and not quiet_dup_note(summary):
        out.print(f"[dim]duplicates: reject >= {dc['reject_at']}, review >= {dc['review_at']} at "
                  f"{dc['comparisons_per_face']:,} comparisons per face"
                  f"{' (score model ' + dc['score_model'] + ')' if dc.get('score_model') else ' (fixed)'}; "
                  f"target {escape(dc['target'])}[/]")
    if summary.ledger.get("note"):
        style = "yellow" if summary.ledger.get("checked_at_target") is False else "dim"
        out.print(f"[{style}]ledger: {escape(summary.ledger['note'])}[/]")
    if summary.ignored_files:
        out.print(f"[dim]{summary.ignored_files} file(s) ignored (not image files, or symbolic links); not checked[/]")
    out.print(f"[dim]{summary.duration_s:.1f} s[/]")
