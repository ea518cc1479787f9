"""`facecli runs list|show`: what earlier check and enroll runs did, from the run ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import STATUS_STYLE, out, print_json, safe_text, shorten_path
from facecli.cli.listing import check_format, iso_time, print_csv
from facecli.config import Settings
from facecli.errors import ConfigError

runs_app = typer.Typer(help="List earlier runs and show their items (from the run ledger).", no_args_is_help=True)


#: `runs list --csv` columns (and the table's): one row per run, counts from its summary (or its
#: progress so far, for a run that did not finish).
RUN_COLUMNS = ("run_id", "command", "target", "collection", "status", "started", "finished", "duration_s", "images",
               "problems", "error")


RUN_STATUS_STYLE = {"done": "green", "running": "cyan", "failed": "red"}


def public_run(run: dict[str, Any]) -> dict[str, Any]:
    """A ledger row as printed (--json, tables): times as ISO-8601 with a time zone."""
    return {**run, "started": iso_time(run["started"]), "finished": iso_time(run["finished"])}


def _duration(run: dict[str, Any]) -> float | None:
    if run["summary"] and run["summary"].get("duration_s") is not None:
        return run["summary"]["duration_s"]
    return round(run["finished"] - run["started"], 3) if run["finished"] and run["started"] else None


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One ledger row flattened to RUN_COLUMNS."""
    imgs = (run["summary"] or {}).get("images", {})
    so_far = run["progress"] or {}
    n_images = sum(imgs.values()) if run["summary"] else so_far.get("images_checked", 0)
    n_problems = imgs.get("rejected", 0) + imgs.get("failed", 0) if run["summary"] else \
        so_far.get("persons_rejected", 0) + so_far.get("persons_failed", 0)
    return {**{k: run[k] for k in ("run_id", "command", "target", "collection", "status", "error")},
            "started": iso_time(run["started"]), "finished": iso_time(run["finished"]),
            "duration_s": _duration(run), "images": n_images, "problems": n_problems}


def _counts(counts: dict[str, int] | None) -> str:
    """``{"accepted": 3, "rejected": 0, "failed": 1}`` -> ``3 accepted, 1 failed`` (zeros left out)."""
    return ", ".join(f"{n} {safe_text(k)}" for k, n in (counts or {}).items() if n) or "0"


def ledger_path(journal: Path | None, config: Path | None) -> Path:
    """Where the run ledger is: --journal, else FACECLI_JOURNAL / the config file, else the default."""
    from facecli.pipeline.journal import resolve_journal_path

    return resolve_journal_path(Settings({"journal": journal}, config_path=config).get("journal"))


def open_ledger(journal: Path | None, config: Path | None):
    """The ledger, opened for reading: a missing one is never created (NoJournal, exit 3)."""
    from facecli.pipeline.journal import Journal

    return Journal(ledger_path(journal, config), create=False)


