"""`facecli search PATH...`: who is this? 1:N search of one photo or thousands against a collection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import err, out, print_json, safe_text
from facecli.cli.listing import check_format
from facecli.config import Settings
from facecli.errors import ExitCode, ReasonCode, TargetError
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.scale import SearchDecision, search_decision
from facecli.pipeline.search import DrawToFolder, SearchReport, SearchResult, search_paths
from facecli.sinks.factory import open_sink
from facecli.sources.probes import discover_probes
from facecli.vision.embed import MATCH_THRESHOLD
from facecli.vision.scores import SEARCH_BUDGET

HELP = f"""Search the faces in photos against a collection (locally, or on a server with --to).

PATH is a photo or a folder (searched recursively); give as many as you like, or --manifest FILE
(the images of a check/enroll manifest). Every photo goes through one process: the models load
once, decoding overlaps detection, and the faces are searched in batches (one request per face on
a server, --concurrency in flight).

Prints the best matches: person_id, person_name, score (cosine similarity), the probability that a
person who is *not* enrolled scores this high against anyone in this collection, and the margin to
the next person (top two within 0.01: "ambiguous"). The bar is set at the collection's size: by
default a stranger matches anyone with probability <= --max-false-match ({SEARCH_BUDGET:g}), so the
bar rises as the gallery grows (README, "The score model"); --min-score (or the config key
search_min_score) sets a fixed bar instead. The bar holds per photo: of 1,000 photos of people who
are not enrolled, about 1,000 x --max-false-match will match someone.

With several photos the table shows the best match of each face; --json prints one object per
photo (JSON Lines), --csv one row per match.

Exit 0 when every photo's face found someone, 1 when any did not (or had no usable face),
2 usage, 3 target error."""


@common.fatal_errors
def search(
    paths: list[Path] = typer.Argument(None, metavar="PATH", help="Photos, or folders of photos (searched recursively).", show_default=False),
    manifest: Path = typer.Option(None, "--manifest", "-m", help="Search the images of a check/enroll manifest (CSV or .jsonl) instead of PATH.", dir_okay=False),
    collection: str = common.CollectionOpt,
    k: int = typer.Option(5, "-k", "--max-results", min=1, help="Best persons to return per face."),
    min_score: float = typer.Option(None, "--min-score", help="Fixed bar: smallest score to report (default: set by --max-false-match at the collection's size; config key search_min_score)."),
    max_false_match: float = typer.Option(SEARCH_BUDGET, "--max-false-match", min=1e-9, max=0.5, help="Chance that a person who is not enrolled matches anyone in the collection, per photo; sets the default bar."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Search every face in the photo instead of refusing a group photo."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object per photo on stdout (one line each) instead of tables."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV on stdout: path,face,person_id,person_name,score,false_match_probability,ambiguous,reason (one row per match)."),
    report: Path = typer.Option(None, "--report", help="Also write every result to FILE: .jsonl (or .json) JSON Lines, .csv CSV; checked before any work.", dir_okay=False, writable=True),
    draw: Path = typer.Option(None, "--draw", metavar="DIR", help="Write each photo into DIR with its faces boxed, named and scored (green: matched, orange: no match).", file_okay=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no table: the exit code, --json/--csv, --report and --draw tell the outcome."),
    follow_symlinks: bool = common.FollowOpt,
    to: str = common.ToOpt,
    db: Path = common.DbOpt,
    api_key: str = common.ApiKeyOpt,
    insecure: bool = common.InsecureOpt,
    concurrency: int = common.ConcurrencyOpt,
    timeout: float = common.TimeoutOpt,
    retries: int = common.RetriesOpt,
    models_dir: Path = common.ModelsDirOpt,
    threads: int = common.ThreadsOpt,
    device: common.Device = common.DeviceOpt,
    config: Path = common.ConfigOpt,
) -> None:
    check_format(json_out, csv_out)
    settings = Settings({"models_dir": models_dir, "threads": threads, "device": device, "to": to, "db": db,
                         "collection": collection, "search_min_score": min_score}, config_path=config)
    bar = common.setting_number(settings, None, "search_min_score", float)
    fixed = common.setting_number(settings, None, "match_threshold", float)
    probes = discover_probes(paths, manifest, follow_symlinks)
    if report:
        SearchReport.check_path(report)  # before any work: a bad path is exit 2, not a traceback at the end
    writer = None
    target, db_path, coll = common.target_settings(settings)
    sink = open_sink(target, db_path, **common.remote_options(settings, api_key=api_key, insecure=insecure,
                                                              concurrency=concurrency, timeout=timeout, retries=retries))
    results: list[SearchResult] = []
    try:
        try:
            sink.ensure_collection(coll, create=False)
        except TargetError as exc:
            exc.hint = "see `facecli collections list`; `facecli enroll PATH -c NAME --create-collection` creates one"
            raise
        checker = FaceChecker.open(common.build_check_config(settings, None, None))
        decision = search_decision(sink, coll, checker, bar, max_false_match,
                                   fixed=MATCH_THRESHOLD if fixed is None else fixed)
        extra = {"min_score": round(decision.min_score, 4), "gallery": decision.gallery}
        writer = SearchReport.open(report, extra) if report else None
        csv_stdout = SearchReport(sys.stdout, True) if csv_out else None
        drawer = DrawToFolder(draw, {str(p.path): p.name for p in probes.probes}) if draw else None
        single = len(probes.probes) == 1 and not probes.problems
        for where, message in probes.problems:  # manifest rows that name no usable image
            results.append(SearchResult(where, reason=ReasonCode.INVALID_ROW, message=message))
        show_progress = not (quiet or json_out or csv_out or single)
        with _progress(len(probes.probes), show_progress) as advance:
            for r in search_paths([p.path for p in probes.probes], checker, sink, coll, k=k, all_faces=all_faces,
                                  decision=decision, draw=drawer):
                results.append(r)
                advance(r.query)
                if json_out:
                    print_json(r.to_json() | extra)
                if csv_stdout is not None:
                    csv_stdout.write(r)
                if writer is not None:
                    writer.write(r)
        if json_out:  # manifest problems: after the photos, one line each
            for r in results[: len(probes.problems)]:
                print_json(r.to_json() | extra)
    finally:
        sink.close()
        if writer is not None:
            writer.close()
    if not (quiet or json_out or csv_out):
        if single:
            _print_one(results[0], decision, coll, all_faces)
        elif results:
            _print_many(results, decision, {str(p.path): p.name for p in probes.probes})
        else:
            err.print("no photos to search")
        if drawer is not None and drawer.written:
            out.print(f"[dim]{len(drawer.written)} picture(s) written to {safe_text(draw)}[/]")
    found = all(r.found for r in results)
    raise typer.Exit(int(ExitCode.OK if found else ExitCode.ITEMS))


class _progress:
    """A bar on stderr while many photos are searched (a terminal only)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and total > 1 and err.is_terminal
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda query: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("searching"), BarColumn(bar_width=30), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=err, transient=True)
        self.bar.start()
        task = self.bar.add_task("search", total=self.total)
        return lambda query: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_one(result: SearchResult, decision: SearchDecision, coll: str, all_faces: bool) -> None:
    """One photo: a table of its matches per face (as `facecli search IMAGE` always printed)."""
    if result.reason:
        err.print(f"[yellow]{result.reason}[/]: {safe_text(result.message)}")
        return
    # --all-faces (or several faces): every face found gets a line, those without a match too
    several = all_faces or len(result.faces) > 1
    for fm in result.faces:
        where = f"face {fm.index} at {_box(fm.face.to_json()['box'])}"
        t = Table(title=where if several else None, title_justify="left")
        for col in ("person_id", "person_name", "score", "false match", "margin", "metadata"):
            t.add_column(col, justify="right" if col in ("score", "false match", "margin") else "left")
        for m in fm.matches:
            p = m.get("false_match_probability")
            margin = "" if m["margin"] is None else f"{m['margin']:.4f}" + (" ambiguous" if m["ambiguous"] else "")
            t.add_row(safe_text(m["person_id"]), safe_text(m["person_name"]), f"{m['score']:.4f}",
                      "" if p is None else _odds(p), margin,
                      safe_text(json.dumps(m["metadata"], ensure_ascii=False)) if m["metadata"] else "")
        if fm.matches:
            out.print(t)
            top = fm.matches[0]
            if top["ambiguous"]:
                out.print("[yellow]ambiguous:[/] the top two persons are within the score's noise; check both")
        elif several:
            out.print(f"{where}: [yellow]no match[/] above {decision.min_score:.4f} "
                      f"in collection {safe_text(repr(coll))}")
        else:
            out.print(f"no match in collection {safe_text(repr(coll))}: bar {decision.describe()}")
    if several:
        matched = sum(1 for fm in result.faces if fm.matches)
        out.print(f"{len(result.faces)} face(s) searched: {matched} matched, {len(result.faces) - matched} without a match")
    if result.found or several:
        out.print(f"[dim]bar {decision.describe()}[/]")


