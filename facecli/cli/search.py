"""`facecli search IMAGE`: who is this? 1:N search against a collection."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import err, out, print_json
from facecli.config import Settings
from facecli.errors import ExitCode
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.search import search_image
from facecli.sinks.factory import open_sink
from facecli.vision.embed import MATCH_THRESHOLD

HELP = f"""Search the face in IMAGE against a collection (locally, or on a server with --to).

Prints the best matches (person_id, person_name, score, metadata). Scores are cosine similarities
of the embeddings; --min-score defaults to the calibrated match threshold ({MATCH_THRESHOLD}).
Exit 0 when a match >= --min-score is found, 1 when none (or no usable face), 2 usage, 3 target error."""


@common.fatal_errors
def search(
    image: Path = typer.Argument(..., help="The photo to search with.", exists=False, dir_okay=False),
    collection: str = common.CollectionOpt,
    k: int = typer.Option(5, "-k", "--max-results", min=1, help="Best persons to return per face."),
    min_score: float = typer.Option(None, "--min-score", help=f"Smallest score to report (default {MATCH_THRESHOLD})."),
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
    threshold = MATCH_THRESHOLD if min_score is None else min_score
    sink = open_sink(target, db_path, **common.remote_options(settings, api_key=api_key, insecure=insecure,
                                                              timeout=timeout, retries=retries))
    try:
        sink.ensure_collection(coll, create=False)
        checker = FaceChecker.open(common.build_check_config(settings, None, None))
        result = search_image(image, checker, sink, coll, k=k, min_score=threshold, all_faces=all_faces)
    finally:
        sink.close()
    if json_out:
        print_json(result.to_json())
    elif result.reason:
        err.print(f"[yellow]{result.reason}[/]: {result.message}")
    else:
        for i, fm in enumerate(result.faces):
            t = Table(title=f"face {i + 1} at {fm.to_json()['box']}" if len(result.faces) > 1 else None)
            for col in ("person_id", "person_name", "score", "metadata"):
                t.add_column(col, justify="right" if col == "score" else "left")
            for m in fm.matches:
                t.add_row(m.person_id, m.person_name, f"{m.score:.4f}", json.dumps(m.metadata, ensure_ascii=False) if m.metadata else "")
            if fm.matches:
                out.print(t)
            else:
                out.print(f"no match >= {threshold} in collection {coll!r}")
    raise typer.Exit(int(ExitCode.OK if result.found else ExitCode.ITEMS))
