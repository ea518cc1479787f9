"""Bulk-scale decisions on lfw-view1 (issue 14): duplicates, the gate and open-set search, measured
at the scale they are made (hundreds to thousands of persons), through facecli's own code.

* Check: one photo per person (the lowest-numbered) of every lfw-view1 person, through
  ``FaceChecker.check_paths`` (decode -> detect -> gate -> align -> embed, the code `facecli
  check` runs): gate acceptance and its reasons.
* Duplicates: N = 300, 1,000 and all persons (a fixed random sample; plus the DevTest people
  alone, who took no part in fitting the score model) through ``apply_person_checks`` with the
  default policy (score model + budgets) and, for comparison, the former fixed threshold 0.923:
  persons falsely rejected as DUPLICATE_PERSON and POSSIBLE_DUPLICATE warnings. Then planted
  duplicates in the all-persons run: 50 persons' photo resized to 80% and re-encoded (JPEG q70)
  under a second id, and a *different* photo of 50 persons under a second id: caught, per kind.
  Then the same through the target: the all-persons run enrolled into a local engine, the
  planted persons enrolled in a second run (found only through the gallery).
* Open-set search: a local engine gallery of >= 1,000 persons (one accepted photo each: half of
  the DevTest people plus DevTrain people as filler); DevTest people's other photos are searched
  (genuine: answered with the right person), and one photo of each DevTest person *not* enrolled
  (strangers: any match is false), at the default bar (``search_decision``: P(stranger matches
  anyone) <= 1%) and at the former fixed 0.908.
* Levers (verification on DevTest people's pairs of photos, TAR at a per-comparison false-match
  rate, and the open-set genuine rate at the default bar): centring, whitening fitted on DevTrain
  people, cohort score normalisation (S-norm, DevTrain cohort), flip TTA, and multi-photo
  enrollment (best face vs the mean of two).

    FACECLI_MODELS_DIR=../shared/models python bench/scale.py            # everything (~4 min, 2 cores)
    FACECLI_MODELS_DIR=../shared/models python bench/scale.py --no-levers
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lfw_data  # noqa: E402

from facecli.errors import ReasonCode, Status  # noqa: E402
from facecli.pipeline.check import CheckConfig, FaceChecker, ImageCheck  # noqa: E402
from facecli.pipeline.enroll import CheckedPerson, person_verdict  # noqa: E402
from facecli.pipeline.persons import DuplicateRule, GalleryContext, PersonPolicy, apply_person_checks  # noqa: E402
from facecli.pipeline.report import ItemResult  # noqa: E402
from facecli.pipeline.scale import gallery_context, score_model_for, search_decision  # noqa: E402
from facecli.sinks.base import FacePayload, PersonPayload  # noqa: E402
from facecli.sinks.local import LocalSink  # noqa: E402
from facecli.sources.spec import PersonSpec  # noqa: E402
from facecli.vision.embed import DUPLICATE_THRESHOLD, MATCH_THRESHOLD  # noqa: E402

LFW = lfw_data.LFW
FIXED = PersonPolicy(duplicate_threshold=DUPLICATE_THRESHOLD, review_threshold=DUPLICATE_THRESHOLD)


def first_photos() -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in lfw_data.all_images():
        out.setdefault(rel.split("/")[0], rel)
    return out


def check_all(checker: FaceChecker, paths: list[str]) -> list[ImageCheck]:
    return list(checker.check_paths(paths))


def persons_from(entries: list[tuple[str, ImageCheck]]) -> list[CheckedPerson]:
    """(person_id, check) -> CheckedPersons with fresh ItemResults (checks are shared, items not)."""
    out = []
    for pid, c in entries:
        cp = CheckedPerson(PersonSpec(pid, pid, [Path(c.path)]))
        cp.items = [ItemResult(c.path, pid, c.status, list(c.reasons), c.message, c, warnings=list(c.warnings))]
        out.append(cp)
    return out


def decide(entries, policy: PersonPolicy, rule_model, gallery: GalleryContext | None = None) -> list[CheckedPerson]:
    persons = persons_from(entries)
    found = apply_person_checks(persons, policy, DuplicateRule(policy, rule_model), gallery)
    for cp in persons:
        cp.result = person_verdict(cp.spec, cp.items, found.duplicates.get(cp.spec.person_id))
    return persons


def dup_counts(persons: list[CheckedPerson]) -> tuple[int, int, int]:
    """(accepted by the gate, rejected DUPLICATE_PERSON, warned POSSIBLE_DUPLICATE)."""
    gate_ok = sum(1 for cp in persons if any(i.check is not None and i.check.status == Status.ACCEPTED for i in cp.items))
    rej = sum(1 for cp in persons if ReasonCode.DUPLICATE_PERSON in cp.result.reasons)
    warn = sum(1 for cp in persons if ReasonCode.POSSIBLE_DUPLICATE in cp.result.warnings)
    return gate_ok, rej, warn


def planted_files(tmp: Path, firsts: dict[str, str], rng: np.random.Generator, by_person: dict[str, list[str]],
                  accepted: set[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """50 resized re-encoded copies and 50 different photos, each as (new id, path), of accepted persons."""
    names = sorted(n for n in accepted)
    copies = []
    for n in rng.choice(names, 50, replace=False):
        im = Image.open(LFW / "images" / firsts[n]).convert("RGB")
        im = im.resize((round(im.width * 0.8), round(im.height * 0.8)), Image.LANCZOS)
        p = tmp / f"copy_{n}.jpg"
        im.save(p, quality=70)
        copies.append((f"copy-of-{n}", str(p)))
    multi = sorted(n for n in names if len(by_person[n]) >= 2)
    others = [(f"other-photo-of-{n}", str(LFW / "images" / by_person[n][1])) for n in rng.choice(multi, 50, replace=False)]
    return copies, others


def caught(persons: list[CheckedPerson], ids: set[str]) -> Counter:
    c: Counter = Counter()
    for cp in persons:
        if cp.spec.person_id not in ids:
            continue
        r = cp.result
        gate = any(i.check is not None and i.check.status == Status.ACCEPTED for i in cp.items)
        if not gate:
            c["gate rejected"] += 1
        elif ReasonCode.DUPLICATE_PERSON in r.reasons or ReasonCode.DUPLICATE_IMAGE in [x for i in cp.items for x in i.reasons]:
            c["rejected"] += 1
        elif ReasonCode.POSSIBLE_DUPLICATE in r.warnings:
            c["warned"] += 1
        else:
            c["missed"] += 1
    return c


def enroll_local(sink: LocalSink, coll: str, entries: list[tuple[str, ImageCheck]]) -> None:
    payloads = [PersonPayload(pid, pid, [FacePayload(c.sha256 or "", c.path, c.embedding)]) for pid, c in entries
                if c.status == Status.ACCEPTED and c.embedding is not None]
    for s in range(0, len(payloads), 500):
        sink.upsert(coll, payloads[s : s + 500])


def fmt_counter(c: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "-"


# -- levers ----------------------------------------------------------------------------------------

def tar_at(emb: np.ndarray, person: np.ndarray, rates=(1e-3, 1e-4, 1e-5)) -> list[float]:
    _, pid = np.unique(person, return_inverse=True)
    s = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    same = pid[iu[0]] == pid[iu[1]]
    sc = s[iu]
    imp = np.sort(sc[~same])[::-1]
    gen = sc[same]
    return [float((gen > imp[max(0, int(r * len(imp)) - 1)]).mean()) for r in rates]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def snorm_tar(te, cohort: np.ndarray, rates=(1e-3, 1e-4, 1e-5), top: int = 200) -> list[float]:
    """S-norm with the top-``top`` cohort scores of each side (adaptive S-norm)."""
    cs = te.emb @ cohort.T
    part = -np.partition(-cs, top, axis=1)[:, :top]
    mu, sd = part.mean(1), part.std(1)
    raw = te.emb @ te.emb.T
    z = 0.5 * ((raw - mu[:, None]) / sd[:, None] + (raw - mu[None, :]) / sd[None, :])
    _, pid = np.unique(te.person, return_inverse=True)
    iu = np.triu_indices(len(te.emb), 1)
    same = pid[iu[0]] == pid[iu[1]]
    sc = z[iu]
    imp = np.sort(sc[~same])[::-1]
    gen = sc[same]
    return [float((gen > imp[max(0, int(r * len(imp)) - 1)]).mean()) for r in rates]


def levers(models_dir: str | None, model) -> None:
    d = lfw_data.load(models_dir)
    tr, te = d.subset("train"), d.subset("test")
    print("\n## Levers (DevTest people's photo pairs; fitted on DevTrain people only)")
    print(f"{'lever':<44} {'TAR@1e-3':>9} {'TAR@1e-4':>9} {'TAR@1e-5':>9}")
    rows = [("baseline (what facecli ships)", tar_at(te.emb, te.person))]
    mu = tr.emb.mean(0)
    rows.append(("centring on the DevTrain mean", tar_at(unit(te.emb - mu), te.person)))
    cov = np.cov((tr.emb - mu).T)
    e, v = np.linalg.eigh(cov)
    w = v @ np.diag((e + 1e-4) ** -0.5) @ v.T
    rows.append(("whitening fitted on DevTrain", tar_at(unit((te.emb - mu) @ w), te.person)))
    rows.append(("S-norm, DevTrain cohort (top 200)", snorm_tar(te, tr.emb)))
    cfg = CheckConfig(models_dir=models_dir, flip_tta=True)
    flip = lfw_data.load_flip(cfg)
    fte = flip.subset("test")
    rows.append(("flip TTA (probe and gallery)", tar_at(fte.emb, fte.person)))
    for name, r in rows:
        print(f"{name:<44} " + " ".join(f"{x:>9.3f}" for x in r))
    # multi-photo enrollment: DevTest people with >= 3 photos, 2 enrolled, the rest searched
    names = sorted(set(te.person))
    idx = {n: np.nonzero(te.person == n)[0] for n in names}
    rich = [n for n in names if len(idx[n]) >= 3]
    probes = np.concatenate([idx[n][2:] for n in rich])
    truth = np.concatenate([[k] * (len(idx[n]) - 2) for k, n in enumerate(rich)])
    filler = tr.emb[np.unique(tr.person, return_index=True)[1]]
    g = len(rich) + len(filler)
    bar = model.threshold(g, 0.01) if model else MATCH_THRESHOLD
    e1 = te.emb[[idx[n][0] for n in rich]]
    e2 = te.emb[[idx[n][1] for n in rich]]
    q = te.emb[probes]
    best = np.maximum(q @ e1.T, q @ e2.T)
    mean = q @ unit(e1 + e2).T
    one = q @ e1.T
    fill = (q @ filler.T).max(1)
    print(f"\nmulti-photo enrollment ({len(rich)} DevTest people with >= 3 photos, {len(filler)} DevTrain filler, "
          f"{len(probes)} probes, bar {bar:.4f} for {g:,} persons):")
    for name, s in (("one photo", one), ("two photos, best face (what the engines do)", best), ("two photos, mean", mean)):
        hit = (s.argmax(1) == truth) & (s.max(1) >= bar) & (s.max(1) > fill)
        print(f"  {name:<46} right person at the bar: {hit.mean():.3f}   top-1: {((s.argmax(1) == truth) & (s.max(1) > fill)).mean():.3f}")


# -- main ------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--no-levers", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    checker = FaceChecker.open(CheckConfig(models_dir=args.models_dir))
    model = score_model_for(checker)
    print(model.describe() if model else "no score model for this recognizer: fixed thresholds")
    firsts = first_photos()
    by_person: dict[str, list[str]] = {}
    for rel in lfw_data.all_images():
        by_person.setdefault(rel.split("/")[0], []).append(rel)
    test_people = set(lfw_data.people("test"))
    names = sorted(firsts)
    t0 = time.perf_counter()
    checks = dict(zip(names, check_all(checker, [str(LFW / "images" / firsts[n]) for n in names])))
    print(f"checked {len(names):,} photos (one per person) in {time.perf_counter() - t0:.0f} s")

    # -- gate ------------------------------------------------------------------------------------
    acc = [n for n in names if checks[n].status == Status.ACCEPTED]
    reasons = Counter(str(r) for n in names for r in checks[n].reasons)
    warns = Counter(str(w) for n in names for w in checks[n].warnings)
    print("\n## Gate: one photo per person")
    print(f"accepted {len(acc):,} of {len(names):,} persons ({len(acc) / len(names):.1%}); reasons: {fmt_counter(reasons)}"
          + (f"; warnings: {fmt_counter(warns)}" if warns else ""))

    # -- duplicates ------------------------------------------------------------------------------
    order = list(rng.permutation(names))
    print("\n## Duplicate persons: one photo each of N distinct persons (false decisions; all are different people)")
    print(f"{'run':<28} {'gate-accepted':>13} {'fixed 0.923: rejected':>22} {'score model: rejected':>22} "
          f"{'POSSIBLE_DUPLICATE':>19} {'reject at':>10}")
    runs = [(f"{n} persons", order[:n]) for n in (300, 1000)] + [
        (f"all {len(names):,} persons", order), (f"DevTest only ({len(test_people & set(names))})",
                                                  [n for n in order if n in test_people])]
    for label, sel in runs:
        entries = [(n, checks[n]) for n in sel]
        ok, fixed_rej, _ = dup_counts(decide(entries, FIXED, None))
        ok, rej, warn = dup_counts(decide(entries, PersonPolicy(), model))
        lv = DuplicateRule(PersonPolicy(), model).levels(max(1, ok - 1))[0]
        print(f"{label:<28} {ok:>13,} {fixed_rej:>10,} ({fixed_rej / max(ok, 1):5.1%})     {rej:>10,} ({rej / max(ok, 1):5.2%})"
              f"     {warn:>8,} ({warn / max(ok, 1):5.1%}) {lv:>10.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        copies, others = planted_files(Path(tmp), firsts, rng, by_person, set(acc))
        extra = check_all(checker, [p for _, p in copies + others])
        planted = [(pid, c) for (pid, _), c in zip(copies + others, extra)]
        base = [(n, checks[n]) for n in order]
        persons = decide(base + planted, PersonPolicy(), model)
        copy_ids, other_ids = {p for p, _ in copies}, {p for p, _ in others}
        originals_lost = sum(1 for cp in persons if cp.spec.person_id in {p[len("copy-of-"):] for p in copy_ids}
                             and cp.result.status != Status.ACCEPTED and checks[cp.spec.person_id].status == Status.ACCEPTED
                             and ReasonCode.DUPLICATE_PERSON in cp.result.reasons)
        print(f"\nplanted into the all-persons run ({len(base) + len(planted):,} persons):")
        print(f"  resized (80%) re-encoded (q70) copy under a second id: {fmt_counter(caught(persons, copy_ids))}"
              f"  (originals kept: {50 - originals_lost}/50)")
        print(f"  a different photo under a second id:                    {fmt_counter(caught(persons, other_ids))}")
        dist = [cp.result.duplicates[0]["score"] for cp in persons if cp.spec.person_id in copy_ids and cp.result.duplicates]
        if dist:
            print(f"  copies' scores against their original: min {min(dist):.4f}, median {float(np.median(dist)):.4f}")

        # the same across two runs, found only through the target's gallery
        sink = LocalSink(Path(tmp) / "gallery.db", writer=True)
        try:
            sink.ensure_collection("lfw", create=True)
            enroll_local(sink, "lfw", base)
            gal = gallery_context(sink, "lfw", checker.recognizer.model.file.sha256)
            second = decide(planted, PersonPolicy(), model, gal)
            print(f"  second run of the 100 planted persons against the enrolled gallery ({gal.faces:,} faces): "
                  f"copies {fmt_counter(caught(second, copy_ids))}; different photos {fmt_counter(caught(second, other_ids))}")
            strangers = [n for n in names if n not in set(order[:1000])]
            sink.ensure_collection("g1000", create=True)
            enroll_local(sink, "g1000", [(n, checks[n]) for n in order[:1000]])
            g1k = gallery_context(sink, "g1000", checker.recognizer.model.file.sha256)
            fresh = decide([(f"new-{n}", checks[n]) for n in rng.choice(strangers, 300, replace=False)
                            if checks[n].status == Status.ACCEPTED], PersonPolicy(), model, g1k)
            ok, rej, warn = dup_counts(fresh)
            print(f"  300 new distinct persons against a 1,000-person gallery: {rej} rejected, {warn} warned (false)")
        finally:
            sink.close()

        # -- open-set search -------------------------------------------------------------------
        print("\n## Open-set search (gallery: one accepted photo per person; local engine)")
        test_multi = [n for n in order if n in test_people]
        enrolled = set(test_multi[: len(test_multi) // 2])
        outsiders = [n for n in test_multi if n not in enrolled]
        filler = [n for n in order if n not in test_people and checks[n].status == Status.ACCEPTED]
        for gsize in (1000, None):
            members = [n for n in enrolled if checks[n].status == Status.ACCEPTED]
            fill = filler if gsize is None else filler[: max(0, gsize - len(members))]
            gallery = members + fill
            coll = f"search{gsize or 'all'}"
            sink = LocalSink(Path(tmp) / "search.db", writer=True)
            try:
                sink.ensure_collection(coll, create=True)
                enroll_local(sink, coll, [(n, checks[n]) for n in gallery])
                genuine = [(n, rel) for n in members for rel in by_person[n][1:]]
                gchecks = check_all(checker, [str(LFW / "images" / r) for _, r in genuine])
                schecks = [checks[n] for n in outsiders]
                dec = search_decision(sink, coll, checker)

                def top(cs):
                    """Each probe's best match (searched once, judged at every bar below)."""
                    embs = [c.embedding for c in cs if c.embedding is not None]
                    hits = iter(sink.search_many(coll, np.stack(embs), 1, 0.0))
                    return [next(hits) if c.embedding is not None else [] for c in cs]

                gh, sh = top(gchecks), top(schecks)
                usable = sum(1 for c in gchecks if c.embedding is not None)
                s_ok = sum(1 for c in schecks if c.embedding is not None)
                print(f"gallery {dec.gallery:,} persons ({len(members)} DevTest people + {len(fill)} DevTrain filler); "
                      f"default bar {dec.min_score:.4f} (P(stranger matches anyone) <= 1%)")
                for label, bar in (("default (score model)", dec.min_score), (f"former fixed {MATCH_THRESHOLD}", MATCH_THRESHOLD)):
                    right = sum(1 for (n, _), h in zip(genuine, gh) if h and h[0].score >= bar and h[0].person_id == n)
                    wrong = sum(1 for (n, _), h in zip(genuine, gh) if h and h[0].score >= bar and h[0].person_id != n)
                    fm = sum(1 for h in sh if h and h[0].score >= bar)
                    print(f"  {label:<24} genuine probes {len(genuine):,} ({usable:,} with an accepted face): right person "
                          f"{right / max(usable, 1):.1%}, wrong person {wrong / max(usable, 1):.1%} | strangers "
                          f"{s_ok}: matched {fm} ({fm / max(s_ok, 1):.1%})")
            finally:
                sink.close()

    if not args.no_levers:
        levers(args.models_dir, model)


if __name__ == "__main__":
    main()
