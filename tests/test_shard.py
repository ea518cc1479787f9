"""`--shard I/N`: a deterministic split of a run by person_id (sha256 of the id modulo N), each shard
with its own ledger and one shared target."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.errors import ConfigError, ReasonCode
from facecli.pipeline.executor import Shard, shard_of
from facecli.sources.spec import Discovery, PersonSpec, SourceProblem

from .conftest import REPO, SAMPLES, needs_models

runner = CliRunner()
IDS = [f"emp-{i:05d}" for i in range(2000)] + ["Zoë", "名前", "a.b", "x" * 200]


def test_parse_and_refuse():
    assert Shard.parse("0/4") == Shard(0, 4) and Shard.parse(" 3/4 ") == Shard(3, 4) and str(Shard(1, 2)) == "1/2"
    for bad in ("4/4", "-1/2", "1/0", "x", "1", "1/2/3", ""):
        with pytest.raises(ConfigError):
            Shard.parse(bad)


def test_split_is_complete_disjoint_and_balanced():
    for n in (1, 2, 3, 8):
        parts = [[i for i in IDS if Shard(k, n).owns(i)] for k in range(n)]
        assert sorted(x for p in parts for x in p) == sorted(IDS)  # complete, and no id twice
        assert all(abs(len(p) - len(IDS) / n) < 0.15 * len(IDS) / n for p in parts)


def test_split_is_the_documented_hash_and_stable_across_processes():
    for pid in ("emp-00001", "Zoë", "名前"):
        assert shard_of(pid, 7) == int(hashlib.sha256(pid.encode()).hexdigest(), 16) % 7
    assert [shard_of(f"emp-{i:05d}", 4) for i in range(8)] == [0, 2, 0, 2, 0, 1, 0, 1]  # fixed forever
    code = "from facecli.pipeline.executor import shard_of; print([shard_of(f'emp-{i:05d}', 4) for i in range(8)])"
    for seed in ("1", "2"):  # Python's own hash() differs per process; the split must not
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
        assert out.strip() == "[0, 2, 0, 2, 0, 1, 0, 1]"


def test_select_keeps_problems_with_their_person_and_the_rest_in_shard_0():
    d = Discovery([PersonSpec(i, i, []) for i in IDS[:50]],
                  [SourceProblem("row 3", ReasonCode.INVALID_ROW, "bad", person_id=IDS[0]),
                   SourceProblem("dir", ReasonCode.UNREADABLE, "no access")], [("x.txt", "not an image")])
    parts = [Shard(k, 2).select(d) for k in range(2)]
    assert sorted(p.person_id for s in parts for p in s.persons) == sorted(IDS[:50])
    owner = shard_of(IDS[0], 2)
    assert [len(s.problems) for s in parts] == ([2, 0] if owner == 0 else [1, 1])
    assert parts[0].ignored and not parts[1].ignored


def test_each_shard_has_its_own_default_ledger(tmp_path):
    assert Shard(2, 8).journal_path(tmp_path / "journal.db") == tmp_path / "journal.shard-2-of-8.db"


@needs_models
def test_shards_through_the_cli_cover_the_run_once_into_one_target(tmp_path):
    db = tmp_path / "g.db"
    whole = json.loads(runner.invoke(app, ["check", str(SAMPLES), "--json", "--no-journal"]).stdout)
    checked = []
    for k in range(2):
        res = runner.invoke(app, ["check", str(SAMPLES), "--json", "--shard", f"{k}/2"])
        checked.append(json.loads(res.stdout))
        res = runner.invoke(app, ["enroll", str(SAMPLES), "--db", str(db), "--json", "--shard", f"{k}/2"])
        s = json.loads(res.stdout)
        assert s["shard"] == f"{k}/2" and s["persons"]["skipped"] == 0
    for key in ("accepted", "rejected", "failed"):
        assert sum(c["images"][key] for c in checked) == whole["images"][key]
    ledgers = sorted(p.name for p in (Path(os.environ["XDG_DATA_HOME"]) / "facecli").glob("*.db"))  # conftest's
    assert ledgers == ["journal.shard-0-of-2.db", "journal.shard-1-of-2.db"]
    listed = json.loads(runner.invoke(app, ["persons", "list", "--db", str(db), "--json"]).stdout)
    enrolled = {p["person_id"] for p in listed["persons"]}
    assert len(enrolled) == whole["persons"]["accepted"]
    again = json.loads(runner.invoke(app, ["enroll", str(SAMPLES), "--db", str(db), "--json", "--shard", "1/2"]).stdout)
    assert again["persons"]["enrolled"] == 0 and again["persons"]["skipped"] == sum(
        1 for p in enrolled if shard_of(p, 2) == 1)  # its own ledger: a re-run skips what it sent
