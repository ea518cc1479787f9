"""Hostile sources (issue 16, items 3, 5, 8, 9): symlink loops and cross-person links, special
files, person ids from folder and file names, and wrongly typed JSON Lines values.

Every hostile file is made here by the test itself (FIFOs, links to /dev/zero, dangling links, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from facecli.errors import ReasonCode
from facecli.ids import validate_person_id
from facecli.sources.folder import discover_folder
from facecli.sources.manifest import read_manifest

from .conftest import MODELS, REPO, SAMPLES, needs_models

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and symbolic links")

INVALID_IDS = ["=cmd|calc", "-kit", "josé", " lead", "x" * 129]


def touch(p: Path, src: Path | None = None) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if src is None:
        p.write_bytes(b"not really a photo")
    else:
        shutil.copyfile(src, p)
    return p


def hostile_tree(root: Path, faces: bool = False) -> Path:
    """personA links to its parent, to personB's folder and to one of personB's files, and holds
    special files; invalid ids come from folder and flat file names."""
    face = (lambda name: SAMPLES / name) if faces else (lambda name: None)
    touch(root / "personA" / "a0.jpg", face("grace_hopper.jpg"))
    touch(root / "personB" / "v0.jpg", face("astronaut.jpg"))
    touch(root / "personB" / "v1.jpg", face("astronaut.jpg"))
    os.symlink("..", root / "personA" / "up")
    os.symlink("../personB", root / "personA" / "b")
    os.symlink("../personB/v0.jpg", root / "personA" / "v.jpg")
    os.mkfifo(root / "personA" / "pipe.jpg")
    os.symlink("/dev/zero", root / "personA" / "zero.jpg")
    os.symlink("nowhere.jpg", root / "personA" / "gone.jpg")
    (root / "personA" / "x.jpg").mkdir()
    for pid in INVALID_IDS:
        touch(root / pid / "p.jpg", face("two_faces.jpg"))
    touch(root / "=HYPERLINK(1).jpg", face("astronaut.jpg"))
    return root


def by_path(d, root: Path) -> dict:
    """The discovery's problems by path relative to ``root``."""
    return {os.path.relpath(p.path, root): p for p in d.problems}


def discover(root: Path, follow: bool):
    """discover_folder in a thread, so that a FIFO opened by mistake fails the test instead of hanging it."""
    got: list = []

    def run() -> None:
        try:
            got.append(discover_folder(root, follow_symlinks=follow))
        except BaseException as exc:  # handed to the test's thread
            got.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert got, "discovery blocked (a FIFO or a device was opened?)"
    if isinstance(got[0], BaseException):
        raise got[0]
    return got[0]


# --- item 3: symlinks under --follow-symlinks -------------------------------------------------------


def test_link_to_parent_and_to_another_person_files_nothing_under_the_wrong_person(tmp_path):
    root = hostile_tree(tmp_path / "photos")
    d = discover(root, follow=True)
    persons = {p.person_id: [i.name for i in p.images] for p in d.persons}
    assert persons["personA"] == ["a0.jpg"]
    assert persons["personB"] == ["v0.jpg", "v1.jpg"]  # person B does not vanish
    problems = by_path(d, root)
    up, link, file_link = problems["personA/up"], problems["personA/b"], problems["personA/v.jpg"]
    assert up.reason == ReasonCode.UNREADABLE and "symlink loop" in up.message and up.person_id == "personA"
    for p in (link, file_link):
        assert p.reason == ReasonCode.INVALID_ROW and "also belongs to person 'personB'" in p.message
        assert p.person_id == "personA"


def test_each_real_file_belongs_to_exactly_one_person_the_one_whose_folder_holds_it(tmp_path):
    root = hostile_tree(tmp_path / "photos")
    os.symlink(root / "personB", root / "zz_alias")  # a whole person folder again, under another name
    os.symlink(root / "=HYPERLINK(1).jpg", root / "flatlink.jpg")
    d = discover(root, follow=True)
    owners: dict[str, list[str]] = {}
    for p in d.persons:
        for img in p.images:
            owners.setdefault(os.path.realpath(img), []).append(p.person_id)
            holder = Path(os.path.realpath(img)).relative_to(root.resolve()).parts
            assert holder[0] == p.person_id or (len(holder) == 1 and Path(holder[0]).stem == p.person_id)
    assert all(len(v) == 1 for v in owners.values()), owners
    problems = by_path(d, root)
    assert "also belongs to person 'personB'" in problems["zz_alias"].message
    assert "also belongs to person '=HYPERLINK(1)'" in problems["flatlink.jpg"].message
    assert "zz_alias" not in {p.person_id for p in d.persons} and "flatlink" not in {p.person_id for p in d.persons}


