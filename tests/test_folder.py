import os

import pytest

from facecli.errors import ReasonCode
from facecli.sources.folder import discover_folder, group_flat

from .conftest import SAMPLES


def touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_one_folder_per_person(tmp_path):
    touch(tmp_path / "alice" / "2.jpg")
    touch(tmp_path / "alice" / "10.jpg")
    touch(tmp_path / "alice" / "nested" / "3.png")
    touch(tmp_path / "bob" / "a.jpeg")
    d = discover_folder(tmp_path)
    assert [p.person_id for p in d.persons] == ["alice", "bob"]
    alice = d.persons[0]
    assert alice.person_name == "alice"
    assert [p.name for p in alice.images] == ["2.jpg", "10.jpg", "3.png"]  # natural order, then nested


def test_flat_files_with_suffix_grouping(tmp_path):
    for name in ["ada.jpg", "ada_1.jpg", "ada_2.png", "grace_1.jpg", "grace_2.jpg", "emp_1042.jpg", "x_y.jpg"]:
        touch(tmp_path / name)
    d = discover_folder(tmp_path)
    got = {p.person_id: sorted(i.name for i in p.images) for p in d.persons}
    assert got == {
        "ada": ["ada.jpg", "ada_1.jpg", "ada_2.png"],
        "grace": ["grace_1.jpg", "grace_2.jpg"],
        "emp_1042": ["emp_1042.jpg"],  # a lone suffix is part of the id
        "x_y": ["x_y.jpg"],
    }


def test_hidden_non_images_and_symlinks(tmp_path):
    touch(tmp_path / ".hidden.jpg")
    touch(tmp_path / ".git" / "a.jpg")
    touch(tmp_path / "notes.txt")
    real = touch(tmp_path / "real.jpg")
    os.symlink(real, tmp_path / "link.jpg")
    d = discover_folder(tmp_path)
    assert [p.person_id for p in d.persons] == ["real"]
    reasons = dict((os.path.basename(p), why) for p, why in d.ignored)
    assert "notes.txt" in reasons and "symbolic link" in reasons["link.jpg"]
    d2 = discover_folder(tmp_path, follow_symlinks=True)
    assert [p.person_id for p in d2.persons] == ["real"]  # the real file is real's, not link's too
    (conflict,) = d2.problems
    assert conflict.reason == ReasonCode.INVALID_ROW and "also belongs to person 'real'" in conflict.message
    assert conflict.person_id == "link" and conflict.path.endswith("link.jpg")


def test_follow_symlinks_to_outside_files(tmp_path):
    outside = touch(tmp_path / "elsewhere" / "photo.jpg")
    touch(tmp_path / "photos" / "ann" / "a.jpg")
    os.symlink(outside, tmp_path / "photos" / "bob.jpg")
    os.symlink(outside.parent, tmp_path / "photos" / "ann" / "more")
    d = discover_folder(tmp_path / "photos", follow_symlinks=True)
    got = {p.person_id: [i.name for i in p.images] for p in d.persons}
    assert got == {"ann": ["a.jpg"], "bob": ["bob.jpg"]}  # bob linked the outside file first
    (conflict,) = d.problems
    assert conflict.person_id == "ann" and "also belongs to person 'bob'" in conflict.message


def test_symlink_loop_terminates(tmp_path):
    touch(tmp_path / "p" / "a.jpg")
    os.symlink(tmp_path / "p", tmp_path / "p" / "loop")
    d = discover_folder(tmp_path, follow_symlinks=True)
    assert d.persons[0].person_id == "p"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_unreadable_folder_is_a_problem_not_a_crash(tmp_path):
    touch(tmp_path / "locked" / "a.jpg")
    os.chmod(tmp_path / "locked", 0)
    try:
        d = discover_folder(tmp_path)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert d.problems and d.problems[0].reason == ReasonCode.UNREADABLE


def test_missing_root_and_single_file(tmp_path):
    assert discover_folder(tmp_path / "nope").problems[0].reason == ReasonCode.FILE_NOT_FOUND
    d = discover_folder(SAMPLES / "grace_hopper.jpg")
    assert [(p.person_id, len(p.images)) for p in d.persons] == [("grace_hopper", 1)]


def test_group_flat_keeps_distinct_bases(tmp_path):
    files = [tmp_path / n for n in ["a_1.jpg", "a_2.jpg", "b_1.jpg"]]
    assert {k: len(v) for k, v in group_flat(files).items()} == {"a": 2, "b_1": 1}


def test_sample_images_layout():
    d = discover_folder(SAMPLES)
    assert "grace_hopper" in {p.person_id for p in d.persons}
    assert {os.path.basename(p) for p, _ in d.ignored} >= {"README.md", "make_samples.py"}
