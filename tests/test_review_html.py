"""The HTML review page (`--report review.html`, `runs show RUN_ID --html FILE`): its structure
without a browser, what headless Chromium renders, a past run from the ledger, and 10,000 items."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.errors import ConfigError, ReasonCode, Status
from facecli.pipeline.report import ItemResult, PersonResult, RunSummary, check_report_path, open_report
from facecli.pipeline.review import HtmlReportWriter, write_review_page

from .conftest import MODELS, SAMPLES, needs_models

runner = CliRunner()
#: A file name that is markup: the page must show it as text, never run it.
HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1">.jpg'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                    "(Debian package `chromium`); the structural tests still run")


class Page(HTMLParser):
    """What the tests read from a page: every tag's attributes, the reason table, the data blob."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._script_id: str | None = None
        self.scripts: dict[str, str] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script_id = dict(attrs).get("id") or ""
            self.scripts.setdefault(self._script_id, "")

    def handle_endtag(self, tag):
        if tag == "script":
            self._script_id = None

    def handle_data(self, data):
        if self._script_id is not None:
            self.scripts[self._script_id] += data

    def body(self) -> dict[str, str | None]:
        return next(a for t, a in self.tags if t == "body")

    def reason_counts(self) -> dict[str, int]:
        return {a["data-reason"]: int(a["data-count"]) for t, a in self.tags if t == "tr" and "data-reason" in a}

    def status_counts(self, kind: str) -> dict[str, int]:
        key = f"data-{kind}-status"
        return {a[key]: int(a["data-count"]) for t, a in self.tags if key in a}

    def data(self) -> dict:
        return json.loads(self.scripts["review-data"])


def photos(entry: dict) -> list[dict]:
    return [entry["a"], entry["b"]] if entry["t"] == "pair" else [entry["photo"], *entry.get("others", [])]


