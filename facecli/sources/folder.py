"""Folder sources: one sub-folder per person, or flat files named after the person.

Layouts (both may appear in one folder):
- ``photos/<person_id>/*.jpg``: the folder name is the person's id and name; images anywhere below.
- ``photos/<person_id>.jpg``: the file stem is the id. ``<id>_1.jpg``, ``<id>_2.jpg`` are several
  images of ``<id>``: a ``_N`` suffix (1-3 digits) is dropped only when another file shares the
  rest of the name, so a lone ``emp_1042.jpg`` stays person ``emp_1042``.

Person ids from folder and file names follow the one rule of ``facecli.ids``: each image of a
refused id becomes an ``INVALID_ROW`` problem and nothing is enrolled for it.

Hidden entries are skipped. Files without an image extension are counted as ignored, whatever
they are. An entry with an image extension that is not a regular file (FIFO, socket, device, a
folder named ``x.jpg``) is an ``UNREADABLE`` problem and is never opened.

Symbolic links are skipped (counted as ignored, not followed, not items) unless
``follow_symlinks``. Then every entry is taken at its real path: a dangling link is
``FILE_NOT_FOUND``; a link to the folder it is in or to one above it (or to the photo folder) is
a loop (``UNREADABLE``); a link into another person's folder or to another person's file is a
conflict (``INVALID_ROW``, "also belongs to person X"). Each real file belongs to one person: the
one whose folder really holds it (a real folder before a linked one, then the deepest, then the
first by name); a file outside every person's folder goes to the first person that links to it,
and one reached twice by one person is taken once.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import defaultdict, deque
from pathlib import Path

from facecli.errors import ReasonCode
from facecli.ids import validate_person_id
from facecli.imaging.decode import IMAGE_EXTENSIONS
from facecli.sources.spec import Discovery, PersonSpec, SourceProblem

_SUFFIX = re.compile(r"^(?P<base>.+?)_(?P<n>\d{1,3})$")
_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))

Entry = tuple[Path, str, bool]  # (path as listed, real path ("" without follow_symlinks), is a link)


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(p))]


def _within(path: str, folder: str) -> bool:
    """Whether real ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _not_regular(mode: int) -> str:
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


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


