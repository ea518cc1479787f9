"""The model registry: which ONNX files facecli runs, how to recognise them and where to find them.

Files are named explicitly and pinned by sha256. A model's kind and preprocessing come from this
registry, never from guessing at its input shape.

It also obtains them, only when asked (``facecli models fetch`` / ``import``; nothing downloads
implicitly): :func:`fetch_model` downloads a published file (resumable, sha256-checked, atomic) or
builds one that is not published (dlib-resnet: from face-api's TF.js weights, see
:mod:`facecli.vision.convert_dlib`); :func:`import_models` copies verified files from a folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from facecli.errors import ConfigError, ModelError
from facecli.vision import convert_dlib

MODELS_DIR_ENV = "FACECLI_MODELS_DIR"


@dataclass(frozen=True)
class BuildRecipe:
    """How to make a file nobody publishes: download a pinned source archive, then convert it."""

    source_url: str
    source_file: str  # the archive's file name (also its name on a --mirror)
    source_sha256: str
    source_size: int
    source_license: str
    #: ``(archive path) -> ONNX bytes``; imported lazily (the converter needs optional packages)
    builder: Callable[[Path], bytes]
    extra: str = "build-models"  # pip extra that provides what the builder imports
    requires: tuple[str, ...] = ("onnx",)


@dataclass(frozen=True)
class ModelFile:
    """One acceptable file for a model (a model may have several equivalent exports)."""

    file: str
    sha256: str
    size: int
    #: "dynamic": any H, W (multiples of 32); "fixed": exactly ``input_size``.
    input_kind: str
    input_size: tuple[int, int] | None = None  # (width, height) when fixed
    url: str | None = None
    #: set when the file is built locally instead of downloaded
    build: BuildRecipe | None = None

    @property
    def fetchable(self) -> bool:
        return self.url is not None or self.build is not None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: str  # "detector" | "recognizer"
    license: str
    files: tuple[ModelFile, ...]  # in order of preference
    description: str
    #: False: listed and fetchable, but not exercised by facecli's tests (no copy in CI) and no
    #: pipeline uses it; never a default.
    validated: bool = True

    @property
    def fetch_file(self) -> ModelFile | None:
        """The file ``facecli models fetch`` obtains (the first one with a URL or a recipe)."""
        return next((f for f in self.files if f.fetchable), None)


YUNET = ModelSpec(
    name="yunet",
    role="detector",
    license="MIT (OpenCV Zoo, Shiqi Yu)",
    files=(
        ModelFile(
            file="face_detection_yunet_2026may.onnx",
            sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
            size=229738,
            input_kind="dynamic",
        ),
        ModelFile(
            file="face_detection_yunet_2023mar.onnx",
            sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            size=232589,
            input_kind="fixed",
            input_size=(640, 640),
            url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        ),
    ),
    description="YuNet face detector: boxes, 5 landmarks, scores",
)

DLIB_RESNET = ModelSpec(
    name="dlib-resnet",
    role="recognizer",
    license="MIT (face-api port) / CC0 (dlib weights)",
    files=(
        ModelFile(
            file="dlib_resnet_faceapi_rec_u8.onnx",
            sha256="c2dcfaad2df8c8461764d5cc454d54f3aff679cc5f4fc6d55b754f4f655b3da8",
            size=6482347,
            input_kind="fixed",
            input_size=(150, 150),
            build=BuildRecipe(
                source_url=convert_dlib.FACEAPI_TARBALL_URL,
                source_file=convert_dlib.FACEAPI_TARBALL_URL.rsplit("/", 1)[-1],
                source_sha256=convert_dlib.FACEAPI_TARBALL_SHA256,
                source_size=convert_dlib.FACEAPI_TARBALL_SIZE,
                source_license="MIT (npm @vladmandic/face-api@1.7.15)",
                builder=convert_dlib.build_from_tarball,
            ),
        ),
    ),
    description="dlib ResNet-29 metric network, 128-d embedding (RGB 0..255, 150x150 aligned)",
)

SFACE = ModelSpec(
    name="sface",
    role="recognizer",
    license="Apache-2.0 (OpenCV Zoo)",
    files=(
        ModelFile(
            file="face_recognition_sface_2021dec.onnx",
            sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            size=38696353,
            input_kind="fixed",
            input_size=(112, 112),
            url="https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec.onnx",
        ),
    ),
    description="SFace (OpenCV Zoo), 128-d, 112x112 ArcFace template; optional, not validated in CI, "
    "no facecli pipeline uses it",
    validated=False,
)

REGISTRY: dict[str, ModelSpec] = {m.name: m for m in (YUNET, DLIB_RESNET, SFACE)}
DEFAULT_DETECTOR = YUNET.name
DEFAULT_RECOGNIZER = DLIB_RESNET.name


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    file: ModelFile
    path: Path


def user_models_dir() -> Path:
    return Path(platformdirs.user_cache_dir("facecli")) / "models"


def search_dirs(models_dir: str | Path | None = None) -> list[Path]:
    """Directories searched, in order: explicit option, FACECLI_MODELS_DIR, the user cache dir."""
    dirs: list[Path] = []
    if models_dir:
        dirs.append(Path(models_dir))
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        dirs.append(Path(env))
    dirs.append(user_models_dir())
    return dirs


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_status(path: Path, mf: ModelFile) -> str:
    """"present" (hash verified), "missing" or "corrupt"."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != mf.size or sha256_file(path) != mf.sha256:
        return "corrupt"
    return "present"