def dump_dom(page: Path, tmp: Path, window: str = "1280,1600") -> str:
    """The page's DOM after its script ran, from headless Chromium (no network, bounded time)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", f"--user-data-dir={tmp / 'chromium-profile'}", f"--window-size={window}",
           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "<body" in res.stdout, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    """sample_images/ plus a byte-identical copy under another person (a duplicate pair) and a copy
    with a hostile name, enrolled into a local gallery with --report review.html, the run ledger on."""
    if not (MODELS / "dlib_resnet_faceapi_rec_u8.onnx").is_file():
        pytest.skip(f"model files not found in {MODELS} (../shared/models is absent)")
    tmp = tmp_path_factory.mktemp("review")
    src = tmp / "photos"
    src.mkdir()
    for p in SAMPLES.glob("*.jpg"):
        shutil.copy(p, src / p.name)
    shutil.copy(SAMPLES / "grace_hopper.jpg", src / "hopper_copy.jpg")
    shutil.copy(SAMPLES / "dark.jpg", src / HOSTILE)
    page, journal = tmp / "review.html", tmp / "journal.db"
    with pytest.MonkeyPatch.context() as mp:  # conftest's isolation is per test: this runs once per module
        for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
            mp.setenv(var, str(tmp / var.lower()))
        mp.delenv("FACECLI_CONFIG", raising=False)
        mp.setenv("FACECLI_MODELS_DIR", str(MODELS))
        mp.setenv("FACECLI_JOURNAL", str(journal))
        res = runner.invoke(app, ["enroll", str(src), "--db", str(tmp / "g.db"), "--create-collection",
                                  "--report", str(page), "--json"])
        assert res.exit_code == 1, res.output
        run_id = json.loads(res.stdout)["run_id"]
        shown = runner.invoke(app, ["runs", "show", run_id, "--json"])
    assert shown.exit_code == 0, shown.output
    lines = json.loads(shown.stdout)["items"]  # the run's report lines (what --report x.jsonl holds)
    return {"tmp": tmp, "src": src, "page": page, "journal": journal, "run_id": run_id, "lines": lines}


@needs_models
def test_page_structure_matches_the_report_lines(enrolled):
    text = enrolled["page"].read_text(encoding="utf-8")
    page = Page(text)
    images = [l for l in enrolled["lines"] if l["kind"] == "image"]
    assert page.reason_counts() == dict(Counter(r for l in images for r in l["reasons"]))
    assert page.status_counts("image") == {s: sum(1 for l in images if l["status"] == s)
                                           for s in ("accepted", "enrolled", "rejected", "failed", "skipped")}
    assert sum(page.status_counts("person").values()) == sum(1 for l in enrolled["lines"] if l["kind"] == "person")
    data = page.data()
    shown = {p["path"] for e in data["entries"] if e["t"] == "image" for p in photos(e)[:1]}
    refused = {l["path"] for l in images if l["status"] in ("rejected", "failed")}
    assert refused and refused <= shown and len(refused) >= 8
    by_name = {Path(e["photo"]["path"]).name: e for e in data["entries"] if e["t"] == "image"}
    blurred = by_name["blurred.jpg"]
    measured = blurred["msg"] or " ".join(blurred.get("why", []))  # the run's message, else the page's own
    assert blurred["reasons"] == ["LOW_SHARPNESS"] and "< 20 (min_sharpness" in measured
    assert data["thumbs"][blurred["photo"]["th"]].startswith("data:image/jpeg;base64,")
    assert by_name["truncated.jpg"]["photo"]["th"] is None and by_name["truncated.jpg"]["photo"]["note"]
    assert all(u.startswith("data:image/jpeg;base64,") for u in data["thumbs"].values())
    # the byte-identical copy: a pair, both photos side by side with the score
    pair = next(e for e in data["entries"] if e["t"] == "pair")
    assert {pair["a"]["person"], pair["b"]["person"]} == {"hopper_copy", "grace_hopper"} and pair["score"] >= 0.99
    assert pair["a"]["th"] and pair["b"]["th"]
    # no network: no URL anywhere, nothing loaded from elsewhere, a policy that forbids it
    assert "http://" not in text and "https://" not in text
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "srcset"):
            assert not attrs.get(name), (tag, attrs)
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp and "unsafe-inline" not in csp
    # the hostile file name is data, never markup
    assert HOSTILE in {Path(p).name for p in shown}
    assert "<img" not in text and "onerror" not in {k for _, a in page.tags for k in a}


@needs_models
@needs_chromium
def test_page_in_headless_chromium_shows_counts_and_renders_images(enrolled):
    data = Page(enrolled["page"].read_text(encoding="utf-8")).data()
    dom = Page(dump_dom(enrolled["page"], enrolled["tmp"]))
    body = dom.body()
    entries = len(data["entries"])
    expected_imgs = sum(1 for e in data["entries"] for p in photos(e) if p.get("th"))
    assert int(body["data-rendered"]) == entries == int(body["data-matching"]) and body["data-pages"] == "1"
    assert int(body["data-images-on-page"]) == expected_imgs > 0
    assert int(body["data-images-loaded"]) == expected_imgs  # every thumbnail decoded (naturalWidth > 0)
    assert dom.reason_counts() == dict(Counter(r for l in enrolled["lines"] if l["kind"] == "image" for r in l["reasons"]))
    cards = [a for t, a in dom.tags if t == "div" and a.get("class") == "card"]
    assert len(cards) == entries and sum(a["data-kind"] == "pair" for a in cards) == 1
    assert "data-pwned" not in body  # the hostile name's onerror never ran
    assert not any("onerror" in a for t, a in dom.tags if t == "img")


@needs_models
def test_runs_show_html_for_a_past_run_with_a_photo_gone(enrolled, monkeypatch):
    monkeypatch.setenv("FACECLI_JOURNAL", str(enrolled["journal"]))
    (enrolled["src"] / "blurred.jpg").unlink()  # moved since the run: a placeholder, not an error
    out = enrolled["tmp"] / "past.html"
    res = runner.invoke(app, ["runs", "show", enrolled["run_id"][:12], "--html", str(out)])
    assert res.exit_code == 0, res.output
    assert "review page" in res.stdout and out.is_file()
    live, past = Page(enrolled["page"].read_text(encoding="utf-8")), Page(out.read_text(encoding="utf-8"))
    assert past.reason_counts() == live.reason_counts() and past.status_counts("image") == live.status_counts("image")
    entries = {e["photo"]["path"]: e for e in past.data()["entries"] if e["t"] == "image"}
    assert len(entries) == len({e["photo"]["path"] for e in live.data()["entries"] if e["t"] == "image"})
    gone = entries[str(enrolled["src"] / "blurred.jpg")]["photo"]
    assert gone["th"] is None and gone["note"] == "file not found"
    assert entries[str(enrolled["src"] / "dark.jpg")]["photo"]["th"]
    assert enrolled["run_id"] in out.read_text(encoding="utf-8")
    res = runner.invoke(app, ["runs", "show", "no-such-run", "--html", str(enrolled["tmp"] / "x.html")])
    assert res.exit_code == 2 and not (enrolled["tmp"] / "x.html").exists()


def test_html_is_a_report_format(tmp_path):
    assert isinstance(open_report(tmp_path / "review.HTML"), HtmlReportWriter)
    assert not (tmp_path / "review.HTML").exists()  # written at the end of the run
    with pytest.raises(ConfigError) as err:
        check_report_path("review.htm")
    assert ".html" in (err.value.hint or "")


def _synthetic(n: int, real: list[Path]) -> list[ItemResult]:
    """n report items without models: most refused for a measured reason, some failed, some fine;
    a few point at real photos (thumbnails), the rest at files that do not exist (placeholders)."""
    codes = [ReasonCode.LOW_SHARPNESS, ReasonCode.NO_FACE, ReasonCode.MULTIPLE_FACES, ReasonCode.LOW_BRIGHTNESS]
    items = []
    for i in range(n):
        path = str(real[i // 50 % len(real)]) if i % 50 == 0 else f"/srv/photos/dept-{i % 37}/person_{i:05d}.jpg"
        if i % 10 == 9:
            items.append(ItemResult(path, f"person_{i:05d}", Status.ACCEPTED))
        elif i % 10 == 8:
            items.append(ItemResult(path, f"person_{i:05d}", Status.FAILED, [ReasonCode.DECODE_ERROR],
                                    "corrupt or truncated image"))
        else:
            code = codes[i % len(codes)]
            items.append(ItemResult(path, f"person_{i:05d}", Status.REJECTED, [code], f"{code.lower()} {i}"))
    return items


def test_ten_thousand_items_stay_small_and_paginate(tmp_path):
    real = []
    for k in range(30):  # distinct small photos: more than the thumbnail cap below
        p = tmp_path / f"face_{k:02d}.jpg"
        Image.new("RGB", (200 + k, 240), (40 + 5 * k, 90, 140)).save(p, quality=85)
        real.append(p)
    items = _synthetic(10_000, real)
    writer = open_report(tmp_path / "big.html")
    assert isinstance(writer, HtmlReportWriter)
    writer.max_thumbnails = 20
    summary = RunSummary(command="check")
    started = time.monotonic()
    for it in items:
        summary.add_item(it)
        writer.write_item(it)
        writer.write_person(PersonResult(it.person_id or "", it.person_id or "", it.status))
    writer.close(summary)
    seconds = time.monotonic() - started
    page_path = tmp_path / "big.html"
    size = page_path.stat().st_size
    text = page_path.read_text(encoding="utf-8")
    page = Page(text)
    data = page.data()
    assert len(data["entries"]) == 9_000 and data["page_size"] == 100
    assert page.reason_counts() == {str(k): v for k, v in summary.reasons.items()}
    assert len(data["thumbs"]) == 20 and writer.stats.thumbnails == 20 and writer.stats.without_thumbnail > 1000
    capped = [e for e in data["entries"] if e["photo"]["note"] == "no thumbnail (the page's limit was reached)"]
    assert {Path(e["photo"]["path"]).parent for e in capped} >= {tmp_path}  # real photos past the cap
    assert "at most 20 thumbnails" in text
    assert size < 5_000_000, size  # about 400 bytes an entry; thumbnails are capped
    assert seconds < 30, seconds
    if CHROMIUM:  # usable in a browser: one page of 100 drawn, 90 pages to move through
        body = Page(dump_dom(page_path, tmp_path)).body()
        assert body["data-rendered"] == "100" and body["data-pages"] == "90" and body["data-matching"] == "9000"
        assert int(body["data-images-loaded"]) == int(body["data-images-on-page"]) > 0


def test_identity_mismatch_shows_the_persons_other_photos_and_pairs_from_the_gallery(tmp_path):
    lines = [
        {"kind": "image", "path": str(SAMPLES / "astronaut.jpg"), "person_id": "p1", "status": "rejected",
         "reasons": ["IDENTITY_MISMATCH"], "message": "does not match the person's other images (score 0.1 < 0.6)",
         "box": [76.0, 65.3, 93.4, 113.9]},
        {"kind": "image", "path": str(SAMPLES / "grace_hopper.jpg"), "person_id": "p1", "status": "enrolled",
         "reasons": [], "box": [182.9, 120.5, 170.3, 212.5]},
        {"kind": "image", "path": str(SAMPLES / "grace_hopper_2.jpg"), "person_id": "p1", "status": "enrolled",
         "reasons": [], "warnings": ["POSSIBLE_DUPLICATE"], "message": "looks like person g7 in the gallery: 0.71"},
        {"kind": "person", "person_id": "p1", "status": "enrolled", "reasons": [], "duplicates": [
            {"other_person_id": "g7", "score": 0.71, "where": "target", "decision": "possible",
             "path": str(SAMPLES / "grace_hopper_2.jpg")}]},
        {"kind": "image", "path": str(tmp_path / "old.jpg"), "person_id": "p2", "status": "rejected",
         "reasons": ["LOW_SHARPNESS"], "message": "", "quality": {"sharpness": 4.66}},
        {"kind": "image", "path": str(tmp_path / "caf\udce9</script>.jpg"), "person_id": "p3", "status": "failed",
         "reasons": ["FILE_NOT_FOUND"], "message": "not UTF-8, and markup"},  # an undecodable file name
    ]
    stats = write_review_page(tmp_path / "r.html", lines, {"run_id": "r1", "command": "enroll", "summary": None})
    data = Page((tmp_path / "r.html").read_text(encoding="utf-8")).data()
    mismatch, warned, old, odd, pair = data["entries"]
    assert odd["photo"]["path"].endswith("caf\udce9</script>.jpg") and odd["photo"]["note"] == "file not found"
    assert [Path(p["path"]).name for p in mismatch["others"]] == ["grace_hopper.jpg", "grace_hopper_2.jpg"]
    assert all(p["th"] for p in mismatch["others"]) and mismatch["photo"]["th"]
    assert warned["f"] == "warning" and warned["codes"] == ["POSSIBLE_DUPLICATE"]
    assert old["why"] == ["sharpness 4.66 < 20 (min_sharpness, facecli's default)"]  # a line without a message
    assert pair["t"] == "pair" and pair["f"] == "warning" and pair["b"]["note"] == "in the gallery"
    assert stats.entries == 5 and stats.thumbnails == 3
