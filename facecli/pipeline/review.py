"""The HTML review page: `--report review.html`, and `facecli runs show RUN_ID --html FILE`.

One self-contained file a person opens from disk (file:// URL): the run summary, counts per
reason, and for every refused photo (rejected, failed, skipped, or kept with a warning) a small
thumbnail with the detected face box(es) drawn, its reasons and the measured value against the
limit (the item's message, which the run wrote with its own thresholds; for older lines without
one, the measurements next to facecli's defaults, said so); duplicate pairs side by side with their
score; identity mismatches next to the person's other photos; filters by kind, status, reason and
text; 100 entries a page.

What it must not do:
- reach the network: no URL anywhere, images are ``data:`` URIs, and a Content-Security-Policy
  allows nothing else (``default-src 'none'``, the page's own script and style by hash);
- run markup from outside: file names, ids and messages travel as JSON (``<``, ``>``, ``&``
  escaped) and the page's script writes them with ``textContent`` only;
- keep more personal data than the run needed: thumbnails of the photos shown only (at most
  ``MAX_THUMBNAILS``; the rest are listed without one, and the page says so), no embeddings, no
  metadata columns, no full-size image;
- grow with the run: lines arrive one by one and only those shown are kept (trimmed), plus
  counts and, per photo, its face box (for duplicate pairs); thumbnails are made at the end, one
  file at a time (JPEGs decoded reduced), and only the small JPEG stays.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facecli.errors import REASON_HELP, ConfigError, ReasonCode
from facecli.imaging.decode import DecodeFailure, DecodeLimits, decode_image
from facecli.vision.quality import Thresholds

if TYPE_CHECKING:
    from facecli.pipeline.report import ItemResult, PersonResult, RunSummary

#: Longest side of a thumbnail, in pixels, and its JPEG quality.
THUMB_SIDE = 120
THUMB_QUALITY = 70
#: Thumbnails embedded at most (about 5 KB each); later entries are listed without one.
MAX_THUMBNAILS = 2000
#: Entries drawn at once; the page's pager moves through the rest.
PAGE_SIZE = 100
#: Photos of a person shown beside an IDENTITY_MISMATCH.
MAX_OTHER_PHOTOS = 6
#: Face boxes remembered for photos that a duplicate pair may show without showing the photo's
#: own entry (the other person's accepted photo); beyond this many the pair shows it without box.
MAX_REMEMBERED_BOXES = 200_000

_IMAGE_STATUSES = ("accepted", "enrolled", "rejected", "failed", "skipped")
_PERSON_STATUSES = ("accepted", "enrolled", "rejected", "failed", "skipped")
_SHOWN = ("rejected", "failed", "skipped")
#: Small decode for thumbnails: JPEGs are drafted (1/2 .. 1/8 scale) straight to about this size.
_THUMB_LIMITS = DecodeLimits(work_max_side=2 * THUMB_SIDE)
_DEFAULTS = Thresholds()
_NO_PREVIEW = {ReasonCode.FILE_NOT_FOUND: "file not found", ReasonCode.UNREADABLE: "file not readable",
               ReasonCode.DECODE_ERROR: "corrupt file: no preview", ReasonCode.UNSUPPORTED_FORMAT: "not an image",
               ReasonCode.IMAGE_TOO_LARGE: "too large to preview"}
_MAIN_BOX = (230, 40, 40)
_OTHER_BOX = (250, 200, 0)


@dataclass
class PageStats:
    path: Path
    entries: int
    thumbnails: int
    without_thumbnail: int
    bytes: int
    seconds: float


# --- measured value against the threshold --------------------------------------------------------


#: Reason -> (measurement, its label, the threshold that decides it) for lines without a message.
_MEASURES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "LOW_SHARPNESS": (("sharpness", "sharpness", "min_sharpness"),),
    "LOW_BRIGHTNESS": (("brightness", "brightness", "min_brightness"),),
    "OVEREXPOSED": (("brightness", "brightness", "max_brightness"),),
    "LOW_CONFIDENCE": (("det_score", "detector score", "min_confidence"),),
    "FACE_TOO_SMALL": (("face_size", "face size (px)", "min_face_size"),
                       ("eye_distance", "eye distance (px)", "min_eye_distance")),
    "EXTREME_POSE": (("yaw", "yaw (degrees)", "max_yaw"), ("pitch", "pitch (degrees)", "max_pitch"),
                     ("roll", "roll (degrees)", "max_roll")),
    "FACE_TRUNCATED": (("border", "distance to the border (px; negative: outside)", "min_border"),),
    "IMAGE_TOO_SMALL": (("width", "width (px)", "min_image_width"), ("height", "height (px)", "min_image_height")),
}


def _num(v: float) -> str:
    a = abs(v)
    return f"{v:.0f}" if a >= 100 or float(v).is_integer() else f"{v:.1f}" if a >= 10 else f"{v:.2f}"


def fallback_explanations(line: dict[str, Any], codes: list[str]) -> list[str]:
    """For a line without a message (runs from before messages stated the values): each reason's
    measured value next to facecli's *default* limit, since the run's own limits are not in its
    report lines: "sharpness 4.66 < 20 (min_sharpness, facecli's default)" when the default is crossed, else
    "sharpness 302 (default min_sharpness 20: the run's limit differed)"."""
    values = {**(line.get("quality") or {}), **{k: line.get(k) for k in ("det_score", "width", "height")}}
    limits = _DEFAULTS.to_dict()
    out = []
    for code in codes:
        for key, label, name in _MEASURES.get(code, ()):
            v = values.get(key)
            if not isinstance(v, (int, float)):
                continue
            limit = limits[name]
            crossed = abs(v) > limit if name.startswith("max_") else v < limit
            op = ">" if name.startswith("max_") else "<"
            out.append(f"{label} {_num(v)} {op} {limit:g} ({name}, facecli's default)" if crossed
                       else f"{label} {_num(v)} (default {name} {limit:g}: the run's limit differed)")
    return out


# --- thumbnails -----------------------------------------------------------------------------------


def make_thumbnail(path: str, boxes: list[list[float]] | None = None, sha256: str | None = None,
                   side: int = THUMB_SIDE) -> tuple[str | None, str]:
    """(``data:image/jpeg;base64,...`` or None, a note): the photo at ``path`` re-read small, the
    face boxes (main first, in original-image pixels) drawn on it. Never raises for a bad file:
    a missing or unreadable one gives (None, why)."""
    from PIL import Image, ImageDraw

    try:
        decoded = decode_image(path, _THUMB_LIMITS)
    except DecodeFailure as exc:
        return None, _NO_PREVIEW.get(exc.reason, "no preview")
    except Exception as exc:  # a thumbnail must never end the report
        return None, f"no preview: {type(exc).__name__}"
    note = ""
    if sha256 and decoded.sha256 != sha256:
        boxes, note = None, "the file changed since the run"
    img = Image.fromarray(decoded.rgb)
    img.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if boxes:
        k = img.width / max(1, decoded.source_width)
        draw = ImageDraw.Draw(img)
        width = max(1, round(min(img.size) / 60))
        for n, box in reversed(list(enumerate(boxes))):  # the main face drawn last, on top
            x, y, w, h = (float(v) * k for v in box)
            draw.rectangle((x, y, x + w, y + h), outline=_MAIN_BOX if n == 0 else _OTHER_BOX, width=width)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), note


# --- the writer -----------------------------------------------------------------------------------


def _boxes(line: dict[str, Any]) -> list[list[float]]:
    out = [line["box"]] if isinstance(line.get("box"), list) else []
    return out + [f["box"] for f in line.get("other_faces") or [] if isinstance(f.get("box"), list)]


def _photo(line: dict[str, Any]) -> dict[str, Any]:
    return {"path": str(line.get("path") or ""), "person": line.get("person_id"), "boxes": _boxes(line),
            "sha": line.get("sha256")}


class HtmlReportWriter:
    """A ReportWriter (``report.ReportWriter``) that writes the review page at ``close``."""

    def __init__(self, path: str | Path, max_thumbnails: int = MAX_THUMBNAILS, page_size: int = PAGE_SIZE) -> None:
        self.path = Path(path)
        self.max_thumbnails = max_thumbnails
        self.page_size = page_size
        self.entries: list[dict[str, Any]] = []
        self.images: Counter = Counter()
        self.persons: Counter = Counter()
        self.reasons: Counter = Counter()
        self.warnings: Counter = Counter()
        self.person_reasons: Counter = Counter()
        self.pairs: list[dict[str, Any]] = []
        self._pair_keys: set = set()
        self._person_photos: dict[str, list[dict[str, Any]]] = {}  # this person's photos until its line
        self._mismatch: dict[str, list[dict[str, Any]]] = {}  # person -> its mismatch entries
        self._boxes: dict[str, tuple[list[list[float]], str | None]] = {}
        self.stats: PageStats | None = None

    # ReportWriter
    def write_item(self, item: ItemResult) -> None:
        self.add_line(item.to_json())

    def write_person(self, person: PersonResult) -> None:
        self.add_line(person.to_json())

    def close(self, summary: RunSummary) -> None:
        self.finish(summary.to_json())

    # lines as dicts (the JSONL report's, or the run ledger's)
    def add_line(self, line: dict[str, Any]) -> None:
        if line.get("kind") == "person":
            self._add_person(line)
        else:
            self._add_image(line)

    def _add_image(self, line: dict[str, Any]) -> None:
        status = str(line.get("status") or "")
        reasons, warnings = list(line.get("reasons") or []), list(line.get("warnings") or [])
        self.images[status] += 1
        self.reasons.update(reasons)
        self.warnings.update(warnings)
        photo = _photo(line)
        if photo["boxes"] and len(self._boxes) < MAX_REMEMBERED_BOXES:
            self._boxes[photo["path"]] = (photo["boxes"], photo["sha"])
        person = line.get("person_id")
        if person is not None:
            kept = self._person_photos.setdefault(person, [])
            if len(kept) <= MAX_OTHER_PHOTOS:
                kept.append(dict(photo))
        if status not in _SHOWN and not warnings:
            return
        if status == "skipped" and set(reasons) <= {"UNCHANGED"}:
            return  # sent by an earlier run, unchanged: nothing to review
        entry = {"t": "image", "f": status if status in _SHOWN else "warning", "status": status,
                 "reasons": reasons, "warnings": warnings, "msg": str(line.get("message") or ""),
                 "photo": photo, "line": line.get("line"),
                 "_m": {k: line.get(k) for k in ("quality", "box", "landmarks", "det_score", "width", "height")}}
        self.entries.append(entry)
        if "IDENTITY_MISMATCH" in reasons + warnings and person is not None:
            self._mismatch.setdefault(person, []).append(entry)

    def _add_person(self, line: dict[str, Any]) -> None:
        pid = str(line.get("person_id") or "")
        status = str(line.get("status") or "")
        self.persons[status] += 1
        reasons = list(line.get("reasons") or [])
        self.person_reasons.update(reasons)
        photos = self._person_photos.pop(pid, [])
        for entry in self._mismatch.pop(pid, []):
            own = entry["photo"]["path"]
            entry["others"] = [p for p in photos if p["path"] != own][:MAX_OTHER_PHOTOS]
        for d in line.get("duplicates") or []:
            other = str(d.get("other_person_id") or "")
            key = frozenset((pid, other)) if d.get("where") == "run" else (pid, other)
            if key in self._pair_keys:
                continue  # a pair inside the run is listed once
            self._pair_keys.add(key)
            self.pairs.append({"person": pid, **d})

    # the page
    def finish(self, summary: dict[str, Any] | None = None, run: dict[str, Any] | None = None) -> PageStats:
        started = time.monotonic()
        summary = summary or {}
        entries = [self._image_entry(e) if e["t"] == "image" else e for e in self.entries]
        entries += [self._pair_entry(p) for p in sorted(self.pairs, key=lambda p: -float(p.get("score") or 0))]
        thumbs, missing = self._thumbnails(entries)
        for e in entries:
            e["codes"] = sorted(set(e["reasons"]) | set(e["warnings"]))
            e["q"] = " ".join(str(v) for v in self._texts(e)).lower()
        defaults = sum(1 for e in entries if e.get("why"))
        page = render_page(entries, thumbs, summary, run, self, defaults, missing)
        try:
            self.path.write_text(page, encoding="utf-8", errors="backslashreplace")
        except OSError as exc:
            raise ConfigError(f"the review page {self.path} cannot be written: {exc.strerror or exc}") from None
        self.stats = PageStats(self.path, len(entries), len(thumbs), missing, len(page.encode("utf-8", "replace")),
                               time.monotonic() - started)
        return self.stats

    @staticmethod
    def _image_entry(e: dict[str, Any]) -> dict[str, Any]:
        line = e.pop("_m")
        if not e["msg"]:
            e["why"] = fallback_explanations(line, e["reasons"] + e["warnings"])
        return e

    def _pair_entry(self, p: dict[str, Any]) -> dict[str, Any]:
        decision = str(p.get("decision") or "")
        code = {"duplicate": "DUPLICATE_PERSON", "same_image": "DUPLICATE_IMAGE"}.get(decision, "POSSIBLE_DUPLICATE")
        a_path, b_path = str(p.get("path") or ""), p.get("other_path")

        def photo(path: str | None, person: str) -> dict[str, Any]:
            boxes, sha = self._boxes.get(path or "", ([], None))
            return {"path": path or "", "person": person, "boxes": boxes, "sha": sha}

        where = "gallery" if p.get("where") == "target" else "run"
        return {"t": "pair", "f": "warning" if code == "POSSIBLE_DUPLICATE" else "rejected", "status": decision,
                "reasons": [code], "warnings": [], "score": p.get("score"), "where": where,
                "fmp": p.get("false_match_probability"), "a": photo(a_path, p["person"]),
                "b": photo(b_path, str(p.get("other_person_id") or "")) if b_path else
                {"path": "", "person": str(p.get("other_person_id") or ""), "note": "in the gallery"}}

    def _thumbnails(self, entries: list[dict[str, Any]]) -> tuple[dict[str, str], int]:
        """Make each photo's thumbnail once (by path), in entry order, up to the cap."""
        thumbs: dict[str, str] = {}
        by_path: dict[str, tuple[str | None, str]] = {}
        missing = 0
        for e in entries:
            for photo in self._photos_of(e):
                path = photo["path"]
                if not path or photo.get("note"):
                    continue
                if path not in by_path:
                    if len(thumbs) >= self.max_thumbnails:
                        by_path[path] = (None, "no thumbnail (the page's limit was reached)")
                        missing += 1
                    else:
                        uri, note = make_thumbnail(path, photo["boxes"], photo.get("sha"))
                        key = None
                        if uri:
                            key = "t" + hashlib.sha1(path.encode("utf-8", "surrogatepass")).hexdigest()[:12]
                            thumbs[key] = uri
                        by_path[path] = (key, note)
                photo["th"], photo["note"] = by_path[path]
                photo.pop("boxes", None)
                photo.pop("sha", None)
        return thumbs, missing

    @staticmethod
    def _photos_of(e: dict[str, Any]) -> list[dict[str, Any]]:
        if e["t"] == "image":
            return [e["photo"], *e.get("others", [])]
        return [e["a"], e["b"]]

    @classmethod
    def _texts(cls, e: dict[str, Any]) -> list[Any]:
        texts = [e.get("msg")] + [v for p in cls._photos_of(e) for v in (p["path"], p["person"])]
        return [t for t in texts if t]


