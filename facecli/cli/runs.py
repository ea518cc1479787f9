"""`facecli runs list|show`: what earlier check and enroll runs did, from the run ledger."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import out, print_json
from facecli.config import Settings
from facecli.errors import ConfigError

runs_app = typer.Typer(help="List earlier runs and show their items (from the run ledger).", no_args_is_help=True)


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else ""


def _journal(journal: Path | None, config: Path | None):
    """The ledger, opened for reading: a missing one is never created (NoJournal, exit 3)."""
    from facecli.pipeline.journal import Journal

    return Journal(Settings({"journal": journal}, config_path=config).get("journal"), create=False)


@runs_app.command("list", help="The most recent runs, newest first.")
@common.fatal_errors
def runs_list(limit: int = typer.Option(20, "--limit", min=1, help="How many runs."), json_out: bool = common.JsonOpt,
              journal: Path = common.JournalOpt, config: Path = common.ConfigOpt) -> None:
    from facecli.pipeline.journal import NoJournal, resolve_journal_path

    try:
        j = _journal(journal, config)
    except NoJournal:  # nothing recorded yet: an empty listing, and no file created
        runs, path = [], resolve_journal_path(Settings({"journal": journal}, config_path=config).get("journal"))
    else:
        path = j.path
        try:
            runs = j.runs(limit)
        finally:
            j.close()
    if json_out:
        print_json({"runs": runs})
        return
    t = Table(title=f"runs in {path}")
    for col in ("run_id", "command", "target", "collection", "started", "status", "images", "problems", "error"):
        t.add_column(col, overflow="fold")
    for r in runs:
        imgs = (r["summary"] or {}).get("images", {})
        so_far = r["progress"] or {}
        n_images = sum(imgs.values()) if r["summary"] else so_far.get("images_checked", 0)
        n_problems = imgs.get("rejected", 0) + imgs.get("failed", 0) if r["summary"] else \
            so_far.get("persons_rejected", 0) + so_far.get("persons_failed", 0)
        t.add_row(escape(r["run_id"]), r["command"], escape(r["target"] or ""), escape(r["collection"] or ""),
                  _when(r["started"]), r["status"], str(n_images), str(n_problems), escape(r["error"] or ""))
    out.print(t)


@runs_app.command("show", help="One run's summary and items (--failed: only rejected and failed ones).")
@common.fatal_errors
def runs_show(run_id: str = typer.Argument(..., help="Run id (a unique prefix is enough)."),
              failed: bool = typer.Option(False, "--failed", help="Only rejected and failed items."),
              json_out: bool = common.JsonOpt, journal: Path = common.JournalOpt, config: Path = common.ConfigOpt) -> None:
    j = _journal(journal, config)
    try:
        run = j.run(run_id)
        if run is None:
            raise ConfigError(f"no single run matches {run_id!r}", hint="see `facecli runs list`")
        items = j.run_items(run["run_id"], failed_only=failed)
    finally:
        j.close()
    if json_out:
        print_json({"run": run, "items": items})
        return
    out.print(f"[bold]{escape(run['run_id'])}[/] {run['command']} -> {escape(run['target'] or '-')} / "
              f"{escape(run['collection'] or '-')}: "
              f"{run['status']}, started {_when(run['started'])}")
    if run["error"]:
        out.print(f"[red]error:[/] {escape(run['error'])}")
    if run["progress"] and not run["summary"]:
        out.print(json.dumps({"so_far": run["progress"]}))
    if run["summary"]:
        out.print(json.dumps({k: run["summary"][k] for k in ("images", "persons", "reasons")}))
    t = Table()
    for col in ("kind", "path / person", "status", "reasons", "message"):
        t.add_column(col, overflow="fold")
    for i in items:
        t.add_row(i.get("kind", ""), i.get("path") or i.get("person_id") or "", i.get("status", ""),
                  ", ".join(i.get("reasons", [])), i.get("message", ""))
    out.print(t)
