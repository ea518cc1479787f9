"""Manifest source: a CSV or JSON Lines file listing persons and their images.

Format
- CSV (delimiter sniffed among ``,`` ``;`` TAB ``|``, else ``,``), UTF-8 with or without BOM, a
  header row first; or JSON Lines (one object per line) when the name ends in ``.jsonl``.
- Columns: ``person_id`` (required), ``person_name`` (defaults to the id), ``image`` (one path)
  and/or ``images`` (``;``-separated paths, or a JSON list), relative to the manifest's folder.
  ``gender``, ``date_of_birth``, ``nationality``, ``notes`` fill the PersonSpec fields of those
  names; every other column is string metadata (or only ``metadata_columns`` when given).
  ``mapping`` renames source columns to these names (``{"person_id": "EmployeeID"}``).
- JSON Lines values are type-checked: ``person_id``, ``person_name`` and ``image`` are strings (a
  JSON number id is refused, not converted), ``images`` a string or a list of strings, other
  values strings, numbers or booleans (numbers and booleans kept as written); any other type makes
  the row an ``INVALID_ROW`` problem ("image must be a string, got list").
- Several rows with one person_id are several images of that person, in row order; the first
  row's metadata and the first non-empty person_name win. Cells are stripped of surrounding spaces.

Accepted person_id: the one rule of ``facecli.ids`` (shared by every source, sink and the server).

Errors: only run-wide problems raise ``ConfigError`` (manifest unreadable or empty, header not
UTF-8, no ``person_id`` or image column, a ``mapping``/``metadata_columns`` name that is not in the
file). Everything row-level (bad bytes, wrong field count, bad id, missing or escaping image,
duplicate row, conflicting name, a JSON value of the wrong type) becomes an ``INVALID_ROW``
problem with its 1-based physical line number (the CSV header is line 1) and the other rows are
still read, because one typo in a 50,000-row HR export must not cost the whole run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from facecli.errors import ConfigError, ReasonCode
from facecli.ids import validate_person_id
from facecli.sources.spec import Discovery, PersonSpec, SourceProblem

OPTIONAL_FIELDS = ("gender", "date_of_birth", "nationality", "notes")
KNOWN_COLUMNS = frozenset({"person_id", "person_name", "image", "images", *OPTIONAL_FIELDS})
DELIMITERS = ",;\t|"
_BOM = b"\xef\xbb\xbf"

Record = dict[str, object]  # source column -> cell (str; JSON values may be any type)
Lines = list[tuple[int, str]]  # (physical line number, text)
Parsed = tuple[list[str], list[tuple[int, Record]]]  # (columns, (line, record) pairs)


class _WrongType(ValueError):
    """A JSON value of the wrong type: its row becomes an INVALID_ROW problem (CSV cells are text)."""


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _string(name: str, value: object) -> str:
    """A text cell, stripped ("" when absent); any other JSON type refuses the row."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _WrongType(f"{name} must be a string, got {_type_name(value)}")
    return value.strip()


