"""`facecli collections ...` and `facecli persons ...`: look after what is enrolled."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from facecli.engine.pg import mask_url

from facecli.cli import common
from facecli.cli.cache import forget_deleted
from facecli.cli.console import err, out, print_json, safe_text
from facecli.cli.listing import check_format, columns_of, print_csv, time_value
from facecli.config import Settings
from facecli.errors import ConfigError, ExitCode, TargetError
from facecli.pipeline.gallery_stats import DEFAULT_SAMPLE, gallery_stats, this_recognizer
from facecli.sinks.base import check_collection_name
from facecli.sinks.factory import open_sink
from facecli.vision.scores import SEARCH_BUDGET

collections_app = typer.Typer(help="List, create, delete and copy collections on the target.", no_args_is_help=True)
persons_app = typer.Typer(help="List, show and delete enrolled persons.", no_args_is_help=True)

LimitOpt = typer.Option(50, "--limit", min=0, help="At most this many rows (0: all).")
OffsetOpt = typer.Option(0, "--offset", min=0, help="Skip this many rows first.")


def _gallery(to, db, collection, config, writer=False, api_key=None, insecure=False):
    settings = Settings({"to": to, "db": db, "collection": collection}, config_path=config)
    target, db_path, coll = common.target_settings(settings)
    sink = open_sink(target, db_path, writer=writer,
                     **common.remote_options(settings, api_key=api_key, insecure=insecure))
    for method in ("list_collections", "list_persons"):
        if not hasattr(sink, method):
            sink.close()
            raise ConfigError(f"target {mask_url(str(target))} does not support listing")
    return sink, coll


@collections_app.command("list", help="List collections with their person and face counts.")
@common.fatal_errors
def collections_list(to: str = common.ToOpt, db: Path = common.DbOpt, limit: int = LimitOpt, offset: int = OffsetOpt,
                     json_out: bool = common.JsonOpt,
                     csv_out: bool = typer.Option(False, "--csv", help="Print the collections as CSV on stdout: "
                                                  "one row per collection, the --json fields as columns."),
                     config: Path = common.ConfigOpt, api_key: str = common.ApiKeyOpt,
                     insecure: bool = common.InsecureOpt) -> None:
    check_format(json_out, csv_out)
    sink, _ = _gallery(to, db, None, config, api_key=api_key, insecure=insecure)
    try:
        total, rows = sink.list_collections(limit or None, offset)
    finally:
        sink.close()
    found = [{**r.__dict__, "created": time_value(r.created), "modified": time_value(r.modified)} for r in rows]
    if json_out:
        print_json({"count": total, "collections": found})
        return
    if csv_out:
        print_csv(columns_of(("name", "num_persons", "num_faces", "created", "modified"), found), found)
        return
    t = Table(title=f"{total} collection(s)")
    for col in ("name", "persons", "faces", "created", "modified"):
        t.add_column(col)
    for r in found:  # every cell came from the target: escaped
        t.add_row(*(safe_text(r[k] if r[k] is not None else "") for k in ("name", "num_persons", "num_faces", "created",
                                                                           "modified")))
    out.print(t)


@collections_app.command("create", help="Create a collection (names: letters, digits, '_', '.', '-').")
@common.fatal_errors
def collections_create(name: str = typer.Argument(..., help="The new collection's name."), to: str = common.ToOpt, db: Path = common.DbOpt,
                       config: Path = common.ConfigOpt, api_key: str = common.ApiKeyOpt,
                       insecure: bool = common.InsecureOpt) -> None:
    check_collection_name(name)  # the one rule (facecli.ids), before any target is opened: exit 2
    sink, _ = _gallery(to, db, None, config, writer=True, api_key=api_key, insecure=insecure)
    try:
        try:
            sink.ensure_collection(name, False)  # already there: nothing to do, like `mkdir -p`
        except TargetError:
            sink.create_collection(name)
        else:
            out.print(f"collection {safe_text(name)} already exists: nothing to do")
            return
    finally:
        sink.close()
    out.print(f"created collection {safe_text(name)}")


@collections_app.command("delete", help="Delete a collection and every person in it.")
@common.fatal_errors
def collections_delete(name: str = typer.Argument(..., help="The collection to delete."), yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
                       to: str = common.ToOpt, db: Path = common.DbOpt, config: Path = common.ConfigOpt,
                       api_key: str = common.ApiKeyOpt, insecure: bool = common.InsecureOpt,
                       journal: Path = common.JournalOpt) -> None:
    if not yes and not typer.confirm(f"Delete collection {name!r} and all its persons?"):
        raise typer.Exit(int(ExitCode.USAGE))
    sink, _ = _gallery(to, db, None, config, writer=True, api_key=api_key, insecure=insecure)
    try:
        sink.delete_collection(name)
    finally:
        sink.close()
    forgot = forget_deleted(journal, config, getattr(sink, "target", ""), name)  # its cached face crops too
    out.print(f"deleted collection {safe_text(name)}{forgot}")


STATS_HELP = """What a collection holds, and how close its own people come to each other.

