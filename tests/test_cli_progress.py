"""Progress on a terminal: rate and ETA, persons advancing, paths cut in the middle, quiet re-runs."""

from __future__ import annotations

import re
import shutil
import time
from io import StringIO

from rich.console import Console
from typer.testing import CliRunner

from facecli.cli import console as console_mod
from facecli.cli.app import app
from facecli.cli.console import RichProgress, shorten_path
from facecli.errors import Status
from facecli.pipeline.report import ItemResult, PersonResult, RunSummary

from .conftest import SAMPLES, needs_models

CHECKED = object()  # stands for the ImageCheck of an image that was checked


def _terminal() -> tuple[Console, StringIO]:
    buf = StringIO()
    return Console(file=buf, force_terminal=True, width=100, color_system=None), buf


def _plain(buf: StringIO) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())


def _image(path: str, person: str) -> ItemResult:
    return ItemResult(path, person, Status.ACCEPTED, check=CHECKED)


def test_shorten_path_cuts_the_middle_keeping_the_start_and_the_file_name():
    path = "photos/2024 intake/department of engineering/E1001 Jane Doe/IMG_20240101_0001.jpg"
    short = shorten_path(path, 40)
    assert len(short) <= 40
    assert short.startswith("photos/") and short.endswith("/IMG_20240101_0001.jpg") and "…" in short
    kept = short.split("…")[0]
    assert kept.endswith("/") and path.startswith(kept)  # whole folders: no word cut at the left
    assert shorten_path("photos/a/b.jpg", 40) == "photos/a/b.jpg"
    long_name = "x/" + "portrait_of_someone_with_a_very_long_name_" * 2 + ".jpeg"
    short = shorten_path(long_name, 30)
    assert len(short) <= 30 and short.startswith("portrait_of") and short.endswith(".jpeg") and "…" in short
    win = shorten_path("C:\\photos\\very long department name\\E1001\\IMG_0001.jpg", 30)
    assert win.startswith("C:\\") and win.endswith("\\IMG_0001.jpg") and len(win) <= 30


def test_bars_show_the_rate_and_persons_advance_as_their_images_are_done():
    term, buf = _terminal()
    p = RichProgress(enabled=True, console=term)
    p.start(images=4, persons=3)
    long = "photos/a very long folder name that goes on and on/alice/IMG_0001.jpg"
    for path, person in ((long, "alice"), ("photos/alice/2.jpg", "alice"), ("photos/bob/1.jpg", "bob")):
        time.sleep(0.02)
        p.image_done(_image(path, person))
    p.refresh()
    middle = _plain(buf)
    assert re.search(r"checking images\s.*3/4", middle)
    assert re.search(r"persons checked\s.*1/3", middle), middle  # alice done; bob's images may go on
    assert re.search(r"\d+(\.\d)? images/s", middle)
    assert "eta " in middle
    time.sleep(0.02)
    p.image_done(_image("photos/carol/1.jpg", "carol"))
    p.refresh()
    assert re.search(r"persons checked\s.*3/3", _plain(buf))  # the last image completes the last person
    for person in ("alice", "bob", "carol"):
        p.person_done(PersonResult(person, person, Status.ACCEPTED))
    p.start_sending(2)
    p.sent(2)
    p.close()
    out = _plain(buf)
    assert re.search(r"enrolling persons\s.*2/2", out) and "persons/s" in out
    assert "0/0" not in out


def test_long_paths_are_shown_cut_in_the_middle():
    term, buf = _terminal()
    p = RichProgress(enabled=True, console=term)
    p.start(images=1, persons=1)
    p.image_done(_image("photos/a very long folder name that goes on and on/alice/IMG_0001.jpg", "alice"))
    p.close()
    out = _plain(buf)
    assert "photos/…/IMG_0001.jpg" in out and "goes on and on" not in out


def test_nothing_to_check_shows_no_bar_but_says_so():
    term, buf = _terminal()
    summary = RunSummary(command="enroll")
    p = RichProgress(enabled=True, console=term, summary=summary)
    p.start(images=0, persons=0)
    p.start_sending(0)
    summary.actions["unchanged"] = 5  # recorded before the pipeline closes the progress
    p.close()
    out = _plain(buf)
    assert "5 person(s) unchanged, nothing to check" in out
    assert "0/0" not in out and "━" not in out and "-:--:--" not in out


def test_no_bars_when_not_a_terminal():
    buf = StringIO()
    p = RichProgress(enabled=True, console=Console(file=buf, force_terminal=False))
    p.start(images=2, persons=1)
    p.image_done(_image("a/1.jpg", "a"))
    p.close()
    assert buf.getvalue() == ""


@needs_models
def test_an_unchanged_rerun_says_nothing_to_check(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("grace_hopper.jpg", "astronaut.jpg"):
        shutil.copy(SAMPLES / name, photos / name)
    args = ["enroll", str(photos), "--db", str(tmp_path / "g.db"), "--journal", str(tmp_path / "j.db")]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    term, buf = _terminal()
    monkeypatch.setattr(console_mod, "err", term)  # stderr as a terminal: the progress shows
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = _plain(buf)
    assert "2 person(s) unchanged, nothing to check" in out
    assert "0/0" not in out and "-:--:--" not in out