def test_every_top_level_name_is_a_person_or_is_reported(tmp_path):
    root = hostile_tree(tmp_path / "photos")
    os.symlink(".", root / "self")  # a person folder that is the photo folder itself
    os.symlink(root / "personA", root / "personC")  # and two names for one folder
    for follow in (False, True):
        d = discover(root, follow)
        named = {p.person_id for p in d.persons} | {p.person_id for p in d.problems} \
            | {Path(p).name for p, _ in d.ignored}
        assert {"personA", "personB", *INVALID_IDS, "=HYPERLINK(1)", "self", "personC"} <= named
    problems = by_path(d, root)
    assert problems["self"].reason == ReasonCode.UNREADABLE and "symlink loop" in problems["self"].message
    assert "also belongs to person 'personA'" in problems["personC"].message


def test_links_between_folders_outside_the_photo_folder(tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "shared" / "s.jpg")
    os.symlink(outside, outside / "shared" / "back")  # a loop that never passes through the photo folder
    root = tmp_path / "photos"
    (root / "ann").mkdir(parents=True)
    (root / "bob").mkdir()
    os.symlink(outside / "shared", root / "ann" / "ext")
    os.symlink(outside / "shared", root / "bob" / "ext")
    d = discover(root, follow=True)
    assert {p.person_id: [i.name for i in p.images] for p in d.persons} == {"ann": ["s.jpg"]}
    problems = by_path(d, root)
    assert "symlink loop" in problems["ann/ext/back"].message
    assert "also belongs to person 'ann'" in problems["bob/ext"].message


def test_a_link_within_one_person_is_taken_once(tmp_path):
    root = tmp_path / "photos"
    touch(root / "ann" / "sub" / "a.jpg")
    os.symlink("sub", root / "ann" / "again")
    os.symlink("sub/a.jpg", root / "ann" / "a_link.jpg")
    d = discover(root, follow=True)
    assert [(p.person_id, [i.name for i in p.images]) for p in d.persons] == [("ann", ["a.jpg"])]
    assert not d.problems and len(d.ignored) == 2


def test_deep_nesting_is_not_a_recursion_error(tmp_path):
    touch(tmp_path / "photos" / "ann" / Path(*["d"] * 400) / "a.jpg")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)  # the walk runs in a fresh thread: 400 levels are deeper than this limit
    try:
        d = discover(tmp_path / "photos", follow=True)
    finally:
        sys.setrecursionlimit(limit)
    assert [(p.person_id, len(p.images)) for p in d.persons] == [("ann", 1)]


# --- item 8: special files ---------------------------------------------------------------------------


@pytest.mark.parametrize("follow", [False, True])
def test_special_files_get_item_lines_and_are_never_opened(tmp_path, follow):
    root = hostile_tree(tmp_path / "photos")
    os.mkfifo(root / "toplevel_pipe.jpg")
    os.mkfifo(root / "personB" / "notes")  # no image extension: ignored, as any other non-image
    d = discover(root, follow)
    problems = by_path(d, root)
    assert problems["personA/pipe.jpg"].reason == ReasonCode.UNREADABLE
    assert "not a regular file: a FIFO" in problems["personA/pipe.jpg"].message
    assert problems["toplevel_pipe.jpg"].reason == ReasonCode.UNREADABLE
    assert problems["toplevel_pipe.jpg"].person_id == "toplevel_pipe"
    assert problems["personA/x.jpg"].reason == ReasonCode.UNREADABLE
    assert "folder named like an image" in problems["personA/x.jpg"].message
    assert any(p.endswith("notes") for p, _ in d.ignored) and "personB/notes" not in problems
    ignored = {os.path.relpath(p, root) for p, _ in d.ignored}
    if follow:
        assert problems["personA/zero.jpg"].reason == ReasonCode.UNREADABLE
        assert "character device" in problems["personA/zero.jpg"].message
        assert problems["personA/gone.jpg"].reason == ReasonCode.FILE_NOT_FOUND
        assert "dangling symbolic link" in problems["personA/gone.jpg"].message
    else:  # without --follow-symlinks a link is never looked through: counted as ignored, not an item
        assert {"personA/zero.jpg", "personA/gone.jpg", "personA/up", "personA/b"} <= ignored
        assert not any(k.startswith(("personA/zero", "personA/gone", "personA/up")) for k in problems)
    for p in d.persons:  # no special file is ever handed to the decoder
        assert not {"pipe.jpg", "zero.jpg", "gone.jpg", "x.jpg", "toplevel_pipe.jpg"} & {i.name for i in p.images}