Persons; faces per person (min / median / max); the recognizer whose scores the target gives and
its fingerprint (sha256); the search bar the score model sets for the collection's size; and the
gallery's own different-person tail: for each face (all, or a --sample of them), the score of the
nearest face of another person -- what a search for that person sees as the runner-up -- as
p50 / p90 / p99 / max, the share above the search bar beside the share the score model expects,
and the closest pairs of persons (look-alikes, or one person enrolled twice). The tail needs the
embeddings: the local engine and PostgreSQL; a server gives counts only (says so)."""


@collections_app.command("stats", help=STATS_HELP)
@common.fatal_errors
def collections_stats(name: str = typer.Argument(..., help="The collection."), to: str = common.ToOpt,
                      db: Path = common.DbOpt,
                      sample: int = typer.Option(DEFAULT_SAMPLE, "--sample", min=1, help="Measure the nearest other person of at most this many faces (a random sample beyond it; all of a smaller gallery)."),
                      max_false_match: float = typer.Option(SEARCH_BUDGET, "--max-false-match", min=1e-9, max=0.5, help="The search budget whose bar is shown (as `facecli search --max-false-match`)."),
                      json_out: bool = common.JsonOpt, models_dir: Path = common.ModelsDirOpt,
                      config: Path = common.ConfigOpt, api_key: str = common.ApiKeyOpt,
                      insecure: bool = common.InsecureOpt) -> None:
    check_collection_name(name)
    sink, _ = _gallery(to, db, None, config, api_key=api_key, insecure=insecure)
    settings = Settings({"models_dir": models_dir}, config_path=config)
    try:
        sink.ensure_collection(name, create=False)
        stats = gallery_stats(sink, name, this_recognizer(settings.get("models_dir")), sample=sample,
                              budget=max_false_match)
    finally:
        sink.close()
    if json_out:
        print_json(stats.to_json())
        return
    _print_stats(stats)


def _print_stats(s) -> None:
    out.print(f"[bold]{safe_text(s.collection)}[/] on {safe_text(s.target)}: "
              f"{'?' if s.persons is None else f'{s.persons:,}'} person(s), {'?' if s.faces is None else f'{s.faces:,}'} face(s)")
    if s.faces_per_person:
        f = s.faces_per_person
        out.print(f"faces per person: min {f['min']}, median {f['median']:g}, max {f['max']} (mean {f['mean']:g})")
    m = s.model
    out.print(f"recognizer: {safe_text(m['recognizer'])} (sha256 {m['sha256'][:12]}...); the target's scores: "
              + ("this recognizer's cosines" if m["same_scores"] else "its own scale")
              + ("" if m["target_fingerprint"] in (None, "local") else f" (fingerprint {safe_text(str(m['target_fingerprint'])[:12])}...)"))
    if s.search_bar:
        b = s.search_bar
        out.print(f"search bar for {b['gallery']:,} {b['unit']}: [bold]{b['threshold']:.4f}[/] (a person who is not enrolled "
                  f"matches anyone with probability <= {b['budget']:g})")
    if s.tail:
        t = s.tail
        out.print(f"nearest other person, {t['faces_measured']:,} face(s){' (sampled)' if t['sampled'] else ''}: "
                  f"p50 {t['p50']:.4f}, p90 {t['p90']:.4f}, p99 {t['p99']:.4f}, max {t['max']:.4f}")
        if "above_bar" in t:
            out.print(f"above the search bar: {t['above_bar']:.2%} of faces (the score model expects {t['expected_above_bar']:.2%})")
    if s.closest_pairs:
        tbl = Table(title="closest pairs of persons", title_justify="left")
        for col in ("person_a", "person_b", "score", "above the search bar"):
            tbl.add_column(col)
        for p in s.closest_pairs:
            tbl.add_row(safe_text(p["person_a"]), safe_text(p["person_b"]), f"{p['score']:.4f}",
                        {True: "[yellow]yes[/]", False: "no", None: ""}[p.get("above_search_bar")])
        out.print(tbl)
    for note in s.notes:
        out.print(f"[dim]{safe_text(note)}[/]")


COPY_HELP = """Copy collections between engines: the embedded SQLite one and PostgreSQL + pgvector.

