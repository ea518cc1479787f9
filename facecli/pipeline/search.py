"""1:N search of the face(s) in photos against a collection, on any sink, many photos in one pass.

Photos go through the check stage's overlapped decode -> detect -> embed stream
(``pipeline/probes.py``) in chunks; each chunk is then searched at once: one index pass for every
face of the chunk on the engines (``search_many``: the embedded engine, PostgreSQL), or one request
per face on a server (the OpenCV FR API searches one image per call; the server detects and
embeds the face crop it is sent, so faces are only found here), ``concurrency`` of them in flight
with the client's retry rules, while the next chunk is being detected. Results come out in input
order.

Each probe is its own question against the collection: the decision's bar is the same for every
probe and holds per probe (a stranger matches anyone with probability <= the budget); over P
probes of people who are not enrolled, about P x budget of them will match someone.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facecli.errors import ConfigError, ReasonCode
from facecli.imaging.annotate import BoxLabel, annotate, save_jpeg
from facecli.imaging.decode import DecodedImage
from facecli.imaging.encode import PayloadSpec, payload_jpeg
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.probes import ProbeFaces, embed_probes
from facecli.pipeline.report import check_report_path, csv_cell
from facecli.pipeline.scale import SearchDecision
from facecli.sinks.base import Match, SearchProbe, Sink
from facecli.vision.detect import Face

#: Columns of `facecli search --csv` (and of a .csv --report): one row per match; a face without a
#: match has empty person fields; a photo that could not be searched has an empty face and a reason.
CSV_COLUMNS = ("path", "face", "person_id", "person_name", "score", "false_match_probability", "ambiguous", "reason")

#: Requests in flight to a target without batch search, when the sink does not say.
DEFAULT_CONCURRENCY = 4


@dataclass
class FaceMatches:
    """One searched face: the matches that pass the decision, each annotated (score, its
    false-match probability at the gallery's size, margin to the next person, ambiguous); none when
    nobody in the collection passes the bar. ``index``: 1 for the main (largest) face, then the
    others by size."""

    face: Face
    matches: list[dict]
    index: int = 1

    def to_json(self) -> dict:
        return {"index": self.index, "box": self.face.to_json()["box"], "det_score": round(self.face.score, 4),
                "matches": self.matches}


@dataclass
class SearchResult:
    query: str
    faces: list[FaceMatches] = field(default_factory=list)
    reason: ReasonCode | None = None  # why nothing was searched
    message: str = ""

    @property
    def found(self) -> bool:
        return any(f.matches for f in self.faces)

    def to_json(self) -> dict:
        out: dict = {"query": self.query, "faces": [f.to_json() for f in self.faces]}
        if self.reason:
            out["reason"] = str(self.reason)
            out["message"] = self.message
        return out

    def csv_rows(self) -> list[dict[str, Any]]:
        """This probe's rows of CSV_COLUMNS."""
        empty = dict.fromkeys(CSV_COLUMNS, "")
        if self.reason:
            return [empty | {"path": self.query, "reason": str(self.reason)}]
        rows = []
        for fm in self.faces:
            base = empty | {"path": self.query, "face": fm.index}
            if not fm.matches:
                rows.append(base)
            for m in fm.matches:
                p = m.get("false_match_probability")
                rows.append(base | {"person_id": m["person_id"], "person_name": m["person_name"], "score": m["score"],
                                    "false_match_probability": "" if p is None else p,
                                    "ambiguous": "true" if m["ambiguous"] else "false"})
        return rows


Drawer = Callable[[DecodedImage, SearchResult], None]


def search_paths(paths: Iterable[str | Path], checker: FaceChecker, sink: Sink, collection: str, k: int = 5,
                 min_score: float = 0.0, all_faces: bool = False, decision: SearchDecision | None = None,
                 draw: Drawer | None = None, chunk: int = 16) -> Iterator[SearchResult]:
    """Search every photo; yields one result per photo, in input order.

    With a ``decision`` (the CLI's), its bar replaces ``min_score`` and one more person is asked
    for, so the last reported match still has a margin to the next. ``draw`` is called with each
    decoded photo and its result (``search --draw``) before the photo is dropped."""
    decision = decision or SearchDecision(min_score, None, None, explicit=True)
    fetch_min = 0.0 if decision.model is not None else decision.min_score
    many = getattr(sink, "search_many", None)
    pool = None
    if many is None:
        workers = int(getattr(sink, "concurrency", None) or DEFAULT_CONCURRENCY)
        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="search")
    takes_images = getattr(sink, "takes_images", True)
    spec = PayloadSpec()
    pending: deque[tuple[list[ProbeFaces], list[list[Any]]]] = deque()
    # a target that takes images detects and embeds them itself: only find the faces here
    embed = many is not None or not takes_images
    try:
        for group in embed_probes(checker, paths, all_faces=all_faces, chunk=chunk, embed=embed):
            if many is not None:
                embs = [p.embeddings for p in group if p.faces]
                hits = iter(many(collection, np.concatenate(embs), k + 1, fetch_min) if embs else [])
                answers: list[list[Any]] = [[next(hits) for _ in p.faces] for p in group]
            else:
                assert pool is not None
                answers = [[pool.submit(sink.search, collection, _probe(p, i, takes_images, spec), k + 1, fetch_min)
                            for i in range(len(p.faces))] for p in group]
            if draw is None:
                for p in group:
                    p.image = None
            pending.append((group, answers))
            # a server works on this chunk while the next one is detected
            while len(pending) > (1 if pool is not None else 0):
                yield from _finish(*pending.popleft(), decision, k, draw)
        while pending:
            yield from _finish(*pending.popleft(), decision, k, draw)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _probe(p: ProbeFaces, i: int, takes_images: bool, spec: PayloadSpec) -> SearchProbe:
    jpeg = None
    if takes_images and p.image is not None:
        jpeg = payload_jpeg(p.image.rgb, p.faces[i].box / p.image.scale, spec)
    return SearchProbe(embedding=p.embeddings[i] if p.embeddings is not None else None, jpeg=jpeg)


