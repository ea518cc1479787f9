"""Streaming enroll (issue 19): batches reach the sink while photos are still being checked, memory
is bounded by the queue and batch sizes, report lines come in source order as persons finish, and
per-person checks are incremental (the later of two look-alikes is the one flagged)."""

from __future__ import annotations

import gc
import json
import threading
import time

import pytest

import facecli.pipeline.enroll as enroll_mod
from facecli.errors import ReasonCode, Status
from facecli.imaging.encode import PayloadSpec
from facecli.pipeline.check import CheckConfig, FaceChecker, ImageCheck
from facecli.pipeline.enroll import EnrollOptions, run_check, run_enroll
from facecli.pipeline.executor import LocalExecutor, check_stream
from facecli.pipeline.persons import PersonPolicy
from facecli.pipeline.report import JsonlReport
from facecli.sinks.base import ItemOutcome
from facecli.sources.folder import discover_folder
from facecli.sources.spec import Discovery, PersonSpec

from .conftest import DATASETS, MODELS, SAMPLES, needs_data, needs_models

PAIRS = DATASETS / "deepface-pairs"
WARN = PersonPolicy(on_duplicate="warn", on_identity_mismatch="warn")


class CountingExecutor(LocalExecutor):
    """The local executor, counting the photos it has checked (on the check thread)."""

    def __init__(self, checker: FaceChecker) -> None:
        super().__init__(checker)
        self.produced = 0

    def check(self, paths):
        for r in super().check(paths):
            self.produced += 1
            yield r


class SlowSink:
    """A sink that takes its time and notes, at each upsert, how far checking had got and how many
    payloads (face crops) were alive in the process."""

    name = "slow"
    target = "slow://test"
    takes_images = True

    def __init__(self, executor: CountingExecutor, delay: float = 0.05) -> None:
        self.executor, self.delay = executor, delay
        self.calls: list[dict] = []

    def ensure_collection(self, collection, create):
        pass

    def upsert(self, collection, persons):
        live = sum(1 for o in gc.get_objects() if type(o) is ImageCheck and o.payload is not None)
        self.calls.append({"checked": self.executor.produced, "persons": len(persons), "live_payloads": live,
                           "thread": threading.current_thread().name})
        time.sleep(self.delay)
        return [ItemOutcome(p.person_id, Status.ENROLLED, action="created") for p in persons]

    def close(self):
        pass


@pytest.fixture(scope="module")
def payload_checker():
    if not (MODELS / "dlib_resnet_faceapi_rec_u8.onnx").is_file():
        pytest.skip(f"model files not found in {MODELS}")
    return FaceChecker.open(CheckConfig(models_dir=MODELS, threads=1, decode_workers=2, embed_batch=4,
                                        payload=PayloadSpec(kind="face")))


@needs_data
def test_batches_go_out_while_checking_goes_on_and_payloads_are_bounded(payload_checker, monkeypatch, tmp_path):
    monkeypatch.setattr(enroll_mod, "QUEUE_PERSONS", 2)
    discovery = discover_folder(PAIRS)
    total = discovery.image_count
    assert total >= 60
    exe = CountingExecutor(payload_checker)
    sink = SlowSink(exe)
    lines: list[tuple[str, int]] = []

    class Spy(JsonlReport):
        def _line(self, obj):
            lines.append((obj["kind"], exe.produced))
            super()._line(obj)

    report = Spy((tmp_path / "r.jsonl").open("w"))
    res = run_enroll(discovery, payload_checker, sink, EnrollOptions(batch_size=2), report=report, policy=WARN,
                     executor=exe)
    enrolled = res.summary.persons["enrolled"]
    assert enrolled > 40 and sum(c["persons"] for c in sink.calls) == enrolled
    # the first batch went out long before the last photo was checked ...
    assert sink.calls[0]["checked"] < total / 2, sink.calls[:3]
    # ... and the first report lines too (persons are recorded as they finish)
    first_person = next(n for kind, n in lines if kind == "person")
    assert first_person < total / 2
    # memory: live payloads stay within batch + queues + the check window, far below the run
    peak = max(c["live_payloads"] for c in sink.calls)
    assert peak <= 2 + 2 * 2 + 2 * 2 + 4 + 6, sink.calls  # batch, 2 queues, decode window, embed batch, slack
    assert peak < total / 3
    # the sink ran on the calling thread (sinks and ledgers need not be thread-safe)
    assert {c["thread"] for c in sink.calls} == {threading.current_thread().name}
    # once recorded, no item holds its payload
    assert all(i.check is None or i.check.payload is None for i in res.items)


