"""`facecli check PATH`: which photos would be accepted, and exactly why the others are not."""

from __future__ import annotations

from pathlib import Path

import typer

from facecli.cli import common
from facecli.cli.cache import NoCacheOpt, apply_no_cache
from facecli.cli.console import RichProgress, print_json, summary_tables
from facecli.config import Settings
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.enroll import run_check
from facecli.pipeline.executor import open_executor
from facecli.pipeline.report import RunSummary, check_report_path, open_report

HELP = """Check photos without sending anything: decode, detect, the exactly-one-usable-face gate, embed.

PATH is a folder (one sub-folder per person, or files named after the person) or one image;
or give --manifest FILE (CSV or JSON Lines) instead. Per-person checks follow: a photo filed under
the wrong person (IDENTITY_MISMATCH), the same photo twice (DUPLICATE_IMAGE), one face under two
ids (DUPLICATE_PERSON), more than --max-images-per-person accepted images (TOO_MANY_IMAGES).
Exit 0 when every image is accepted, 1 when any is rejected or failed, 2 on usage errors."""


@common.fatal_errors
def check(
    path: Path = typer.Argument(None, metavar="PATH", help="Folder of photos, or one image file.", show_default=False),
    manifest: Path = common.ManifestOpt,
    map_: list[str] = common.MapOpt,
    metadata: str = common.MetadataOpt,
    allow_absolute: bool = common.AllowAbsoluteOpt,
    on_identity_mismatch: common.Policy = common.OnMismatchOpt,
    on_duplicate: common.Policy = common.OnDuplicateOpt,
    duplicate_budget: float = common.DuplicateBudgetOpt,
    review_budget: float = common.ReviewBudgetOpt,
    duplicate_min_score: float = common.DuplicateMinScoreOpt,
    max_images_per_person: int = common.MaxImagesOpt,
    report: Path = common.ReportOpt,
    json_out: bool = common.JsonOpt,
    quiet: bool = common.QuietReportOpt,
    preset: common.Preset = common.PresetOpt,
    threshold: list[str] = common.ThresholdOpt,
    multi_face: common.MultiFace = common.MultiFaceOpt,
    max_megapixels: float = common.MaxMpOpt,
    models_dir: Path = common.ModelsDirOpt,
    threads: int = common.ThreadsOpt,
    device: common.Device = common.DeviceOpt,
    follow_symlinks: bool = common.FollowOpt,
    show: int = common.ShowOpt,
    max_failures: str = common.MaxFailuresOpt,
    fail_fast: bool = common.FailFastOpt,
    journal: Path = common.JournalOpt,
    no_journal: bool = common.NoJournalOpt,
    no_cache: bool = NoCacheOpt,
    executor: common.ExecutorName = common.ExecutorOpt,
    ray_address: str = common.RayAddressOpt,
    shard: str = common.ShardOpt,
    config: Path = common.ConfigOpt,
) -> None:
    summary = RunSummary(command="check")
    with common.json_summary_on_fatal(json_out, summary):
        settings = Settings(
            {"preset": preset, "models_dir": models_dir, "threads": threads, "device": device, "journal": journal,
             "multi_face": multi_face},
            config_path=config,
        )
        limit = common.parse_max_failures(max_failures)
        if report:
            check_report_path(report)  # before any work: a bad path is exit 2, not a traceback at the end
        policy = common.person_policy(on_identity_mismatch, on_duplicate, max_images_per_person, settings,
                                     duplicate_budget, review_budget, duplicate_min_score)
        cfg = common.build_check_config(settings, threshold, max_megapixels)
        discovery = common.load_source(path, manifest, map_, metadata, allow_absolute, follow_symlinks)
        discovery, part = common.apply_shard(shard, discovery, settings)
        checker = FaceChecker.open(cfg)
        writer = open_report(report) if report else None
        progress = RichProgress(enabled=not (quiet or json_out))
        ledger = common.open_journal(settings, no_journal)
        apply_no_cache(ledger, settings, no_cache)
        exe = None
        try:
            exe = open_executor(executor, checker, ray_address)
            with common.GracefulStop() as stop:
                result = run_check(discovery, checker, report=writer, progress=progress, policy=policy,
                                   summary=summary, journal=ledger, stop=stop.event, fail_fast=fail_fast,
                                   executor=exe, keep_items=False)
        finally:
            if exe:
                exe.close()
            if ledger:
                ledger.close()
    if json_out:
        print_json(result.summary.to_json() | ({"shard": str(part)} if part else {}))
    elif not quiet:
        summary_tables(result.summary, result.items, show, result.persons)
    raise typer.Exit(int(common.exit_code_for(result.summary, limit)))
