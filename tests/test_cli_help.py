"""`--help` tells the truth in one style: every command and group of the click tree, `-h` too."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from facecli.cli.app import app

runner = CliRunner()
ROOT = get_command(app)
WIDE = {"COLUMNS": "250"}  # no wrapped lines: examples and choices are read back whole

#: Typer's own type tags and argument styles, none of which may show.
BOGUS = re.compile(r"<(bool|str|int|float|path|file|dir|list\[)[^ >]*>|\{|\}")


def _walk(cmd, path=()):
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(ROOT))
IDS = [" ".join(p) or "facecli" for p, _ in COMMANDS]


def _help(path) -> str:
    res = runner.invoke(app, [*path, "-h"], env=WIDE)
    assert res.exit_code == 0, res.output
    return res.stdout


def _options(cmd) -> set[str]:
    ctx = cmd.make_context("facecli", [], resilient_parsing=True)
    return {o for p in cmd.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}


def _examples(text: str) -> list[str]:
    """The command lines of the help's "Examples:" section."""
    _, sep, tail = text.partition("Examples:")
    assert sep, "no Examples section"
    return [ln.strip() for ln in tail.splitlines() if ln.strip().startswith("facecli ")]


def test_the_tree_is_walked():
    assert {"check", "enroll", "search", "serve", "collections copy", "models fetch", "runs show"} <= set(IDS)


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_help_has_no_bogus_metavars_and_one_argument_style(path, cmd):
    text = _help(path)
    assert not BOGUS.search(text), BOGUS.search(text).group(0)
    usage = next(ln for ln in text.splitlines() if "Usage:" in ln)
    # Arguments in upper case, [OPTIONAL] in brackets: e.g. `check [OPTIONS] [PATH]`, `persons delete PERSON_ID...`.
    for arg in (p for p in cmd.params if p.param_type_name == "argument"):
        name = arg.metavar
        assert name and name == name.upper(), name
        shown = (name if arg.required else f"[{name}]") + ("..." if arg.nargs != 1 else "")
        assert shown in usage.split(), (shown, usage)
    assert "--help" in text and "-h" in text  # -h is listed with --help


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_long_and_short_help_options_print_the_same(path, cmd):
    assert runner.invoke(app, [*path, "--help"], env=WIDE).stdout == _help(path)


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_every_command_has_examples_that_parse(path, cmd):
    examples = _examples(_help(path))
    assert examples
    for line in examples:
        words = shlex.split(line)[1:]
        target, i = ROOT, 0
        while hasattr(target, "commands") and i < len(words) and words[i] in target.commands:
            target, i = target.commands[words[i]], i + 1
        assert target is not ROOT, f"{line!r} names no command"
        assert not hasattr(target, "commands"), f"{line!r} names a group, not a command"
        if path:  # a command's examples run that command (a group's: one of its own)
            assert words[:len(path)] == list(path), line
        # The command's own parser accepts it: every option exists, every choice is valid.
        target.make_context(" ".join(words[:i]), words[i:])


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_choices_are_listed(path, cmd):
    text = " ".join(_help(path).split())
    for p in cmd.params:
        choices = getattr(getattr(p, "type_descriptor", None), "choices", None)
        if choices:
            values = [str(getattr(c, "value", c)) for c in choices]
            assert all(v in text for v in values), (p.name, values)


def test_fixed_choices_show_as_alternatives_not_as_text():
    check = " ".join(_help(["check"]).split())
    assert "--on-duplicate [reject|warn]" in check
    assert "--on-identity-mismatch [reject|warn]" in check
    assert "--multi-face [reject|largest]" in check
    assert "--device [auto|cpu|cuda]" in check
    enroll = " ".join(_help(["enroll"]).split())
    assert "--face-storage-type [NoStorage|StoreThumbnails|StoreFullImage]" in enroll
    assert "--payload [face|full]" in enroll
    assert "--preset NAME" in enroll and "opencv-fr-liveness" in enroll


def test_choices_are_enforced_by_the_parser():
    res = runner.invoke(app, ["check", ".", "--on-duplicate", "maybe"])
    assert res.exit_code == 2 and "maybe" in res.output and "reject" in res.output
    res = runner.invoke(app, ["enroll", ".", "--face-storage-type", "Everything"])
    assert res.exit_code == 2 and "StoreThumbnails" in res.output


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_report_is_mentioned_only_where_it_exists(path, cmd):
    if "--report" in _help(path):
        assert "--report" in _options(cmd), f"facecli {' '.join(path)} mentions --report it does not have"


def test_flags_show_no_value():
    text = _help(["enroll"])
    line = next(ln for ln in text.splitlines() if "--dry-run" in ln)
    assert re.search(r"--dry-run\s+Check everything", line), line


def test_shell_completion_is_offered():
    text = _help([])
    assert "--install-completion" in text and "--show-completion" in text
    # What `--show-completion` prints for the user's shell (detected from the parent process, so
    # not testable from here): click's own protocol, through the installed `facecli` script.
    exe = Path(sys.executable).with_name("facecli")
    if not exe.exists():
        pytest.skip(f"no facecli console script beside {sys.executable}")
    res = subprocess.run([str(exe)], env={**os.environ, "_FACECLI_COMPLETE": "source_bash"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "_FACECLI_COMPLETE" in res.stdout.upper() and "complete " in res.stdout, res
