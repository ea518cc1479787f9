"""Contract tests (DESIGN.md section 3): the same enroll-then-search scenario on every sink -- the
embedded engine, and the OpenCV FR client talking to `facecli serve` on 127.0.0.1 -- must give the
same persons and the same top-1 answers."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from facecli.engine.engine import Engine
from facecli.errors import Status
from facecli.imaging.encode import PayloadSpec
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.enroll import EnrollOptions, run_enroll
from facecli.pipeline.persons import PersonPolicy
from facecli.pipeline.search import search_image
from facecli.sinks.local import LocalSink
from facecli.sinks.opencv_fr import OpenCVFRSink
from facecli.sources.spec import Discovery, PersonSpec

from .conftest import DATASETS, needs_data, needs_models
from .live_server import LiveServer

pytestmark = [needs_models, needs_data]
PAIRS = DATASETS / "deepface-pairs"
KEY = "contract-key"
SINKS = ["local", "remote"]
PROBES = 3  # searches per identity (its 2nd.. photos); keeps the remote run (detection twice) short


def identities() -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for row in csv.DictReader((PAIRS / "identities.csv").open()):
        ids.setdefault(row["identity"], []).append(row["file"])
    return ids


@pytest.fixture(scope="module")
def scenario(checker, tmp_path_factory):
    """Runs the scenario once per sink, lazily, and remembers what each sink answered."""
    from facecli.server.app import create_app

    tmp = tmp_path_factory.mktemp("contract")
    engine = Engine(tmp / "server.db")
    server = LiveServer(create_app(engine, checker, [KEY])).__enter__()
    done: dict[str, dict] = {}
    ids = identities()

    def run(kind: str) -> dict:
        if kind in done:
            return done[kind]
        if kind == "local":
            sink, chk = LocalSink(tmp / "local.db", writer=True), checker
        else:
            sink = OpenCVFRSink(server.url, KEY, batch_size=4, concurrency=2)
            chk = FaceChecker(checker.detector, checker.recognizer, replace(checker.config, payload=PayloadSpec()))
        discovery = Discovery([PersonSpec(ident, f"Person {ident}", [PAIRS / files[0]], {"identity": ident})
                               for ident, files in sorted(ids.items())])
        try:
            result = run_enroll(discovery, chk, sink, EnrollOptions(collection="contract", create_collection=True,
                                                                    batch_size=8),
                                # duplicates between identities are the checks' business, not the sinks'
                                policy=PersonPolicy(max_images_per_person=1, on_duplicate="warn"))
            total, rows = sink.list_persons("contract", None, 0)
            top1 = {}
            for files in ids.values():
                for f in files[1:1 + PROBES]:
                    res = search_image(PAIRS / f, chk, sink, "contract", k=3, min_score=0.0)
                    top1[f] = res.faces[0].matches[0]["person_id"] if res.found else None
        finally:
            sink.close()
        done[kind] = {"summary": result.summary, "statuses": {p.person_id: p.status for p in result.persons},
                      "persons": sorted((r.person_id, r.person_name, tuple(sorted(r.metadata.items())), r.faces)
                                        for r in rows),
                      "total": total, "top1": top1, "truth": {f: i for i, fs in ids.items() for f in fs[1:1 + PROBES]},
                      "retries": getattr(sink, "retries", 0)}
        return done[kind]

    yield run
    server.__exit__()
    engine.close()


@pytest.mark.parametrize("kind", SINKS)
def test_enroll_then_search(scenario, kind):
    r = scenario(kind)
    assert set(r["statuses"].values()) == {Status.ENROLLED}, r["statuses"]
    assert r["total"] == len(identities()) == 13
    assert all(faces == 1 for *_, faces in r["persons"])
    right = sum(r["top1"][f] == truth for f, truth in r["truth"].items())
    assert len(r["truth"]) >= 30 and right / len(r["truth"]) >= 0.95, (right, len(r["truth"]))


def test_sinks_give_the_same_persons_and_answers(scenario):
    local, remote = scenario("local"), scenario("remote")
    assert local["persons"] == remote["persons"]
    differ = {f: (local["top1"][f], remote["top1"][f]) for f in local["top1"] if local["top1"][f] != remote["top1"][f]}
    assert not differ
    assert local["summary"].persons == remote["summary"].persons