def _finish(group: list[ProbeFaces], answers: list[list[Any]], decision: SearchDecision, k: int,
            draw: Drawer | None) -> Iterator[SearchResult]:
    for p, found in zip(group, answers):
        r = SearchResult(p.path, reason=p.reason, message=p.message)
        for index, (face, got) in enumerate(zip(p.faces, found), 1):
            matches: list[Match] = got.result() if isinstance(got, Future) else got
            r.faces.append(FaceMatches(face, decision.annotate(matches)[:k], index))
        if draw is not None and p.image is not None:
            draw(p.image, r)
        p.image = None
        yield r


def search_image(path: str | Path, checker: FaceChecker, sink: Sink, collection: str, k: int = 5,
                 min_score: float = 0.0, all_faces: bool = False, decision: SearchDecision | None = None) -> SearchResult:
    """Detect, then search the main face (or, with ``all_faces``, every counted face) of one photo."""
    return next(search_paths([path], checker, sink, collection, k=k, min_score=min_score, all_faces=all_faces,
                             decision=decision))


class DrawToFolder:
    """`search --draw DIR`: each photo with its faces boxed (green: matched, orange: no match),
    labelled with the face number, the best person and the score ("2: ?" without a match); a photo that could not be
    searched gets its reason as a caption. Written as ``DIR/<name>.jpg``, ``<name>`` being the
    photo's path under the folder it was found in (``_2``, ``_3`` ... when two photos share one)."""

    def __init__(self, folder: str | Path, names: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.names = names or {}
        self.written: list[Path] = []
        self._used: set[str] = set()

    def target(self, query: str) -> Path:
        rel = Path(self.names.get(query) or Path(query).name)
        stem = rel.with_suffix("").as_posix()
        name, n = f"{stem}.jpg", 1
        while name in self._used:
            n += 1
            name = f"{stem}_{n}.jpg"
        self._used.add(name)
        return self.folder / name

    def __call__(self, image: DecodedImage, result: SearchResult) -> None:
        labels = []
        for fm in result.faces:
            x, y, w, h = (float(v) / image.scale for v in fm.face.box)
            if fm.matches:
                top = fm.matches[0]
                who = top["person_name"] or top["person_id"]
                text = f"{fm.index}: {who} {top['score']:.3f}" + (" ?" if top["ambiguous"] else "")
            else:
                text = f"{fm.index}: ?"
            labels.append(BoxLabel((x, y, w, h), text, bool(fm.matches)))
        caption = f"{result.reason}: {result.message}" if result.reason else ""
        out = self.target(result.query)
        save_jpeg(annotate(image.rgb, labels, caption), out)
        self.written.append(out)


class SearchReport:
    """`search --report FILE` (and the --csv / --json output): per probe, one JSON line
    (``.jsonl``/``.json``: the --json object) or its CSV rows (``.csv``: CSV_COLUMNS, cells as in
    the check report: formula-like text neutralised)."""

    FORMATS = (".jsonl", ".json", ".csv")

    def __init__(self, fh: Any, csv_format: bool, extra: dict[str, Any] | None = None) -> None:
        self.fh = fh
        self.extra = extra or {}
        self.writer = csv.writer(fh) if csv_format else None
        if self.writer is not None:
            self.writer.writerow(CSV_COLUMNS)

    @classmethod
    def check_path(cls, path: str | Path) -> Path:
        """Refuse an unknown format or an unwritable place before any work (ConfigError, exit 2)."""
        p = Path(path)
        if p.suffix.lower() not in cls.FORMATS:
            raise ConfigError(f"--report {p}: unknown report format {p.suffix or '(no extension)'!r}",
                              hint="name the file .jsonl (or .json) for JSON Lines, .csv for CSV")
        return check_report_path(p)

    @classmethod
    def open(cls, path: str | Path, extra: dict[str, Any] | None = None) -> SearchReport:
        p = cls.check_path(path)
        return cls(p.open("w", encoding="utf-8", newline=""), p.suffix.lower() == ".csv", extra)

    def write(self, result: SearchResult) -> None:
        if self.writer is not None:
            for row in result.csv_rows():
                self.writer.writerow([csv_cell(row[c]) for c in CSV_COLUMNS])
        else:
            self.fh.write(json.dumps(result.to_json() | self.extra, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
