"""Decisions at scale: the score model, duplicate persons against the run and the target, the
DUPLICATE_IMAGE keeper, and search's bar at the gallery's size (issue 14)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.errors import ReasonCode, Status
from facecli.pipeline.check import ImageCheck
from facecli.pipeline.enroll import CheckedPerson, person_verdict
from facecli.pipeline.persons import (
    DuplicateRule,
    GalleryContext,
    PersonPolicy,
    apply_person_checks,
)
from facecli.pipeline.report import ItemResult
from facecli.sinks.base import Match
from facecli.sources.spec import PersonSpec
from facecli.vision.models import DEFAULT_RECOGNIZER, REGISTRY
from facecli.vision.scores import ScoreModel, load_score_model

from .conftest import DATASETS, needs_data, needs_models

runner = CliRunner()
COMPREFACE = DATASETS / "compreface-samples"


def shipped_model() -> ScoreModel:
    shas = [f.sha256 for f in REGISTRY[DEFAULT_RECOGNIZER].files]
    models = [m for m in (load_score_model(s) for s in shas) if m is not None]
    assert models, "no score model shipped for any file of the default recognizer"
    return models[0]


# -- the score model ---------------------------------------------------------------------------------

def test_score_model_is_shipped_monotone_and_scales_with_n():
    m = shipped_model()
    assert m.meta["pairs"] > 1_000_000 and "DevTrain" in m.meta["source"]
    grid = np.linspace(0.7, 1.0, 61)
    p = [m.p_one(s) for s in grid]
    assert all(a >= b for a, b in zip(p, p[1:])), "P(false match) must not rise with the score"
    assert p[0] > 0.5 and p[-1] < 1e-9
    # more comparisons: a higher bar for the same budget, and a higher chance of a false match
    bars = [m.threshold(n, 1e-4) for n in (1, 300, 1_000, 10_000)]
    assert bars == sorted(bars) and bars[-1] - bars[0] > 0.02
    assert m.p_any(0.95, 10_000) > m.p_any(0.95, 100) > m.p_one(0.95)
    # the threshold is the inverse of p_any (within the table's interpolation)
    for n, budget in ((1, 0.01), (1_000, 0.01), (3_000, 1e-4)):
        t = m.threshold(n, budget)
        assert math.isclose(m.p_any(t, n), budget, rel_tol=0.05)


def test_score_model_table_is_validated():
    with pytest.raises(ValueError):
        ScoreModel.from_json({"recognizer": "x", "sha256": "y", "scores": [0.5, 0.6], "log10_p": [-2, -1]})
    assert load_score_model("0" * 64) is None


# -- per-person decisions (synthetic embeddings, the real code) --------------------------------------

def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def _pair(score: float, dim: int = 128, rng=np.random.default_rng(0)):
    """Two unit vectors with cosine ``score``."""
    a = _unit(rng.normal(size=dim))
    r = rng.normal(size=dim)
    r = _unit(r - (r @ a) * a)
    return a, _unit(score * a + math.sqrt(1 - score**2) * r)


def _person(pid: str, embs, shas=None, phashes=None) -> CheckedPerson:
    cp = CheckedPerson(PersonSpec(pid, pid, [Path(f"{pid}/{i}.jpg") for i in range(len(embs))]))
    for i, e in enumerate(embs):
        c = ImageCheck(path=f"{pid}/{i}.jpg", status=Status.ACCEPTED, embedding=e,
                       sha256=(shas or {}).get(i, f"{pid}-{i}"), phash=(phashes or {}).get(i))
        cp.items.append(ItemResult(c.path, pid, Status.ACCEPTED, [], "", c))
    return cp


def _verdicts(persons, policy=None, gallery=None):
    policy = policy or PersonPolicy()
    found = apply_person_checks(persons, policy, DuplicateRule(policy, shipped_model()), gallery)
    for cp in persons:
        cp.result = person_verdict(cp.spec, cp.items, found.duplicates.get(cp.spec.person_id))
    return {cp.spec.person_id: cp.result for cp in persons}


def test_possible_duplicate_is_a_warning_and_duplicate_a_rejection():
    rule = DuplicateRule(PersonPolicy(), shipped_model())
    reject, review = rule.levels(1)
    a, b = _pair((reject + review) / 2)
    res = _verdicts([_person("a", [a]), _person("b", [b])])
    for pid, other in (("a", "b"), ("b", "a")):
        r = res[pid]
        assert r.status == Status.ACCEPTED and ReasonCode.POSSIBLE_DUPLICATE in r.warnings
        assert r.duplicates[0]["other_person_id"] == other and r.duplicates[0]["decision"] == "possible"
        assert 0 < r.duplicates[0]["false_match_probability"] < 0.01
    a, b = _pair(min(0.999, reject + 0.005))
    res = _verdicts([_person("a", [a]), _person("b", [b])])
    assert res["a"].status == Status.REJECTED and ReasonCode.DUPLICATE_PERSON in res["a"].reasons
    a, b = _pair(review - 0.02)
    res = _verdicts([_person("a", [a]), _person("b", [b])])
    assert res["a"].status == Status.ACCEPTED and not res["a"].warnings and not res["a"].duplicates


def test_the_rejection_bar_rises_with_the_run_and_the_gallery():
    """A score that is a duplicate between two persons is only a review item among 10,000."""
    reject, review = DuplicateRule(PersonPolicy(), shipped_model()).levels(10_001)
    a, b = _pair((reject + review) / 2)
    alone = _verdicts([_person("a", [a]), _person("b", [b])])
    assert ReasonCode.DUPLICATE_PERSON in alone["a"].reasons
    crowd = _verdicts([_person("a", [a]), _person("b", [b])], gallery=GalleryContext(faces=10_000))
    assert crowd["a"].status == Status.ACCEPTED and ReasonCode.POSSIBLE_DUPLICATE in crowd["a"].warnings


def test_duplicate_found_through_the_target_and_self_is_ignored():
    a, b = _pair(0.995)

    def search(items, k, min_score):
        return [[Match(items[0].person_id, "self", 1.0), Match("E1001", "Enrolled", float(b @ a))]]

    res = _verdicts([_person("new", [a])], gallery=GalleryContext(faces=1, search=search))
    r = res["new"]
    assert r.status == Status.REJECTED and r.reasons[0] == ReasonCode.DUPLICATE_PERSON
    assert r.duplicates[0]["other_person_id"] == "E1001" and r.duplicates[0]["where"] == "target"


def test_duplicate_image_keeps_the_copy_its_person_agrees_with():
    rng = np.random.default_rng(1)
    b_face, b_face2 = _pair(0.97, rng=rng)
    # the photo really is B's (B's other photos match it); A holds a copy of it as its only photo
    b_photo = _unit(0.5 * b_face + 0.5 * b_face2)
    persons = [_person("A", [b_photo], shas={0: "same"}), _person("B", [b_face, b_photo, b_face2], shas={1: "same"})]
    res = _verdicts(persons, PersonPolicy(max_images_per_person=0))
    b_items = {i.path: i for i in persons[1].items}
    assert b_items["B/1.jpg"].status == Status.ACCEPTED, "B's own copy must be the one kept"
    assert res["B"].status == Status.ACCEPTED
    a_item = persons[0].items[0]
    assert a_item.status == Status.REJECTED and ReasonCode.DUPLICATE_IMAGE in a_item.reasons
    assert res["A"].status == Status.REJECTED and ReasonCode.DUPLICATE_PERSON in res["A"].reasons
    assert res["A"].duplicates[0]["decision"] == "same_image" and res["A"].duplicates[0]["other_person_id"] == "B"


def test_a_copy_misfiled_under_a_second_person_never_costs_the_first_its_photo():
    rng = np.random.default_rng(2)
    a_photo = _unit(rng.normal(size=128))
    c1, c2 = _pair(0.97, rng=rng)  # C's real photos: a different person from A
    persons = [_person("A", [a_photo], shas={0: "same"}), _person("C", [c1, a_photo, c2], shas={1: "same"})]
    res = _verdicts(persons, PersonPolicy(max_images_per_person=0))
    assert persons[0].items[0].status == Status.ACCEPTED and res["A"].status == Status.ACCEPTED
    copy = persons[1].items[1]
    assert copy.status == Status.REJECTED and copy.reasons == [ReasonCode.IDENTITY_MISMATCH]


def test_phash_hit_needs_the_embedding_to_agree():
    a, b = _pair(0.85)
    res = _verdicts([_person("a", [a], phashes={0: 0b1011}), _person("b", [b], phashes={0: 0b1010})])
    assert res["a"].status == Status.ACCEPTED and res["b"].status == Status.ACCEPTED
    a, b = _pair(0.99)
    persons = [_person("a", [a], phashes={0: 0b1011}), _person("b", [b], phashes={0: 0b1010})]
    res = _verdicts(persons)
    assert ReasonCode.DUPLICATE_IMAGE in persons[1].items[0].reasons and res["a"].status == Status.ACCEPTED


# -- end to end through the CLI (real models, real photos, a real SQLite gallery) ---------------------

def _folder(root: Path, people: dict[str, str]) -> Path:
    for pid, name in people.items():
        (root / pid).mkdir(parents=True, exist_ok=True)
        shutil.copy(COMPREFACE / name, root / pid / name)
    return root


@needs_models
@needs_data
def test_duplicate_across_two_runs_is_found_through_the_target(tmp_path):
    db = tmp_path / "g.db"
    first = _folder(tmp_path / "run1", {"alice": "001_A.jpg", "bob": "007_B.jpg"})
    res = runner.invoke(app, ["enroll", str(first), "--db", str(db), "--create-collection", "--json"])
    assert res.exit_code == 0, res.output
    second = _folder(tmp_path / "run2", {"alice-again": "002_A.jpg"})
    report = tmp_path / "r.jsonl"
    res = runner.invoke(app, ["enroll", str(second), "--db", str(db), "--json", "--report", str(report)])
    assert res.exit_code == 1, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["rejected"] == 1 and s["reasons"].get("DUPLICATE_PERSON") == 1
    assert s["duplicates"][0]["person_id"] == "alice-again" and s["duplicates"][0]["other_person_id"] == "alice"
    assert s["duplicates"][0]["where"] == "target" and s["duplicate_check"]["gallery_faces"] == 2
    person = [json.loads(x) for x in report.read_text().splitlines() if '"kind": "person"' in x][0]
    assert person["reasons"][0] == "DUPLICATE_PERSON" and person["duplicates"][0]["other_person_id"] == "alice"
    persons = json.loads(runner.invoke(app, ["persons", "list", "--db", str(db), "--json"]).stdout)
    assert {p["person_id"] for p in persons["persons"]} == {"alice", "bob"}


@needs_models
@needs_data
def test_possible_duplicate_is_enrolled_with_a_warning(tmp_path):
    photos = _folder(tmp_path / "p", {"a": "001_A.jpg", "b": "002_A.jpg", "c": "007_B.jpg"})
    db = tmp_path / "g.db"
    res = runner.invoke(app, ["enroll", str(photos), "--db", str(db), "--create-collection", "--json"])
    first = json.loads(res.stdout)  # the later of the two look-alikes is the one rejected
    assert res.exit_code == 1 and first["reasons"]["DUPLICATE_PERSON"] == 1 and first["persons"]["enrolled"] == 2
    report = tmp_path / "r.csv"
    res = runner.invoke(app, ["enroll", str(photos), "--db", str(db), "--json", "--no-journal",
                              "--duplicate-min-score", "0.999", "--report", str(report)])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["persons"]["enrolled"] == 3 and s["warnings"]["POSSIBLE_DUPLICATE"] == 1
    pair = s["duplicates"][0]
    assert (pair["person_id"], pair["other_person_id"]) == ("b", "a") and pair["decision"] == "possible"
    assert 0.95 < pair["score"] < 0.999
    assert "POSSIBLE_DUPLICATE" in report.read_text()


@needs_models
@needs_data
def test_search_bar_is_set_at_the_gallery_size_and_exits_1_when_nothing_passes(tmp_path):
    db = tmp_path / "g.db"
    photos = _folder(tmp_path / "p", {"alice": "001_A.jpg", "bob": "007_B.jpg"})
    assert runner.invoke(app, ["enroll", str(photos), "--db", str(db), "--create-collection", "-q"]).exit_code == 0
    res = runner.invoke(app, ["search", str(COMPREFACE / "003_A.jpg"), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    top = out["faces"][0]["matches"][0]
    assert top["person_id"] == "alice" and top["ambiguous"] is False and top["margin"] > 0.05
    assert 0 < top["false_match_probability"] < 0.01 and out["gallery"] == 2
    model = shipped_model()
    assert out["min_score"] == pytest.approx(model.threshold(2, 0.01), abs=1e-4)
    # a person who is not enrolled: no match, exit 1; a fixed --min-score still wins
    stranger = str(COMPREFACE / "009_C.jpg")
    res = runner.invoke(app, ["search", stranger, "--db", str(db), "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["faces"][0]["matches"] == []
    res = runner.invoke(app, ["search", stranger, "--db", str(db), "--json", "--min-score", "0.5"])
    assert res.exit_code == 0 and json.loads(res.stdout)["min_score"] == 0.5
    res = runner.invoke(app, ["search", str(COMPREFACE / "003_A.jpg"), "--db", str(db)])
    assert res.exit_code == 0 and "alice" in res.stdout and "false match" in res.stdout