def write_review_page(path: str | Path, lines: list[dict[str, Any]], run: dict[str, Any] | None = None,
                      max_thumbnails: int = MAX_THUMBNAILS) -> PageStats:
    """The page for a past run (``facecli runs show RUN_ID --html FILE``): its report lines from the
    run ledger, its ledger row (``Journal.run``); photos are re-read from their paths now."""
    writer = HtmlReportWriter(path, max_thumbnails=max_thumbnails)
    for line in lines:
        writer.add_line(line)
    return writer.finish((run or {}).get("summary"), run)


# --- HTML -----------------------------------------------------------------------------------------


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: no ``</script>``, no ``<!--``."""
    try:
        text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # a NaN or infinity somewhere: JSON.parse would refuse the whole page
        text = json.dumps(_finite(obj), ensure_ascii=True, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) else ""


def render_page(entries: list[dict[str, Any]], thumbs: dict[str, str], summary: dict[str, Any],
                run: dict[str, Any] | None, w: HtmlReportWriter, defaults: int, missing: int) -> str:
    e = html.escape
    run = run or {}
    run_id = summary.get("run_id") or run.get("run_id") or ""
    command = summary.get("command") or run.get("command") or "run"
    target, collection = summary.get("target") or run.get("target"), summary.get("collection") or run.get("collection")
    facts = [("run", run_id), ("command", command), ("target", target or "-"), ("collection", collection or "-")]
    if run.get("started"):
        facts.append(("started", _when(run["started"])))
    if run.get("status"):
        facts.append(("status", run["status"] + (f": {run['error']}" if run.get("error") else "")))
    if summary.get("duration_s") is not None:
        facts.append(("duration", f"{float(summary['duration_s']):.1f} s"))
    if summary.get("interrupted"):
        facts.append(("interrupted", "yes: the run stopped before the end; this page shows what it finished"))
    facts.append(("page written", time.strftime("%Y-%m-%d %H:%M:%S")))
    fact_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts)

    def count_table(title: str, counts: Counter, statuses: tuple[str, ...], kind: str) -> str:
        cells = "".join(f'<td class="st-{s}" data-{kind}-status="{s}" data-count="{counts.get(s, 0)}">'
                        f"<b>{counts.get(s, 0):,}</b><br>{s}</td>" for s in statuses)
        return f'<table class="counts" id="{kind}-counts"><caption>{e(title)}</caption><tr>{cells}</tr></table>'

    n_images, n_persons = sum(w.images.values()), sum(w.persons.values())
    help_for = {str(k): v for k, v in REASON_HELP.items()}
    codes = sorted(set(w.reasons) | set(w.warnings), key=lambda c: (-(w.reasons[c] + w.warnings[c]), c))
    reason_rows = "".join(
        f'<tr data-reason="{e(c)}" data-count="{w.reasons.get(c, 0)}" data-warnings="{w.warnings.get(c, 0)}">'
        f'<td><button type="button" class="code" data-filter-reason="{e(c)}">{e(c)}</button></td>'
        f'<td class="num">{w.reasons.get(c, 0):,}</td><td class="num">{w.warnings.get(c, 0):,}</td>'
        f"<td>{e(help_for.get(c, ''))}</td></tr>" for c in codes)
    reasons_html = (f'<table id="reasons"><thead><tr><th>reason</th><th class="num">refused</th>'
                    f'<th class="num">warnings</th><th>meaning</th></tr></thead><tbody>{reason_rows}</tbody></table>'
                    if codes else "<p>No image was refused and none has a warning.</p>")
    person_reasons = ", ".join(f"{e(c)} {n:,}" for c, n in sorted(w.person_reasons.items()))
    notes = []
    if defaults:
        notes.append(f"{defaults:,} photo(s) carry no message from the run: their measured values are compared "
                     "with facecli's default limits (the run's own limits were not recorded; a --preset, -t or "
                     "config file may have differed).")
    if missing:
        notes.append(f"{missing:,} photo(s) are listed without a thumbnail: the page embeds at most "
                     f"{w.max_thumbnails:,} thumbnails to stay small.")
    if summary.get("nothing_to_do"):
        notes.append(e(summary["nothing_to_do"]))
    data = {"entries": entries, "thumbs": thumbs, "page_size": w.page_size,
            "help": {c: help_for.get(c, "") for c in {c for x in entries for c in x["codes"]}}}
    title = f"facecli review: {command} {run_id}"
    csp = (f"default-src 'none'; img-src data:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
           "base-uri 'none'; form-action 'none'")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{e(csp)}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{_CSS}</style></head>
<body data-images="{n_images}" data-persons="{n_persons}" data-entries="{len(entries)}" data-thumbnails="{len(thumbs)}">
<header><h1>facecli review <span class="sub">{e(command)} {e(run_id)}</span></h1>
<p class="privacy">This page holds small thumbnails of the photos that were refused or flagged in this run
(biometric data). Keep it where only reviewers can read it and delete it when you are done.</p></header>
<main>
<section id="summary"><h2>Summary</h2>
<div class="row"><table class="facts">{fact_rows}</table>
<div>{count_table(f"{n_images:,} images", w.images, _IMAGE_STATUSES, "image")}
{count_table(f"{n_persons:,} persons", w.persons, _PERSON_STATUSES, "person")}
{f'<p class="small">Person reasons: {person_reasons}</p>' if person_reasons else ''}</div></div>
{''.join(f'<p class="note">{n}</p>' for n in notes)}
</section>
<section id="reason-counts"><h2>Counts per reason</h2>
<p class="small">Images per reason code (an image can have several). Click a code to list those photos.</p>
{reasons_html}</section>
<section id="review"><h2>To review <span class="sub">({len(entries):,})</span></h2>
<p class="small">Each photo shows the face that was measured in a <span class="main-box">red box</span>,
other faces in a <span class="other-box">yellow box</span>. Duplicate pairs show both photos with their
similarity score (1 = identical).</p>
<form id="filters" class="filters" autocomplete="off">
<label>Show <select id="f-kind"><option value="">everything</option><option value="image">photos</option>
<option value="pair">duplicate pairs</option></select></label>
<label>Status <select id="f-status"><option value="">any</option><option value="rejected">rejected</option>
<option value="failed">failed</option><option value="skipped">skipped</option>
<option value="warning">accepted with a warning</option></select></label>
<label>Reason <select id="f-reason"><option value="">any</option></select></label>
<label>Search <input id="f-text" type="search" placeholder="file name or person"></label>
<button type="button" id="f-clear">Clear filters</button></form>
<nav class="pager" id="pager-top"></nav>
<div id="entries"><noscript><p class="note">Turn on JavaScript to see the photos list; the counts above are complete.</p></noscript></div>
<nav class="pager" id="pager-bottom"></nav>
</section></main>
<script type="application/json" id="review-data">{_json_for_script(data)}</script>
<script>{_JS}</script>
</body></html>
"""


