"""`facecli cache info|clear`: what facecli keeps on this machine (biometric data included), and removing it.

The run ledger caches check results: an embedding per image and, when the target takes images or
stores thumbnails, the JPEG face crop. `--no-cache` (check, enroll) keeps none of it; `persons
delete` / `collections delete` drop the deleted persons' cached checks (:func:`forget_deleted`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.filesize import decimal
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import err, out, print_json, safe_text
from facecli.cli.listing import iso_time
from facecli.cli.runs import ledger_path, open_ledger
from facecli.config import Settings
from facecli.errors import ConfigError, ExitCode
from facecli.vision.models import user_models_dir
from facecli.vision.runtime import optimized_cache_dir

cache_app = typer.Typer(
    help="What facecli keeps on this machine (cached face crops and embeddings, runs, optimised models), "
         "and removing it.",
    no_args_is_help=True,
)

NoCacheOpt = typer.Option(
    False, "--no-cache",
    help="Keep no check results, embeddings or face crops in the run ledger, and read none (only the hashes "
         "and run lines resume needs are written; images are checked again on a re-run). Config: no_cache = true.")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def apply_no_cache(ledger: Any, settings: Settings, flag: bool) -> None:
    """`--no-cache` (or config ``no_cache = true``): the run neither reads nor stores cached checks."""
    value = flag or settings.get("no_cache", False)
    if isinstance(value, str):
        value = value.strip().lower() in ("1", "true", "yes", "on")
    if ledger is not None and value:
        ledger.cache_checks = False


def parse_age(value: str | None) -> float | None:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` -> seconds (None: no age limit)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value.lower())
    if not m:
        raise ConfigError(f"--older-than {value!r}: give a number and a unit, e.g. 30d, 12h, 2w, 90m")
    return float(m.group(1)) * _UNITS[m.group(2)]


_TIME_KEYS = ("oldest", "newest", "oldest_used", "newest_used")


def _iso_times(stats: Any) -> Any:
    """Epoch seconds in the ledger's statistics -> ISO-8601 (UTC), as every command prints times."""
    if isinstance(stats, dict):
        return {k: iso_time(v) if k in _TIME_KEYS and isinstance(v, int | float) else _iso_times(v)
                for k, v in stats.items()}
    return stats


def _minute(ts: str | None) -> str:
    return ts[:16].replace("T", " ") if ts else ""


