"""`facecli models list|fetch|import|verify`: obtain and check the ONNX models on a new machine."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import err, out, print_json, safe_text
from facecli.cli.listing import check_format, print_csv
from facecli.config import Settings
from facecli.errors import ConfigError, ExitCode, FacecliError
from facecli.vision import models as registry

models_app = typer.Typer(
    help="List, fetch, import and verify the ONNX model files (YuNet detector, dlib ResNet recognizer).",
    no_args_is_help=True,
)

STATUS_STYLE = {"present": "green", "missing": "yellow", "corrupt": "red"}
#: `models list --csv` columns: the keys of ``ModelEntry.to_json()``.
MODEL_COLUMNS = ("name", "role", "file", "sha256", "size", "license", "status", "path")

DestOpt = typer.Option(None, "--dest", help="Folder to put the files in (default: the user cache dir, "
                       "~/.cache/facecli/models on Linux).", file_okay=False)
MirrorOpt = typer.Option(None, "--mirror", metavar="URL", help="Download from URL/<file name> instead of the "
                         "upstream sources (an internal mirror of the same files; hashes are still checked).")


def _error(exc: FacecliError) -> None:
    """Like console.print_error, but unwrapped (paths and hashes stay on one line); escaped (safe_text)."""
    err.print(f"[bold red]error:[/] {safe_text(exc.message, newlines=True)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {safe_text(exc.hint, newlines=True)}", highlight=False, soft_wrap=True)


def _models_dir(models_dir: Path | None, config: Path | None) -> str | None:
    return Settings({"models_dir": models_dir}, config_path=config).existing_dir("models_dir", common.MODELS_DIR_HINT)


def _notes(mf: registry.ModelFile) -> str:
    notes = []
    if mf.build is not None:
        notes.append(f"fetch builds it: needs the {mf.build.extra} extra")
    elif mf.url is None:
        notes.append("import only")
    if mf.input_kind == "dynamic":
        notes.append("dynamic input, preferred")
    return "; ".join(notes)


@models_app.command("list", help="List every model file facecli knows: role, sha256, size, license, and whether "
                    "it is present (verified), missing or corrupt in the search dirs (--models-dir, "
                    "FACECLI_MODELS_DIR, the user cache).")
@common.fatal_errors
def list_cmd(models_dir: Path = common.ModelsDirOpt, json_out: bool = common.JsonOpt,
             csv_out: bool = typer.Option(False, "--csv", help="Print the model files as CSV on stdout: one row per "
                                          "file, the --json fields as columns."),
             config: Path = common.ConfigOpt) -> None:
    check_format(json_out, csv_out)
    md = _models_dir(models_dir, config)
    entries = registry.list_models(md)
    if json_out:
        print_json({"models": [e.to_json() for e in entries]})
        return
    if csv_out:
        print_csv(MODEL_COLUMNS, [e.to_json() for e in entries])
        return
    # One block per model, one line per file: fits an 80-column terminal, unlike a 9-column table.
    last = None
    for e in entries:
        spec = e.spec
        if spec.name != last:
            last = spec.name
            tags = ", ".join(t for t in ("default" if spec.name in registry.DEFAULT_MODELS else "",
                                         "" if spec.validated else "not validated in CI") if t)
            out.print(f"[bold]{safe_text(spec.name)}[/]  {spec.role}  {safe_text(spec.license)}"
                      + (f"  [dim]({tags})[/]" if tags else ""))
        style = STATUS_STYLE[e.status]
        notes = _notes(e.file)
        out.print(f"  [{style}]{e.status:<7}[/] {safe_text(e.file.file)}  {e.file.size:,} bytes  "
                  f"sha256 {e.file.sha256}" + (f"  [dim]({safe_text(notes)})[/]" if notes else ""))
        if e.path is not None:
            out.print(f"          {safe_text(str(e.path))}")
    dirs = ", ".join(str(d) for d in registry.unique_dirs(registry.search_dirs(md)))
    out.print(f"[dim]searched, in order: {safe_text(dirs)}[/]")


class _Bars:
    """Download bars on stderr (only on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Progress | None = None
        self.tasks: dict[str, int] = {}
        if enabled and err.is_terminal:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=err)
            self.progress.start()

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if self.progress is None:
            return
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)

    def status(self, text: str) -> None:
        console = self.progress.console if self.progress else err
        console.print(f"[dim]{safe_text(text, newlines=True)}[/]", soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@models_app.command("fetch", help="Download the models (default: yunet and dlib-resnet) into the user cache dir, "
                    "checking each file's sha256; an interrupted download resumes. dlib-resnet is built locally "
                    "from face-api's TF.js weights (npm @vladmandic/face-api@1.7.15, MIT) and needs "
                    "pip install 'facecli\\[build-models]'. Nothing is downloaded when a verified file is there.")
@common.fatal_errors
def fetch_cmd(names: list[str] = typer.Argument(None, metavar="NAME", help="Models to fetch: "
                                                + ", ".join(registry.REGISTRY) + " (default: "
                                                + ", ".join(registry.DEFAULT_MODELS) + ")."),
              dest: Path = DestOpt, mirror: str = MirrorOpt,
              force: bool = typer.Option(False, "--force", help="Fetch again even when a verified file is there."),
              quiet: bool = common.QuietOpt) -> None:
    wanted = list(dict.fromkeys(names or registry.DEFAULT_MODELS))
    unknown = [n for n in wanted if n not in registry.REGISTRY]
    if unknown:
        raise ConfigError(f"unknown model(s): {', '.join(unknown)}", hint=f"known models: {', '.join(registry.REGISTRY)}")
    bars = _Bars(not quiet)
    failed = 0
    try:
        for name in wanted:
            try:
                r = registry.fetch_model(name, dest, mirror=mirror, force=force, on_progress=bars,
                                         on_status=None if quiet else bars.status)
            except FacecliError as exc:
                failed += 1
                _error(exc)
                continue
            if not quiet:
                verb = {"present": "already present", "downloaded": "downloaded", "built": "built"}[r.action]
                out.print(f"{name}: {verb} {safe_text(str(r.path))} [green](sha256 verified)[/]")
    finally:
        bars.close()
    if failed:
        raise typer.Exit(int(ExitCode.ITEMS))


@models_app.command("import", help="Copy model files from DIR (e.g. a USB stick filled on a machine with internet) "
                    "into the user cache dir, for machines without internet. Each file must match its pinned "
                    "sha256: a wrong file is refused and named (exit 1). Renamed copies are recognised by hash.")
@common.fatal_errors
def import_cmd(directory: Path = typer.Argument(..., metavar="DIR", help="Folder holding the .onnx files.",
                                                file_okay=False),
               dest: Path = DestOpt, quiet: bool = common.QuietOpt) -> None:
    r = registry.import_models(directory, dest)
    if not quiet:
        for name, src, dst in r.imported:
            out.print(f"{name}: imported {safe_text(src.name)} -> {safe_text(str(dst))} [green](sha256 verified)[/]")
        for name, dst in r.present:
            out.print(f"{name}: already present {safe_text(str(dst))}")
        for p in r.ignored:
            out.print(f"[dim]ignored {safe_text(p.name)}: not a known model file[/]")
    for src, why in r.refused:
        err.print(f"[bold red]refused[/] {safe_text(src)}: {safe_text(why, newlines=True)}", highlight=False,
                  soft_wrap=True)
    if r.refused:
        raise typer.Exit(int(ExitCode.ITEMS))


@models_app.command("verify", help="Re-hash every model file in the search dirs (--models-dir, FACECLI_MODELS_DIR, "
                    "the user cache). Exit 1 if any file is corrupt, or if a default model (yunet, dlib-resnet) "
                    "has no verified file anywhere.")
@common.fatal_errors
def verify_cmd(models_dir: Path = common.ModelsDirOpt, json_out: bool = common.JsonOpt,
               config: Path = common.ConfigOpt) -> None:
    md = _models_dir(models_dir, config)
    checked = registry.verify_models(md)
    missing = [n for n in registry.DEFAULT_MODELS if not registry.usable(n, md)]
    ok = not missing and all(e.status == "present" for e in checked)
    if json_out:
        print_json({"ok": ok, "files": [{"name": e.spec.name, "file": e.file.file, "path": str(e.path),
                                         "status": e.status} for e in checked], "missing_defaults": missing})
    else:
        t = Table(title=f"{len(checked)} model file(s) checked", title_justify="left")
        for col in ("name", "file", "status", "path"):
            t.add_column(col, overflow="fold" if col == "path" else None)
        for e in checked:
            t.add_row(e.spec.name, e.file.file, f"[{STATUS_STYLE[e.status]}]{e.status}[/]", safe_text(e.path))
        out.print(t)
        for e in checked:
            if e.status == "corrupt":
                err.print(f"[bold red]corrupt[/] {safe_text(str(e.path))}: size or sha256 differs from the pinned "
                          f"{e.file.sha256}; delete it and run `facecli models fetch {e.spec.name}`",
                          highlight=False, soft_wrap=True)
        for n in missing:
            err.print(f"[yellow]missing[/] {n}: {safe_text(registry.missing_hint(registry.REGISTRY[n]), newlines=True)}",
                      highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(int(ExitCode.ITEMS))