_CSS = """
:root{--bad:#b3261e;--fail:#7d1d6f;--warn:#8a5a00;--ok:#1e6b34;--mute:#5f6368;--line:#dadce0}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#202124;background:#f8f9fa}
header{background:#fff;border-bottom:1px solid var(--line);padding:12px 24px}
h1{font-size:22px;margin:0}h2{font-size:18px;margin:0 0 8px}.sub{color:var(--mute);font-weight:normal;font-size:.8em}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:14px 0}
.privacy{margin:6px 0 0;color:var(--warn)}.note{background:#fef7e0;padding:6px 10px;border-radius:4px}
.small{color:var(--mute);font-size:13px}
.row{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse}.facts th{text-align:left;color:var(--mute);font-weight:normal;padding:2px 12px 2px 0}
.facts td{padding:2px 0;word-break:break-all}
.counts{margin:0 0 10px}.counts caption{text-align:left;font-weight:600;padding-bottom:4px}
.counts td{border:1px solid var(--line);padding:6px 14px;text-align:center;min-width:84px;color:var(--mute)}
.counts td b{font-size:20px;color:#202124}
.st-rejected b{color:var(--bad)!important}.st-failed b{color:var(--fail)!important}
.st-accepted b,.st-enrolled b{color:var(--ok)!important}
#reasons th,#reasons td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
#reasons .num{text-align:right}
button.code{font:600 13px ui-monospace,Menlo,Consolas,monospace;background:#eef3fd;border:1px solid #c6d4f5;
border-radius:4px;padding:2px 6px;cursor:pointer;color:#174ea6}
.filters{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:10px 0;padding:10px;background:#f1f3f4;border-radius:6px}
.filters select,.filters input{font:inherit;padding:3px}
.pager{display:flex;gap:10px;align-items:center;margin:8px 0}.pager button{font:inherit;padding:2px 10px}
.card{display:flex;gap:16px;border-top:1px solid var(--line);padding:12px 0;align-items:flex-start}
.photos{display:flex;gap:10px;align-items:center;flex-wrap:wrap}
figure{margin:0;width:128px;text-align:center}
figure img,.placeholder{display:block;margin:0 auto;max-width:120px;max-height:120px;border-radius:3px}
.placeholder{width:120px;height:90px;background:#e8eaed;color:var(--mute);font-size:12px;display:flex;
align-items:center;justify-content:center;padding:6px;overflow:hidden;text-align:center}
figcaption{font-size:12px;color:var(--mute);word-break:break-all;margin-top:3px}
.others{border-left:3px solid var(--line);padding-left:10px}
.vs{font-size:13px;text-align:center;color:var(--mute);min-width:90px}.vs b{display:block;font-size:20px;color:#202124}
.info{flex:1;min-width:0}.path{font-weight:600;word-break:break-all}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff;margin-right:6px;background:var(--mute)}
.b-rejected{background:var(--bad)}.b-failed{background:var(--fail)}.b-warning{background:var(--warn)}
ul.why{margin:6px 0 0;padding-left:18px}ul.why li{margin:2px 0}.code-t{font:600 13px ui-monospace,Menlo,Consolas,monospace}
.measure{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;background:#fce8e6;padding:2px 6px;
border-radius:3px;margin-top:6px;display:inline-block;word-break:break-word}.main-box{color:#e62828;font-weight:600}.other-box{color:#a07800;font-weight:600}
.empty{color:var(--mute);padding:16px 0}
"""