@needs_data
def test_report_lines_come_in_source_order(payload_checker, tmp_path):
    discovery = discover_folder(PAIRS)
    exe = CountingExecutor(payload_checker)
    path = tmp_path / "r.jsonl"
    run_enroll(discovery, payload_checker, SlowSink(exe, delay=0.0), EnrollOptions(batch_size=3),
               report=JsonlReport(path.open("w")), policy=WARN, executor=exe)
    persons = [json.loads(x)["person_id"] for x in path.read_text().splitlines() if '"kind": "person"' in x]
    assert persons == [p.person_id for p in discovery.persons]


@needs_models
def test_keep_items_false_keeps_only_what_the_tables_list(checker):
    res = run_check(discover_folder(SAMPLES), checker, keep_items=False)
    assert res.items and all(i.status in (Status.REJECTED, Status.FAILED) or i.warnings for i in res.items)
    assert res.summary.images["accepted"] == 3 and len(res.items) == sum(res.summary.images.values()) - 3
    assert all(i.check is None for i in res.items)  # the tables need no measurements


@needs_models
def test_check_stream_merges_cached_results_in_order(checker):
    """Cached results (the run ledger) and fresh ones come out in source order, person by person."""
    from facecli.pipeline.enroll import CheckedPerson

    files = [SAMPLES / n for n in ("grace_hopper.jpg", "astronaut.jpg", "no_face.jpg", "blurred.jpg")]
    persons = [CheckedPerson(PersonSpec("a", "a", files[:2])), CheckedPerson(PersonSpec("empty", "e", [])),
               CheckedPerson(PersonSpec("b", "b", files[2:3])), CheckedPerson(PersonSpec("c", "c", files[3:]))]
    cached = {str(files[1]): checker.check_path(files[1]), str(files[2]): checker.check_path(files[2])}
    fresh: list[str] = []
    out = list(check_stream(persons, LocalExecutor(checker), lookup=cached.get, store=lambda c: fresh.append(c.path)))
    assert [cp.spec.person_id for cp, _ in out] == ["a", "empty", "b", "c"]
    assert [[c.path for c in checks] for _, checks in out] == [[str(f) for f in files[:2]], [], [str(files[2])],
                                                                [str(files[3])]]
    assert fresh == [str(files[0]), str(files[3])]  # only the photos not cached were checked
    assert out[0][1][1] is cached[str(files[1])]


@needs_data
def test_look_alikes_flag_the_later_person_and_the_bar_is_the_run_size(checker):
    rows = [r.split(",") for r in (PAIRS / "identities.csv").read_text().splitlines()[1:]]
    by_id: dict[str, list[str]] = {}
    for f, ident in ((r[0], r[1]) for r in rows if len(r) >= 2):
        by_id.setdefault(ident, []).append(f)
    a = max(by_id, key=lambda k: len(by_id[k]))
    persons = [PersonSpec("first", "first", [PAIRS / by_id[a][0]]), PersonSpec("second", "second", [PAIRS / by_id[a][1]])]
    res = run_check(Discovery(persons=persons), checker)
    r = {p.person_id: p for p in res.persons}
    assert not r["first"].duplicates and not r["first"].warnings
    assert r["second"].duplicates and r["second"].duplicates[0]["other_person_id"] == "first"
    assert ReasonCode.DUPLICATE_PERSON in r["second"].reasons + r["second"].warnings \
        or ReasonCode.POSSIBLE_DUPLICATE in r["second"].warnings
    assert res.summary.duplicate_check["comparisons_per_face"] == 1  # 2 photos listed: 1 other face


@needs_data
def test_stop_mid_run_sends_nothing_more_and_reports_only_finished_persons(payload_checker, tmp_path):
    stop = threading.Event()
    discovery = discover_folder(PAIRS)
    exe = CountingExecutor(payload_checker)

    class StopAfterFirst(SlowSink):
        def upsert(self, collection, persons):
            out = super().upsert(collection, persons)
            stop.set()
            return out

    sink = StopAfterFirst(exe, delay=0.0)
    res = run_enroll(discovery, payload_checker, sink, EnrollOptions(batch_size=2), policy=WARN, executor=exe,
                     stop=stop)
    assert len(sink.calls) == 1 and res.summary.interrupted
    assert res.summary.persons["enrolled"] == 2
    assert sum(res.summary.persons.values()) < len(discovery.persons)
    not_sent = [p for p in res.persons if p.status == Status.SKIPPED]
    assert all("run stopped first" in p.message for p in not_sent)