class _Discoverer:
    """One discovery: the scan of each folder and, with ``follow``, who owns which real path."""

    def __init__(self, root: Path, follow: bool) -> None:
        self.follow = follow
        self.out = Discovery()
        self.root_real = os.path.realpath(root) if follow else ""
        self.folders: dict[str, tuple[bool, int, str]] = {}  # real person folder -> (is link, order, id)
        self.flat: dict[str, str] = {}  # real flat file -> person id
        self.claimed: dict[str, tuple[str, str]] = {}  # real path -> (person id, path as listed)
        self.walked: set[tuple[int, int]] = set()  # (device, inode) of every folder walked

    def problem(self, path: Path | str, reason: ReasonCode, message: str, pid: str | None = None) -> SourceProblem:
        self.out.problems.append(found := SourceProblem(str(path), reason, message, person_id=pid))
        return found

    def scan(self, folder: Path, real: str, pid: str | None) -> tuple[list[Entry], list[Entry], list[SourceProblem]]:
        """(image files, sub-folders, problems) directly in ``folder``; links after real entries.

        Nothing is opened: the type comes from the directory entry, or from stat() for the rare
        entry that is neither a file nor a folder (so a FIFO cannot block the run).
        """
        files: list[Entry] = []
        dirs: list[Entry] = []
        bad: list[SourceProblem] = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            self.problem(folder, ReasonCode.UNREADABLE, f"cannot list folder: {exc.strerror or exc}", pid)
            return files, dirs, bad
        links = []
        for e in entries:
            if e.name.startswith("."):
                continue  # hidden files and folders (.DS_Store, .git, ...): never photos
            try:
                is_link = e.is_symlink()
            except OSError:
                is_link = False
            if is_link and not self.follow:
                self.out.ignored.append((e.path, "symbolic link (use --follow-symlinks)"))
            elif is_link:
                links.append(e)
            else:
                self._classify(e, os.path.join(real, e.name) if self.follow else "", False, pid, files, dirs, bad)
        for e in links:
            self._classify(e, os.path.realpath(e.path), True, pid, files, dirs, bad)
        return files, dirs, bad

    def _classify(self, e: os.DirEntry, real: str, is_link: bool, pid: str | None,
                  files: list[Entry], dirs: list[Entry], bad: list[SourceProblem]) -> None:
        path = Path(e.path)
        image_name = path.suffix.lower() in IMAGE_EXTENSIONS

        def refuse(reason: ReasonCode, message: str) -> None:
            bad.append(self.problem(path, reason, message, pid))

        try:
            if e.is_dir():
                if image_name:
                    refuse(ReasonCode.UNREADABLE, "not a regular file: a folder named like an image (not searched)")
                else:
                    dirs.append((path, real, is_link))
            elif e.is_file():
                if image_name:
                    files.append((path, real, is_link))
                else:
                    self.out.ignored.append((e.path, "not an image file extension"))
            else:
                what = _not_regular(e.stat().st_mode)  # stat, never open: a FIFO would block
                if image_name:
                    refuse(ReasonCode.UNREADABLE, f"not a regular file: {what} (never opened)")
                else:
                    self.out.ignored.append((e.path, f"{what}, not an image file"))
        except FileNotFoundError:
            if is_link:
                try:
                    target = os.readlink(path)
                except OSError:
                    target = "?"
                refuse(ReasonCode.FILE_NOT_FOUND, f"dangling symbolic link to {target!r}")
            else:
                refuse(ReasonCode.FILE_NOT_FOUND, "vanished while the folder was listed")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse(ReasonCode.UNREADABLE, "symlink loop: the link never resolves (too many levels of links)")
            else:
                refuse(ReasonCode.UNREADABLE, exc.strerror or str(exc))

    def owner(self, real: str) -> str | None:
        """The person whose folder really holds ``real``: a real folder first, then the deepest."""
        if real in self.flat:
            return self.flat[real]
        holders = []  # (is a link, levels up, order, id) of each person folder above ``real``
        p, up = real, 0
        while True:
            if (hit := self.folders.get(p)) is not None:
                holders.append((hit[0], up, hit[1], hit[2]))
            parent = os.path.dirname(p)
            if parent == p:
                return min(holders)[3] if holders else None
            p, up = parent, up + 1

    def claim(self, pid: str, path: Path, real: str, ask_owner: bool) -> bool:
        """Whether ``pid`` may take ``path`` (real path ``real``); a conflict becomes a problem."""
        if not self.follow:
            return True
        owner = self.owner(real) if ask_owner else None
        if owner is not None and owner != pid:
            self.problem(path, ReasonCode.INVALID_ROW,
                         f"{real} also belongs to person {owner!r} (reached through a symbolic link): "
                         f"not filed under {pid!r}", pid)
            return False
        first = self.claimed.setdefault(real, (pid, str(path)))
        if first == (pid, str(path)):
            return True
        if first[0] != pid:
            self.problem(path, ReasonCode.INVALID_ROW,
                         f"{real} also belongs to person {first[0]!r} (as {first[1]}): not filed under {pid!r}", pid)
        else:
            self.out.ignored.append((str(path), f"same file or folder as {first[1]}"))
        return False

    def walked_before(self, folder: Path) -> bool:
        """A folder seen again under another path that no link explains (a bind mount): skipped."""
        try:
            st = os.stat(folder)
        except OSError:
            return False  # scan() reports it
        if (st.st_dev, st.st_ino) in self.walked:
            self.out.ignored.append((str(folder), "folder already walked under another path (a bind mount?)"))
            return True
        self.walked.add((st.st_dev, st.st_ino))
        return False

    def is_loop(self, pid: str, path: Path, real: str, chain: tuple[str, ...]) -> bool:
        """A linked folder that holds the photo folder or a folder it was reached from."""
        if not any(_within(c, real) for c in (self.root_real, *chain)):
            return False
        self.problem(path, ReasonCode.UNREADABLE,
                     f"symlink loop: {path} points to {real}, the folder it is in or one above it (not searched)", pid)
        return True

    def walk(self, pid: str, folder: Path, real: str) -> list[Path]:
        """Image files anywhere below a person's folder: every real entry first, then what its links
        add (so a file reached both ways is listed at its real place). Iterative: no recursion limit."""
        images: list[Path] = []
        dirs: list[tuple[Entry, tuple[str, ...]]] = [((folder, real, False), ())]
        links: deque[tuple[Entry, tuple[str, ...], bool]] = deque()  # (link, real folders above it, is a folder)
        while dirs or links:
            if not dirs:
                (path, target, _), chain, is_dir = links.popleft()
                if is_dir and self.is_loop(pid, path, target, chain):
                    continue
                if not self.claim(pid, path, target, True):
                    continue
                if is_dir:
                    dirs.append(((path, target, True), chain))
                else:
                    images.append(path)
                continue
            (here, here_real, _), chain = dirs.pop()
            chain = (*chain, here_real) if self.follow else ()
            if self.walked_before(here):
                continue
            files, subdirs, _ = self.scan(here, here_real, pid)
            for f in files:
                if f[2]:
                    links.append((f, chain, False))
                elif self.claim(pid, f[0], f[1], False):
                    images.append(f[0])
            for sub in reversed(subdirs):
                if sub[2]:
                    links.append((sub, chain, True))
                elif self.claim(pid, sub[0], sub[1], sub[1] in self.folders):
                    dirs.append((sub, chain))
        return images