_JS = """
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("review-data").textContent);
  var E = D.entries, T = D.thumbs, PAGE = D.page_size || 100, HELP = D.help || {};
  var S = {kind: "", status: "", reason: "", text: "", page: 0};
  var body = document.body, token = 0;
  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) { n.className = cls; }
    if (text !== undefined && text !== null) { n.textContent = String(text); }
    return n;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var c = arguments[i];
      parent.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return parent;
  }
  function base(p) {
    var s = String(p || "");
    return s.slice(Math.max(s.lastIndexOf("/"), s.lastIndexOf("\\\\")) + 1);
  }
  function figure(ph, caption) {
    var f = el("figure");
    if (ph.th && T[ph.th]) {
      var img = el("img");
      img.alt = "photo " + base(ph.path); img.title = ph.path; img.src = T[ph.th];
      f.appendChild(img);
    } else {
      var d = el("div", "placeholder", ph.note || "no preview");
      d.title = ph.path || "";
      f.appendChild(d);
    }
    return add(f, el("figcaption", "", caption !== undefined ? caption : base(ph.path)));
  }
  function badge(f, text) { return el("span", "badge b-" + f, text); }
  function reasonList(e) {
    var ul = el("ul", "why");
    e.reasons.concat(e.warnings).forEach(function (c) {
      var warn = e.warnings.indexOf(c) >= 0;
      add(ul, add(el("li"), el("span", "code-t", c + (warn ? " (warning)" : "")), HELP[c] ? ": " + HELP[c] : ""));
    });
    return ul;
  }
  function measured(e, info) {
    if (e.msg) { info.appendChild(el("div", "measure", e.msg)); return; }
    (e.why || []).forEach(function (w) { info.appendChild(el("div", "measure", w)); });
  }
  function imageCard(e, photos, info) {
    photos.appendChild(figure(e.photo));
    if (e.others) {
      var o = el("div", "photos others");
      o.appendChild(el("div", "small", e.others.length ? "the person's other photos:" : "the person has no other photo"));
      e.others.forEach(function (p) { o.appendChild(figure(p)); });
      photos.appendChild(o);
    }
    var person = "person " + (e.photo.person == null ? "-" : e.photo.person) + (e.line ? ", manifest line " + e.line : "");
    add(info, el("div", "path", e.photo.path),
        add(el("div"), badge(e.f, e.f === "warning" ? e.status + ", with a warning" : e.status), person));
  }
  function pairCard(e, photos, info) {
    var gallery = e.where === "gallery", score = Number(e.score).toFixed(3);
    add(photos, figure(e.a, e.a.person), add(el("div", "vs"), el("b", "", score), "similarity"),
        figure(e.b, e.b.person + (gallery ? " (gallery)" : "")));
    var odds = e.fmp != null ? ", probability that two different persons score this high: " + e.fmp : "";
    add(info, el("div", "path", "person " + e.a.person + " and person " + e.b.person + (gallery ? " of the gallery" : "")),
        add(el("div"), badge(e.f, e.f === "warning" ? "possible duplicate" : "duplicate"), "score " + score + odds),
        el("div", "small", e.a.path + (e.b.path ? "  \\u2194  " + e.b.path : "")));
  }
  function card(e) {
    var c = el("div", "card"), photos = el("div", "photos"), info = el("div", "info");
    c.setAttribute("data-kind", e.t); c.setAttribute("data-status", e.f);
    (e.t === "pair" ? pairCard : imageCard)(e, photos, info);
    info.appendChild(reasonList(e));
    measured(e, info);
    return add(c, photos, info);
  }
  function matches(e) {
    return (!S.kind || e.t === S.kind) && (!S.status || e.f === S.status) &&
      (!S.reason || e.codes.indexOf(S.reason) >= 0) && (!S.text || e.q.indexOf(S.text) >= 0);
  }
  function pager(nav, n, pages) {
    nav.textContent = "";
    var first = n ? S.page * PAGE + 1 : 0, last = Math.min(n, (S.page + 1) * PAGE);
    var prev = el("button", "", "\\u2190 previous"), next = el("button", "", "next \\u2192");
    prev.type = next.type = "button";
    prev.disabled = S.page === 0; next.disabled = S.page >= pages - 1;
    prev.addEventListener("click", function () { S.page -= 1; render(true); });
    next.addEventListener("click", function () { S.page += 1; render(true); });
    add(nav, prev, el("span", "shown", "showing " + first.toLocaleString() + "\\u2013" + last.toLocaleString() +
        " of " + n.toLocaleString() + " (page " + (S.page + 1) + " of " + pages + ")"), next);
  }
  function render(scroll) {
    var list = E.filter(matches), pages = Math.max(1, Math.ceil(list.length / PAGE));
    if (S.page >= pages) { S.page = pages - 1; }
    var slice = list.slice(S.page * PAGE, (S.page + 1) * PAGE), box = $("entries");
    var frag = document.createDocumentFragment();
    slice.forEach(function (e) { frag.appendChild(card(e)); });
    if (!slice.length) {
      frag.appendChild(el("p", "empty", E.length ? "Nothing matches these filters." :
                                                   "Nothing to review: no photo was refused or flagged."));
    }
    box.textContent = "";
    box.appendChild(frag);
    pager($("pager-top"), list.length, pages);
    pager($("pager-bottom"), list.length, pages);
    body.setAttribute("data-matching", list.length); body.setAttribute("data-rendered", slice.length);
    body.setAttribute("data-page", S.page + 1); body.setAttribute("data-pages", pages);
    body.removeAttribute("data-images-loaded");
    if (scroll) { $("review").scrollIntoView(); }
    // once this page's thumbnails are decoded: how many rendered (tests read it from the DOM)
    var mine = ++token, imgs = Array.prototype.slice.call(box.querySelectorAll("img"));
    Promise.all(imgs.map(function (i) { return i.decode().catch(function () {}); })).then(function () {
      if (mine !== token) { return; }
      var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
      body.setAttribute("data-images-on-page", imgs.length); body.setAttribute("data-images-loaded", ok);
    });
  }
  var reasons = {};
  E.forEach(function (e) { e.codes.forEach(function (c) { reasons[c] = (reasons[c] || 0) + 1; }); });
  function option(c, text) { var o = el("option", "", text); o.value = c; $("f-reason").appendChild(o); }
  Object.keys(reasons).sort().forEach(function (c) { option(c, c + " (" + reasons[c] + ")"); });
  function bind(id, key, lower) {
    $(id).addEventListener("input", function () {
      S[key] = lower ? this.value.trim().toLowerCase() : this.value; S.page = 0; render(false);
    });
  }
  bind("f-kind", "kind"); bind("f-status", "status"); bind("f-reason", "reason"); bind("f-text", "text", true);
  $("filters").addEventListener("submit", function (ev) { ev.preventDefault(); });
  function reset() {
    ["f-kind", "f-status", "f-reason", "f-text"].forEach(function (id) { $(id).value = ""; });
    S.kind = S.status = S.reason = S.text = ""; S.page = 0;
  }
  $("f-clear").addEventListener("click", function () { reset(); render(false); });
  Array.prototype.forEach.call(document.querySelectorAll("[data-filter-reason]"), function (b) {
    b.addEventListener("click", function () {
      var c = b.getAttribute("data-filter-reason");
      if (!reasons[c]) { option(c, c); }
      reset(); $("f-reason").value = c; S.reason = c; render(true);
    });
  });
  render(false);
})();
"""
