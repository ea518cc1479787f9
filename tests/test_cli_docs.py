"""Every command has help text and a README section (DESIGN.md section 3)."""

import re

import typer
from typer.testing import CliRunner

from facecli.cli.app import app

from .conftest import REPO

runner = CliRunner()


def _commands(group: typer.Typer, prefix: str = "") -> list[str]:
    names = [prefix + (c.name or c.callback.__name__) for c in group.registered_commands]
    for g in group.registered_groups:
        names += _commands(g.typer_instance, prefix + g.name + " ")
    return names


def test_every_command_has_help_and_a_readme_section():
    readme = (REPO / "README.md").read_text()
    commands = _commands(app)
    assert "check" in commands
    for cmd in commands:
        res = runner.invoke(app, cmd.split() + ["--help"])
        assert res.exit_code == 0 and len(res.stdout) > 200, cmd
        *group, name = cmd.split()
        prefix = re.escape(" ".join(["facecli", *group]))
        heading = rf"^#+ .*`{prefix} (\S*\|)?{re.escape(name)}(\|\S*)?[ `]"
        assert re.search(heading, readme, re.M), f"README lacks a section for facecli {cmd}"
