"""`facecli calibrate`: measure the recognizer on your own labelled photos and choose a threshold."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from facecli.cli import common
from facecli.cli.compare import MatchThresholdOpt, match_threshold_setting
from facecli.cli.console import err, out, print_json, safe_text
from facecli.config import Settings, write_config_values
from facecli.errors import ConfigError
from facecli.pipeline.calibrate import calibrate as run_calibration
from facecli.pipeline.calibrate import embed_photos, pairs_from_file, pairs_from_folder, plot_histograms
from facecli.pipeline.check import FaceChecker
from facecli.pipeline.scale import score_model_for
from facecli.vision.embed import MATCH_THRESHOLD

HELP = f"""Measure how well faces are told apart on your own labelled photos, and pick a threshold.

Give FOLDER (a sub-folder per person, or files named after the person, as for enroll: every
same-person and different-person pair is scored) or --pairs FILE (LFW's pairs.txt format, or a CSV
with two photo columns and a same/different column such as file_x,file_y,Decision). The main face
of each photo is embedded once.

Prints ROC AUC; accuracy, the true-match rate (TAR) and the false-match rate (FAR) at the current
match threshold ({MATCH_THRESHOLD} unless --match-threshold or the config key match_threshold);
the best-accuracy threshold; and the lowest threshold whose FAR on your pairs is at most --far,
beside the score model's threshold for that rate. --plot writes the same/different score
histograms with the thresholds marked (PNG). --write-config stores the --far threshold as
match_threshold in the config file (`facecli compare` uses it; search uses it only on a target
without a score model). A rate is measured only with at least 1/--far different pairs.

Exit 0 when measured, 2 usage (no pairs, one person only)."""


@common.fatal_errors
def calibrate(
    folder: Path = typer.Argument(None, metavar="FOLDER", help="A folder per person (or files named after the person).", show_default=False),
    pairs: Path = typer.Option(None, "--pairs", help="A pairs file instead of FOLDER: LFW's pairs.txt format, or a .csv with two photo columns and a same/different column.", dir_okay=False),
    images: Path = typer.Option(None, "--images", help="Where an LFW-format pairs file's photos are (NAME/NAME_0001.jpg; default: images/ beside it, else its folder).", file_okay=False),
    far: float = typer.Option(0.001, "--far", min=1e-9, max=0.5, help="The false-match rate to choose a threshold for."),
    match_threshold: float = MatchThresholdOpt,
    plot: Path = typer.Option(None, "--plot", help="Write the score histograms with the thresholds marked to FILE (PNG).", dir_okay=False),
    write_config: bool = typer.Option(False, "--write-config", help="Store the --far threshold as match_threshold in the config file (--config, $FACECLI_CONFIG or the user config dir)."),
    json_out: bool = common.JsonOpt,
    models_dir: Path = common.ModelsDirOpt,
    threads: int = common.ThreadsOpt,
    device: common.Device = common.DeviceOpt,
    config: Path = common.ConfigOpt,
) -> None:
    if (folder is None) == (pairs is None):
        raise ConfigError("give a FOLDER (a sub-folder per person) or --pairs FILE, one of the two",
                          hint="e.g. facecli calibrate ./labelled or facecli calibrate --pairs pairs.txt")
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"not a folder: {folder}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot {plot}: the plot is a PNG file (name it .png)")
    settings = Settings({"models_dir": models_dir, "threads": threads, "device": device,
                         "match_threshold": match_threshold}, config_path=config, missing_ok=write_config)
    current, source = match_threshold_setting(settings)
    labelled = pairs_from_file(pairs, images) if pairs is not None else pairs_from_folder(folder)
    checker = FaceChecker.open(common.build_check_config(settings, None, None))
    emb, skipped = embed_photos(checker, labelled.photos)
    model = score_model_for(checker)
    result, scores, same = run_calibration(labelled, emb, skipped, current, source, far, model)
    doc = result.to_json()
    if plot is not None:
        marks = [(f"current ({source})", current, (0, 0, 0)), (f"FAR <= {far:g} here", result.at_far["threshold"], (200, 30, 30)),
                 ("best accuracy", result.best["threshold"], (110, 110, 110))]
        doc["plot"] = str(plot_histograms(scores, same, marks, plot, title=f"facecli calibrate: {labelled.source}"))
    if write_config:
        doc["written"] = {"file": str(write_config_values({"match_threshold": result.at_far["threshold"]}, config)),
                          "match_threshold": result.at_far["threshold"]}
    if json_out:
        print_json(doc)
        return
    _print(result, doc, far)


def _print(result, doc: dict, far: float) -> None:
    pairs = doc["pairs"]
    out.print(f"{safe_text(result.source)}: {result.photos} photo(s), {pairs['same']:,} same-person and "
              f"{pairs['different']:,} different-person pairs"
              + (" (a random sample)" if pairs["different_sampled"] else ""))
    for path, why in result.skipped_photos[:10]:
        err.print(f"[yellow]skipped[/] {safe_text(path)}: {safe_text(why)}")
    if result.skipped_pairs:
        err.print(f"[yellow]{len(result.skipped_pairs)} pair(s) not used[/], e.g. "
                  f"{safe_text(result.skipped_pairs[0][0])}: {safe_text(result.skipped_pairs[0][1])}")
    t = Table(title=f"ROC AUC {result.roc_auc:.4f}", title_justify="left")
    for col in ("threshold", "score", "accuracy", "TAR (same found)", "FAR (different accepted)"):
        t.add_column(col, justify="left" if col == "threshold" else "right")
    rows = [(f"current ({result.current['source']})", result.current), ("best accuracy", result.best),
            (f"FAR <= {far:g}", result.at_far)]
    for name, r in rows:
        t.add_row(safe_text(name), f"{r['threshold']:.4f}", f"{r['accuracy']:.2%}", f"{r['tar']:.2%}", f"{r['far']:.3%}")
    out.print(t)
    at = result.at_far
    if not at["resolved"]:
        out.print(f"[yellow]FAR {far:g} is not resolved:[/] {pairs['different']:,} different pairs measure rates down "
                  f"to {1 / max(1, pairs['different']):.2g}; the threshold is just above every different pair")
    if at["score_model_threshold"] is not None:
        out.print(f"the score model (fitted on LFW) puts FAR {far:g} at {at['score_model_threshold']:.4f}; at the "
                  f"current threshold it predicts FAR {result.current['score_model_far']:.2g}")
    s = result.scores
    out.print(f"[dim]scores: same person mean {s['same_mean']:.4f} (lowest {s['same_min']:.4f}), different mean "
              f"{s['different_mean']:.4f} (highest {s['different_max']:.4f})[/]")
    if "plot" in doc:
        out.print(f"plot: {safe_text(doc['plot'])}")
    if "written" in doc:
        out.print(f"wrote match_threshold = {doc['written']['match_threshold']} to {safe_text(doc['written']['file'])}")
