"""`--executor ray`: the check stage as Ray Data map_batches over an actor pool, on a local Ray
(``ray.init(num_cpus=2)``), gives the local executor's results item by item."""

from __future__ import annotations

import json
import numpy as np
import pytest

from facecli.imaging.encode import PayloadSpec
from facecli.pipeline.check import CheckConfig, FaceChecker
from facecli.pipeline.enroll import EnrollOptions, run_check, run_enroll
from facecli.pipeline.executor import open_executor
from facecli.pipeline.persons import PersonPolicy
from facecli.pipeline.report import JsonlReport
from facecli.sinks.local import LocalSink
from facecli.sources.folder import discover_folder

from .conftest import DATASETS, MODELS, SAMPLES, needs_data, needs_models

try:
    import ray
except ImportError:  # the optional extra
    ray = None

pytestmark = [pytest.mark.skipif(ray is None, reason="ray is not installed: pip install 'facecli[ray]'"),
              needs_models]

PAIRS = DATASETS / "deepface-pairs"
WARN = PersonPolicy(on_duplicate="warn", on_identity_mismatch="warn")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread_checker():
    """The local side with the actors' thread settings (1 onnxruntime thread), so both run the
    same arithmetic."""
    return FaceChecker.open(CheckConfig(models_dir=MODELS, threads=1, payload=PayloadSpec(kind="face")))


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@needs_data
def test_ray_executor_equals_the_local_one_item_by_item(local_ray, one_thread_checker, tmp_path):
    discovery = discover_folder(PAIRS)
    local_report, ray_report = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    local = run_check(discovery, one_thread_checker, report=JsonlReport(local_report.open("w")), policy=WARN)
    exe = open_executor("ray", one_thread_checker)
    assert exe.name == "ray" and exe.actors == 2, exe.actors  # ray.init(num_cpus=2), one CPU per actor
    try:
        remote = run_check(discovery, one_thread_checker, report=JsonlReport(ray_report.open("w")), policy=WARN,
                           executor=exe)
    finally:
        exe.close()
    assert _lines(local_report) == _lines(ray_report)  # every report line, in order
    assert len(local.items) == len(remote.items) == discovery.image_count
    for a, b in zip(local.items, remote.items):
        assert (a.path, a.status, a.reasons, a.warnings, a.message) == (b.path, b.status, b.reasons, b.warnings, b.message)
        if a.check.embedding is None:
            assert b.check.embedding is None
        else:  # shipped back as float32 arrays, bit for bit
            assert b.check.embedding.dtype == np.float32 and np.array_equal(a.check.embedding, b.check.embedding)
    assert local.summary.to_json()["images"] == remote.summary.to_json()["images"]


@needs_data
def test_ray_enroll_sends_the_same_persons_and_payloads(local_ray, one_thread_checker, tmp_path):
    sinks = {}
    for name in ("local", "ray"):
        sink = LocalSink(tmp_path / f"{name}.db", writer=True)
        sent = []
        real = sink.upsert

        def upsert(collection, persons, real=real, sent=sent):
            sent.extend((p.person_id, [f.jpeg for f in p.faces], [f.embedding.tobytes() for f in p.faces])
                        for p in persons)
            return real(collection, persons)

        sink.upsert = upsert
        exe = open_executor(name, one_thread_checker)
        try:
            res = run_enroll(discover_folder(PAIRS), one_thread_checker, sink,
                             EnrollOptions(create_collection=True, batch_size=8), policy=WARN, executor=exe)
        finally:
            exe.close()
            sink.close()
        sinks[name] = (res.summary.persons, sent)
    assert sinks["local"] == sinks["ray"] and sinks["local"][0]["enrolled"] > 40


def test_actor_threads_follow_the_cpus_it_reserves():
    from facecli.pipeline.executor import _actor_config

    cfg = _actor_config(CheckConfig(threads=8, decode_workers=4, keep_images=True), 2)
    assert (cfg.threads, cfg.decode_workers, cfg.keep_images) == (2, 2, False)


@needs_models
def test_cli_check_with_the_ray_executor(local_ray, tmp_path):
    from typer.testing import CliRunner

    from facecli.cli.app import app

    args = ["check", str(SAMPLES), "--json", "--no-journal", "--threads", "1"]
    local = json.loads(CliRunner().invoke(app, args).stdout)
    remote = json.loads(CliRunner().invoke(app, [*args, "--executor", "ray"]).stdout)
    for key in ("images", "persons", "reasons"):
        assert local[key] == remote[key]
