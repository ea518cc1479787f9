"""`facecli compare`, `facecli calibrate` and `facecli collections stats` (issue 18), on real photos
and the real models; the metrics against brute force."""

from __future__ import annotations

import json
import re
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.config import load_config_file, write_config_values
from facecli.engine.engine import Engine, EngineFace, EnginePerson
from facecli.errors import ConfigError
from facecli.pipeline.calibrate import best_accuracy_threshold, rates, roc_auc, threshold_at_far
from facecli.vision.embed import MATCH_THRESHOLD
from facecli.vision.scores import load_score_model

from .conftest import DATASETS, REPO, SAMPLES, needs_data, needs_models

runner = CliRunner()
PAIRS = DATASETS / "deepface-pairs"
LFW = DATASETS / "lfw-view1"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# -- metrics (no models) ----------------------------------------------------------------------------


def test_roc_auc_counts_ties_half_like_brute_force():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(0.85, 0.05, 400), 2)  # many ties
    same = rng.random(400) < 0.3
    scores[same] += 0.05
    pos, neg = scores[same], scores[~same]
    brute = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(scores, same) == pytest.approx(brute, abs=1e-12)
    assert roc_auc(np.array([0.9, 0.8, 0.7]), np.array([True, False, False])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5


def test_threshold_at_far_accepts_at_most_that_share_of_different_pairs():
    rng = np.random.default_rng(5)
    diff = rng.normal(0.84, 0.035, 5000)
    same = rng.normal(0.96, 0.02, 500)
    s, y = np.concatenate([same, diff]), np.r_[np.ones(500, bool), np.zeros(5000, bool)]
    for far in (0.01, 0.001, 0.0002):
        t = threshold_at_far(s, y, far)
        assert (diff >= t).mean() <= far
        assert (diff >= t - 1e-4).mean() > far or t - 1e-4 <= diff.max() - 1  # the lowest such 4-decimal value
        assert round(t, 4) == t
    assert threshold_at_far(s, y, 0.0001) > diff.max()  # below one pair: above every different pair
    t = best_accuracy_threshold(np.array([0.7, 0.8, 0.9, 0.95]), np.array([False, False, True, True]))
    assert t == pytest.approx(0.85) and rates(np.array([0.7, 0.9]), np.array([False, True]), t)["accuracy"] == 1.0


def test_write_config_values_keeps_the_rest_of_the_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('# mine\npreset = "opencv-fr"\nmatch_threshold = 0.5  # old\n\n[thresholds]\nmin_sharpness = 30\n')
    write_config_values({"match_threshold": 0.9312}, cfg)
    text = cfg.read_text()
    assert text.startswith("# mine\n") and "min_sharpness = 30" in text and text.count("match_threshold") == 1
    assert load_config_file(cfg) == {"preset": "opencv-fr", "match_threshold": 0.9312, "thresholds": {"min_sharpness": 30}}
    fresh = tmp_path / "new" / "c.toml"
    write_config_values({"search_min_score": 0.95}, fresh)
    assert load_config_file(fresh) == {"search_min_score": 0.95}
    with pytest.raises(ConfigError):
        write_config_values({"match_treshold": 0.9}, cfg)


# -- compare ----------------------------------------------------------------------------------------


@needs_models
@needs_data
def test_compare_same_and_different_people_and_the_exit_codes():
    a, b, other = PAIRS / "img1.jpg", PAIRS / "img2.jpg", PAIRS / "img20.jpg"  # id01, id01, another identity
    res = invoke("compare", a, b, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (v,) = doc["compared"]
    model = load_score_model("c2dcfaad2df8c8461764d5cc454d54f3aff679cc5f4fc6d55b754f4f655b3da8")
    assert doc["same_person"] and v["same"] and v["score"] >= MATCH_THRESHOLD == doc["threshold"]
    assert doc["threshold_source"] == "default"
    assert v["false_match_probability"] == pytest.approx(model.p_one(v["score"]), rel=0.01)
    res = invoke("compare", a, b, other, "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert [c["same"] for c in doc["compared"]] == [True, False] and not doc["same_person"]
    assert doc["compared"][1]["score"] < MATCH_THRESHOLD and doc["compared"][1]["false_match_probability"] > 0.01
    text = invoke("compare", a, b, other)
    assert "same person" in text.stdout and "different" in text.stdout and "threshold 0.9080 (default)" in text.stdout


@needs_models
@needs_data
def test_compare_a_photo_without_a_face_is_exit_1_with_the_reason_and_one_photo_is_usage():
    res = invoke("compare", PAIRS / "img1.jpg", SAMPLES / "no_face.jpg", "--json")
    assert res.exit_code == 1
    v = json.loads(res.stdout)["compared"][0]
    assert v["reason"] == "NO_FACE" and "score" not in v
    res = invoke("compare", PAIRS / "img1.jpg", SAMPLES / "no_face.jpg")
    assert res.exit_code == 1 and "NO_FACE" in res.stderr and "no_face.jpg" in res.stderr
    assert invoke("compare", PAIRS / "img1.jpg").exit_code == 2
    assert invoke("compare", PAIRS / "img1.jpg", PAIRS / "absent.jpg").exit_code == 2


@needs_models
@needs_data
def test_compare_takes_the_threshold_from_flag_then_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("match_threshold = 0.9999\n")
    a, b = PAIRS / "img1.jpg", PAIRS / "img2.jpg"
    res = invoke("compare", a, b, "--json", "--config", cfg)
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and doc["threshold"] == 0.9999 and doc["threshold_source"] == "config file match_threshold"
    res = invoke("compare", a, b, "--json", "--config", cfg, "--match-threshold", "0.9")
    assert res.exit_code == 0 and json.loads(res.stdout)["threshold_source"] == "--match-threshold"


# -- calibrate --------------------------------------------------------------------------------------


def readme_quoted_auc() -> float:
    """The ROC AUC the README's calibrate section quotes for deepface-pairs."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## `facecli calibrate"):]
    section = section[: section.index("\n## ", 4)]
    return float(re.search(r"deepface-pairs.*?ROC AUC \*\*(\d\.\d{4})\*\*", section, re.S).group(1))


@needs_models
@needs_data
def test_calibrate_on_deepface_pairs_reproduces_the_readme(tmp_path):
    cfg, plot = tmp_path / "c.toml", tmp_path / "scores.png"
    res = invoke("calibrate", "--pairs", PAIRS / "master.csv", "--json", "--plot", plot, "--config", cfg, "--write-config")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["roc_auc"] == pytest.approx(readme_quoted_auc(), abs=0.0005)
    assert doc["pairs"] == {"same": 38, "different": 262, "different_sampled": False, "skipped": 0}
    assert doc["photos"] == 25 and doc["photos_without_face"] == []
    cur = doc["current"]
    assert cur["threshold"] == MATCH_THRESHOLD and cur["accuracy"] == pytest.approx(299 / 300) and cur["tar"] == 1.0
    at = doc["at_far"]
    assert at["far"] == 0.0 and at["tar"] == 1.0 and not at["resolved"]  # 262 pairs cannot measure 1e-3
    assert doc["scores"]["different_max"] < at["threshold"] <= doc["scores"]["different_max"] + 0.0001
    assert 0.92 < at["score_model_threshold"] < 0.95
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size == (960, 540)
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert any(b > 150 and r < 150 for r, g, b in colours) and any(r > 150 and b < 120 for r, g, b in colours)
    assert load_config_file(cfg) == {"match_threshold": at["threshold"]} == {"match_threshold": doc["written"]["match_threshold"]}
    again = json.loads(invoke("compare", PAIRS / "img1.jpg", PAIRS / "img2.jpg", "--json", "--config", cfg).stdout)
    assert again["threshold"] == at["threshold"]  # compare honours what calibrate wrote


@needs_models
@needs_data
def test_calibrate_a_folder_per_person_scores_every_pair(tmp_path):
    people = ["Abdullah_Gul", "Alvaro_Uribe", "Andre_Agassi", "Amelie_Mauresmo"]
    root = tmp_path / "labelled"
    counts = []
    for p in people:
        files = sorted((LFW / "images" / p).glob("*.jpg"))[:4]
        assert len(files) >= 2, p
        (root / p).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, root / p / f.name)
        counts.append(len(files))
    doc = json.loads(invoke("calibrate", root, "--json", "--far", "0.01").stdout)
    n = sum(counts)
    same = sum(c * (c - 1) // 2 for c in counts)
    assert doc["photos"] == n
    skipped = len(doc["photos_without_face"])
    if not skipped:
        assert doc["pairs"]["same"] == same and doc["pairs"]["different"] == n * (n - 1) // 2 - same
    assert doc["roc_auc"] > 0.95 and doc["current"]["accuracy"] > 0.9


@needs_models
@needs_data
def test_calibrate_an_lfw_pairs_file(tmp_path):
    lines = (LFW / "pairsDevTest.txt").read_text().splitlines()[1:]
    same = [ln for ln in lines if len(ln.split()) == 3][:15]
    diff = [ln for ln in lines if len(ln.split()) == 4][:15]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("30\n" + "\n".join(same + diff) + "\n")
    res = invoke("calibrate", "--pairs", pairs, "--images", LFW / "images", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["pairs"]["same"] + doc["pairs"]["skipped"] >= 15 and doc["pairs"]["different"] >= 14
    assert doc["roc_auc"] > 0.97


@needs_models
def test_calibrate_usage_errors(tmp_path):
    assert invoke("calibrate").exit_code == 2
    one = tmp_path / "one" / "alice"
    one.mkdir(parents=True)
    shutil.copyfile(SAMPLES / "grace_hopper.jpg", one / "a.jpg")
    shutil.copyfile(SAMPLES / "grace_hopper_2.jpg", one / "b.jpg")
    res = invoke("calibrate", tmp_path / "one")
    assert res.exit_code == 2 and "at least two persons" in res.stderr
    assert invoke("calibrate", tmp_path / "one", "--pairs", tmp_path / "x.txt").exit_code == 2
    assert invoke("calibrate", tmp_path / "one", "--plot", tmp_path / "x.jpg").exit_code == 2


# -- collections stats ------------------------------------------------------------------------------


def _enrolled(checker, engine, collection: str = "default") -> None:
    """Two photos each of the deepface-pairs identities with 4+ photos, one of the others."""
    import csv

    ids: dict[str, list[str]] = {}
    for r in csv.DictReader((PAIRS / "identities.csv").open()):
        ids.setdefault(r["identity"], []).append(r["file"])
    engine.create_collection(collection, exist_ok=True)
    persons = []
    for ident, files in sorted(ids.items()):
        chosen = sorted(files)[: 2 if len(files) >= 4 else 1]
        checks = list(checker.check_paths([PAIRS / f for f in chosen]))
        persons.append(EnginePerson(ident, ident, faces=[EngineFace(c.embedding, c.sha256) for c in checks
                                                         if c.embedding is not None]))
    engine.upsert_persons(collection, persons)


def _brute_tail(engine, collection: str) -> tuple[np.ndarray, list[int]]:
    persons, owner, matrix = engine.face_embeddings(collection)
    sims = matrix @ matrix.T
    sims[owner[:, None] == owner[None, :]] = -np.inf
    return sims.max(axis=1), np.bincount(owner).tolist()


@needs_models
@needs_data
def test_collections_stats_agree_with_the_engine(checker, tmp_path):
    db = tmp_path / "g.db"
    with Engine(db) as e:
        _enrolled(checker, e)
        persons, faces = e.counts("default")
        best, per = _brute_tail(e, "default")
    res = invoke("collections", "stats", "default", "--db", db, "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["persons"], s["faces"]) == (persons, faces) == (13, sum(per))
    assert s["faces_per_person"] == {"min": min(per), "median": float(np.median(per)), "max": max(per),
                                     "mean": round(float(np.mean(per)), 3)}
    model = load_score_model(s["model"]["sha256"])
    assert s["model"]["same_scores"] and s["model"]["recognizer"] == "dlib-resnet"
    assert s["search_bar"]["threshold"] == round(model.threshold(faces, 0.01), 4) and s["search_bar"]["gallery"] == faces
    t = s["tail"]
    assert t["faces_measured"] == faces and not t["sampled"]
    assert t["max"] == round(float(best.max()), 4) and t["p50"] == round(float(np.percentile(best, 50)), 4)
    assert t["above_bar"] == round(float((best >= s["search_bar"]["threshold"]).mean()), 6)
    assert s["closest_pairs"][0]["score"] == t["max"]
    assert [p["score"] for p in s["closest_pairs"]] == sorted((p["score"] for p in s["closest_pairs"]), reverse=True)
    sampled = json.loads(invoke("collections", "stats", "default", "--db", db, "--json", "--sample", "5").stdout)
    assert sampled["tail"]["faces_measured"] == 5 and sampled["tail"]["sampled"]
    text = invoke("collections", "stats", "default", "--db", db).stdout
    assert f"{persons} person(s), {faces} face(s)" in text and "search bar for" in text
    assert invoke("collections", "stats", "nope", "--db", db).exit_code == 3


@needs_models
@needs_data
def test_collections_stats_on_postgresql_match_sqlite(checker, tmp_path):
    from . import pg_server

    url = pg_server.fresh_url()
    db = tmp_path / "g.db"
    with Engine(db) as e:
        _enrolled(checker, e)
    from facecli.engine.pg import PgEngine, copy_collection

    with Engine(db) as src, PgEngine(url) as dst:
        copy_collection(src, dst, "default")
    local = json.loads(invoke("collections", "stats", "default", "--db", db, "--json").stdout)
    res = invoke("collections", "stats", "default", "--to", url, "--json")
    assert res.exit_code == 0, res.output
    pg = json.loads(res.stdout)
    for key in ("persons", "faces", "faces_per_person", "search_bar"):
        assert pg[key] == local[key], key
    for key in ("p50", "p90", "p99", "max"):
        assert pg["tail"][key] == pytest.approx(local["tail"][key], abs=2e-4)


@needs_models
@needs_data
def test_collections_stats_of_a_server_says_what_is_not_available(checker, tmp_path, monkeypatch):
    from facecli.server.app import create_app

    from .live_server import LiveServer

    engine = Engine(tmp_path / "served.db")
    _enrolled(checker, engine)
    persons, faces = engine.counts("default")
    with LiveServer(create_app(engine, checker, ["k-stats"])) as srv:
        monkeypatch.setenv("FACECLI_API_KEY", "k-stats")
        res = invoke("collections", "stats", "default", "--to", srv.url, "--json")
    engine.close()
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert (s["persons"], s["faces"]) == (persons, faces) and s["faces_per_person"]["max"] == 2
    assert s["tail"] is None and s["model"]["same_scores"]  # /health names the same recognizer
    assert s["search_bar"]["unit"] == "persons" and s["search_bar"]["gallery"] == persons
    assert any("not available for this target" in n for n in s["notes"])