def test_link_loops_and_a_dangling_person_folder(tmp_path):
    root = tmp_path / "photos"
    touch(root / "ann" / "a.jpg")
    os.symlink("l2.jpg", root / "l1.jpg")
    os.symlink("l1.jpg", root / "l2.jpg")
    os.symlink("/nonexistent/bob", root / "bob")  # a person folder on a drive that is not mounted
    d = discover(root, follow=True)
    problems = by_path(d, root)
    assert problems["l1.jpg"].reason == problems["l2.jpg"].reason == ReasonCode.UNREADABLE
    assert "symlink loop" in problems["l1.jpg"].message
    assert problems["bob"].reason == ReasonCode.FILE_NOT_FOUND and problems["bob"].person_id == "bob"


def test_a_fifo_given_as_path(tmp_path):
    os.mkfifo(tmp_path / "p.jpg")
    (p,) = discover(tmp_path / "p.jpg", follow=False).problems
    assert p.reason == ReasonCode.UNREADABLE and "FIFO" in p.message


# --- item 5: person ids from folder and file names ---------------------------------------------------


def test_ids_from_names_follow_the_one_rule(tmp_path):
    root = hostile_tree(tmp_path / "photos")
    touch(root / "=SUM(A1)_1.png")
    touch(root / "=SUM(A1)_2.png")
    d = discover(root, follow=False)
    assert {p.person_id for p in d.persons} == {"personA", "personB"}
    refused = [p for p in d.problems if p.reason == ReasonCode.INVALID_ROW]
    assert {p.person_id for p in refused} == {*INVALID_IDS, "=HYPERLINK(1)", "=SUM(A1)"}
    for p in refused:
        assert p.message.startswith(validate_person_id(p.person_id))
        assert Path(p.path).exists() and "not enrolled" in p.message
    assert len([p for p in refused if p.person_id == "=SUM(A1)"]) == 2  # one item per image


def test_dot_names_never_become_ids(tmp_path):
    root = tmp_path / "photos"
    for name in ["..jpg", "...jpg", "._1.jpg", "..._2.jpg"]:
        touch(root / name)
    touch(root / "..." / "a.jpg")
    touch(root / "ok." / "a.jpg")  # a trailing dot is an ordinary id
    d = discover(root, follow=True)
    assert [p.person_id for p in d.persons] == ["ok."] and not d.problems


# --- item 9 (part): JSON Lines values of the wrong type ---------------------------------------------