Copies persons with their metadata, faces, embeddings and stored images (no photo is re-checked). The destination collection is created when missing (into a new PostgreSQL collection the HNSW index is built once, at the end); re-running only updates what changed; persons only in the destination are kept. Without NAME, every collection of the source is copied.

Targets: local, sqlite:///PATH or postgresql://USER@HOST:PORT/DB (the password from PGPASSWORD or a pgpass file, or in the URL; never printed)."""


@collections_app.command("copy", help=COPY_HELP)
@common.fatal_errors
def collections_copy(
    name: str = typer.Argument(None, help="The collection to copy (default: every collection of the source).", show_default=False),
    from_: str = typer.Option(..., "--from", help="Source engine: local, sqlite:///PATH or postgresql://USER@HOST:PORT/DB.", show_default=False),
    to: str = typer.Option(..., "--to", help="Destination engine (the same forms as --from).", show_default=False),
    as_: str = typer.Option(None, "--as", help="Name of the copy in the destination (with NAME only; default: the same name)."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="Persons per transaction in the destination."),
    json_out: bool = common.JsonOpt,
    quiet: bool = common.QuietOpt,
) -> None:
    from facecli.engine import copy_collection
    from facecli.engine.engine import EngineError
    from facecli.sinks.factory import resolve_db_path
    from facecli.sinks.local import _target_error

    if as_ and not name:
        raise ConfigError("--as needs a collection NAME to copy")
    source_path = resolve_db_path(from_, None)
    if source_path is not None and not source_path.is_file():
        raise ConfigError(f"--from: no database at {source_path}")
    src = open_sink(from_)
    dst = None
    try:
        dst = open_sink(to, writer=True)
        engines = [getattr(sink, "engine", None) for sink in (src, dst)]
        if None in engines:
            raise ConfigError("collections copy works between engines: local, sqlite:///PATH or postgresql://...",
                              hint="copy into a SQLite file or a PostgreSQL database and serve that, or enroll the photos")
        if src.target == dst.target and (as_ or name) == name:
            raise ConfigError("source and destination are the same collection")
        results = []
        try:
            names = [name] if name else [c.name for c in engines[0].list_collections()[1]]
            for coll in names:
                def progress(r, coll=coll):
                    if not (quiet or json_out) and err.is_terminal:
                        err.print(f"{safe_text(coll)}: {r.persons} persons, {r.faces} faces ...", end="\r")
                r = copy_collection(engines[0], engines[1], coll, to_collection=as_ or coll,
                                    batch_size=batch_size, progress=progress)
                results.append(r)
                if not (quiet or json_out):
                    out.print(f"copied {safe_text(coll)} -> {safe_text(r.destination)}: {r.persons} person(s) ({r.created} created, "
                              f"{r.updated} updated, {r.unchanged} unchanged), {r.faces} face(s) in {r.seconds:.1f} s")
        except EngineError as exc:
            raise _target_error(exc) from None
    finally:
        src.close()
        if dst is not None:
            dst.close()
    if json_out:
        print_json({"from": src.target, "to": dst.target, "collections": [r.to_json() for r in results]})


