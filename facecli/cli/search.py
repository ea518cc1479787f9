"""`facecli search IMAGE`: who is this? 1:N search against a collection."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import err, out, print_json, safe_text
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

Exit 0 when a match passes the bar, 1 when none (or no usable face), 2 usage, 3 target error."""


@common.fatal_errors
def search(
    image: Path = typer.Argument(..., metavar="IMAGE", help="The photo to search with.", exists=False, dir_okay=False),
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
    device: common.Device = common.DeviceOpt,
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
        err.print(f"[yellow]{result.reason}[/]: {safe_text(result.message)}")
    else:
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
    raise typer.Exit(int(ExitCode.OK if result.found else ExitCode.ITEMS))


def _box(box: list[float]) -> str:
    """``[x, y, width, height]`` in whole pixels: ``(412, 96, 180, 224)``."""
    return "(" + ", ".join(f"{v:.0f}" for v in box) + ")"


def _odds(p: float) -> str:
    """A false-match probability in words a person reads at a glance."""
    if p >= 0.01:
        return f"{p:.0%}"
    return f"1 in {1 / p:,.0f}" if p >= 1e-6 else "< 1 in a million"
