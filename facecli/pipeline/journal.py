"""The run ledger: what was checked, sent and confirmed where, so re-runs resume and skip.

One SQLite file (WAL) beside the user's data, shared by every run:
- ``runs``: one row per invocation (command, target, collection, status, summary).
- ``persons``: per (target, collection, person_id) the content hash last sent and its state:
  ``sent`` (a request is out; a crash here means "re-send that batch") -> ``confirmed`` or
  ``failed``. A re-run skips persons confirmed with the same content hash (UNCHANGED).
- ``files``: (path, size, mtime) -> sha256, so unchanged files are not even read again.
- ``checks``: (image sha256, check config key) -> the check result, embedding and payload (the
  JPEG face crop, when the target takes images or stores thumbnails), so unchanged images are not
  decoded again; ``used`` is when a run last stored or read the row (`facecli cache clear
  --older-than`). Biometric data: `--no-cache` runs neither read nor write it.
- ``person_images``: (target, collection, person_id) -> the sha256 of each of its images, so
  `persons delete` / `collections delete` can drop that person's cached checks (hashes only).
- ``items``: every report line of every run (`facecli runs show`).
Every write commits at once or in small groups: a SIGKILL loses at most the check results of the
last few images and never a confirmation.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from facecli.errors import ConfigError, ReasonCode, Status, TargetError
from facecli.pipeline.check import CheckConfig, FaceChecker, ImageCheck
from facecli.pipeline.report import ItemResult, PersonResult, RunSummary
from facecli.sources.spec import PersonSpec
from facecli.vision.detect import Face

JOURNAL_ENV = "FACECLI_JOURNAL"
#: Bump when ImageCheck's meaning changes: old cached checks are then ignored.
CHECK_CACHE_VERSION = 2  # 2: sharpness at the face's own resolution; warnings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, command TEXT NOT NULL, target TEXT, collection TEXT,
    started REAL NOT NULL, finished REAL, status TEXT NOT NULL, args TEXT, summary TEXT
);
CREATE TABLE IF NOT EXISTS persons (
    target TEXT NOT NULL, collection TEXT NOT NULL, person_id TEXT NOT NULL,
    content_hash TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, message TEXT,
    run_id TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (target, collection, person_id)
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checks (
    sha256 TEXT NOT NULL, config_key TEXT NOT NULL, result TEXT NOT NULL,
    embedding BLOB, payload BLOB, PRIMARY KEY (sha256, config_key)
);
CREATE TABLE IF NOT EXISTS items (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, person_id TEXT, path TEXT,
    status TEXT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (run_id, seq)
);
"""
_PERSON_IMAGES = """
CREATE TABLE person_images (
    target TEXT NOT NULL, collection TEXT NOT NULL, person_id TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (target, collection, person_id, sha256)
)
"""
#: Fill person_images once from the report lines of earlier enroll runs (ledgers made before it).
_PERSON_IMAGES_BACKFILL = """
INSERT OR IGNORE INTO person_images
SELECT r.target, r.collection, i.person_id, json_extract(i.line, '$.sha256')
FROM items i JOIN runs r ON r.run_id = i.run_id
WHERE r.command = 'enroll' AND r.target IS NOT NULL AND r.collection IS NOT NULL AND i.kind = 'image'
  AND i.person_id IS NOT NULL AND json_extract(i.line, '$.sha256') IS NOT NULL
"""


def default_journal_path() -> Path:
    return Path(platformdirs.user_data_dir("facecli")) / "journal.db"


def _alive(pid: int | None) -> bool:
    """Is a process with this id running here? (Unknown pids count as alive: never reap blindly.)"""
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone too
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def resolve_journal_path(path: str | Path | None = None) -> Path:
    """``path``, else $FACECLI_JOURNAL, else the user data dir's journal.db."""
    return Path(path or os.environ.get(JOURNAL_ENV) or default_journal_path()).expanduser()


class AmbiguousRun(ConfigError):
    """A run id prefix that matches several runs (a usage error: give more of the id)."""


