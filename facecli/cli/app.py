"""The Typer app: registers the command groups and turns fatal errors into exit codes."""

from __future__ import annotations

import os
import sys

import typer

from facecli import __version__
from facecli.cli import cache as cache_cmd
from facecli.cli import calibrate as calibrate_cmd
from facecli.cli import check as check_cmd
from facecli.cli import compare as compare_cmd
from facecli.cli import enroll as enroll_cmd
from facecli.cli import gallery
from facecli.cli import models as models_cmd
from facecli.cli import runs
from facecli.cli import search as search_cmd
from facecli.cli import serve as serve_cmd
from facecli.cli.console import print_error
from facecli.cli.helpstyle import HELP_OPTIONS, FacecliGroup
from facecli.errors import ExitCode, FacecliError

# OpenCV prints backend warnings on stderr at import; they mean nothing to a user of facecli.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

app = typer.Typer(
    name="facecli",
    help="Bulk-enroll people into face-recognition systems: check photos, enroll, search.",
    no_args_is_help=True,
    cls=FacecliGroup,  # click's help conventions, examples, for every command (cli/helpstyle.py)
    context_settings=HELP_OPTIONS,  # -h as well as --help, inherited by every sub-command
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facecli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """facecli: check, enroll and search faces from the command line."""


app.command("check", help=check_cmd.HELP)(check_cmd.check)
app.command("enroll", help=enroll_cmd.HELP)(enroll_cmd.enroll)
app.command("search", help=search_cmd.HELP)(search_cmd.search)
app.command("compare", help=compare_cmd.HELP)(compare_cmd.compare)
app.command("calibrate", help=calibrate_cmd.HELP)(calibrate_cmd.calibrate)
app.command("serve", help=serve_cmd.HELP)(serve_cmd.serve)
app.add_typer(gallery.collections_app, name="collections")
app.add_typer(gallery.persons_app, name="persons")
app.add_typer(models_cmd.models_app, name="models")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(cache_cmd.cache_app, name="cache")


def main() -> None:
    try:
        app(standalone_mode=True)
    except FacecliError as exc:  # pragma: no cover - commands catch their own; last resort
        print_error(exc)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