def _scalar(name: str, value: object) -> str:
    """A metadata cell: text, or a JSON number/boolean as written; objects and lists refuse the row."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict | list):
        raise _WrongType(
            f"{name} must be a string, number or boolean, got {_type_name(value)} (nested values are refused)")
    return _string(name, value)


def _person_id(value: object) -> tuple[str, str | None]:
    """(the id, "" if not text; why it is refused or None): the one rule of facecli.ids, so a JSON
    number is refused too (JSON numbers lose leading zeros; ids are compared as text everywhere)."""
    pid = value.strip() if isinstance(value, str) else "" if value is None else value
    why = validate_person_id(pid)
    if why and isinstance(pid, int | float) and not isinstance(pid, bool):
        why += f' (write it as a JSON string: "{pid}")'
    return (pid if isinstance(pid, str) else ""), why


def _decode_lines(data: bytes, where: str, problems: list[SourceProblem]) -> Lines:
    """Physical lines (number, text with its line end); undecodable ones become problems.

    Decoding per line (UTF-8 never puts CR/LF bytes inside a character) confines a stray
    Latin-1 byte to its own row instead of failing the whole file.
    """
    lines: Lines = []
    offset = 0
    for n, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            lines.append((n, raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            at = offset + exc.start
            problems.append(
                SourceProblem(
                    f"{where}:{n}", ReasonCode.INVALID_ROW,
                    f"line {n} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at file offset {at}); row skipped",
                    line=n,
                )
            )
        offset += len(raw)
    return lines


def _csv_rows(lines: Lines, delimiter: str) -> Iterator[tuple[int, int, list[str] | csv.Error]]:
    """(first line, last line, fields or the csv error) per record; a quoted field may span lines."""
    pos = 0

    def feed() -> Iterator[str]:
        nonlocal pos
        while pos < len(lines):
            pos += 1
            yield lines[pos - 1][1]

    reader = csv.reader(feed(), delimiter=delimiter)
    while pos < len(lines):
        start = pos
        try:
            row: list[str] | csv.Error = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(); the reader resumes after it
            row = exc
        yield lines[start][0], lines[max(pos - 1, start)][0], row


def _sniff(lines: Lines, header_line: str) -> str:
    """The delimiter: csv.Sniffer on a sample, kept only if the header actually uses it."""
    sample = "".join(t for _, t in lines[:50])[:8192]
    try:
        delim = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except Exception:  # the sniffer is a heuristic: any failure just means "use the default"
        delim = ","
    if delim not in header_line:
        best = max(DELIMITERS, key=header_line.count)
        delim = best if header_line.count(best) else ","
    return delim


def _read_csv(lines: Lines, where: str, problems: list[SourceProblem]) -> Parsed:
    rows = _csv_rows(lines, _sniff(lines, next((t for _, t in lines if t.strip()), "")))
    header: list[str] | None = None
    records: list[tuple[int, Record]] = []
    for first, last, row in rows:
        if isinstance(row, csv.Error):
            if header is None:
                raise ConfigError(f"cannot parse the manifest header (line {first}): {row}")
            problems.append(
                SourceProblem(f"{where}:{first}", ReasonCode.INVALID_ROW, f"unparsable row: {row}", line=first)
            )
            continue
        if not any(c.strip() for c in row):
            continue  # blank line (or only delimiters): skipped silently
        if header is None:
            header = [c.strip().lstrip("\ufeff").strip() for c in row]
            seen: set[str] = set()
            for h in header:
                if h and h in seen:
                    raise ConfigError(f"manifest header names column {h!r} twice")
                seen.add(h)
            continue
        if len(row) != len(header):
            span = f" (record spans lines {first}-{last}: unbalanced quote?)" if last > first else ""
            problems.append(SourceProblem(
                f"{where}:{first}", ReasonCode.INVALID_ROW,
                f"expected {len(header)} fields, got {len(row)}{span}", line=first))
            continue
        records.append((first, dict(zip(header, row))))
    if header is None:
        raise ConfigError("manifest is empty")
    return header, records


def _read_jsonl(lines: Lines, where: str, problems: list[SourceProblem]) -> Parsed:
    keys: dict[str, None] = {}
    records: list[tuple[int, Record]] = []
    for n, text in lines:
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            problems.append(SourceProblem(f"{where}:{n}", ReasonCode.INVALID_ROW, f"not valid JSON: {exc}", line=n))
            continue
        if not isinstance(obj, dict):
            problems.append(SourceProblem(f"{where}:{n}", ReasonCode.INVALID_ROW, "not a JSON object", line=n))
            continue
        obj = {k.strip(): v for k, v in obj.items()}
        keys.update(dict.fromkeys(obj))
        records.append((n, obj))
    return list(keys), records


def _resolve_columns(
    columns: list[str], mapping: dict[str, str] | None, metadata_columns: list[str] | None
) -> tuple[dict[str, str], list[str]]:
    """(our name -> source column, metadata names); raises ConfigError on usage mistakes."""
    present = [c for c in columns if c]
    found = ", ".join(present) or "none"
    src_of = {c: c for c in present}
    mapping = {k.strip(): v.strip() for k, v in (mapping or {}).items()}
    for ours, src in mapping.items():
        if src not in src_of:
            raise ConfigError(f"--map {ours}={src}: the manifest has no column {src!r} (found: {found})")
    for src in mapping.values():
        src_of.pop(src, None)  # a renamed column no longer exists under its old name
    src_of.update(mapping)
    if "person_id" not in src_of:
        raise ConfigError(
            f"the manifest has no person_id column (found: {found})",
            hint="name the id column with --map person_id=COLUMN",
        )
    if "image" not in src_of and "images" not in src_of:
        raise ConfigError(
            f"the manifest has no image or images column (found: {found})",
            hint="name the photo column with --map image=COLUMN",
        )
    if metadata_columns is None:
        return src_of, [c for c in src_of if c not in KNOWN_COLUMNS]
    missing = [c for c in metadata_columns if c not in src_of]
    if missing:
        raise ConfigError(f"metadata column(s) {', '.join(missing)} not in the manifest (found: {found})")
    return src_of, list(metadata_columns)


def _image_cells(image: object, images: object) -> list[str]:
    """The image paths of a row: ``image`` a string, ``images`` a ``;``-separated string or a list of strings."""
    cells = [_string("image", image)]
    if isinstance(images, list):
        cells += [_string(f"images[{i}]", v) for i, v in enumerate(images)]
    elif images is None or isinstance(images, str):
        cells += _string("images", images).split(";")
    else:
        raise _WrongType(f"images must be a string or a list of strings, got {_type_name(images)}")
    return [c.strip() for c in cells if c.strip()]


def _inside(path: str, root: str) -> bool:
    """Whether normalised ``path`` lies in normalised ``root`` (both relative or both absolute)."""
    if root == os.curdir:
        return path != os.pardir and not path.startswith(os.pardir + os.sep) and not os.path.isabs(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_image(
    cell: str, base: str, real_base: str, allow_absolute: bool, follow_symlinks: bool
) -> tuple[Path, str | None]:
    """(path as shown in reports, why it is refused or None). Never raises.

    ``base`` is the manifest's folder as given (normalised), so report paths stay as readable as
    the user's own argument; ``real_base`` is its realpath for the symlink check. Plain string
    operations (not Path objects) because this runs once per image of manifests of 100k rows.
    """
    raw = os.path.join(base, cell)
    shown = os.path.normpath(raw)
    if any(ord(c) < 32 or ord(c) == 127 for c in cell):
        return Path(shown), f"image path {cell!r} contains control characters"
    try:
        if os.path.isabs(cell):
            if not allow_absolute:
                return Path(shown), f"absolute image path not allowed: {cell} (use --allow-absolute)"
        elif not _inside(shown, base):
            return Path(shown), f"image path escapes the manifest's folder: {cell}"
        elif not follow_symlinks and not _inside(os.path.realpath(raw), real_base):
            why = f"image is a symbolic link to outside the manifest's folder: {cell} (use --follow-symlinks)"
            return Path(shown), why
        if not os.path.isfile(shown):
            why = f"image path is a folder: {shown}" if os.path.isdir(shown) else f"image not found: {shown}"
            return Path(shown), why
    except (OSError, ValueError) as exc:  # name too long, unencodable characters, ...
        return Path(shown), f"unusable image path {cell!r}: {exc}"
    return Path(shown), None


def read_manifest(
    path: str | Path,
    mapping: dict[str, str] | None = None,
    metadata_columns: list[str] | None = None,
    allow_absolute: bool = False,
    follow_symlinks: bool = False,
) -> Discovery:
    """Persons (first-seen order) and row problems from the manifest at ``path``.

    Raises ConfigError only for run-wide mistakes (see the module docstring); bad content never
    raises. A person all of whose rows are invalid is left out of ``persons`` (its problems stay).
    """
    path = Path(path)
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {where}: {exc.strerror or exc}") from exc
    data = data.removeprefix(_BOM)
    if not data.strip():
        raise ConfigError("manifest is empty")
    out = Discovery()
    lines = _decode_lines(data, where, out.problems)
    jsonl = path.name.lower().endswith(".jsonl")
    if not jsonl:
        first_text = next((n for n, t in lines if t.strip()), None)
        first_bad = (out.problems[0].line or 0) if out.problems else None
        if first_bad is not None and (first_text is None or first_bad < first_text):
            raise ConfigError(
                f"the manifest header (line {first_bad}) is not valid UTF-8",
                hint="save the manifest as UTF-8 (CSV UTF-8 in spreadsheet programs)",
            )
    columns, records = (_read_jsonl if jsonl else _read_csv)(lines, where, out.problems)
    if jsonl and not records:
        if out.problems:
            return out  # every line was broken: those are the findings, not a usage error
        raise ConfigError("manifest is empty")
    src_of, meta_cols = _resolve_columns(columns, mapping, metadata_columns)
    base = os.path.normpath(path.parent)
    real_base = os.path.realpath(base)

    def cell(rec: Record, name: str) -> object:
        return rec.get(src_of[name]) if name in src_of else None

    specs: dict[str, PersonSpec] = {}
    named: dict[str, tuple[str, int]] = {}  # person_id -> (first explicit name, its line)
    seen: dict[tuple[str, Path], int] = {}  # (person_id, image) -> first line
    for line, rec in records:
        at = f"{where}:{line}"

        def problem(msg: str, p: str = at, pid: str | None = None) -> None:
            out.problems.append(SourceProblem(p, ReasonCode.INVALID_ROW, msg, person_id=pid, line=line))

        pid, why = _person_id(cell(rec, "person_id"))
        if why:
            problem(why, pid=pid or None)
            continue
        try:
            name = _string("person_name", cell(rec, "person_name"))
            cells = _image_cells(cell(rec, "image"), cell(rec, "images"))
            meta = {k: v for k in meta_cols if (v := _scalar(k, cell(rec, k)))}
            opt = {k: (_scalar(k, cell(rec, k)) or None) for k in OPTIONAL_FIELDS}
        except _WrongType as exc:
            problem(str(exc), pid=pid)
            continue
        if name and pid in named and named[pid][0] != name:
            first_name, first_line = named[pid]
            problem(f"conflicting person_name {name!r} for {pid!r} (line {first_line} says {first_name!r})", pid=pid)
            continue
        if not cells:
            problem("missing image", pid=pid)
            continue
        if name and pid not in named:
            named[pid] = (name, line)
        spec = specs.get(pid)
        if spec is None:
            spec = specs[pid] = PersonSpec(person_id=pid, person_name=name or pid, metadata=meta, **opt)
        elif name and spec.person_name == pid:
            spec.person_name = name  # the first explicit name wins over the default
        for c in cells:
            img, why = _check_image(c, base, real_base, allow_absolute, follow_symlinks)
            if (pid, img) in seen:
                problem(f"duplicate row (same person_id and image as line {seen[(pid, img)]})", str(img), pid)
                continue
            seen[(pid, img)] = line
            if why:
                problem(why, str(img), pid)
            else:
                spec.images.append(img)
    out.persons = [s for s in specs.values() if s.images]
    return out
