"""`facecli search IMAGE`: who is this? 1:N search against a collection."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import err, out, print_json
from facecli.config import Settings
from facecli.errors import ExitCode, TargetError
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.scale import search_decision
from facecli.pipeline.search import search_image
from facecli.sinks.factory import open_sink
from facecli.vision.scores import SEARCH_BUDGET

HELP = f"""Search the face in IMAGE against a collection (locally, or on a server with --to).

Prints the best matches: person_id, person_name, score (cosine similarity), the probability that a
person who is *not* enrolled scores this high against anyone in this collection, and the margin to
the next person (top two within 0.01: "ambiguous"). The bar is set at the collection's size: by
default a stranger matches anyone with probability <= --max-false-match ({SEARCH_BUDGET:g}), so the
bar rises as the gallery grows (README, "The score model"); --min-score sets a fixed bar instead.

Example: facecli search visitor.jpg -c staff --json

Exit 0 when a match passes the bar, 1 when none (or no usable face), 2 usage, 3 target error."""


@common.fatal_errors
def search(
    image: Path = typer.Argument(..., help="The photo to search with.", exists=False, dir_okay=False),
    collection: str = common.CollectionOpt,
    k: int = typer.Option(5, "-k", "--max-results", min=1, help="Best persons to return per face."),
    min_score: float = typer.Option(None, "--min-score", help="Fixed bar: smallest score to report (default: set by --max-false-match at the collection's size)."),
    max_false_match: float = typer.Option(SEARCH_BUDGET, "--max-false-match", min=1e-9, max=0.5, help="Chance that a person who is not enrolled matches anyone in the collection; sets the default bar."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Search every face in the photo instead of refusing a group photo."),
    to: str = common.ToOpt,
    db: Path = common.DbOpt,
    api_key: str = common.ApiKeyOpt,
    insecure: bool = common.InsecureOpt,
    timeout: float = common.TimeoutOpt,
    retries: int = common.RetriesOpt,
    json_out: bool = common.JsonOpt,
    models_dir: Path = common.ModelsDirOpt,
    threads: int = common.ThreadsOpt,
    device: str = common.DeviceOpt,
    config: Path = common.ConfigOpt,
) -> None:
    settings = Settings({"models_dir": models_dir, "threads": threads, "device": device, "to": to, "db": db,
                         "collection": collection}, config_path=config)
    target, db_path, coll = common.target_settings(settings)
    sink = open_sink(target, db_path, **common.remote_options(settings, api_key=api_key, insecure=insecure,
                                                              timeout=timeout, retries=retries))
    try:
        try:
            sink.ensure_collection(coll, create=False)
        except TargetError as exc:
            exc.hint = "see `facecli collections list`; `facecli enroll PATH -c NAME --create-collection` creates one"
            raise
        checker = FaceChecker.open(common.build_check_config(settings, None, None))
        decision = search_decision(sink, coll, checker, min_score, max_false_match)
        result = search_image(image, checker, sink, coll, k=k, all_faces=all_faces, decision=decision)
    finally:
        sink.close()
    if json_out:
        print_json(result.to_json() | {"min_score": round(decision.min_score, 4), "gallery": decision.gallery})
    elif result.reason:
        err.print(f"[yellow]{result.reason}[/]: {result.message}")
    else:
        for i, fm in enumerate(result.faces):
            t = Table(title=f"face {i + 1} at {fm.to_json()['box']}" if len(result.faces) > 1 else None)
            for col in ("person_id", "person_name", "score", "false match", "margin", "metadata"):
                t.add_column(col, justify="right" if col in ("score", "false match", "margin") else "left")
            for m in fm.matches:
                p = m.get("false_match_probability")
                margin = "" if m["margin"] is None else f"{m['margin']:.4f}" + (" ambiguous" if m["ambiguous"] else "")
                t.add_row(escape(m["person_id"]), escape(m["person_name"]), f"{m['score']:.4f}",
                          "" if p is None else _odds(p), margin,
                          escape(json.dumps(m["metadata"], ensure_ascii=False)) if m["metadata"] else "")
            if fm.matches:
                out.print(t)
                top = fm.matches[0]
                if top["ambiguous"]:
                    out.print("[yellow]ambiguous:[/] the top two persons are within the score's noise; check both")
            else:
                out.print(f"no match in collection {escape(coll)!r}: bar {decision.describe()}")
        if result.found:
            out.print(f"[dim]bar {decision.describe()}[/]")
    raise typer.Exit(int(ExitCode.OK if result.found else ExitCode.ITEMS))


def _odds(p: float) -> str:
    """A false-match probability in words a person reads at a glance."""
    if p >= 0.01:
        return f"{p:.0%}"
    return f"1 in {1 / p:,.0f}" if p >= 1e-6 else "< 1 in a million"
