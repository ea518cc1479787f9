"""What facecli keeps (cached check results: embeddings and JPEG face crops), `facecli cache info|clear`,
`--no-cache`, and `persons delete` / `collections delete` dropping the deleted persons' cached crops."""

import hashlib
import json
import shutil
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.pipeline.journal import Journal

from .conftest import SAMPLES, needs_models

runner = CliRunner()
# StoreThumbnails: the check stage encodes a JPEG face crop per accepted image, which the ledger caches.
THUMBS = ["--create-collection", "--face-storage-type", "StoreThumbnails"]


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def _people(root: Path, **persons: list[str]) -> Path:
    """One folder per person, with copies of sample images."""
    for person, files in persons.items():
        (root / person).mkdir(parents=True)
        for i, name in enumerate(files):
            shutil.copy(SAMPLES / name, root / person / f"{i}.jpg")
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(ledger: Path, sql: str, args=()) -> list[tuple]:
    with sqlite3.connect(ledger) as conn:
        return conn.execute(sql, args).fetchall()


def _crops(ledger: Path) -> dict[str, bytes]:
    return dict(_rows(ledger, "SELECT sha256, payload FROM checks WHERE payload IS NOT NULL"))


def _on_disk(ledger: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (ledger, Path(f"{ledger}-wal")) if p.is_file())


def _found(crop: bytes, data: bytes) -> float:
    """The share of a crop's 32-byte pieces found in ``data`` (SQLite splits a large value across
    overflow pages, so a piece that straddles a page boundary is not found even when present).
    The first kilobyte (JPEG headers and tables, the same in every crop) is left out."""
    pieces = [crop[i:i + 32] for i in range(1024, len(crop) - 32, 256)]
    return sum(piece in data for piece in pieces) / len(pieces)


def _enroll(src: Path, db: Path, ledger: Path, *extra):
    res = invoke("enroll", src, "--db", db, "--journal", ledger, *THUMBS, "--json", *extra)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@needs_models
