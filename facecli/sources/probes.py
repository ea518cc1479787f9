"""Probe sources for `facecli search` / `compare`: image files, folders searched recursively, or the
images of a manifest. Unlike enrollment sources, probes belong to nobody: no person-id rule
applies, a file is simply a photo to ask about.

Each probe keeps the path it is read from and a *relative name* (its path under the folder it was
found in, or its file name) that `search --draw` uses to name the picture it writes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from facecli.errors import ConfigError
from facecli.imaging.decode import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Probe:
    path: Path
    name: str  # relative name: "sub/photo.jpg" under a folder argument, "photo.jpg" for a file


@dataclass
class ProbeList:
    probes: list[Probe] = field(default_factory=list)
    #: What the manifest could not give (row-level problems): (where, message).
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.probes)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _walk(folder: Path, follow_symlinks: bool) -> list[Path]:
    """Image files under ``folder`` (hidden entries skipped), in natural order, depth first."""
    out: list[Path] = []
    seen: set[str] = set()

    def visit(d: Path) -> None:
        real = os.path.realpath(d)
        if real in seen:  # a link loop
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: _natural(e.name))
        except OSError:
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_symlink() and not follow_symlinks:
                continue
            if e.is_dir(follow_symlinks=follow_symlinks):
                visit(Path(e.path))
            elif Path(e.name).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(e.path))

    visit(folder)
    return out


def discover_probes(paths: list[Path] | None, manifest: Path | None = None, follow_symlinks: bool = False,
                    allow_absolute: bool = False) -> ProbeList:
    """Probes from PATH arguments (files as given, whatever their extension: a file that is not an
    image becomes that probe's error; folders recursively, image extensions only) or from the
    images of a check/enroll manifest. A PATH that does not exist is a usage error."""
    out = ProbeList()
    if manifest is not None:
        if paths:
            raise ConfigError("give either PATH... or --manifest, not both")
        from facecli.sources.manifest import read_manifest

        found = read_manifest(manifest, allow_absolute=allow_absolute, follow_symlinks=follow_symlinks)
        base = manifest.parent
        for person in found.persons:
            for image in person.images:
                try:
                    name = str(Path(image).relative_to(base))
                except ValueError:
                    name = Path(image).name
                out.probes.append(Probe(Path(image), name))
        out.problems = [(p.path if p.line is None else f"{manifest}:{p.line}", p.message) for p in found.problems]
        return out
    if not paths:
        raise ConfigError("give one or more photos or folders, or --manifest FILE", hint="e.g. facecli search visitor.jpg")
    for p in paths:
        if not p.exists():
            raise ConfigError(f"path not found: {p}")
        if p.is_dir():
            out.probes += [Probe(f, str(f.relative_to(p))) for f in _walk(p, follow_symlinks)]
        else:
            out.probes.append(Probe(p, p.name))
    return out
