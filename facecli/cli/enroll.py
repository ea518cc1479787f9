"""`facecli enroll`: check photos, then send the accepted persons to the target in batches."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from facecli.cli import common
from facecli.cli.cache import NoCacheOpt, apply_no_cache
from facecli.cli.console import RichProgress, err, print_json, safe_text, summary_tables
from facecli.config import Settings
from facecli.engine.pg import mask_url
from facecli.imaging.encode import PayloadSpec
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.enroll import EnrollOptions, run_enroll
from facecli.pipeline.executor import open_executor
from facecli.pipeline.report import RunSummary, check_report_path, open_report
from facecli.sinks.base import FACE_STORAGE_TYPES
from facecli.sinks.factory import open_sink
from facecli.sinks.local import is_embedded

HELP = """Enroll persons: check every photo (as `facecli check` does), then send accepted persons in batches.

The default target is the embedded local engine (a SQLite file): re-enrolling a person_id updates
its name and metadata and replaces its faces. Exit 0 when every image is enrolled, 1 when any is
rejected or failed, 2 on usage errors, 3 when the target refuses the run."""


@common.fatal_errors
def enroll(
    path: Path = typer.Argument(None, metavar="PATH", help="Folder of photos, or one image file.", show_default=False),
    manifest: Path = common.ManifestOpt,
    to: str = common.ToOpt,
    db: Path = common.DbOpt,
    collection: str = common.CollectionOpt,
    create_collection: bool = typer.Option(False, "--create-collection", help="Create the collection if it does not exist."),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="Persons per batch (one transaction or request each)."),
    face_storage_type: common.FaceStorageType = typer.Option("NoStorage", "--face-storage-type", help="What the target keeps of each face, as in the OpenCV FR API: nothing, a thumbnail, or the full image."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything and say what would be created or updated; write nothing."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Fail at once if another enroll is writing the same local database."),
    api_key: str = common.ApiKeyOpt,
    insecure: bool = common.InsecureOpt,
    concurrency: int = common.ConcurrencyOpt,
    max_batch_bytes: int = common.MaxBatchBytesOpt,
    payload: common.PayloadKind = common.PayloadOpt,
    max_image_bytes: int = common.MaxImageBytesOpt,
    timeout: float = common.TimeoutOpt,
    retries: int = common.RetriesOpt,
    report: Path = common.ReportOpt,
    json_out: bool = common.JsonOpt,
    quiet: bool = common.QuietReportOpt,
    map_: list[str] = common.MapOpt,
    metadata: str = common.MetadataOpt,
    allow_absolute: bool = common.AllowAbsoluteOpt,
    on_identity_mismatch: common.Policy = common.OnMismatchOpt,
    on_duplicate: common.Policy = common.OnDuplicateOpt,
    duplicate_budget: float = common.DuplicateBudgetOpt,
    review_budget: float = common.ReviewBudgetOpt,
    duplicate_min_score: float = common.DuplicateMinScoreOpt,
    max_images_per_person: int = common.MaxImagesOpt,
    preset: common.Preset = common.PresetOpt,
    threshold: list[str] = common.ThresholdOpt,
    multi_face: common.MultiFace = common.MultiFaceOpt,
    max_megapixels: float = common.MaxMpOpt,
    models_dir: Path = common.ModelsDirOpt,
    threads: int = common.ThreadsOpt,
    device: common.Device = common.DeviceOpt,
    follow_symlinks: bool = common.FollowOpt,
    show: int = common.ShowOpt,
    force: bool = typer.Option(False, "--force", help="Ignore the run ledger: re-check and re-send every person."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Only persons whose last attempt failed at this target."),
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
    summary = RunSummary(command="enroll", collection=collection)
    with common.json_summary_on_fatal(json_out, summary, dry_run=dry_run):
        settings = Settings({"preset": preset, "models_dir": models_dir, "threads": threads, "device": device,
                             "to": to, "db": db, "collection": collection, "journal": journal,
                             "multi_face": multi_face}, config_path=config)
        limit = common.parse_max_failures(max_failures)
        if report:
            check_report_path(report)  # before any work: a bad path is exit 2, not a traceback at the end
        if retry_failed and no_journal:
            raise common.ConfigError("--retry-failed needs the run ledger; drop --no-journal")
        if face_storage_type not in FACE_STORAGE_TYPES:
            raise common.ConfigError(f"--face-storage-type must be one of {', '.join(FACE_STORAGE_TYPES)}, "
                                     f"got {face_storage_type!r}")
        target, db_path, coll = common.target_settings(settings)
        summary.target, summary.collection = mask_url(target), coll
        policy = common.person_policy(on_identity_mismatch, on_duplicate, max_images_per_person, settings,
                                     duplicate_budget, review_budget, duplicate_min_score)
        discovery = common.load_source(path, manifest, map_, metadata, allow_absolute, follow_symlinks)
        discovery, part = common.apply_shard(shard, discovery, settings)
        ledger = exe = None
        payload_spec = common.payload_spec(payload, max_image_bytes)
        sink = open_sink(target, db_path, writer=not dry_run, create=True, wait=not no_wait,
                         face_storage_type=face_storage_type,
                         on_wait=lambda msg: err.print(f"[yellow]{safe_text(msg)}[/]"),  # names the database path
                         **common.remote_options(settings, api_key=api_key, insecure=insecure, concurrency=concurrency,
                                                 max_batch_bytes=max_batch_bytes, timeout=timeout, retries=retries,
                                                 batch_size=batch_size))
        summary.target = getattr(sink, "target", summary.target)
        if coll == common.DEFAULT_COLLECTION and is_embedded(sink):
            create_collection = True  # the embedded engine's default collection is made on first use
        cap = getattr(sink, "max_faces_per_person", None)  # the OpenCV FR API takes one face per person
        if cap and not 0 < policy.max_images_per_person <= cap:
            policy = replace(policy, max_images_per_person=cap)
        if getattr(sink, "preset", None) and not settings.get("preset"):  # the target's documented limits
            settings.flags["preset"] = sink.preset
        fan = int(getattr(sink, "concurrency", 1) or 1)  # a remote sink sends each batch as `fan` concurrent requests
        try:
            cfg = common.build_check_config(settings, threshold, max_megapixels)
            if face_storage_type == "StoreThumbnails" or getattr(sink, "takes_images", False):
                cfg.payload = payload_spec if getattr(sink, "takes_images", False) else PayloadSpec(kind="thumbnail")
            checker = FaceChecker.open(cfg)
            writer = open_report(report) if report else None
            progress = RichProgress(enabled=not (quiet or json_out), label="checking", summary=summary)
            options = EnrollOptions(collection=coll, create_collection=create_collection, batch_size=batch_size * fan,
                                    max_batch_bytes=(max_batch_bytes or EnrollOptions.max_batch_bytes) * fan,
                                    dry_run=dry_run, force=force, retry_failed=retry_failed, fail_fast=fail_fast,
                                    first_batch_size=batch_size)  # the first person need not wait for `fan` requests
            ledger = common.open_journal(settings, no_journal, create=not dry_run)  # a dry run only reads it
            apply_no_cache(ledger, settings, no_cache)
            exe = open_executor(executor, checker, ray_address)
            with common.GracefulStop() as stop:
                result = run_enroll(discovery, checker, sink, options, report=writer, progress=progress, policy=policy,
                                    summary=summary, journal=ledger, stop=stop.event, executor=exe, keep_items=False)
        finally:
            if exe:
                exe.close()
            sink.close()
            if ledger:
                ledger.close()
    if json_out:
        print_json(result.summary.to_json() | {"dry_run": dry_run} | ({"shard": str(part)} if part else {}))
    elif not quiet:
        summary_tables(result.summary, result.items, show, result.persons)
        if dry_run:
            w = result.summary.would
            counts = (f"would create {w['create']}, update {w['update']} person(s), leave {w['unchanged']} unchanged; "
                      f"{w['rejected']} rejected, {w['failed']} failed; ") if w else ""
            err.print(f"[yellow]dry run: {counts}nothing was written[/]")
    if result.summary.interrupted:
        err.print("[yellow]interrupted: everything confirmed so far is recorded; run the same command again to resume[/]")
    raise typer.Exit(int(common.exit_code_for(result.summary, limit)))
