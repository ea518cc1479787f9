"""Fit (rebuild) the score model table of a recognizer: its different-person score tail.

Data: every photo of the lfw-view1 **DevTrain people** (peopleDevTrain.txt), the subject face of
each (nearest the image centre), embedded by facecli's own pipeline (bench/lfw_data.py). Every pair
of photos of two different people is a different-person comparison (~5.9 million pairs). DevTest
people are held out: the script prints how well the fitted tail predicts *their* false-match rates.

The table: log10 P(score >= s) on a grid of s. Where the empirical count of pairs at or above s is
at least ``--min-count`` (10), it is the empirical rate; past that, an exponential tail
(log10 P linear in s) fitted by least squares to the empirical points between 1e-4 and the last
trusted one, so probabilities far below 1/pairs (a run of 10,000 persons needs ~1e-8) are an
explicit, documented extrapolation rather than zero.

    FACECLI_MODELS_DIR=../shared/models python bench/fit_score_model.py          # writes the table
    FACECLI_MODELS_DIR=../shared/models python bench/fit_score_model.py --check  # only compare

For another recognizer: register it in facecli/vision/models.py, put its file in the models
folder, and run this script: the table is named after the file's sha256 and shipped as package data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lfw_data  # noqa: E402

from facecli.vision.models import DEFAULT_RECOGNIZER, resolve_model  # noqa: E402
from facecli.vision.scores import ScoreModel  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "facecli" / "vision" / "score_models"
GRID = np.round(np.arange(0.60, 1.00001, 0.0025), 5)


def impostor_scores(d: lfw_data.LfwEmbeddings, block: int = 1024) -> np.ndarray:
    """Every cross-person pair's cosine (i < j), float32."""
    _, pid = np.unique(d.person, return_inverse=True)
    out = []
    for s in range(0, len(d.emb), block):
        sims = d.emb[s : s + block] @ d.emb.T
        rows = np.arange(s, min(s + block, len(d.emb)))
        mask = (rows[:, None] < np.arange(len(d.emb))[None, :]) & (pid[rows][:, None] != pid[None, :])
        out.append(sims[mask])
    return np.concatenate(out)


def genuine_scores(d: lfw_data.LfwEmbeddings) -> np.ndarray:
    _, pid = np.unique(d.person, return_inverse=True)
    sims = d.emb @ d.emb.T
    iu = np.triu_indices(len(d.emb), 1)
    same = pid[iu[0]] == pid[iu[1]]
    return sims[iu][same]


def fit_table(imp: np.ndarray, min_count: int = 10) -> tuple[np.ndarray, dict]:
    srt = np.sort(imp)
    n = len(srt)
    counts = n - np.searchsorted(srt, GRID, side="left")  # pairs with score >= s
    trusted = counts >= min_count
    last = int(np.nonzero(trusted)[0].max())
    emp = np.log10(np.maximum(counts, 1) / n)
    fit_pts = trusted & (emp <= -4.0)
    slope, icpt = np.polyfit(GRID[fit_pts], emp[fit_pts], 1)
    lp = emp.copy()
    tail = np.arange(len(GRID)) > last
    lp[tail] = np.minimum(emp[last], icpt + slope * GRID[tail])
    lp = np.minimum.accumulate(lp)  # monotone
    meta = {"pairs": int(n), "min_count": min_count, "last_empirical_score": float(GRID[last]),
            "tail_fit": {"decades_per_0.01": round(float(-slope * 0.01), 4), "from_log10_p": -4.0,
                         "points": int(fit_pts.sum())}}
    return lp, meta


def check(model: ScoreModel, d_test: lfw_data.LfwEmbeddings) -> None:
    imp = np.sort(impostor_scores(d_test))[::-1]
    gen = genuine_scores(d_test)
    n = len(imp)
    print(f"DevTest (held out): {n:,} different-person pairs, {len(gen):,} same-person pairs")
    print(f"{'P per comparison':>18} {'model threshold':>16} {'DevTest false rate':>19} {'ratio':>6} {'genuine >= thr':>15}")
    for p in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        thr = model.threshold(1, p)
        obs = float((imp >= thr).sum()) / n
        ratio = f"{obs / p:6.2f}" if obs else "   -  "
        print(f"{p:>18.0e} {thr:>16.4f} {obs:>19.2e} {ratio} {float((gen >= thr).mean()):>15.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare the shipped table with DevTest")
    ap.add_argument("--min-count", type=int, default=10)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rec = resolve_model(DEFAULT_RECOGNIZER)
    d = lfw_data.load()
    train, test = d.subset("train"), d.subset("test")
    if args.check:
        from facecli.vision.scores import load_score_model
        model = load_score_model(rec.file.sha256)
        if model is None:
            sys.exit(f"no score model shipped for {rec.file.sha256[:12]}")
        check(model, test)
        return
    imp = impostor_scores(train)
    gen = genuine_scores(train)
    lp, meta = fit_table(imp, args.min_count)
    model = ScoreModel(rec.file.name if hasattr(rec.file, "name") else DEFAULT_RECOGNIZER, rec.file.sha256, GRID, lp, {
        "source": f"lfw-view1 DevTrain people ({len(set(train.person))} people, {len(train.emb)} photos; "
                  "subject face nearest the image centre)",
        "fitted": dt.date.today().isoformat(),
        "impostor_mean": round(float(imp.mean()), 4), "impostor_sd": round(float(imp.std()), 4),
        "genuine_pairs": int(len(gen)), "genuine_median": round(float(np.median(gen)), 4),
        "rebuild": "FACECLI_MODELS_DIR=... python bench/fit_score_model.py", **meta})
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{rec.file.sha256[:12]}.json"
    path.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    print(f"wrote {path}: {meta['pairs']:,} DevTrain different-person pairs, empirical to "
          f"s={meta['last_empirical_score']}, tail {meta['tail_fit']['decades_per_0.01']} decades per 0.01")
    check(ScoreModel.from_json(model.to_json()), test)


if __name__ == "__main__":
    main()
