"""`facecli collections ...` and `facecli persons ...`: look after what is enrolled."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import out, print_json
from facecli.config import Settings
from facecli.errors import ConfigError, ExitCode
from facecli.sinks.factory import open_sink

collections_app = typer.Typer(help="List, create and delete collections on the target.", no_args_is_help=True)
persons_app = typer.Typer(help="List, show and delete enrolled persons.", no_args_is_help=True)

LimitOpt = typer.Option(50, "--limit", min=0, help="At most this many rows (0: all).")
OffsetOpt = typer.Option(0, "--offset", min=0, help="Skip this many rows first.")


def _gallery(to, db, collection, config, writer=False):
    settings = Settings({"to": to, "db": db, "collection": collection}, config_path=config)
    target, db_path, coll = common.target_settings(settings)
    sink = open_sink(target, db_path, writer=writer)
    for method in ("list_collections", "list_persons"):
        if not hasattr(sink, method):
            sink.close()
            raise ConfigError(f"target {target} does not support listing")
    return sink, coll


@collections_app.command("list", help="List collections with their person and face counts.")
@common.fatal_errors
def collections_list(to: str = common.ToOpt, db: Path = common.DbOpt, limit: int = LimitOpt, offset: int = OffsetOpt,
                     json_out: bool = common.JsonOpt, config: Path = common.ConfigOpt) -> None:
    sink, _ = _gallery(to, db, None, config)
    try:
        total, rows = sink.list_collections(limit or None, offset)
    finally:
        sink.close()
    if json_out:
        print_json({"count": total, "collections": [r.__dict__ for r in rows]})
        return
    t = Table(title=f"{total} collection(s)")
    for col in ("name", "persons", "faces", "created", "modified"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.name, str(r.num_persons), str(r.num_faces), r.created or "", r.modified or "")
    out.print(t)


@collections_app.command("create", help="Create a collection (names: letters, digits, '_', '.', '-').")
@common.fatal_errors
def collections_create(name: str = typer.Argument(...), to: str = common.ToOpt, db: Path = common.DbOpt,
                       config: Path = common.ConfigOpt) -> None:
    sink, _ = _gallery(to, db, None, config, writer=True)
    try:
        sink.create_collection(name)
    finally:
        sink.close()
    out.print(f"created collection {name}")


@collections_app.command("delete", help="Delete a collection and every person in it.")
@common.fatal_errors
def collections_delete(name: str = typer.Argument(...), yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
                       to: str = common.ToOpt, db: Path = common.DbOpt, config: Path = common.ConfigOpt) -> None:
    if not yes and not typer.confirm(f"Delete collection {name} and all its persons?"):
        raise typer.Exit(int(ExitCode.USAGE))
    sink, _ = _gallery(to, db, None, config, writer=True)
    try:
        sink.delete_collection(name)
    finally:
        sink.close()
    out.print(f"deleted collection {name}")


@persons_app.command("list", help="List persons of a collection (paginated with --limit/--offset).")
@common.fatal_errors
def persons_list(collection: str = common.CollectionOpt, to: str = common.ToOpt, db: Path = common.DbOpt,
                 limit: int = LimitOpt, offset: int = OffsetOpt, json_out: bool = common.JsonOpt,
                 config: Path = common.ConfigOpt) -> None:
    sink, coll = _gallery(to, db, collection, config)
    try:
        total, rows = sink.list_persons(coll, limit or None, offset)
    finally:
        sink.close()
    if json_out:
        print_json({"count": total, "persons": [r.to_json() for r in rows]})
        return
    t = Table(title=f"{coll}: {total} person(s), showing {offset + 1 if rows else 0}-{offset + len(rows)}")
    for col in ("person_id", "person_name", "faces", "metadata", "modified"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.person_id, r.person_name, str(r.faces), json.dumps(r.metadata, ensure_ascii=False) if r.metadata else "", r.modified or "")
    out.print(t)


@persons_app.command("get", help="Show one person (exit 1 when not found).")
@common.fatal_errors
def persons_get(person_id: str = typer.Argument(...), collection: str = common.CollectionOpt, to: str = common.ToOpt,
                db: Path = common.DbOpt, json_out: bool = common.JsonOpt, config: Path = common.ConfigOpt) -> None:
    sink, coll = _gallery(to, db, collection, config)
    try:
        row = sink.get_person(coll, person_id)
    finally:
        sink.close()
    if row is None:
        if json_out:
            print_json({"person_id": person_id, "found": False})
        else:
            out.print(f"no person {person_id!r} in collection {coll!r}")
        raise typer.Exit(int(ExitCode.ITEMS))
    if json_out:
        print_json(row.to_json())
    else:
        for k, v in row.to_json().items():
            out.print(f"[bold]{k}[/]: {json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v}")


@persons_app.command("delete", help="Delete persons by id (exit 1 if one was not found).")
@common.fatal_errors
def persons_delete(person_ids: list[str] = typer.Argument(...), collection: str = common.CollectionOpt,
                   to: str = common.ToOpt, db: Path = common.DbOpt, config: Path = common.ConfigOpt) -> None:
    sink, coll = _gallery(to, db, collection, config, writer=True)
    try:
        missing = [pid for pid in person_ids if not sink.delete_person(coll, pid)]
    finally:
        sink.close()
    out.print(f"deleted {len(person_ids) - len(missing)} person(s)" + (f"; not found: {', '.join(missing)}" if missing else ""))
    raise typer.Exit(int(ExitCode.ITEMS if missing else ExitCode.OK))