def test_cache_info_counts_what_a_run_kept(tmp_path):
    src = _people(tmp_path / "src", hopper=["grace_hopper.jpg", "grace_hopper_2.jpg"], astro=["astronaut.jpg"])
    ledger = tmp_path / "ledger.db"
    _enroll(src, tmp_path / "g.db", ledger)
    res = invoke("cache", "info", "--journal", ledger, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    checks = info["ledger"]["checks"]
    assert info["ledger"]["exists"] and info["ledger"]["path"] == str(ledger)
    assert checks["checks"] == checks["embeddings"] == checks["crops"] == 3
    assert checks["crop_bytes"] == sum(len(c) for c in _crops(ledger).values()) > 3000
    used = [datetime.fromisoformat(checks[k]) for k in ("oldest_used", "newest_used")]  # ISO-8601 with a zone
    assert used[0] <= used[1] <= datetime.now(timezone.utc) and used[0].tzinfo is not None
    assert info["ledger"]["runs"]["runs"] == 1 and info["ledger"]["runs"]["items"] > 0
    assert info["ledger"]["kept_for_resume"]["person_states"] == 2
    assert info["ledger"]["kept_for_resume"]["person_image_hashes"] == 3
    assert info["models"]["optimised"]["path"].endswith(str(Path("facecli") / "ort"))
    text = invoke("cache", "info", "--journal", ledger)
    assert text.exit_code == 0 and "face crops (JPEG)" in text.output and str(ledger) in text.output


def test_cache_info_and_clear_never_create_a_ledger(tmp_path):
    ledger = tmp_path / "nowhere" / "ledger.db"
    res = invoke("cache", "info", "--journal", ledger, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ledger"] == {"path": str(ledger), "exists": False}
    res = invoke("cache", "info", "--journal", ledger)
    assert res.exit_code == 0 and "none at" in res.output
    res = invoke("cache", "clear", "--journal", ledger, "-y")
    assert res.exit_code == 0 and "no run ledger" in res.output
    assert not ledger.exists() and not ledger.parent.exists()


def test_cache_clear_asks_and_checks_its_age():
    assert invoke("cache", "clear", "--older-than", "3x", "-y").exit_code == 2
    res = invoke("cache", "clear")  # no terminal to answer: nothing is removed
    assert res.exit_code == 2 and "nothing removed" in res.output


@needs_models
def test_cache_clear_removes_the_crops_and_their_bytes_from_the_file(tmp_path):
    src = _people(tmp_path / "src", hopper=["grace_hopper.jpg", "grace_hopper_2.jpg"], astro=["astronaut.jpg"])
    ledger, db = tmp_path / "ledger.db", tmp_path / "g.db"
    _enroll(src, db, ledger)
    crops = _crops(ledger)
    assert len(crops) == 3
    assert all(_found(c, _on_disk(ledger)) > 0.8 for c in crops.values())  # the control: they are on disk now
    res = invoke("cache", "clear", "--journal", ledger, "-y")
    assert res.exit_code == 0, res.output
    assert "3 face crop(s)" in res.output and "compacted" in res.output
    assert _rows(ledger, "SELECT COUNT(*) FROM checks") == [(0,)]
    data = _on_disk(ledger)
    assert all(_found(c, data) == 0 for c in crops.values())  # neither the rows nor their freed pages
    # what resume needs is kept: the re-run skips both persons without checking an image
    again = _enroll(src, db, ledger)
    assert again["persons"]["skipped"] == 2 and again["reasons"] == {"UNCHANGED": 3}


@needs_models
def test_older_than_keeps_what_was_used_recently(tmp_path):
    src = _people(tmp_path / "src", hopper=["grace_hopper.jpg", "grace_hopper_2.jpg"], astro=["astronaut.jpg"])
    ledger = tmp_path / "ledger.db"
    _enroll(src, tmp_path / "g.db", ledger)
    old = [_sha(p) for p in sorted((src / "hopper").iterdir())]
    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE checks SET used = used - 40 * 86400 WHERE sha256 = ?", (old[0],))
        conn.execute("UPDATE checks SET used = NULL WHERE sha256 = ?", (old[1],))  # cached before use times
        conn.execute("UPDATE runs SET started = started - 40 * 86400")
    _enroll(src, tmp_path / "g.db", ledger)  # a recent run, which skips everyone (touches no check)
    res = invoke("cache", "clear", "--journal", ledger, "--older-than", "30d", "--checks", "--runs", "-y", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["removed"]["checks"]["crops"] == 2 and out["removed"]["runs"]["runs"] == 1
    assert set(_crops(ledger)) == {_sha(src / "astro" / "0.jpg")}
    assert _rows(ledger, "SELECT COUNT(*) FROM runs") == [(1,)]
    # a cache hit counts as a use: re-sending the astronaut (--force) reads its cached check, which stays
    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE checks SET used = used - 40 * 86400")
    kept = _rows(ledger, "SELECT sha256, config_key FROM checks")
    assert _enroll(src, tmp_path / "g.db", ledger, "--force")["images"]["enrolled"] == 3
    assert invoke("cache", "clear", "--journal", ledger, "--older-than", "30d", "-y").exit_code == 0
    assert set(kept) < set(_rows(ledger, "SELECT sha256, config_key FROM checks"))


@needs_models
def test_persons_delete_removes_that_persons_cached_crops_only(tmp_path):
    src = _people(tmp_path / "src", hopper=["grace_hopper.jpg", "grace_hopper_2.jpg"], astro=["astronaut.jpg"])
    ledger, db = tmp_path / "ledger.db", tmp_path / "g.db"
    _enroll(src, db, ledger)
    hopper = [c for s, c in _crops(ledger).items() if s != _sha(src / "astro" / "0.jpg")]
    res = invoke("persons", "delete", "hopper", "--db", db, "--journal", ledger)
    assert res.exit_code == 0, res.output
    assert "deleted 1 person(s)" in res.output and "2 face crop(s)" in res.output
    assert set(_crops(ledger)) == {_sha(src / "astro" / "0.jpg")}
    data = _on_disk(ledger)
    assert all(_found(c, data) == 0 for c in hopper)
    # the next run finds hopper missing at the target, enrolls it again and caches its crops again
    again = _enroll(src, db, ledger)
    assert again["persons"] == {**again["persons"], "enrolled": 1, "skipped": 1}
    assert len(_crops(ledger)) == 3


@needs_models
def test_collections_delete_removes_that_collections_cached_crops(tmp_path):
    a = _people(tmp_path / "a", hopper=["grace_hopper.jpg", "grace_hopper_2.jpg"])
    b = _people(tmp_path / "b", astro=["astronaut.jpg"])
    ledger, db = tmp_path / "ledger.db", tmp_path / "g.db"
    _enroll(a, db, ledger, "-c", "alpha")
    _enroll(b, db, ledger, "-c", "beta")
    assert len(_crops(ledger)) == 3
    res = invoke("collections", "delete", "alpha", "-y", "--db", db, "--journal", ledger)
    assert res.exit_code == 0, res.output
    assert "2 face crop(s)" in res.output
    assert set(_crops(ledger)) == {_sha(b / "astro" / "0.jpg")}


@needs_models
def test_no_cache_keeps_no_check_results_and_resume_still_works(tmp_path):
    src = _people(tmp_path / "src", hopper=["grace_hopper.jpg", "grace_hopper_2.jpg"], astro=["astronaut.jpg"])
    ledger, db = tmp_path / "ledger.db", tmp_path / "g.db"
    opts = ["--no-cache", "--on-identity-mismatch", "warn", "--on-duplicate", "warn"]
    first = _enroll(src, db, ledger, *opts)
    assert first["persons"]["enrolled"] == 2
    assert _rows(ledger, "SELECT COUNT(*) FROM checks") == [(0,)]
    assert _rows(ledger, "SELECT COUNT(*) FROM persons WHERE state='confirmed'") == [(2,)]
    again = _enroll(src, db, ledger, *opts)
    assert again["persons"]["skipped"] == 2 and again["reasons"] == {"UNCHANGED": 3}
    # a changed person is checked again (nothing cached to read) and re-sent; the other is skipped
    shutil.copy(SAMPLES / "grace_hopper.jpg", src / "astro" / "1.jpg")
    third = _enroll(src, db, ledger, *opts)
    assert third["persons"]["skipped"] == 1 and third["images"]["enrolled"] == 2
    res = invoke("check", src, "--journal", ledger, "-q", *opts)
    assert res.exit_code == 0, res.output
    assert _rows(ledger, "SELECT COUNT(*) FROM checks") == [(0,)]
    # without --no-cache the same ledger caches again (the flag is per run, not sticky)
    assert invoke("check", src, "--journal", ledger, "-q", *opts[1:]).exit_code == 0
    assert _rows(ledger, "SELECT COUNT(*) FROM checks") == [(3,)]  # 4 images, 3 distinct contents


def test_no_cache_from_the_config_file(tmp_path):
    from facecli.cli.cache import apply_no_cache
    from facecli.config import Settings

    cfg = tmp_path / "c.toml"
    cfg.write_text("no_cache = true\n")
    j = Journal(tmp_path / "l.db")
    try:
        apply_no_cache(j, Settings({}, config_path=cfg), False)
        assert j.cache_checks is False
    finally:
        j.close()


def test_an_old_ledger_is_migrated_and_its_persons_can_be_forgotten(tmp_path):
    """A ledger from before use times and person -> image hashes: opened, migrated, backfilled."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, command TEXT NOT NULL, target TEXT, collection TEXT,
                started REAL NOT NULL, finished REAL, status TEXT NOT NULL, args TEXT, summary TEXT);
            CREATE TABLE checks (sha256 TEXT NOT NULL, config_key TEXT NOT NULL, result TEXT NOT NULL,
                embedding BLOB, payload BLOB, PRIMARY KEY (sha256, config_key));
            CREATE TABLE items (run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, person_id TEXT,
                path TEXT, status TEXT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (run_id, seq));
        """)
        conn.execute("INSERT INTO runs VALUES ('r1', 'enroll', 'sqlite:///g.db', 'default', 1, 2, 'done', '{}', '{}')")
        for i, (pid, sha) in enumerate((("ann", "a" * 64), ("bob", "b" * 64))):
            conn.execute("INSERT INTO items VALUES ('r1', ?, 'image', ?, 'x.jpg', 'enrolled', ?)",
                         (i, pid, json.dumps({"sha256": sha, "person_id": pid})))
            conn.execute("INSERT INTO checks VALUES (?, 'k', '{}', x'00', x'ffd8ffe0')", (sha,))
    j = Journal(path, create=False)
    try:
        assert j.cache_stats()["checks"]["unknown_age"] == 2
        gone = j.forget_persons("sqlite:///g.db", "default", ["ann"])
        assert gone["checks"] == gone["crops"] == 1
        assert [r[0] for r in j.conn.execute("SELECT sha256 FROM checks")] == ["b" * 64]
        assert j.clear_checks(older_than=time.time())["checks"] == 1  # unknown age counts as old
    finally:
        j.close()


def test_clear_models_removes_the_optimised_copies_only(tmp_path):
    import platformdirs

    cache = Path(platformdirs.user_cache_dir("facecli"))  # a per-test dir (conftest sets XDG_CACHE_HOME)
    (cache / "ort").mkdir(parents=True)
    (cache / "models").mkdir(parents=True)
    (cache / "ort" / "x-ort1.onnx").write_bytes(b"0" * 1000)
    (cache / "models" / "m.onnx").write_bytes(b"1" * 10)
    info = json.loads(invoke("cache", "info", "--journal", tmp_path / "l.db", "--json").stdout)["models"]
    assert info["optimised"] == {"path": str(cache / "ort"), "files": 1, "bytes": 1000}
    assert info["downloaded"]["files"] == 1
    res = invoke("cache", "clear", "--models", "-y", "--journal", tmp_path / "l.db", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["removed"] == {"models": {"path": str(cache / "ort"), "files": 1, "bytes": 1000}}
    assert not any((cache / "ort").iterdir()) and (cache / "models" / "m.onnx").is_file()
    assert not (tmp_path / "l.db").exists()
