"""`facecli search PATH...` (issue 18): many photos in one process, batched searches, JSON Lines,
CSV, reports, --draw, exit codes; on the embedded engine and through a real `facecli serve`.

The gallery is enrolled through the library (check stage, then the engine), so these tests do not
depend on `facecli enroll`: one photo of each deepface-pairs identity but the last; the probes are
their other photos, and the last identity's photos are strangers."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.engine.engine import Engine, EngineFace, EnginePerson
from facecli.imaging.annotate import MATCH_COLOUR
from facecli.pipeline.search import CSV_COLUMNS, search_paths
from facecli.sinks.local import LocalSink

from .conftest import DATASETS, SAMPLES, needs_data, needs_models
from .live_server import Faults, LiveServer

pytestmark = [needs_models, needs_data]
runner = CliRunner()
PAIRS = DATASETS / "deepface-pairs"
KEY = "search-many-key-7Hq2"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def identities() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in csv.DictReader((PAIRS / "identities.csv").open()):
        out.setdefault(r["identity"], []).append(r["file"])
    return {k: sorted(v, key=lambda f: int("".join(c for c in f if c.isdigit()) or 0)) for k, v in sorted(out.items())}


def enroll(engine, checker, items: dict[str, Path], collection: str = "default") -> None:
    checks = list(checker.check_paths(list(items.values())))
    assert all(c.embedding is not None for c in checks), [c.reasons for c in checks]
    engine.create_collection(collection, exist_ok=True)
    engine.upsert_persons(collection, [EnginePerson(pid, f"name of {pid}", faces=[EngineFace(c.embedding, c.sha256)])
                                       for pid, c in zip(items, checks)])


@pytest.fixture(scope="module")
def gallery(checker, tmp_path_factory):
    """(db, probes folder, {probe file name: identity or None}): 12 identities enrolled."""
    ids = identities()
    stranger = list(ids)[-1]
    root = tmp_path_factory.mktemp("gallery")
    db = root / "g.db"
    with Engine(db) as e:
        enroll(e, checker, {i: PAIRS / files[0] for i, files in ids.items() if i != stranger})
    probes = root / "probes"
    (probes / "sub").mkdir(parents=True)
    truth: dict[str, str | None] = {}
    for i, files in ids.items():
        for f in files[1:3] if i != stranger else files[:2]:
            dest = probes / ("sub" if len(truth) % 2 else "") / f
            shutil.copyfile(PAIRS / f, dest)
            truth[f] = None if i == stranger else i
    return db, probes, truth


def lines(res) -> list[dict]:
    return [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()]


def test_a_folder_is_searched_recursively_in_one_run_as_json_lines(gallery):
    db, probes, truth = gallery
    res = invoke("search", probes, "--db", db, "--json", "-k", "2")
    got = lines(res)
    assert len(got) == len(truth) and {Path(r["query"]).name for r in got} == set(truth)  # sub/ too
    assert res.exit_code == 1  # the stranger's photos find nobody
    bars = {r["min_score"] for r in got}
    assert len(bars) == 1 and {r["gallery"] for r in got} == {12}  # one bar, per photo, at the gallery's size
    right = 0
    for r in got:
        who = truth[Path(r["query"]).name]
        tops = [f["matches"][0]["person_id"] for f in r["faces"] if f["matches"]]
        if who is None:
            assert tops == [], r  # a stranger never matches at the bar
        else:
            assert tops in ([], [who]), r  # never the wrong person
            right += tops == [who]
    assert right >= 0.7 * sum(v is not None for v in truth.values())


def test_a_batch_answers_exactly_what_one_photo_at_a_time_does(gallery):
    db, probes, truth = gallery
    many = {Path(r["query"]).name: r for r in lines(invoke("search", probes, "--db", db, "--json"))}
    for name in sorted(truth)[:4]:
        path = next(probes.rglob(name))
        one = invoke("search", path, "--db", db, "--json")
        (single,) = lines(one)
        assert single == many[name]  # the same object, the same fields, the same scores
        assert one.exit_code == (0 if single["faces"] and single["faces"][0]["matches"] else 1)


def test_exit_0_only_when_every_photo_found_someone(gallery):
    db, probes, truth = gallery
    found = [next(probes.rglob(n)) for n, r in
             ((Path(r["query"]).name, r) for r in lines(invoke("search", probes, "--db", db, "--json")))
             if r["faces"] and r["faces"][0]["matches"]]
    assert len(found) >= 3
    assert invoke("search", *found[:3], "--db", db).exit_code == 0
    assert invoke("search", *found[:2], SAMPLES / "no_face.jpg", "--db", db).exit_code == 1
    stranger = next(probes.rglob(next(n for n, v in truth.items() if v is None)))
    assert invoke("search", found[0], stranger, "--db", db).exit_code == 1


def test_csv_columns_rows_and_the_reports(gallery, tmp_path):
    db, probes, truth = gallery
    extra = tmp_path / "bad.jpg"
    extra.write_bytes(b"not a picture")
    args = ("search", probes, SAMPLES / "no_face.jpg", extra, "--db", db, "-k", "2")
    res = invoke(*args, "--csv", "--report", tmp_path / "r.csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert res.stdout.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert CSV_COLUMNS[:7] == ("path", "face", "person_id", "person_name", "score", "false_match_probability", "ambiguous")
    assert (tmp_path / "r.csv").read_text() == res.stdout.replace("\r\n", "\n").replace("\n", "\r\n") or \
        list(csv.DictReader((tmp_path / "r.csv").open())) == rows
    as_json = lines(invoke(*args, "--json", "--report", tmp_path / "r.jsonl"))
    assert [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()] == as_json
    expected = sum(max(1, len(f["matches"])) for r in as_json for f in r["faces"]) + sum(1 for r in as_json if "reason" in r)
    assert len(rows) == expected
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(SAMPLES / "no_face.jpg")]["reason"] == "NO_FACE" and by_path[str(extra)]["reason"] == "UNSUPPORTED_FORMAT"
    matched = [r for r in rows if r["person_id"]]
    assert matched and all(r["face"] == "1" and 0 < float(r["false_match_probability"]) < 0.01 for r in matched)
    assert all(r["ambiguous"] in ("true", "false") and float(r["score"]) >= as_json[0]["min_score"] for r in matched)
    assert invoke(*args, "--csv", "--json").exit_code == 2
    assert invoke(*args, "--report", tmp_path / "r.xml").exit_code == 2


def test_draw_writes_every_photo_with_boxes(gallery, tmp_path):
    db, probes, truth = gallery
    out = tmp_path / "drawn"
    res = invoke("search", probes, SAMPLES / "two_faces.jpg", "--db", db, "--draw", out, "--all-faces", "--json")
    got = lines(res)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    names = sorted(p.relative_to(probes).with_suffix(".jpg").as_posix() for p in probes.rglob("*.jpg")) + ["two_faces.jpg"]
    assert written == sorted(names)
    r = next(r for r in got if r["faces"] and r["faces"][0]["matches"])
    drawn = Image.open(out / next(probes.rglob(Path(r["query"]).name)).relative_to(probes).with_suffix(".jpg"))
    original = Image.open(r["query"])
    f = drawn.width / original.width
    x, y, w, h = (v * f for v in r["faces"][0]["box"])
    edge = np.asarray(drawn.convert("RGB"))[int(y + h / 2), max(0, int(x)) : int(x) + 3].astype(int)
    assert (np.abs(edge - MATCH_COLOUR).sum(axis=1) < 90).any(), edge  # the green box of a match
    assert drawn.size != (0, 0) and max(drawn.size) <= 1280


def test_batches_are_one_index_pass_per_chunk_and_bad_files_keep_their_place(checker, gallery, tmp_path):
    db, probes, truth = gallery
    paths = sorted(probes.rglob("*.jpg"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    paths = paths[:3] + [bad] + paths[3:]

    class Counting(LocalSink):
        calls: list[int] = []

        def search_many(self, collection, embeddings, k, min_score):
            self.calls.append(len(embeddings))
            return super().search_many(collection, embeddings, k, min_score)

    sink = Counting(db)
    try:
        results = list(search_paths(paths, checker, sink, "default", k=1, chunk=8))
    finally:
        sink.close()
    assert [r.query for r in results] == [str(p) for p in paths]
    assert results[3].reason is not None and results[3].faces == []
    assert len(Counting.calls) == -(-len(paths) // 8) and sum(Counting.calls) == len(paths) - 1


def test_a_manifest_of_probes(gallery, tmp_path):
    db, probes, truth = gallery
    manifest = tmp_path / "m.csv"
    files = []
    for f in sorted(probes.rglob("*.jpg"))[:3]:
        files.append(tmp_path / f.name)
        shutil.copyfile(f, files[-1])
    manifest.write_text("person_id,image\n" + "".join(f"p{i},{f.name}\n" for i, f in enumerate(files))
                        + "bad id/,x.jpg\n")
    res = invoke("search", "--manifest", manifest, "--db", db, "--json")
    assert res.exit_code == 1, res.output  # the refused row counts as a photo that found nobody
    got = lines(res)
    assert [Path(r["query"]).name for r in got[:3]] == [f.name for f in files]
    assert got[3]["reason"] == "INVALID_ROW" and str(manifest) in got[3]["query"]
    assert invoke("search", files[0], "--manifest", manifest, "--db", db).exit_code == 2
    assert invoke("search", tmp_path / "absent.jpg", "--db", db).exit_code == 2


# -- through a real `facecli serve` ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(checker, gallery, tmp_path_factory):
    from facecli.server.app import create_app

    db, _, _ = gallery
    copy = tmp_path_factory.mktemp("served") / "g.db"
    shutil.copyfile(db, copy)
    engine = Engine(copy)
    faults = Faults(create_app(engine, checker, [KEY]))
    with LiveServer(faults) as srv:
        srv.faults = faults
        yield srv
    engine.close()


def test_search_many_through_facecli_serve_with_retries(served, gallery, monkeypatch):
    db, probes, truth = gallery
    monkeypatch.setenv("FACECLI_API_KEY", KEY)
    local = {Path(r["query"]).name: r for r in lines(invoke("search", probes, "--db", db, "--json"))}
    served.faults.reset(rate_500=0.25, methods=("POST",))  # every 4th face-search answers 500 first
    res = invoke("search", probes, "--to", served.url, "--json", "--concurrency", "3")
    counts = dict(served.faults.counts)
    got = lines(res)
    assert res.exit_code == 1 and len(got) == len(truth)
    assert counts["500"] > 0, counts  # retried: every photo still has its answer
    assert served.faults.max_inflight >= 2  # --concurrency: requests overlap
    served.faults.reset()
    assert {r["gallery"] for r in got} == {12}  # persons, counted by the server
    for r in got:
        name = Path(r["query"]).name
        top = [f["matches"][0]["person_id"] for f in r["faces"] if f["matches"]]
        want = [f["matches"][0]["person_id"] for f in local[name]["faces"] if f["matches"]]
        assert top in ([], [truth[name]] if truth[name] else []), (name, top)
        if top and want:
            assert top == want
    right = sum(1 for r in got if any(f["matches"] for f in r["faces"]))
    assert right >= 0.7 * sum(v is not None for v in truth.values())