def _files(folder: Path, before: float | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    return [f for f in folder.iterdir() if f.is_file() and (before is None or f.stat().st_mtime < before)]


def _dir_info(folder: Path) -> dict[str, Any]:
    files = _files(folder)
    return {"path": str(folder), "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def forget_deleted(journal: Path | None, config: Path | None, target: str, collection: str,
                   person_ids: list[str] | None = None) -> str:
    """After `persons delete` (``person_ids``) or `collections delete` (None): drop the deleted persons'
    cached check results (embeddings, face crops) from the run ledger (hashes stay). Returns a
    clause for the command's output line; a missing ledger is not created."""
    from facecli.pipeline.journal import NoJournal

    try:
        j = open_ledger(journal, config)
    except NoJournal:
        return "; no run ledger, so no cached face crops"
    try:
        gone = j.forget_persons(target, collection, person_ids)
    finally:
        j.close()
    return (f"; removed {gone['checks']} cached check result(s) with {gone['crops']} face crop(s) "
            f"({decimal(gone['crop_bytes'] + gone['embedding_bytes'])}) from the run ledger")


INFO_HELP = """Where facecli keeps what it cached on this machine, how much, and how old.

The run ledger: cached check results (an embedding per image and, for targets that take images or store thumbnails, the JPEG face crop), runs and their report lines, and the hashes resume needs. The model cache: onnxruntime-optimised copies of the models (no biometric data) and downloaded models.

Reads only: a missing ledger is reported, never created. See README "What facecli keeps (biometric data)"."""


@cache_app.command("info", help=INFO_HELP)
@common.fatal_errors
def cache_info(json_out: bool = common.JsonOpt, journal: Path = common.JournalOpt,
               config: Path = common.ConfigOpt) -> None:
    from facecli.pipeline.journal import NoJournal

    try:
        j = open_ledger(journal, config)
    except NoJournal:
        ledger: dict[str, Any] = {"path": str(ledger_path(journal, config)), "exists": False}
    else:
        try:
            ledger = {**_iso_times(j.cache_stats()), "exists": True}
        finally:
            j.close()
    models = {"optimised": _dir_info(optimized_cache_dir()), "downloaded": _dir_info(user_models_dir())}
    if json_out:
        print_json({"ledger": ledger, "models": models})
        return
    if not ledger["exists"]:
        out.print(f"run ledger: none at {safe_text(ledger['path'])} (nothing cached)")
    else:
        c, r, k = ledger["checks"], ledger["runs"], ledger["kept_for_resume"]
        out.print(f"run ledger: {safe_text(ledger['path'])} ({decimal(ledger['bytes'])} on disk)")
        t = Table(box=box.SIMPLE_HEAD)
        t.add_column("kept", no_wrap=True)
        for col in ("count", "size", "oldest (UTC)", "newest (UTC)"):
            t.add_column(col, overflow="fold")
        t.add_row("check results", str(c["checks"]), decimal(c["result_bytes"]), _minute(c["oldest_used"]),
                  _minute(c["newest_used"]))
        t.add_row("  embeddings", str(c["embeddings"]), decimal(c["embedding_bytes"]))
        t.add_row("  face crops (JPEG)", str(c["crops"]), decimal(c["crop_bytes"]))
        t.add_row("runs", str(r["runs"]), "", _minute(r["oldest"]), _minute(r["newest"]))
        t.add_row("  report lines", str(r["items"]), decimal(r["item_bytes"]))
        out.print(t)
        if c["unknown_age"]:
            out.print(f"{c['unknown_age']} check result(s) cached before use times were recorded (count as old)")
        out.print(f"kept for resume (hashes, no images): {k['person_states']} person state(s), "
                  f"{k['file_hashes']} file hash(es), {k['person_image_hashes']} person image hash(es)")
    for name, d in (("optimised models (no biometric data)", models["optimised"]),
                    ("downloaded models", models["downloaded"])):
        out.print(f"{name}: {safe_text(d['path'])}: {d['files']} file(s), {decimal(d['bytes'])}")
    out.print("remove: facecli cache clear [--older-than 30d] [--checks|--runs|--models|--all]; "
              "keep none: --no-cache on check and enroll")


CLEAR_HELP = """Delete cached data: check results (embeddings and JPEG face crops; the default), runs, optimised models.

--checks: cached check results. --runs: finished runs and their report lines (`runs list|show`); runs still going are kept. --models: the onnxruntime-optimised model copies (rebuilt at the next start). --all: the three. Downloaded models are not touched (`facecli models`).

--older-than AGE (30d, 12h, 2w): only what was last used (checks), started (runs) or written (models) longer ago; checks cached before facecli recorded use times count as old.

Kept: what exact resume needs (per-person states and content hashes, file and image hashes), so a re-run still skips unchanged persons; other persons' images are checked again. The ledger is then compacted (VACUUM, WAL emptied, freed pages overwritten), so the bytes are gone from the file on disk, not only unlinked."""


@cache_app.command("clear", help=CLEAR_HELP)
@common.fatal_errors
def cache_clear(
    older_than: str = typer.Option(None, "--older-than", metavar="AGE",
                                   help="Only what is older than AGE: 30d, 12h, 2w, 90m (default: everything)."),
    checks: bool = typer.Option(False, "--checks", help="Cached check results: embeddings and face crops (the default)."),
    runs: bool = typer.Option(False, "--runs", help="Finished runs and their report lines."),
    models: bool = typer.Option(False, "--models", help="The optimised model copies in the user cache dir."),
    all_: bool = typer.Option(False, "--all", help="Checks, runs and optimised models."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    json_out: bool = common.JsonOpt,
    journal: Path = common.JournalOpt,
    config: Path = common.ConfigOpt,
) -> None:
    from facecli.pipeline.journal import NoJournal

    age = parse_age(older_than)
    cutoff = time.time() - age if age is not None else None
    checks = checks or all_ or not (runs or models)
    runs, models = runs or all_, models or all_
    path, ort = ledger_path(journal, config), optimized_cache_dir()
    older = f" older than {older_than}" if older_than else ""
    what = " and ".join(w for w, on in (("cached check results (embeddings, face crops)", checks),
                                        ("finished runs", runs)) if on)
    parts = ([f"{what}{older} from the run ledger {path}"] if what else []) + \
        ([f"the optimised models{older} in {ort}"] if models else [])
    if not yes and not _confirm(f"Remove {'; and '.join(parts)}?"):
        err.print("nothing removed (-y: do not ask)")
        raise typer.Exit(int(ExitCode.USAGE))
    report: dict[str, Any] = {"ledger": str(path), "removed": {}}
    try:
        j = open_ledger(journal, config) if (checks or runs) else None
    except NoJournal:
        j = None
    if j is not None:
        try:
            if checks:
                report["removed"]["checks"] = j.clear_checks(cutoff)
            if runs:
                report["removed"]["runs"] = j.clear_runs(cutoff)
            report["compacted"] = j.compact()
            report["kept"] = j.cache_stats()["kept_for_resume"]
        finally:
            j.close()
    if models:
        gone = _files(ort, cutoff)
        size = sum(f.stat().st_size for f in gone)
        for f in gone:
            f.unlink(missing_ok=True)
        report["removed"]["models"] = {"path": str(ort), "files": len(gone), "bytes": size}
    if json_out:
        print_json(report)
        return
    _print_cleared(report, (checks or runs) and j is None)


def _confirm(question: str) -> bool:
    try:
        return typer.confirm(question)
    except typer.Abort:  # no terminal to answer (cron, a pipe): that is a no
        return False


def _print_cleared(report: dict[str, Any], no_ledger: bool) -> None:
    removed = report["removed"]
    where = safe_text(report["ledger"])
    if no_ledger:
        out.print(f"no run ledger at {where}: no check results or runs cached")
    if "checks" in removed:
        c = removed["checks"]
        out.print(f"removed {c['checks']} cached check result(s) from {where}: {c['embeddings']} embedding(s) "
                  f"({decimal(c['embedding_bytes'])}), {c['crops']} face crop(s) ({decimal(c['crop_bytes'])})")
    if "runs" in removed:
        r = removed["runs"]
        out.print(f"removed {r['runs']} run(s) and {r['items']} report line(s) ({decimal(r['item_bytes'])})")
    if "models" in removed:
        m = removed["models"]
        out.print(f"removed {m['files']} optimised model file(s) ({decimal(m['bytes'])}) from {safe_text(m['path'])}")
    if "kept" in report:
        k = report["kept"]
        out.print(f"kept for resume: {k['person_states']} person state(s) with content hashes, {k['file_hashes']} "
                  f"file hash(es), {k['person_image_hashes']} person image hash(es)"
                  + ("; runs still going" if "runs" in removed else ""))
    if "compacted" in report:
        c = report["compacted"]
        out.print(f"ledger compacted: {decimal(c['bytes_before'])} -> {decimal(c['bytes_after'])} on disk")
        if c["busy"]:
            err.print("[yellow]the ledger is in use by a running check or enroll: freed pages are overwritten, but the "
                      "file could not be fully compacted; run `facecli cache clear` again when it has finished[/]")
