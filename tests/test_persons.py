"""Per-person checks on real photos: mislabelled images, duplicates, image caps."""

import csv
import shutil
from collections import defaultdict

import pytest

from facecli.errors import ReasonCode, Status
from facecli.pipeline.enroll import run_check
from facecli.pipeline.persons import PersonPolicy
from facecli.sources.spec import Discovery, PersonSpec

from .conftest import DATASETS, SAMPLES, needs_data

PAIRS = DATASETS / "deepface-pairs"


def identities() -> dict[str, list[str]]:
    ids: dict[str, list[str]] = defaultdict(list)
    for row in csv.DictReader((PAIRS / "identities.csv").open()):
        ids[row["identity"]].append(row["file"])
    return dict(ids)


def spec(pid, files):
    return PersonSpec(pid, pid, [PAIRS / f for f in files])


@needs_data
def test_mislabelled_image_gets_identity_mismatch_and_no_other_does(checker):
    ids = identities()
    big = sorted((k for k in ids if len(ids[k]) >= 4), key=lambda k: -len(ids[k]))
    a, b = big[0], big[1]
    intruder = ids[b][0]
    persons = [spec(a, ids[a][:5] + [intruder]), spec(b, ids[b][1:4])]
    res = run_check(Discovery(persons=persons), checker)
    flagged = [i for i in res.items if ReasonCode.IDENTITY_MISMATCH in i.reasons]
    assert [i.path for i in flagged] == [str(PAIRS / intruder)]
    assert flagged[0].status == Status.REJECTED and "does not match" in flagged[0].message
    pa = next(p for p in res.persons if p.person_id == a)
    assert pa.status == Status.ACCEPTED and ReasonCode.IDENTITY_MISMATCH in pa.warnings
    assert pa.accepted_images == 3  # five good images, capped at the default 3


@needs_data
def test_warn_policy_keeps_the_image(checker):
    ids = identities()
    a, b = sorted(ids, key=lambda k: -len(ids[k]))[:2]
    res = run_check(Discovery(persons=[spec(a, ids[a][:3] + [ids[b][0]])]), checker,
                    policy=PersonPolicy(on_identity_mismatch="warn", max_images_per_person=0))
    item = next(i for i in res.items if i.path.endswith(ids[b][0]))
    assert item.status == Status.ACCEPTED and item.warnings == [ReasonCode.IDENTITY_MISMATCH]


@needs_data
def test_same_face_under_two_ids_is_duplicate_person_for_the_later_one(checker):
    """Persons stream: each is decided against the persons before it, so of one face under two ids
    the later id in source order is the one rejected (the earlier may already be enrolled)."""
    ids = identities()
    a, b = sorted(ids, key=lambda k: -len(ids[k]))[:2]
    persons = [spec("emp-1", ids[a][:2]), spec("emp-2", [ids[a][2]]), spec("emp-3", ids[b][:2])]
    res = run_check(Discovery(persons=persons), checker)
    by_id = {p.person_id: p for p in res.persons}
    assert by_id["emp-1"].status == Status.ACCEPTED and not by_id["emp-1"].reasons
    assert by_id["emp-2"].status == Status.REJECTED and ReasonCode.DUPLICATE_PERSON in by_id["emp-2"].reasons
    assert "emp-1" in by_id["emp-2"].message and by_id["emp-2"].duplicates[0]["other_person_id"] == "emp-1"
    assert by_id["emp-3"].status == Status.ACCEPTED and not by_id["emp-3"].reasons


def test_duplicate_images_byte_identical_and_near_identical(checker, tmp_path):
    from PIL import Image

    shutil.copy(SAMPLES / "grace_hopper.jpg", tmp_path / "copy.jpg")
    Image.open(SAMPLES / "grace_hopper.jpg").resize((400, 469)).save(tmp_path / "small.jpg", quality=70)
    persons = [PersonSpec("gh", "gh", [SAMPLES / "grace_hopper.jpg", tmp_path / "copy.jpg", tmp_path / "small.jpg"])]
    res = run_check(Discovery(persons=persons), checker)
    reasons = [i.reasons for i in res.items]
    assert reasons[0] == [] and reasons[1] == [ReasonCode.DUPLICATE_IMAGE] and reasons[2] == [ReasonCode.DUPLICATE_IMAGE]
    assert "byte-identical" in res.items[1].message and "near-identical" in res.items[2].message
    assert res.persons[0].status == Status.ACCEPTED


@needs_data
def test_max_images_per_person_keeps_the_best(checker):
    ids = identities()
    a = max(ids, key=lambda k: len(ids[k]))
    res = run_check(Discovery(persons=[spec(a, ids[a][:5])]), checker, policy=PersonPolicy(max_images_per_person=2))
    statuses = [i.status for i in res.items]
    assert statuses.count(Status.ACCEPTED) == 2 and statuses.count(Status.SKIPPED) == 3
    assert all(i.reasons == [ReasonCode.TOO_MANY_IMAGES] for i in res.items if i.status == Status.SKIPPED)
    kept = [i.check.face.size for i in res.items if i.status == Status.ACCEPTED]
    dropped = [i.check.face.size for i in res.items if i.status == Status.SKIPPED]
    assert min(kept) >= 0.5 * max(dropped)  # quality ranking favours bigger faces


def test_person_with_no_usable_image_is_rejected(checker):
    res = run_check(Discovery(persons=[PersonSpec("x", "x", [SAMPLES / "no_face.jpg", SAMPLES / "blurred.jpg"])]), checker)
    assert res.persons[0].status == Status.REJECTED and res.persons[0].reasons == [ReasonCode.NO_ACCEPTED_IMAGE]
    res = run_check(Discovery(persons=[PersonSpec("y", "y", [SAMPLES / "truncated.jpg"])]), checker)
    assert res.persons[0].status == Status.FAILED


@pytest.mark.parametrize("n", [0, 1])
def test_identity_needs_two_images(checker, n):
    res = run_check(Discovery(persons=[PersonSpec("g", "g", [SAMPLES / "grace_hopper.jpg"] * n)]), checker)
    assert all(ReasonCode.IDENTITY_MISMATCH not in i.reasons for i in res.items)