def test_jsonl_values_are_type_checked(tmp_path):
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.jpg")
    rows = [
        {"person_id": "ok", "images": ["a.jpg", "b.jpg"], "age": 41, "vip": False, "score": 0.5},
        {"person_id": "p2", "image": ["a.jpg"]},
        {"person_id": 7, "image": "a.jpg"},
        {"person_id": {"x": 1}, "image": "a.jpg"},
        {"person_id": True, "image": "a.jpg"},
        {"person_id": "p5", "images": {"a": "a.jpg"}},
        {"person_id": "p6", "images": ["a.jpg", 3]},
        {"person_id": "p7", "person_name": 42, "image": "a.jpg"},
        {"person_id": "p8", "image": "a.jpg", "dept": {"name": "R&D"}},
        {"person_id": "p9", "image": "a.jpg", "tags": ["a", "b"]},
        {"person_id": "p10", "image": "a.jpg", "gender": ["F"]},
        {"person_id": None, "image": "a.jpg"},
        {"person_id": "p12", "image": None, "images": "a.jpg; b.jpg"},
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    d = read_manifest(m)
    persons = {p.person_id: p for p in d.persons}
    assert set(persons) == {"ok", "p12"}
    assert persons["ok"].metadata == {"age": "41", "vip": "false", "score": "0.5"}
    assert [i.name for i in persons["p12"].images] == ["a.jpg", "b.jpg"]
    why = {p.line: p.message for p in d.problems}
    assert all(p.reason == ReasonCode.INVALID_ROW for p in d.problems)
    assert why == {
        2: "image must be a string, got list",
        3: 'person_id must be a string, got int (write it as a JSON string: "7")',
        4: "person_id must be a string, got dict",
        5: "person_id must be a string, got bool",
        6: "images must be a string or a list of strings, got dict",
        7: "images[1] must be a string, got int",
        8: "person_name must be a string, got int",
        9: "dept must be a string, number or boolean, got dict (nested values are refused)",
        10: "tags must be a string, number or boolean, got list (nested values are refused)",
        11: "gender must be a string, number or boolean, got list (nested values are refused)",
        12: "empty person_id",
    }
    assert {p.line: p.person_id for p in d.problems}[2] == "p2"


# --- end to end: the CLI ----------------------------------------------------------------------------


def facecli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACECLI_MODELS_DIR": str(MODELS.resolve()), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "facecli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@needs_models
def test_cli_check_hostile_folder(tmp_path):
    root = hostile_tree(tmp_path / "photos", faces=True)
    report = tmp_path / "r.jsonl"
    res = facecli("check", str(root), "--json", "--report", str(report), "--follow-symlinks", cwd=tmp_path)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 1, (res.returncode, res.stderr)
    summary = json.loads(res.stdout)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    items = {os.path.relpath(x["path"], root): x for x in lines if x.get("kind") != "person"}
    expected = {
        "personA/pipe.jpg": "UNREADABLE", "personA/zero.jpg": "UNREADABLE", "personA/x.jpg": "UNREADABLE",
        "personA/gone.jpg": "FILE_NOT_FOUND", "personA/up": "UNREADABLE", "personA/b": "INVALID_ROW",
        "personA/v.jpg": "INVALID_ROW", "=cmd|calc/p.jpg": "INVALID_ROW", "-kit/p.jpg": "INVALID_ROW",
        "josé/p.jpg": "INVALID_ROW", "=HYPERLINK(1).jpg": "INVALID_ROW",
    }
    for path, code in expected.items():
        assert items[path]["reasons"] == [code], (path, items[path])
    for x in lines:  # nothing of person B's is filed under person A, and B is in the report
        if x.get("kind") != "person" and x["person_id"] == "personA" and x["reasons"] == []:
            assert os.path.realpath(x["path"]).startswith(os.path.realpath(root / "personA") + os.sep)
    persons = {x["person_id"] for x in lines if x.get("kind") == "person"}
    assert {"personA", "personB"} <= persons and not persons & {*INVALID_IDS, "=HYPERLINK(1)"}
    assert {items["personB/v0.jpg"]["person_id"], items["personB/v1.jpg"]["person_id"]} == {"personB"}
    assert summary["reasons"]["INVALID_ROW"] >= 8


@needs_models
def test_cli_enroll_stores_nothing_under_an_invalid_id(tmp_path):
    root = tmp_path / "photos"
    touch(root / "grace" / "g.jpg", SAMPLES / "grace_hopper.jpg")
    for pid in INVALID_IDS:
        touch(root / pid / "p.jpg", SAMPLES / "astronaut.jpg")
    touch(root / "=HYPERLINK(1).jpg", SAMPLES / "astronaut.jpg")
    os.symlink("..", root / "grace" / "up")
    db = tmp_path / "x.db"
    res = facecli("enroll", str(root), "--db", str(db), "--create-collection", "--json", "--follow-symlinks",
                  cwd=tmp_path)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert json.loads(res.stdout)["persons"]["enrolled"] == 1
    listed = facecli("persons", "list", "--db", str(db), "--json", "--limit", "0", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [p["person_id"] for p in json.loads(listed.stdout)["persons"]] == ["grace"]
