"""The person-id and collection-name rules: one place, used by every source, sink and the server.

Person id: 1 to 128 ASCII characters, letters, digits, space and ``_ . @ : + -``; no leading or
trailing space, no leading ``-`` (it would read as an option on the command line), and not ``.``
or ``..`` (a URL path or a file system would resolve those to another resource). So no ``/`` or
``\\`` (ids become file and URL path segments in targets), no control characters and no non-ASCII
letters (remote targets disagree on Unicode normalisation, so an id could silently fail to match
itself).

Collection name: 1 to 64 characters, letters, digits and ``_ . -``; not ``.`` or ``..`` and not a
name Windows reserves for devices (``CON``, ``NUL``, ``COM1`` ..., with or without an extension),
because collection names become file and URL path segments too.
"""

from __future__ import annotations

import re
from urllib.parse import quote

PERSON_ID_MAX = 128
COLLECTION_NAME_MAX = 64

PERSON_ID_RE = re.compile(r"[A-Za-z0-9_.@:+](?:[A-Za-z0-9 _.@:+-]{0,126}[A-Za-z0-9_.@:+-])?")
_ID_CHARS = re.compile(r"[A-Za-z0-9 _.@:+-]")
COLLECTION_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DOT_SEGMENTS = frozenset({".", ".."})
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def validate_person_id(pid: object) -> str | None:
    """Why ``pid`` is refused (a message for the report), or None when it is acceptable."""
    if not isinstance(pid, str):
        return f"person_id must be a string, got {type(pid).__name__}"
    if not pid:
        return "empty person_id"
    if pid in _DOT_SEGMENTS:
        return f"person_id {pid!r} is a path segment ('.' and '..' are refused)"
    if PERSON_ID_RE.fullmatch(pid):
        return None
    if len(pid) > PERSON_ID_MAX:
        return f"person_id longer than {PERSON_ID_MAX} characters ({len(pid)})"
    if pid != pid.strip(" "):
        return f"person_id {pid!r} has leading or trailing spaces"
    bad = "".join(dict.fromkeys(c for c in pid if not _ID_CHARS.fullmatch(c)))
    if not bad and pid.startswith("-"):
        return f"person_id {pid!r} starts with '-' (it would read as a command-line option)"
    return f"person_id {pid!r} has characters targets refuse ({bad!r}); allowed: letters, digits, space, _ . @ : + -"


def validate_collection_name(name: object) -> str | None:
    """Why ``name`` is refused as a collection name, or None when it is acceptable."""
    if not isinstance(name, str):
        return f"collection name must be a string, got {type(name).__name__}"
    if not name:
        return "empty collection name"
    if len(name) > COLLECTION_NAME_MAX:
        return f"collection name longer than {COLLECTION_NAME_MAX} characters ({len(name)})"
    if not COLLECTION_NAME_RE.fullmatch(name):
        return f"invalid collection name {name!r}: use letters, digits, '_', '.' or '-'"
    if name in _DOT_SEGMENTS:
        return f"invalid collection name {name!r}: '.' and '..' are path segments"
    if name.split(".")[0].upper() in _WINDOWS_DEVICES:
        return f"invalid collection name {name!r}: {name.split('.')[0].upper()} is a reserved device name"
    return None


def url_segment(value: str) -> str:
    """``value`` percent-encoded as exactly one URL path segment (``/ ? # %`` and every reserved
    character encoded). Raises ValueError for ``''``, ``.`` and ``..``, which a URL path (and
    httpx) would resolve to another resource: ``/person/..`` is ``/``."""
    if not isinstance(value, str) or value in ("", *_DOT_SEGMENTS):
        raise ValueError(f"{value!r} cannot be a URL path segment")
    return quote(value, safe="")