class NoJournal(TargetError):
    """A reader asked for a ledger that does not exist (nothing was created)."""


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    return value


def check_config_key(checker: FaceChecker) -> str:
    """Everything that changes a check's result or payload: models, thresholds, limits, payload,
    the multi-face mode."""
    cfg: CheckConfig = checker.config
    parts = {
        "v": CHECK_CACHE_VERSION,
        "detector": checker.detector.model.file.sha256,
        "recognizer": checker.recognizer.model.file.sha256,
        "thresholds": cfg.thresholds.to_dict(),
        "limits": asdict(cfg.limits),
        "payload": asdict(cfg.payload) if cfg.payload else None,
        "multi_face": cfg.multi_face,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def person_content_hash(spec: PersonSpec, image_sha256s: list[str | None], options: dict[str, Any]) -> str:
    """Who the person is, which images (by content) in which order, and the options that shape
    what is sent: any change re-sends the person."""
    doc = {
        "id": spec.person_id, "name": spec.person_name, "metadata": spec.metadata,
        "fields": [spec.gender, spec.date_of_birth, spec.nationality, spec.notes],
        "images": image_sha256s, "options": options,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=_jsonable).encode()).hexdigest()


def _face_json(f: Face | None) -> dict | None:
    if f is None:
        return None
    return {"box": f.box.tolist(), "landmarks": f.landmarks.tolist(), "score": f.score}


def _face_from(d: dict | None) -> Face | None:
    if d is None:
        return None
    return Face(np.array(d["box"], np.float32), np.array(d["landmarks"], np.float32), float(d["score"]))