@runs_app.command("list", help="The most recent runs, newest first.")
@common.fatal_errors
def runs_list(limit: int = typer.Option(20, "--limit", min=1, help="How many runs."), json_out: bool = common.JsonOpt,
              csv_out: bool = typer.Option(False, "--csv", help="Print the runs as CSV on stdout: one row per run, "
                                           "times ISO-8601."),
              journal: Path = common.JournalOpt, config: Path = common.ConfigOpt) -> None:
    from facecli.pipeline.journal import NoJournal

    check_format(json_out, csv_out)
    try:
        j = open_ledger(journal, config)
    except NoJournal:  # nothing recorded yet: an empty listing, and no file created
        runs, path = [], ledger_path(journal, config)
    else:
        path = j.path
        try:
            runs = j.runs(limit)
        finally:
            j.close()
    if json_out:
        print_json({"runs": [public_run(r) for r in runs]})
        return
    if csv_out:
        print_csv(RUN_COLUMNS, [run_row(r) for r in runs])
        return
    # Fits 80 columns: target and collection are in `runs show`, errors under the table.
    t = Table(title=f"{len(runs)} run(s) in {safe_text(path)}, newest first", title_justify="left", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    shown = ("run_id", "started", "command", "status", "images", "problems")
    for col in shown:
        t.add_column(col, no_wrap=col != "status", justify="right" if col in ("images", "problems") else "left")
    rows = [run_row(r) for r in runs]
    for row in rows:
        started = (row["started"] or "").replace("+00:00", "Z")  # the same instant, ISO-8601, 6 characters less
        status = f"[{RUN_STATUS_STYLE.get(row['status'], 'yellow')}]{safe_text(row['status'])}[/]"
        t.add_row(safe_text(row["run_id"]), started, safe_text(row["command"]), status, str(row["images"]),
                  str(row["problems"]))
    out.print(t)
    for row in rows:
        if row["error"]:
            out.print(f"[red]{safe_text(row['run_id'])}:[/] {safe_text(row['error'])}")


@runs_app.command("show", help="One run's summary and items (--failed: only rejected and failed ones).")
@common.fatal_errors
def runs_show(run_id: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
              failed: bool = typer.Option(False, "--failed", help="Only rejected and failed items."),
              html: Path = typer.Option(None, "--html", dir_okay=False, help="Write the run's HTML review page to "
                                        "FILE instead (thumbnails re-read from the photos' paths)."),
              json_out: bool = common.JsonOpt, journal: Path = common.JournalOpt, config: Path = common.ConfigOpt) -> None:
    j = open_ledger(journal, config)
    try:
        run = j.run(run_id)
        if run is None:
            raise ConfigError(f"no run matches {run_id!r}", hint="see `facecli runs list`")
        items = j.run_items(run["run_id"], failed_only=failed and html is None)
    finally:
        j.close()
    if html is not None:
        from facecli.pipeline.review import write_review_page

        page = write_review_page(html, items, run)
        if json_out:
            print_json({"html": str(page.path), "entries": page.entries, "thumbnails": page.thumbnails})
        else:
            out.print(f"review page: {safe_text(page.path)} "
                      f"({page.entries:,} to review, {page.thumbnails:,} thumbnails)")
        return
    if json_out:
        print_json({"run": public_run(run), "items": items})
        return
    show_run(run, items, failed)


def show_run(run: dict[str, Any], items: list[dict[str, Any]], failed: bool = False) -> None:
    """`runs show` on a terminal: the run as a two-column table, then one row per report line."""
    row, summary = run_row(run), run["summary"] or {}
    s = Table(title=f"run {safe_text(run['run_id'])}", title_justify="left", show_header=False)
    s.add_column("field", style="bold")
    s.add_column("value", overflow="fold")
    status = safe_text(run["status"])
    facts = [("command", safe_text(run["command"])), ("target", safe_text(run["target"] or "-")),
             ("collection", safe_text(run["collection"] or "-")),
             ("status", f"[{RUN_STATUS_STYLE.get(run['status'], 'yellow')}]{status}[/]"),
             ("started", row["started"] or ""), ("finished", row["finished"] or "-"),
             ("duration", "-" if row["duration_s"] is None else f"{row['duration_s']:.1f} s")]
    if summary:
        facts += [("images", _counts(summary.get("images"))), ("persons", _counts(summary.get("persons")))]
        if summary.get("actions"):
            facts.append(("actions", _counts(summary["actions"])))  # created / updated / unchanged
        if summary.get("reasons"):
            facts.append(("reasons", _counts(summary["reasons"])))
        if summary.get("warnings"):
            facts.append(("warnings", _counts(summary["warnings"])))
    elif run["progress"]:
        facts.append(("so far", _counts(run["progress"])))
    if run["error"]:
        facts.append(("error", f"[red]{safe_text(run['error'])}[/]"))
    for k, v in facts:
        s.add_row(k, v)
    out.print(s)
    if not items:
        out.print(f"[dim]no {'rejected or failed ' if failed else ''}report lines[/]")
        return
    t = Table(title=f"{len(items)} {'rejected and failed ' if failed else ''}report line(s)", title_justify="left")
    for col in ("kind", "path", "person", "status", "reasons", "message"):
        t.add_column(col, overflow="fold", no_wrap=col == "path")
    for i in items:
        st = str(i.get("status", ""))
        codes = ", ".join([*i.get("reasons", []), *(f"{w} (warn)" for w in i.get("warnings", []))])
        t.add_row(safe_text(i.get("kind", "")), safe_text(shorten_path(i.get("path") or "", 28)),
                  safe_text(i.get("person_id") or ""),
                  f"[{STATUS_STYLE[st]}]{safe_text(st)}[/]" if st in STATUS_STYLE else safe_text(st),
                  safe_text(codes), safe_text(i.get("message", ""), newlines=True))
    out.print(t)