def _special_root(root: Path) -> str | None:
    """Why a PATH that is neither a folder nor a regular file cannot be read (stat only)."""
    try:
        mode = root.stat().st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if stat.S_ISDIR(mode) or stat.S_ISREG(mode) else f"not a regular file: {_not_regular(mode)}"


def discover_folder(root: str | Path, follow_symlinks: bool = False) -> Discovery:
    """Persons and their images under ``root`` (sorted by id; images in natural order)."""
    root = Path(root)
    d = _Discoverer(root, follow_symlinks)
    out = d.out
    if not root.exists():  # a dangling link too
        out.problems.append(SourceProblem(str(root), ReasonCode.FILE_NOT_FOUND, "no such folder"))
        return out
    if (why := _special_root(root)) is not None:
        out.problems.append(SourceProblem(str(root), ReasonCode.UNREADABLE, why))
        return out
    images: dict[str, list[Path]] = defaultdict(list)
    flat: set[Path] = {root}
    if root.is_file():
        images[root.stem].append(root)
    else:
        files, dirs, bad = d.scan(root, d.root_real, None)
        flat = {p for p, _, _ in files}
        pid_of = {p: pid for pid, ps in group_flat([*flat, *(Path(b.path) for b in bad)]).items() for p in ps}
        for b in bad:  # special entries at the top: the problem names the person they would be
            b.person_id = pid_of[Path(b.path)]
        person_dirs = []
        for order, (path, real, link) in enumerate(dirs):
            if d.follow and link and d.is_loop(path.name, path, real, ()):
                continue
            person_dirs.append((path, real, link))
            if d.follow:  # scan() lists real folders before links: the first one is the holder
                d.folders.setdefault(real, (link, order, path.name))
        for path, real, link in files:
            if d.follow and not link:
                d.flat[real] = pid_of[path]
        for path, real, link in files:
            if d.claim(pid_of[path], path, real, link):
                images[pid_of[path]].append(path)
        for path, real, link in person_dirs:
            pid = path.name
            before = len(out.problems)
            found = d.walk(pid, path, real) if d.claim(pid, path, real, True) else []
            if found:
                images[pid] += found
            elif len(out.problems) == before:
                out.ignored.append((str(path), "folder holds no image files"))
    for pid in sorted(images):
        why = validate_person_id(pid)
        if why is None:
            out.persons.append(PersonSpec(person_id=pid, person_name=pid, images=sorted(images[pid], key=_natural_key)))
            continue
        for p in sorted(images[pid], key=_natural_key):
            what = "file" if p in flat else "folder"
            d.problem(p, ReasonCode.INVALID_ROW, f"{why} (the id comes from the {what} name): not enrolled", pid)
    return out
