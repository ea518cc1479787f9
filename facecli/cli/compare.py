"""`facecli compare A B [C ...]`: are these photos of one person? 1:1 verification, no gallery."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from facecli.cli import common
from facecli.cli.console import err, out, print_json, safe_text
from facecli.config import Settings
from facecli.errors import ConfigError, ExitCode
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.scale import score_model_for
from facecli.pipeline.verify import compare_paths
from facecli.vision.embed import MATCH_THRESHOLD

HELP = f"""Compare the main face of each photo with the first photo's: the same person or not.

For each photo after the first: the score (cosine similarity), same/different at the match
threshold, and the false-match probability: the chance that two *different* people score this
high in one comparison (the score model, README "The score model").

The threshold is the pairwise match threshold, {MATCH_THRESHOLD} by default: one pair is one
comparison, and this is the score that classifies LFW's DevTrain pairs best (README "Match
threshold"). It is not the score model's bar for a false-match budget, which search uses because a
search makes thousands of comparisons at once. Your own threshold: --match-threshold, or the config
key match_threshold (`facecli calibrate --write-config` measures and writes it on your own photos).

A photo with several faces is compared by its largest face (the count is shown). Exit 0 when every
photo is the first photo's person, 1 when any is not or has no usable face (the reason is printed),
2 usage."""


MatchThresholdOpt = typer.Option(None, "--match-threshold", min=-1.0, max=1.0, help=f"Score at or above which two faces are one person (default {MATCH_THRESHOLD}, or the config key match_threshold).")


def match_threshold_setting(settings: Settings) -> tuple[float, str]:
    """(the 1:1 match threshold, where it came from): --match-threshold > config match_threshold >
    MATCH_THRESHOLD ("default")."""
    value = common.setting_number(settings, None, "match_threshold", float)
    if value is None:
        return MATCH_THRESHOLD, "default"
    return value, settings.source("match_threshold")


@common.fatal_errors
def compare(
    photos: list[Path] = typer.Argument(..., metavar="PHOTO", help="Two or more photos; each is compared with the first.", show_default=False),
    match_threshold: float = MatchThresholdOpt,
    json_out: bool = common.JsonOpt,
    models_dir: Path = common.ModelsDirOpt,
    threads: int = common.ThreadsOpt,
    device: common.Device = common.DeviceOpt,
    config: Path = common.ConfigOpt,
) -> None:
    if len(photos) < 2:
        raise ConfigError("compare needs at least two photos", hint="e.g. facecli compare id_card.jpg selfie.jpg")
    for p in photos:
        if not p.is_file():
            raise ConfigError(f"not a file: {p}" if p.exists() else f"path not found: {p}")
    settings = Settings({"models_dir": models_dir, "threads": threads, "device": device,
                         "match_threshold": match_threshold}, config_path=config)
    threshold, source = match_threshold_setting(settings)
    checker = FaceChecker.open(common.build_check_config(settings, None, None))
    result = compare_paths(photos, checker, threshold, score_model_for(checker), source)
    if json_out:
        print_json(result.to_json())
    else:
        for v in (result.reference, *result.others):
            if v.reason:
                err.print(f"[yellow]{v.reason}[/] {safe_text(v.path)}: {safe_text(v.message)}")
            elif v.message:
                err.print(f"[dim]{safe_text(v.path)}: {safe_text(v.message)}[/]")
        t = Table(title=f"compared with {safe_text(result.reference.path)}", title_justify="left")
        for col in ("photo", "score", "verdict", "false match (1:1)"):
            t.add_column(col, justify="right" if col in ("score", "false match (1:1)") else "left")
        for v in result.others:
            if v.score is None:
                t.add_row(safe_text(v.path), "", f"[yellow]{v.reason or 'not compared'}[/]", "")
                continue
            p = v.false_match_probability
            t.add_row(safe_text(v.path), f"{v.score:.4f}", "[green]same person[/]" if v.same else "[red]different[/]",
                      "" if p is None else (f"{p:.2g}" if p >= 1e-6 else "< 1e-6"))
        out.print(t)
        out.print(f"[dim]threshold {threshold:.4f} ({safe_text(source)})[/]")
    raise typer.Exit(int(ExitCode.OK if result.same_person else ExitCode.ITEMS))
