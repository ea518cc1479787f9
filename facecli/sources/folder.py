"""Folder sources: one sub-folder per person, or flat files named after the person.

Layouts (both may appear in one folder):
- ``photos/<person_id>/*.jpg``: the folder name is the person's id and name; images anywhere below.
- ``photos/<person_id>.jpg``: the file stem is the id. ``<id>_1.jpg``, ``<id>_2.jpg`` are several
  images of ``<id>``: a ``_N`` suffix (1-3 digits) is dropped only when another file shares the
  rest of the name, so a lone ``emp_1042.jpg`` stays person ``emp_1042``.
Hidden entries are skipped; symbolic links are skipped unless ``follow_symlinks``.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from facecli.errors import ReasonCode
from facecli.imaging.decode import IMAGE_EXTENSIONS
from facecli.sources.spec import Discovery, PersonSpec, SourceProblem

_SUFFIX = re.compile(r"^(?P<base>.+?)_(?P<n>\d{1,3})$")


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(p))]


def _scan(folder: Path, follow_symlinks: bool, out: Discovery) -> tuple[list[Path], list[Path]]:
    """Image files and sub-folders directly in ``folder``; everything else recorded as ignored."""
    files: list[Path] = []
    dirs: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        out.problems.append(SourceProblem(str(folder), ReasonCode.UNREADABLE, f"cannot list folder: {exc.strerror or exc}"))
        return files, dirs
    for e in entries:
        path = Path(e.path)
        if e.name.startswith("."):
            continue  # hidden files and folders (.DS_Store, .git, ...): never photos
        if e.is_symlink() and not follow_symlinks:
            out.ignored.append((str(path), "symbolic link (use --follow-symlinks)"))
            continue
        try:
            if e.is_dir(follow_symlinks=follow_symlinks):
                dirs.append(path)
            elif e.is_file(follow_symlinks=follow_symlinks):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(path)
                else:
                    out.ignored.append((str(path), "not an image file extension"))
        except OSError as exc:
            out.problems.append(SourceProblem(str(path), ReasonCode.UNREADABLE, str(exc)))
    return files, dirs


def _walk_images(folder: Path, follow_symlinks: bool, out: Discovery, seen: set[tuple[int, int]]) -> list[Path]:
    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop
            return []
        seen.add(key)
    except OSError:
        pass
    files, dirs = _scan(folder, follow_symlinks, out)
    for d in dirs:
        files.extend(_walk_images(d, follow_symlinks, out, seen))
    return files


def group_flat(files: list[Path]) -> dict[str, list[Path]]:
    """Group flat files by person id (see module docstring for the suffix rule)."""
    stems = [f.stem for f in files]
    base_of: dict[str, str] = {}
    counts: dict[str, int] = defaultdict(int)
    for stem in stems:
        m = _SUFFIX.match(stem)
        base = m.group("base") if m else stem
        counts[base] += 1
    for stem in stems:
        m = _SUFFIX.match(stem)
        base_of[stem] = m.group("base") if m and counts[m.group("base")] > 1 else stem
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        groups[base_of[f.stem]].append(f)
    return groups


def discover_folder(root: str | Path, follow_symlinks: bool = False) -> Discovery:
    """Persons and their images under ``root`` (sorted by id; images in natural order)."""
    root = Path(root)
    out = Discovery()
    if not root.exists():
        out.problems.append(SourceProblem(str(root), ReasonCode.FILE_NOT_FOUND, "no such folder"))
        return out
    if root.is_file():
        groups = {root.stem: [root]}
        dirs: list[Path] = []
    else:
        files, dirs = _scan(root, follow_symlinks, out)
        groups = group_flat(files)
    persons: dict[str, PersonSpec] = {}
    for pid, imgs in groups.items():
        persons[pid] = PersonSpec(person_id=pid, person_name=pid, images=sorted(imgs, key=_natural_key))
    seen: set[tuple[int, int]] = set()
    for d in dirs:
        imgs = sorted(_walk_images(d, follow_symlinks, out, seen), key=_natural_key)
        if not imgs:
            out.ignored.append((str(d), "folder holds no image files"))
            continue
        if d.name in persons:
            persons[d.name].images.extend(imgs)
        else:
            persons[d.name] = PersonSpec(person_id=d.name, person_name=d.name, images=imgs)
    out.persons = [persons[k] for k in sorted(persons)]
    return out