def _print_many(results: list[SearchResult], decision: SearchDecision, names: dict[str, str]) -> None:
    """Many photos (named as found under their folder): one row per face with its best match, then the counts."""
    t = Table()
    for col in ("photo", "face", "person_id", "person_name", "score", "false match", "note"):
        t.add_column(col, justify="right" if col in ("face", "score", "false match") else "left",
                     overflow="fold")
    for r in results:
        photo = safe_text(names.get(r.query, r.query))
        if r.reason:
            t.add_row(photo, "", "", "", "", "", f"[yellow]{r.reason}[/] {safe_text(r.message)}")
        for fm in r.faces:
            if not fm.matches:
                t.add_row(photo, str(fm.index), "", "", "", "", "[dim]no match[/]")
                continue
            m = fm.matches[0]
            p = m.get("false_match_probability")
            t.add_row(photo, str(fm.index), safe_text(m["person_id"]), safe_text(m["person_name"]),
                      f"{m['score']:.4f}", "" if p is None else _odds(p), "[yellow]ambiguous[/]" if m["ambiguous"] else "")
    out.print(t)
    matched = sum(1 for r in results if r.found)
    unsearched = sum(1 for r in results if r.reason)
    out.print(f"{len(results)} photo(s): {matched} matched someone, {len(results) - matched - unsearched} without a "
              f"match, {unsearched} not searched")
    out.print(f"[dim]bar {decision.describe()} (per photo)[/]")


def _box(box: list[float]) -> str:
    """``[x, y, width, height]`` in whole pixels: ``(412, 96, 180, 224)``."""
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def _odds(p: float) -> str:
    """A false-match probability in words a person reads at a glance."""
    if p >= 0.01:
        return f"{p:.0%}"
    return f"1 in {1 / p:,.0f}" if p >= 1e-6 else "< 1 in a million"