class Journal:
    """Thread-safe ledger on one SQLite connection (the pipeline writes from one thread at a time)."""

    def __init__(self, path: str | Path | None = None, create: bool = True) -> None:
        """Open the ledger; ``create=False`` (readers: `facecli runs`) raises :class:`NoJournal`
        instead of creating a missing file."""
        self.path = resolve_journal_path(path)
        if not create and not self.path.is_file():
            raise NoJournal(f"no run ledger at {self.path}: no run has been recorded there",
                            hint="check --journal / FACECLI_JOURNAL")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA secure_delete=ON")  # deleted crops are overwritten, not left in free pages
            self.conn.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open the run journal {self.path}: {exc}",
                              hint="use --journal PATH (or FACECLI_JOURNAL) to put it elsewhere") from None
        self._mu = threading.Lock()
        self._pending_checks: list[tuple] = []
        self._pending_used: list[tuple] = []
        self._pending_images: list[tuple] = []
        #: False (`--no-cache`): check results, embeddings and crops are neither read nor stored.
        self.cache_checks = True

    def close(self) -> None:
        with self._mu:
            self._flush_checks()
            self.conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error (``_mu`` held)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _tx(self, sql: str, rows: Iterable[tuple] | tuple = ()) -> None:
        with self._mu, self._write() as conn:
            if isinstance(rows, tuple):
                conn.execute(sql, rows)
            else:
                conn.executemany(sql, rows)

    # -- runs ------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Columns added after the first release: the run's process, its error, counts so far."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        for col, kind in (("pid", "INTEGER"), ("host", "TEXT"), ("error", "TEXT"), ("progress", "TEXT")):
            if col not in have:
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {kind}")
        if self._needs_cache_migration():
            with self._write():  # one process migrates; the others then see it done
                if self._needs_cache_migration():
                    self._migrate_cache()

    def _needs_cache_migration(self) -> bool:
        used = "used" in {r[1] for r in self.conn.execute("PRAGMA table_info(checks)")}
        return not used or not self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='person_images'").fetchone()

    def _migrate_cache(self) -> None:
        """checks.used (when a row was last stored or read; NULL for rows cached before: they count as
        old) and person_images, filled from earlier enroll runs' report lines."""
        if "used" not in {r[1] for r in self.conn.execute("PRAGMA table_info(checks)")}:
            self.conn.execute("ALTER TABLE checks ADD COLUMN used REAL")
        if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='person_images'").fetchone():
            self.conn.execute(_PERSON_IMAGES)
            try:
                self.conn.execute(_PERSON_IMAGES_BACKFILL)
            except sqlite3.OperationalError:  # an SQLite built without JSON functions: no backfill
                pass

    def start_run(self, summary: RunSummary, args: dict[str, Any]) -> None:
        self.reap()
        self._tx("INSERT INTO runs (run_id, command, target, collection, started, status, args, pid, host) "
                 "VALUES (?,?,?,?,?,?,?,?,?)",
                 (summary.run_id, summary.command, summary.target, summary.collection, time.time(), "running",
                  json.dumps(args, default=_jsonable), os.getpid(), socket.gethostname()))

    def run_progress(self, run_id: str, counts: dict[str, int]) -> None:
        """Counts so far, written as the run goes (after the checks, after each batch)."""
        self._tx("UPDATE runs SET progress=? WHERE run_id=?", (json.dumps(counts), run_id))

    def finish_run(self, summary: RunSummary, status: str, error: str | None = None) -> None:
        """status: ``done``, ``failed`` (with ``error``) or ``interrupted``."""
        with self._mu:
            self._flush_checks()
        self._tx("UPDATE runs SET finished=?, status=?, summary=?, error=? WHERE run_id=?",
                 (time.time(), status, json.dumps(summary.to_json()), error, summary.run_id))

    def reap(self) -> int:
        """Mark ``abandoned`` the runs still ``running`` whose process (on this host) is gone:
        killed with SIGKILL, or the machine went down. Returns how many."""
        host = socket.gethostname()
        gone = [r[0] for r in self.conn.execute(
            "SELECT run_id, pid FROM runs WHERE status='running' AND host=?", (host,)).fetchall()
            if not _alive(r[1])]
        if gone:
            self._tx("UPDATE runs SET status='abandoned', error=? WHERE run_id=? AND status='running'",
                     [("the process ended without finishing the run (killed, or the machine stopped); "
                       "run the same command again to resume", rid) for rid in gone])
        return len(gone)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        self.reap()
        rows = self.conn.execute(
            "SELECT run_id, command, target, collection, started, finished, status, summary, error, progress, pid "
            "FROM runs ORDER BY started DESC LIMIT ?", (limit,)).fetchall()
        keys = ("run_id", "command", "target", "collection", "started", "finished", "status", "summary", "error",
                "progress", "pid")
        out = []
        for r in rows:
            d = dict(zip(keys, r))
            d["summary"] = json.loads(d["summary"]) if d["summary"] else None
            d["progress"] = json.loads(d["progress"]) if d["progress"] else None
            out.append(d)
        return out

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The run with this id or unique id prefix; None when none matches.
        Raises ``AmbiguousRun`` (listing the candidates) when several do."""
        runs = self.runs(limit=10_000)
        exact = [r for r in runs if r["run_id"] == run_id]
        match = exact or [r for r in runs if r["run_id"].startswith(run_id)]
        if len(match) > 1:
            raise AmbiguousRun(f"{len(match)} runs start with {run_id!r}: "
                               + ", ".join(r["run_id"] for r in match[:5]) + (" ..." if len(match) > 5 else ""),
                               hint="give more characters of the run id (see `facecli runs list`)")
        return match[0] if match else None

    def run_items(self, run_id: str, failed_only: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT line FROM items WHERE run_id=?"
        if failed_only:
            sql += " AND status IN ('failed', 'rejected')"
        return [json.loads(r[0]) for r in self.conn.execute(sql + " ORDER BY seq", (run_id,))]

    def report(self, run_id: str) -> JournalReport:
        return JournalReport(self, run_id)

    def add_items(self, rows: list[tuple]) -> None:
        if rows:
            self._tx("INSERT OR REPLACE INTO items VALUES (?,?,?,?,?,?,?)", rows)

    # -- persons ---------------------------------------------------------------------------------

    def person_state(self, target: str, collection: str, person_id: str) -> tuple[str, str] | None:
        row = self.conn.execute("SELECT state, content_hash FROM persons WHERE target=? AND collection=? AND person_id=?",
                                (target, collection, person_id)).fetchone()
        return (row[0], row[1]) if row else None

    def failed_persons(self, target: str, collection: str) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT person_id FROM persons WHERE target=? AND collection=? AND state='failed'", (target, collection))}

    def mark(self, target: str, collection: str, run_id: str,
             states: list[tuple[str, str, str, ReasonCode | None, str]]) -> None:
        """states: (person_id, content_hash, state, reason, message), committed together."""
        now = time.time()
        self._tx("INSERT INTO persons VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(target, collection, person_id) DO UPDATE SET "
                 "content_hash=excluded.content_hash, state=excluded.state, reason=excluded.reason, "
                 "message=excluded.message, run_id=excluded.run_id, updated=excluded.updated",
                 [(target, collection, pid, h, st, str(r) if r else None, msg, run_id, now) for pid, h, st, r, msg in states])

    # -- files and cached checks -----------------------------------------------------------------

    def file_sha256(self, path: Path, remember: bool = True) -> str | None:
        """sha256 of a file, from the ledger when its size and mtime are unchanged; None if unreadable.
        ``remember=False`` (a dry run) computes a new hash without writing it."""
        try:
            st = path.stat()
        except OSError:
            return None
        key = str(path.resolve())
        row = self.conn.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path=?", (key,)).fetchone()
        if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return row[2]
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        if remember:
            self._tx("INSERT OR REPLACE INTO files VALUES (?,?,?,?)", (key, st.st_size, st.st_mtime_ns, digest))
        return digest

    def cached_check(self, sha256: str, config_key: str, path: str, touch: bool = True) -> ImageCheck | None:
        """The cached result of this image under these settings (None with ``cache_checks`` off);
        ``touch`` records the use (`cache clear --older-than` keeps rows used since)."""
        if not self.cache_checks:
            return None
        row = self.conn.execute("SELECT result, embedding, payload FROM checks WHERE sha256=? AND config_key=?",
                                (sha256, config_key)).fetchone()
        if row is None:
            return None
        if touch:
            with self._mu:
                self._pending_used.append((time.time(), sha256, config_key))
        d = json.loads(row[0])
        return ImageCheck(
            path=path, status=Status(d["status"]), reasons=[ReasonCode(r) for r in d["reasons"]],
            message=d["message"], faces=d["faces"], face=_face_from(d["face"]),
            warnings=[ReasonCode(w) for w in d.get("warnings", [])],
            other_faces=[_face_from(f) for f in d["other_faces"]], quality=d["quality"],
            embedding=np.frombuffer(row[1], dtype="<f4").copy() if row[1] is not None else None,
            sha256=sha256, phash=d["phash"], width=d["width"], height=d["height"], format=d["format"],
            timings={"cached": 1.0}, payload=row[2],
        )

    def store_check(self, check: ImageCheck, config_key: str) -> None:
        """Queue a check result; written in groups (a crash loses at most the last few)."""
        if not check.sha256 or check.status == Status.FAILED or not self.cache_checks:
            return  # failures (unreadable, corrupt) are cheap to redo and may be transient
        d = {"status": str(check.status), "reasons": [str(r) for r in check.reasons], "message": check.message,
             "warnings": [str(w) for w in check.warnings],
             "faces": check.faces, "face": _face_json(check.face), "other_faces": [_face_json(f) for f in check.other_faces],
             "quality": check.quality, "phash": check.phash, "width": check.width, "height": check.height,
             "format": check.format}
        emb = check.embedding.astype("<f4").tobytes() if check.embedding is not None else None
        with self._mu:
            self._pending_checks.append((check.sha256, config_key, json.dumps(d), emb, check.payload, time.time()))
            if len(self._pending_checks) >= 16:
                self._flush_checks()

    def _flush_checks(self) -> None:
        """Write queued check results, their last-use times and person -> image hashes (lock held)."""
        rows, self._pending_checks = self._pending_checks, []
        used, self._pending_used = self._pending_used, []
        images, self._pending_images = self._pending_images, []
        if rows or used or images:
            with self._write() as conn:
                conn.executemany("INSERT OR IGNORE INTO person_images VALUES (?,?,?,?)", images)
                conn.executemany("INSERT OR REPLACE INTO checks (sha256, config_key, result, embedding, payload, used) "
                                 "VALUES (?,?,?,?,?,?)", rows)
                conn.executemany("UPDATE checks SET used=? WHERE sha256=? AND config_key=?", used)

    # -- cached biometric data: what is kept, and removing it --------------------------------------

    def map_images(self, target: str, collection: str, person_id: str, sha256s: Iterable[str | None]) -> None:
        """Remember which images (by content hash) a person of this target has, so `persons delete`
        finds its cached checks; written with the next group of check results (before any of them)."""
        with self._mu:
            self._pending_images.extend((target, collection, person_id, h) for h in dict.fromkeys(sha256s) if h)

    def disk_bytes(self) -> int:
        """The ledger's size on disk: the database file and its WAL and shared-memory files."""
        files = (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
        return sum(f.stat().st_size for f in files if f.is_file())

    def _check_counts(self, where: str = "", args: tuple = ()) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT COUNT(*), COUNT(embedding), COALESCE(SUM(LENGTH(embedding)), 0), COUNT(payload), "
            "COALESCE(SUM(LENGTH(payload)), 0), COALESCE(SUM(LENGTH(result)), 0), MIN(used), MAX(used), "
            f"COALESCE(SUM(used IS NULL), 0) FROM checks {where}", args).fetchone()
        keys = ("checks", "embeddings", "embedding_bytes", "crops", "crop_bytes", "result_bytes", "oldest_used",
                "newest_used", "unknown_age")
        return dict(zip(keys, row))

    def cache_stats(self) -> dict[str, Any]:
        """What the ledger keeps: cached checks (embeddings, face crops), runs and their report lines,
        and the hashes resume needs (per-person state, file hashes, person -> image hashes)."""
        with self._mu:
            self._flush_checks()
        runs = self.conn.execute("SELECT COUNT(*), MIN(started), MAX(started) FROM runs").fetchone()
        items = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(line)), 0) FROM items").fetchone()
        count = {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                 for t in ("persons", "files", "person_images")}
        return {"path": str(self.path), "bytes": self.disk_bytes(), "checks": self._check_counts(),
                "runs": {"runs": runs[0], "oldest": runs[1], "newest": runs[2], "items": items[0],
                         "item_bytes": items[1]},
                "kept_for_resume": {"person_states": count["persons"], "file_hashes": count["files"],
                                    "person_image_hashes": count["person_images"]}}

    def clear_checks(self, older_than: float | None = None) -> dict[str, Any]:
        """Delete cached check results (results, embeddings, face crops); with ``older_than`` (a
        timestamp) only rows last used before it (rows cached before use times were kept count as old)."""
        where, args = ("WHERE used IS NULL OR used < ?", (older_than,)) if older_than is not None else ("", ())
        with self._mu:
            self._flush_checks()
            with self._write() as conn:
                gone = self._check_counts(where, args)
                conn.execute(f"DELETE FROM checks {where}", args)
        return {k: gone[k] for k in ("checks", "embeddings", "embedding_bytes", "crops", "crop_bytes", "result_bytes")}

    def clear_runs(self, older_than: float | None = None) -> dict[str, Any]:
        """Delete finished runs (started before ``older_than``) and their report lines. Runs still
        going are kept, and so is what resume needs: per-person states and hashes."""
        self.reap()
        where = "status != 'running'" + (" AND started < ?" if older_than is not None else "")
        args = (older_than,) if older_than is not None else ()
        with self._mu, self._write() as conn:
            ids = [r[0] for r in conn.execute(f"SELECT run_id FROM runs WHERE {where}", args)]
            n_items = n_bytes = 0
            for rid in ids:
                n, b = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(line)), 0) FROM items WHERE run_id=?",
                                    (rid,)).fetchone()
                n_items, n_bytes = n_items + n, n_bytes + b
                conn.execute("DELETE FROM items WHERE run_id=?", (rid,))
                conn.execute("DELETE FROM runs WHERE run_id=?", (rid,))
        return {"runs": len(ids), "items": n_items, "item_bytes": n_bytes}

    def _same_targets(self, target: str) -> list[str]:
        """``target`` and the ledger's other spellings of it (a SQLite file given by another path)."""
        def norm(t: str) -> str:
            if not t.startswith("sqlite:///"):
                return t
            try:
                return "sqlite:///" + str(Path(t[len("sqlite:///"):]).expanduser().resolve())
            except OSError:
                return t

        known = {r[0] for r in self.conn.execute("SELECT target FROM person_images UNION SELECT target FROM persons")}
        return sorted({target} | {t for t in known if norm(t) == norm(target)})

    def forget_persons(self, target: str, collection: str, person_ids: list[str] | None = None) -> dict[str, Any]:
        """After persons (``person_ids``; None: the whole collection) were deleted from a target: drop
        the cached checks of their images (results, embeddings, face crops) and overwrite the freed
        pages. Hashes stay (resume state, person -> image hashes: the next enroll finds the person
        missing at the target and re-sends it), and so do report lines of earlier runs."""
        sel = "target=? AND collection=?" + ("" if person_ids is None else " AND person_id=?")
        keys = [(t, collection) + ((pid,) if person_ids is not None else ())
                for t in self._same_targets(target) for pid in (person_ids if person_ids is not None else [None])]
        gone = {"checks": 0, "embeddings": 0, "embedding_bytes": 0, "crops": 0, "crop_bytes": 0, "result_bytes": 0}
        with self._mu:
            self._flush_checks()
            with self._write() as conn:
                shas = {r[0] for k in keys for r in conn.execute(f"SELECT sha256 FROM person_images WHERE {sel}", k)}
                for h in shas:
                    for name, value in self._check_counts("WHERE sha256=?", (h,)).items():
                        if name in gone:
                            gone[name] += value
                    conn.execute("DELETE FROM checks WHERE sha256=?", (h,))
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the zeroed pages reach the file, the WAL empties
        return gone

    def compact(self) -> dict[str, Any]:
        """VACUUM and empty the WAL, so deleted rows are gone from the files, not just unlinked.
        ``busy``: another process had the ledger open mid-transaction (run it again later)."""
        before = self.disk_bytes()
        busy = False
        with self._mu:
            self._flush_checks()
            try:
                self.conn.execute("VACUUM")
            except sqlite3.OperationalError:  # another process is writing right now
                busy = True
            busy = bool(self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]) or busy
        return {"bytes_before": before, "bytes_after": self.disk_bytes(), "busy": busy}


class JournalReport:
    """A ReportWriter that stores every report line of a run in the journal (`facecli runs show`)."""

    def __init__(self, journal: Journal, run_id: str) -> None:
        self.journal = journal
        self.run_id = run_id
        self.rows: list[tuple] = []  # not yet written (at most 500: a long run's lines are not all held)
        self.seq = 0

    def _add(self, obj: dict[str, Any]) -> None:
        self.seq += 1
        self.rows.append((self.run_id, self.seq, obj.get("kind", "image"), obj.get("person_id"),
                          obj.get("path"), obj.get("status"), json.dumps(obj, ensure_ascii=False)))
        if len(self.rows) >= 500:
            self.journal.add_items(self.rows)
            self.rows = []

    def write_item(self, item: ItemResult) -> None:
        self._add(item.to_json())

    def write_person(self, person: PersonResult) -> None:
        self._add(person.to_json())

    def close(self, summary: RunSummary) -> None:
        self.journal.add_items(self.rows)
        self.rows = []