def missing_hint(spec: ModelSpec) -> str:
    names = ", ".join(f.file for f in spec.files)
    fetch = spec.fetch_file
    # No square brackets here: the CLI prints hints as rich markup, which would eat "[extra]".
    extra = (f" (builds it locally: needs the {', '.join(fetch.build.requires)} package, i.e. facecli's "
             f"{fetch.build.extra} extra)") if fetch and fetch.build else ""
    return (
        f"run `facecli models fetch {spec.name}`{extra}, or offline `facecli models import DIR` (a folder "
        f"holding {names}), or set {MODELS_DIR_ENV} to a folder that holds it"
    )


def resolve_model(name: str, path: str | Path | None = None, models_dir: str | Path | None = None) -> ResolvedModel:
    """Find a verified file for model ``name``; raise :class:`ModelError` naming the fix."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}", hint=f"known models: {', '.join(REGISTRY)}")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"model file not found: {p}")
        digest = sha256_file(p)
        for mf in spec.files:
            if mf.sha256 == digest:
                return ResolvedModel(spec, mf, p)
        # An explicit, unknown file: trust the user, assume the first (preferred) file's contract.
        return ResolvedModel(spec, spec.files[0], p)
    corrupt: list[Path] = []
    for d in search_dirs(models_dir):
        for mf in spec.files:
            p = d / mf.file
            status = file_status(p, mf)
            if status == "present":
                return ResolvedModel(spec, mf, p)
            if status == "corrupt":
                corrupt.append(p)
    if corrupt:
        raise ModelError(
            f"model {name}: file(s) fail the sha256 check: {', '.join(map(str, corrupt))}",
            hint=missing_hint(spec),
        )
    searched = ", ".join(dict.fromkeys(str(d) for d in search_dirs(models_dir)))
    raise ModelError(f"model {name} not found (searched {searched})", hint=missing_hint(spec))


def resolve_models(wanted: list[tuple[str, str | Path | None]],
                   models_dir: str | Path | None = None) -> list[ResolvedModel]:
    """Resolve several models at once; when any is missing or corrupt, one ModelError names every
    one of them and the single command that fixes them all (not the first, then the next)."""
    found: list[ResolvedModel] = []
    problems: list[tuple[str, ModelError]] = []
    for name, path in wanted:
        try:
            found.append(resolve_model(name, path, models_dir))
        except ModelError as exc:
            problems.append((name, exc))
    if not problems:
        return found
    if len(problems) == 1:
        raise problems[0][1]
    names = [n for n, _ in problems]
    files = ", ".join(f.file for n in names for f in REGISTRY[n].files[:1])
    searched = ", ".join(dict.fromkeys(str(d) for d in search_dirs(models_dir)))
    raise ModelError(f"models not found or corrupt: {', '.join(names)} (searched {searched})",
                     hint=f"run `facecli models fetch` (downloads and verifies {', '.join(names)}), or offline "
                          f"`facecli models import DIR` (a folder holding {files}), or set {MODELS_DIR_ENV} "
                          "to a folder that holds them")


# -- listing and verifying --------------------------------------------------------------------

DEFAULT_MODELS: tuple[str, ...] = (DEFAULT_DETECTOR, DEFAULT_RECOGNIZER)


def unique_dirs(dirs: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out: list[Path] = []
    for d in dirs:
        key = d.expanduser().resolve()
        if key not in seen:
            seen.add(key)
            out.append(d.expanduser())
    return out


@dataclass(frozen=True)
class ModelEntry:
    """One registry file and where (whether) it is found: a row of ``facecli models list``."""

    spec: ModelSpec
    file: ModelFile
    status: str  # "present" | "missing" | "corrupt"
    path: Path | None  # the verified file, else the corrupt one, else None

    def to_json(self) -> dict:
        """Stable keys: name, role, file, sha256, size, license, status, path."""
        return {
            "name": self.spec.name,
            "role": self.spec.role,
            "file": self.file.file,
            "sha256": self.file.sha256,
            "size": self.file.size,
            "license": self.spec.license,
            "status": self.status,
            "path": str(self.path) if self.path is not None else None,
        }


def list_models(models_dir: str | Path | None = None) -> list[ModelEntry]:
    """Every registry file (registry order), with its status in the search dirs."""
    dirs = unique_dirs(search_dirs(models_dir))
    entries: list[ModelEntry] = []
    for spec in REGISTRY.values():
        for mf in spec.files:
            status, path = "missing", None
            for d in dirs:
                s = file_status(d / mf.file, mf)
                if s == "present":
                    status, path = s, d / mf.file
                    break
                if s == "corrupt" and status == "missing":
                    status, path = s, d / mf.file
            entries.append(ModelEntry(spec, mf, status, path))
    return entries


def verify_models(models_dir: str | Path | None = None) -> list[ModelEntry]:
    """Re-hash every registry file found in every search dir (present or corrupt; never missing)."""
    out: list[ModelEntry] = []
    for d in unique_dirs(search_dirs(models_dir)):
        for spec in REGISTRY.values():
            for mf in spec.files:
                p = d / mf.file
                if p.is_file():
                    out.append(ModelEntry(spec, mf, file_status(p, mf), p))
    return out


def usable(name: str, models_dir: str | Path | None = None) -> bool:
    try:
        resolve_model(name, models_dir=models_dir)
    except ModelError:
        return False
    return True


# -- obtaining: download, build, import -------------------------------------------------------

#: ``(label, bytes done, bytes total or None)``, called while downloading
ProgressFn = Callable[[str, int, int | None], None]
#: a line of status text ("building ...")
StatusFn = Callable[[str], None]


def _client():
    import httpx

    # trust_env: HTTP(S)_PROXY / NO_PROXY / SSL_CERT_FILE are honoured.
    return httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=20.0),
                        headers={"User-Agent": "facecli-models", "Accept-Encoding": "identity"})


@contextmanager
def _dir_lock(dest: Path) -> Iterator[None]:
    """One fetch/import at a time per target file (two processes would share the ``.part``)."""
    from filelock import FileLock, Timeout

    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dest.parent / f".{dest.name}.lock"))
    try:
        lock.acquire(timeout=600)
    except Timeout:  # pragma: no cover - needs a stuck second process
        raise ModelError(f"another facecli process is writing {dest}") from None
    try:
        yield
    finally:
        lock.release()


def _fsync_replace(tmp: Path, dest: Path) -> None:
    """Flush ``tmp`` to disk, give it the usual permissions (mkstemp makes 0600), rename it over ``dest``."""
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, dest)


def _download_once(client, url: str, part: Path, size: int, label: str, on_progress: ProgressFn | None) -> None:
    """Fetch ``url`` into ``part``, continuing an earlier partial file with a Range request."""
    import httpx

    for _ in range(2):  # a second pass only after discarding a stale .part
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return  # complete from an earlier run; the caller's sha256 check decides
        headers = {"Range": f"bytes={have}-"} if have else {}
        with client.stream("GET", url, headers=headers) as r:
            if have and r.status_code == 206:
                if not r.headers.get("content-range", "").startswith(f"bytes {have}-"):
                    part.unlink()  # the server resumed from elsewhere: start over
                    continue
                mode = "ab"
            elif have and r.status_code == 416:
                part.unlink()
                continue
            elif r.status_code == 200:
                mode, have = "wb", 0  # the server ignored the Range (or there was none)
            else:
                r.raise_for_status()
                raise httpx.HTTPStatusError(f"unexpected HTTP {r.status_code}", request=r.request, response=r)
            if on_progress:
                on_progress(label, have, size)
            with part.open(mode) as f:
                for chunk in r.iter_raw():  # as it arrives: a dropped connection loses nothing
                    have += len(chunk)
                    if have > size:
                        raise ModelError(f"{url}: the server sent more than the expected {size} bytes")
                    f.write(chunk)
                    if on_progress:
                        on_progress(label, have, size)
        return
    raise ModelError(f"{url}: cannot resume the partial download {part}")


def download(url: str, dest: Path, sha256: str, size: int, *, client=None, on_progress: ProgressFn | None = None,
             attempts: int = 3, label: str | None = None) -> Path:
    """Download ``url`` to ``dest``: resumable ``dest.part``, sha256 check, then an atomic rename.

    A dropped connection is retried (``attempts`` in all), each time resuming with an HTTP Range
    request; the partial file stays for the next run if all fail. A file that completes with the
    wrong hash is deleted and named in the error.
    """
    import httpx

    dest = Path(dest)
    label = label or dest.name
    part = dest.with_name(dest.name + ".part")
    own = client is None
    client = client or _client()
    try:
        with _dir_lock(dest):
            for attempt in range(1, attempts + 1):
                try:
                    _download_once(client, url, part, size, label, on_progress)
                    break
                except httpx.HTTPStatusError as exc:
                    raise ModelError(f"download of {dest.name} failed: HTTP {exc.response.status_code} from {url}",
                                     hint=_offline_hint()) from None
                except httpx.TransportError as exc:
                    if attempt == attempts:
                        kept = f"; {part.stat().st_size} bytes kept in {part}, the next fetch resumes" if part.exists() else ""
                        raise ModelError(f"download of {dest.name} failed: {type(exc).__name__}: {exc}{kept}",
                                         hint=_offline_hint()) from None
            digest = sha256_file(part)
            if digest != sha256:
                part.unlink(missing_ok=True)
                raise ModelError(
                    f"{dest.name}: the downloaded file fails its sha256 check (got {digest}, expected {sha256}); "
                    "it was deleted",
                    hint=f"the source ({url}) may have changed; try again, or get a verified copy and use "
                    "`facecli models import DIR`",
                )
            _fsync_replace(part, dest)
    finally:
        if own:
            client.close()
    return dest


def _offline_hint() -> str:
    return ("check the network (HTTPS_PROXY is honoured) and run the fetch again (it resumes); on a machine "
            "without internet, copy the files from one that has them and run `facecli models import DIR`")


@dataclass(frozen=True)
class FetchResult:
    name: str
    file: str
    path: Path
    action: str  # "present" (nothing to do) | "downloaded" | "built"


def _mirror_url(mirror: str, file_name: str) -> str:
    return mirror.rstrip("/") + "/" + file_name


def _missing_requirements(recipe: BuildRecipe) -> list[str]:
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):
            return True

    return [m for m in recipe.requires if absent(m)]


def fetch_model(name: str, dest_dir: str | Path | None = None, *, mirror: str | None = None, force: bool = False,
                client=None, on_progress: ProgressFn | None = None, on_status: StatusFn | None = None) -> FetchResult:
    """Make sure model ``name`` has a verified file in ``dest_dir`` (default: the user cache dir).

    Downloads its published file, or builds it from its pinned source (dlib-resnet). ``mirror``
    replaces the upstream URLs by ``MIRROR/<file name>`` (the face-api tarball as
    ``MIRROR/face-api-1.7.15.tgz``). Nothing is fetched when a verified file is already there.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r}", hint=f"known models: {', '.join(REGISTRY)}")
    dest_dir = Path(dest_dir) if dest_dir is not None else user_models_dir()
    if not force:
        for mf in spec.files:
            if file_status(dest_dir / mf.file, mf) == "present":
                return FetchResult(name, mf.file, dest_dir / mf.file, "present")
    mf = spec.fetch_file
    if mf is None:  # pragma: no cover - every registry entry is fetchable today
        raise ModelError(f"model {name} has no download source", hint="use `facecli models import DIR`")
    dest = dest_dir / mf.file
    if mf.build is None:
        url = _mirror_url(mirror, mf.file) if mirror else mf.url
        download(url, dest, mf.sha256, mf.size, client=client, on_progress=on_progress, label=f"{name}: {mf.file}")
        return FetchResult(name, mf.file, dest, "downloaded")

    recipe = mf.build
    missing = _missing_requirements(recipe)
    if missing:
        raise ModelError(
            f"model {name} is built locally from {recipe.source_file} and that needs the "
            f"{', '.join(missing)} package, which is not installed",
            hint=f"install facecli's {recipe.extra} extra (pip install onnx) and run `facecli models fetch {name}` "
            f"again; or copy {mf.file} from a machine that has it and run `facecli models import DIR`",
        )
    archive = dest_dir / recipe.source_file
    url = _mirror_url(mirror, recipe.source_file) if mirror else recipe.source_url
    download(url, archive, recipe.source_sha256, recipe.source_size, client=client, on_progress=on_progress,
             label=f"{name}: {recipe.source_file}")
    if on_status:
        on_status(f"{name}: building {mf.file} from {recipe.source_file}")
    with _dir_lock(dest):
        data = recipe.builder(archive)
        digest = hashlib.sha256(data).hexdigest()
        if digest != mf.sha256:
            raise ModelError(
                f"{name}: the built {mf.file} has sha256 {digest}, not the pinned {mf.sha256}; not installed",
                hint="the converter's output depends on the onnx package's serializer: report this with "
                "`pip show onnx`; meanwhile copy a verified file in with `facecli models import DIR`",
            )
        fd, tmp = tempfile.mkstemp(prefix=f".{mf.file}.", suffix=".part", dir=dest_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _fsync_replace(Path(tmp), dest)
    archive.unlink(missing_ok=True)
    return FetchResult(name, mf.file, dest, "built")


@dataclass
class ImportResult:
    imported: list[tuple[str, Path, Path]]  # (model name, source, destination)
    present: list[tuple[str, Path]]  # already verified in the destination
    refused: list[tuple[Path, str]]  # (source, why)
    ignored: list[Path]  # .onnx files that are no registry file


def _copy_verified(src: Path, dest: Path, mf: ModelFile) -> None:
    """Copy to a temp file beside ``dest``, hashing on the way; rename only if the hash holds."""
    with _dir_lock(dest):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        h = hashlib.sha256()
        try:
            with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
                for chunk in iter(lambda: fin.read(1 << 20), b""):
                    h.update(chunk)
                    fout.write(chunk)
            if h.hexdigest() != mf.sha256:
                raise ModelError(f"{src} changed while it was copied (sha256 {h.hexdigest()})")
            _fsync_replace(Path(tmp), dest)
        finally:
            Path(tmp).unlink(missing_ok=True)


def import_models(src_dir: str | Path, dest_dir: str | Path | None = None) -> ImportResult:
    """Copy every registry file found in ``src_dir`` whose sha256 is right into ``dest_dir``.

    Files are recognised by name; other ``*.onnx`` files are recognised by their hash (so a renamed
    copy is imported under its registry name). A registry-named file with the wrong hash is refused.
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise ConfigError(f"not a folder: {src_dir}")
    dest_dir = Path(dest_dir) if dest_dir is not None else user_models_dir()
    by_hash = {mf.sha256: (spec, mf) for spec in REGISTRY.values() for mf in spec.files}
    by_name = {mf.file: (spec, mf) for spec in REGISTRY.values() for mf in spec.files}
    result = ImportResult([], [], [], [])
    candidates = sorted(p for p in src_dir.iterdir() if p.is_file() and (p.name in by_name or p.suffix == ".onnx"))
    for p in candidates:
        digest = sha256_file(p)
        if p.name in by_name:
            spec, mf = by_name[p.name]
            if digest != mf.sha256 or p.stat().st_size != mf.size:
                result.refused.append((p, f"sha256 {digest} is not the pinned {mf.sha256} ({spec.name})"))
                continue
        elif digest in by_hash:
            spec, mf = by_hash[digest]
        else:
            result.ignored.append(p)
            continue
        dest = dest_dir / mf.file
        if file_status(dest, mf) == "present":
            result.present.append((spec.name, dest))
            continue
        dest_dir.mkdir(parents=True, exist_ok=True)
        _copy_verified(p, dest, mf)
        result.imported.append((spec.name, p, dest))
    if not (result.imported or result.present or result.refused):
        names = ", ".join(mf.file for spec in REGISTRY.values() for mf in spec.files)
        raise ModelError(f"no model files in {src_dir}", hint=f"expected one of: {names}")
    return result