@persons_app.command("list", help="List persons of a collection (paginated with --limit/--offset).")
@common.fatal_errors
def persons_list(collection: str = common.CollectionOpt, to: str = common.ToOpt, db: Path = common.DbOpt,
                 limit: int = LimitOpt, offset: int = OffsetOpt, json_out: bool = common.JsonOpt,
                 csv_out: bool = typer.Option(False, "--csv", help="Print the persons as CSV on stdout: one row per "
                                              "person, the --json fields as columns (metadata as compact JSON)."),
                 config: Path = common.ConfigOpt, api_key: str = common.ApiKeyOpt,
                 insecure: bool = common.InsecureOpt) -> None:
    check_format(json_out, csv_out)
    sink, coll = _gallery(to, db, collection, config, api_key=api_key, insecure=insecure)
    try:
        total, rows = sink.list_persons(coll, limit or None, offset)
    finally:
        sink.close()
    found = [r.to_json() | {"created": time_value(r.created), "modified": time_value(r.modified)} for r in rows]
    if json_out:
        print_json({"count": total, "persons": found})
        return
    if csv_out:
        print_csv(columns_of(("person_id", "person_name", "metadata", "faces", "created", "modified"), found), found)
        return
    t = Table(title=f"{safe_text(coll)}: {total} person(s), showing {offset + 1 if rows else 0}-{offset + len(rows)}")
    for col in ("person_id", "person_name", "faces", "metadata", "modified"):
        t.add_column(col)
    for r in rows:  # every cell came from the target: escaped
        meta = json.dumps(r.metadata, ensure_ascii=False) if r.metadata else ""
        t.add_row(*(safe_text(v) for v in (r.person_id, r.person_name, r.faces, meta, time_value(r.modified) or "")))
    out.print(t)


@persons_app.command("get", help="Show one person (exit 1 when not found).")
@common.fatal_errors
def persons_get(person_id: str = typer.Argument(..., help="The person's id."), collection: str = common.CollectionOpt, to: str = common.ToOpt,
                db: Path = common.DbOpt, json_out: bool = common.JsonOpt, config: Path = common.ConfigOpt,
                api_key: str = common.ApiKeyOpt, insecure: bool = common.InsecureOpt) -> None:
    sink, coll = _gallery(to, db, collection, config, api_key=api_key, insecure=insecure)
    try:
        row = sink.get_person(coll, person_id)
    finally:
        sink.close()
    if row is None:
        if json_out:
            print_json({"person_id": person_id, "found": False})
        else:
            out.print(f"no person {safe_text(repr(person_id))} in collection {safe_text(repr(coll))}")
        raise typer.Exit(int(ExitCode.ITEMS))
    if json_out:
        print_json(row.to_json())
    else:
        for k, v in row.to_json().items():
            out.print(f"[bold]{safe_text(k)}[/]: {safe_text(json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v)}")


@persons_app.command("delete", help="Delete persons by id (exit 1 if one was not found).")
@common.fatal_errors
def persons_delete(person_ids: list[str] = typer.Argument(..., metavar="PERSON_ID", help="One or more person ids."), collection: str = common.CollectionOpt,
                   to: str = common.ToOpt, db: Path = common.DbOpt, config: Path = common.ConfigOpt,
                   api_key: str = common.ApiKeyOpt, insecure: bool = common.InsecureOpt,
                   journal: Path = common.JournalOpt) -> None:
    sink, coll = _gallery(to, db, collection, config, writer=True, api_key=api_key, insecure=insecure)
    try:
        missing = [pid for pid in person_ids if not sink.delete_person(coll, pid)]
    finally:
        sink.close()
    forgot = forget_deleted(journal, config, getattr(sink, "target", ""), coll, person_ids)  # cached face crops too
    out.print(f"deleted {len(person_ids) - len(missing)} person(s)"
              + (f"; not found: {safe_text(', '.join(missing))}" if missing else "") + forgot)
    raise typer.Exit(int(ExitCode.ITEMS if missing else ExitCode.OK))
