"""Options and builders shared by the commands that run the check pipeline (check, enroll, search)."""

from __future__ import annotations

from dataclasses import replace

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial, wraps
from pathlib import Path
from typing import Any, Literal

import typer

from facecli.cli.console import print_error, print_json
from facecli.config import Settings
from facecli.errors import ConfigError, ExitCode, FacecliError
from facecli.imaging.decode import DecodeLimits
from facecli.pipeline.check import MULTI_FACE_MODES, CheckConfig, MultiFace
from facecli.pipeline.executor import EXECUTORS
from facecli.pipeline.persons import POLICIES
from facecli.sinks.base import FACE_STORAGE_TYPES
from facecli.vision.quality import PRESETS, thresholds_for
from facecli.vision.runtime import DEVICES


def parse_pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}``; anything else is a usage error."""
    out: dict[str, str] = {}
    for v in values or []:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects KEY=VALUE, got {v!r}")
        out[key.strip()] = value.strip()
    return out


MODELS_DIR_HINT = ("fix the path, or leave it unset to use the user data dir; get the models with "
                   "`facecli models fetch` (or `facecli models import DIR` offline)")


def build_check_config(
    settings: Settings,
    threshold: list[str] | None,
    max_megapixels: float | None,
    keep_images: bool = False,
) -> CheckConfig:
    overrides = settings.thresholds(parse_pairs(threshold, "--threshold"))
    thresholds = thresholds_for(settings.get("preset"), overrides)
    limits = DecodeLimits()
    mp = setting_number(settings, max_megapixels, "max_megapixels", float)
    if mp is not None:
        limits = replace(limits, max_megapixels=mp)
    unreduced = setting_number(settings, None, "max_megapixels_unreduced", float)
    if unreduced is not None:
        limits = replace(limits, max_megapixels_unreduced=unreduced)
    threads = settings.get("threads")
    return CheckConfig(
        thresholds=thresholds,
        limits=limits,
        models_dir=settings.existing_dir("models_dir", MODELS_DIR_HINT),
        threads=int(threads) if threads else None,
        device=str(settings.get("device", "cpu")),
        keep_images=keep_images,
        multi_face=str(settings.get("multi_face", "reject")),  # CheckConfig refuses other values
    )


def fatal_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map FacecliError to its message, hint and exit code: the one place the CLI does this."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FacecliError as exc:
            print_error(exc)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

    return wrapper


@contextmanager
def json_summary_on_fatal(enabled: bool, summary: Any, **extra: Any) -> Iterator[None]:
    """With --json, a fatal error still prints the one summary object (with ``error`` and
    ``exit_code``) before `fatal_errors` prints the message and exits: scripts always get JSON."""
    try:
        yield
    except FacecliError as exc:
        if enabled:
            if not summary.duration_s:
                summary.finish()
            print_json(summary.to_json() | extra | {"error": exc.message, "exit_code": int(exc.exit_code)})
        raise


# Option values with fixed choices: --help lists them ([reject|warn]), the shell completes them and
# the parser refuses anything else (exit 2). The config file's values are checked where they are used.
Policy = Literal[POLICIES]
Preset = Literal[tuple(PRESETS)]
Device = Literal[DEVICES]
FaceStorageType = Literal[FACE_STORAGE_TYPES]
PAYLOAD_KINDS = ("face", "full")
PayloadKind = Literal[PAYLOAD_KINDS]
ExecutorName = Literal[EXECUTORS]

# Reusable option declarations, so every command spells them the same way.
ReportOpt = typer.Option(None, "--report", help="Write one line per image (and per person): FILE.jsonl (or .json) JSON Lines, .csv CSV, .xml JUnit XML; checked before any work.", dir_okay=False, writable=True)
JsonOpt = typer.Option(False, "--json", help="Print a machine-readable summary object on stdout instead of tables.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar, tables or result lines; errors still show.")
QuietReportOpt = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables: errors, the exit code, --report and --json tell the outcome.")
PresetOpt = typer.Option(None, "--preset", metavar="NAME", show_default=False, help=f"Apply a target's documented image requirements: {', '.join(PRESETS)} (README, 'Thresholds and presets'); a seed-API target applies its own when none is given.")
ThresholdOpt = typer.Option(None, "--threshold", "-t", metavar="NAME=VALUE", help="Override one quality threshold (repeatable), e.g. -t min_sharpness=30. See README for names.")
MaxMpOpt = typer.Option(None, "--max-megapixels", help="Refuse images with more pixels than this (decompression-bomb guard; default 100).")
ModelsDirOpt = typer.Option(None, "--models-dir", help="Folder holding the ONNX model files (else FACECLI_MODELS_DIR, then the user cache).", file_okay=False)
ThreadsOpt = typer.Option(None, "--threads", help="onnxruntime threads per model (default: CPU count, at most 8).", min=1)
DeviceOpt = typer.Option(None, "--device", show_default=False, help="Where the models run (default cpu; auto: CUDA when onnxruntime has it, else the CPU).")
ConfigOpt = typer.Option(None, "--config", help="TOML config file (default $FACECLI_CONFIG or the user config dir).", dir_okay=False)
FollowOpt = typer.Option(False, "--follow-symlinks", help="Follow symbolic links while discovering photos.")
ShowOpt = typer.Option(20, "--show", help="How many problem items to list after the summary (0: none).", min=0)
ExecutorOpt = typer.Option("local", "--executor", help="Where photos are checked (decode, detect, embed): local (threads in this process) or ray (Ray Data actors on a Ray cluster, reading the photos from the same paths: shared storage; pip install 'facecli[ray]'). Per-person checks, the ledger and the target stay here (README, 'Large runs').")
RayAddressOpt = typer.Option(None, "--ray-address", metavar="ADDRESS", show_default=False, help="The Ray cluster for --executor ray, e.g. ray://head:10001 or auto (default $RAY_ADDRESS, else a local Ray on this machine's cores).")
ShardOpt = typer.Option(None, "--shard", metavar="I/N", show_default=False, help="Only shard I of N (0 <= I < N): the persons whose id's sha256 is I modulo N, the same split on every machine. Run the N shards as separate jobs against one target; each keeps its own ledger (the default ledger gets a .shard-I-of-N suffix).")
MultiFaceOpt = typer.Option(None, "--multi-face", metavar=f"[{'|'.join(MULTI_FACE_MODES)}]", case_sensitive=False, show_default=False, help="When another face competes with the main one: reject the photo (MULTIPLE_FACES; default, or config key multi_face), or keep the largest face and accept it with MULTIPLE_FACES as a warning, the other faces listed in the report.")


ManifestOpt = typer.Option(None, "--manifest", "-m", help="CSV (delimiter sniffed) or .jsonl manifest: person_id, person_name, image/images, optional gender, date_of_birth, nationality, notes; other columns become metadata.", dir_okay=False)
MapOpt = typer.Option(None, "--map", metavar="FIELD=COLUMN", help="Read a field from a differently named column, e.g. --map person_id=EmployeeID --map image=Photo (repeatable, or comma-separated).")
MetadataOpt = typer.Option(None, "--metadata", help="Comma-separated manifest columns to keep as metadata (default: every other column).")
AllowAbsoluteOpt = typer.Option(False, "--allow-absolute", help="Allow absolute image paths in the manifest (default: relative to the manifest's folder only).")
OnMismatchOpt = typer.Option("reject", "--on-identity-mismatch", help="An image that does not match the person's other images (IDENTITY_MISMATCH): reject it, or warn and keep its status.")
OnDuplicateOpt = typer.Option("reject", "--on-duplicate", help="The same image twice in the run (DUPLICATE_IMAGE), one face under two person_ids (DUPLICATE_PERSON): reject, or warn and keep the status.")
DuplicateBudgetOpt = typer.Option(None, "--duplicate-budget", min=1e-12, max=0.5, metavar="P", help="Expected false DUPLICATE_PERSON rejections per person (default 0.0001: 1 in 10,000 persons). The rejection score rises with the run's and the gallery's size (README, 'The score model').")
ReviewBudgetOpt = typer.Option(None, "--review-budget", min=1e-12, max=0.5, metavar="P", help="Expected false POSSIBLE_DUPLICATE warnings per person (default 0.01): the review list's length.")
DuplicateMinScoreOpt = typer.Option(None, "--duplicate-min-score", min=0.0, max=1.0, metavar="SCORE", help="Fixed DUPLICATE_PERSON score instead of the score model's (review level: --review-budget, capped at it).")
MaxImagesOpt = typer.Option(3, "--max-images-per-person", help="Keep at most N accepted images per person (best quality first; 0 = no limit). The rest are skipped.", min=0)


def setting_number(settings: Settings, flag: Any, name: str, cast: Callable[[Any], Any]) -> Any:
    """A numeric setting: the flag, else the environment / config file (``settings.get``), cast;
    None when unset; a value that is not a number is a usage error."""
    value = flag if flag is not None else settings.get(name)
    if value is None:
        return None
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def person_policy(on_identity_mismatch: str, on_duplicate: str, max_images: int, settings: Settings,
                  duplicate_budget: float | None = None, review_budget: float | None = None,
                  duplicate_min_score: float | None = None):
    """Per-person check policy from flags, then the config file (``duplicate_budget``,
    ``review_budget``, ``duplicate_min_score``), then the defaults."""
    from facecli.pipeline.persons import POLICIES, PersonPolicy

    for opt, value in (("--on-identity-mismatch", on_identity_mismatch), ("--on-duplicate", on_duplicate)):
        if value not in POLICIES:
            raise ConfigError(f"{opt} must be one of {', '.join(POLICIES)}, got {value!r}")

    extra: dict[str, float] = {}
    for name, flag in (("duplicate_budget", duplicate_budget), ("review_budget", review_budget)):
        v = setting_number(settings, flag, name, float)
        if v is not None:
            if not 0 < v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")
            extra[name] = v
    fixed = setting_number(settings, duplicate_min_score, "duplicate_min_score", float)
    if fixed is not None:
        extra["duplicate_threshold"] = fixed
    return PersonPolicy(on_identity_mismatch=on_identity_mismatch, on_duplicate=on_duplicate,
                        max_images_per_person=max_images, **extra)


def apply_shard(shard: str | None, discovery, settings: Settings):
    """``--shard I/N``: (this shard's part of ``discovery``, the Shard or None). Each shard gets
    its own ledger unless one is named (--journal, FACECLI_JOURNAL or the config file)."""
    from facecli.pipeline.executor import Shard

    part = Shard.parse(shard) if shard else None
    if part:
        discovery = part.select(discovery)
        if settings.get("journal") is None:
            settings.flags["journal"] = str(part.journal_path())
    return discovery, part


def load_source(path: Path | None, manifest: Path | None, mapping: list[str] | None, metadata: str | None,
                allow_absolute: bool, follow_symlinks: bool):
    """A folder/file PATH or a --manifest, never both: the one place sources are chosen."""
    if manifest is not None and path is not None:
        raise ConfigError("give either PATH or --manifest, not both")
    if manifest is not None:
        from facecli.sources.manifest import read_manifest

        pairs = parse_pairs([p for m in (mapping or []) for p in m.split(",") if p.strip()], "--map")
        columns = [c.strip() for c in metadata.split(",") if c.strip()] if metadata else None
        return read_manifest(manifest, mapping=pairs or None, metadata_columns=columns,
                             allow_absolute=allow_absolute, follow_symlinks=follow_symlinks)
    if mapping or metadata or allow_absolute:
        raise ConfigError("--map, --metadata and --allow-absolute apply to --manifest only")
    if path is None:
        raise ConfigError("give a folder or image PATH, or --manifest FILE", hint="e.g. facecli check ./photos")
    if not path.exists():
        raise ConfigError(f"path not found: {path}")
    from facecli.sources.folder import discover_folder

    return discover_folder(path, follow_symlinks=follow_symlinks)


ToOpt = typer.Option(None, "--to", metavar="TARGET", help="Target: local (default: the embedded engine), sqlite:///PATH, http(s)://HOST[:PORT], opencv-fr-cloud://us|eu|sg, verifik:// or persona://LIST_ID.")
DbOpt = typer.Option(None, "--db", help="Local engine database file (default $FACECLI_DB or the user data dir).", dir_okay=False)
CollectionOpt = typer.Option(None, "--collection", "-c", metavar="NAME", help="Collection name (default: 'default'; letters, digits, '_', '.', '-').")


DEFAULT_COLLECTION = "default"


def target_settings(settings: Settings) -> tuple[str, str | None, str]:
    """(target, db, collection) after flags > env > config > defaults.

    The target and the database are one choice made at the highest level that speaks:
    ``--to sqlite:///x.db`` (or ``postgresql://``) wins over FACECLI_DB or a config ``db``;
    ``--db x.db`` wins over FACECLI_TARGET or a config ``to``. Only two at the same level
    (both flags, say) conflict, and the factory says so."""
    return (*resolve_target(settings), str(settings.get("collection") or DEFAULT_COLLECTION))


def resolve_target(settings: Settings) -> tuple[str, str | None]:
    """(target, db) by the one precedence: see :func:`target_settings`."""
    from facecli.sinks.factory import names_database

    def level(name: str) -> int:
        lv = settings.level(name)
        return 9 if lv is None else lv

    to_key = min(("to", "server"), key=level)  # FACECLI_SERVER beats a config file's `to`
    target = settings.get(to_key) if level(to_key) < 9 else None
    db = settings.get("db")
    if target is None:
        return "local", db
    if db is not None and level("db") != level(to_key):
        if level(to_key) < level("db") and (names_database(str(target)) or str(target) != "local"):
            db = None  # a stronger --to names its own database (or is remote): a weaker db does not apply
        elif level("db") < level(to_key) and names_database(str(target)):
            target = "local"  # a stronger --db picks the database a weaker `to` named
    return str(target), db


JournalOpt = typer.Option(None, "--journal", help="Run ledger file (default $FACECLI_JOURNAL or the user data dir).", dir_okay=False)
NoJournalOpt = typer.Option(False, "--no-journal", help="Do not read or write the run ledger (no resume, no cache).")
MaxFailuresOpt = typer.Option(None, "--max-failures", metavar="N|N%", help="Exit 1 only when more than N images (or N% of them) are rejected or failed.")
FailFastOpt = typer.Option(False, "--fail-fast", help="Stop at the first rejected or failed image (exit 1).")


def open_journal(settings: Settings, no_journal: bool, create: bool = True):
    """The run ledger, or None (--no-journal; or ``create=False`` and no ledger there yet)."""
    if no_journal:
        return None
    from facecli.pipeline.journal import Journal, NoJournal

    try:
        return Journal(settings.get("journal"), create=create)
    except NoJournal:
        return None


def parse_max_failures(value: str | None) -> tuple[float, bool] | None:
    """"5" -> (5, False); "2.5%" -> (2.5, True)."""
    if value is None:
        return None
    text = value.strip()
    pct = text.endswith("%")
    try:
        n = float(text[:-1] if pct else text)
    except ValueError:
        raise ConfigError(f"--max-failures expects N or N%, got {value!r}") from None
    if n < 0:
        raise ConfigError("--max-failures must not be negative")
    return n, pct


def exit_code_for(summary, max_failures: tuple[float, bool] | None) -> ExitCode:
    """0 fine (or nothing to do: an empty source, nothing to retry); 1 problems (over
    --max-failures when given); 130 interrupted (resumable)."""
    if summary.interrupted:
        return ExitCode.INTERRUPTED
    total = sum(summary.images.values())
    problems = summary.problems
    if not total:
        return ExitCode.OK if summary.nothing_to_do else ExitCode.ITEMS
    if max_failures is None:
        return ExitCode.ITEMS if problems else ExitCode.OK
    n, pct = max_failures
    limit = total * n / 100 if pct else n
    return ExitCode.ITEMS if problems > limit else ExitCode.OK


class GracefulStop:
    """Ctrl-C / SIGTERM set an event the pipeline checks between images and batches; a second
    Ctrl-C aborts at once. The journal is flushed either way."""

    def __init__(self) -> None:
        import threading

        self.event = threading.Event()
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        import signal

        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()
        from facecli.cli.console import err

        err.print("[yellow]stopping: finishing the work in flight (Ctrl-C again to abort)[/]")

    def __enter__(self) -> GracefulStop:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


# -- remote targets (http(s)://) ---------------------------------------------------------------------

ApiKeyOpt = typer.Option(None, "--api-key", metavar="KEY", help="API key for an http(s):// target (sent as x-api-key; never printed or logged). Prefer FACECLI_API_KEY or api_key_env in the config file: a flag shows in the process list.", show_default=False)
InsecureOpt = typer.Option(False, "--insecure", help="Allow plain http:// to a host other than this machine (the API key and the photos then travel unencrypted).")
ConcurrencyOpt = typer.Option(None, "--concurrency", min=1, help="Requests in flight at once to an http(s):// target (default 4).")
MaxBatchBytesOpt = typer.Option(None, "--max-batch-bytes", min=1024, help="Cap on one request body to an http(s):// target, in bytes (default 16 MiB); batches are split to fit.")
PayloadOpt = typer.Option("face", "--payload", help="Image uploaded per accepted face: face (a re-encoded crop with margin, EXIF/GPS stripped) or full (the whole photo, at most 1024 px).")
MaxImageBytesOpt = typer.Option(None, "--max-image-bytes", min=1024, help="Cap on each uploaded image in bytes (default 1000000): JPEG quality, then size, is lowered to fit.")
TimeoutOpt = typer.Option(None, "--timeout", min=0.1, help="Seconds to wait for each HTTP response from an http(s):// target (default 60).")
RetriesOpt = typer.Option(None, "--retries", min=0, help="Retries per request on connection errors, timeouts, 429 and 5xx (default 4; full-jitter backoff, Retry-After honoured).")

API_KEY_ENV = "FACECLI_API_KEY"


def resolve_api_key(settings: Settings, flag: str | None) -> str | None:
    """--api-key > FACECLI_API_KEY > config ``api_key`` > the variable config ``api_key_env`` names."""
    import os

    if flag:
        return flag
    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV]
    if settings.file.get("api_key"):
        return str(settings.file["api_key"])
    env_name = settings.file.get("api_key_env")
    if env_name:
        value = os.environ.get(str(env_name))
        if not value:
            raise ConfigError(f"the config file's api_key_env names {env_name}, which is not set")
        return value
    return None


def remote_options(settings: Settings, *, api_key: str | None = None, insecure: bool = False,
                   concurrency: int | None = None, max_batch_bytes: int | None = None, timeout: float | None = None,
                   retries: int | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Keyword options for an http(s):// sink (flags > config file; None = the client's default).
    Config-only keys: ``retry_initial_s``, ``retry_max_wait_s``, ``retry_budget``, ``ca_bundle``."""
    from facecli.sinks.transport import RetryPolicy

    pick = partial(setting_number, settings)
    defaults = RetryPolicy()
    n_retries = pick(retries, "retries", int)
    budget = pick(None, "retry_budget", float)
    policy = RetryPolicy(
        retries=defaults.retries if n_retries is None else n_retries,
        initial_s=pick(None, "retry_initial_s", float) or defaults.initial_s,
        max_wait_s=pick(None, "retry_max_wait_s", float) or defaults.max_wait_s,
        budget=defaults.budget if budget is None else budget,
    )
    if policy.retries < 0 or policy.budget < 0:
        raise ConfigError("retries and retry_budget must not be negative")
    ca_bundle = settings.get("ca_bundle")
    return {
        "api_key": resolve_api_key(settings, api_key),
        "insecure": bool(insecure or settings.get("insecure", False)),
        "concurrency": pick(concurrency, "concurrency", int),
        "max_batch_bytes": pick(max_batch_bytes, "max_batch_bytes", int),
        "timeout": pick(timeout, "timeout", float),
        "batch_size": batch_size,
        "policy": policy,
        "verify": str(ca_bundle) if ca_bundle else None,
    }


def payload_spec(kind: str, max_image_bytes: int | None):
    """The upload image for remote targets: --payload face|full under --max-image-bytes."""
    from facecli.imaging.encode import PayloadSpec

    if kind not in PAYLOAD_KINDS:
        raise ConfigError(f"--payload must be one of {', '.join(PAYLOAD_KINDS)}, got {kind!r}")
    return PayloadSpec(kind=kind, max_bytes=max_image_bytes or PayloadSpec().max_bytes)
