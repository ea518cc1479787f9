"""Capture what the image libraries say while one file is decoded, so it lands in that item's message.

Pillow reports damaged-but-readable files through three channels that all end on stderr by default:
Python warnings ("Truncated File Read", "Corrupt EXIF data", ...), the ``PIL`` logger, and libtiff's
own C error/warning handlers ("LZWDecode: Using code not yet in table"). A run over thousands of
photos then prints lines nobody can tie to a file. :func:`captured` collects all three for the
current thread only (decoding runs in several threads at once), leaving other threads' warnings and
everything outside a capture as before.

Why not ``warnings.catch_warnings``: it swaps process-wide state and is not thread-safe (two
overlapping blocks in two threads leave the filters of one installed for good). Instead one hook is
installed once and routes by a thread-local sink.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

_local = threading.local()
_install_lock = threading.Lock()
_installed = False
#: Pillow's own pixel guard; facecli applies --max-megapixels itself, so this one is noise.
_IGNORED = (Image.DecompressionBombWarning,)


def _sink() -> list[str] | None:
    return getattr(_local, "sink", None)


#: A hostile file can make libtiff complain about each of thousands of tags: keep the first few.
_MAX_MESSAGES, _MAX_CHARS = 8, 300
_MORE = "(more library messages left out)"


def _add(text: str) -> None:
    sink = _sink()
    if sink is None:
        return
    text = " ".join(str(text).split())  # one line; libtiff messages end with newlines and tabs
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:_MAX_CHARS])  # bytes from the file
    if not text or text in sink:
        return
    if len(sink) < _MAX_MESSAGES:
        sink.append(text)
    elif sink[-1] != _MORE:
        sink.append(_MORE)


@contextmanager
def captured() -> Iterator[list[str]]:
    """Collect the library messages emitted by this thread inside the block (deduplicated, in order)."""
    _install()
    outer = _sink()
    sink: list[str] = []
    _local.sink = sink
    _forget_shown()
    try:
        yield sink
    finally:
        _local.sink = outer
        if outer is not None:
            outer.extend(m for m in sink if m not in outer)


#: Modules whose warnings are about the file being decoded.
_LIBRARY_MODULES = ("PIL.", "pillow_heif", "facecli.imaging.")


def _forget_shown() -> None:
    """The "default" warning action shows a message once per code location per process (the
    module's ``__warningregistry__``); forget that for the image libraries so that the second file
    with the same defect gets the message too. Other modules' registries are left alone."""
    for name, module in list(sys.modules.items()):
        if name.startswith(_LIBRARY_MODULES):
            registry = getattr(module, "__warningregistry__", None)
            if registry:
                registry.clear()


# --------------------------------------------------------------------------- hooks


def _install() -> None:
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        _hook_warnings()
        logging.getLogger("PIL").addHandler(_PillowLogHandler())
        _hook_libtiff()
        _installed = True


def _hook_warnings() -> None:
    # warnings.catch_warnings (pytest wraps every test in one) swaps ``showwarning`` and
    # ``_showwarnmsg_impl`` but not ``_showwarnmsg``, the function every shown warning goes through.
    original = warnings._showwarnmsg  # type: ignore[attr-defined]

    def _showwarnmsg(msg: warnings.WarningMessage) -> None:
        if _sink() is None:
            original(msg)
        elif not issubclass(msg.category, _IGNORED):
            _add(str(msg.message))

    warnings._showwarnmsg = _showwarnmsg  # type: ignore[attr-defined]


class _PillowLogHandler(logging.Handler):
    """Pillow logs a few problems at WARNING/ERROR: inside a capture they go to the item; outside,
    to wherever they went before (logging's last-resort stderr handler when nothing is configured)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if _sink() is not None:
            _add(record.getMessage())
        elif not logging.getLogger().handlers and logging.lastResort is not None:
            if record.levelno >= logging.lastResort.level:
                logging.lastResort.handle(record)


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_libtiff_handlers: list = []  # keeps the ctypes callbacks alive


def _hook_libtiff() -> None:
    """Route the libtiff that Pillow loaded (found in /proc/self/maps) through :func:`_add`.

    The handlers receive ``va_list`` as a pointer, which vsnprintf takes as is on x86-64 and
    aarch64 Linux; elsewhere libtiff keeps its default handlers (stderr)."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64"):
        return
    try:
        from PIL import _imaging  # noqa: F401  (loads libtiff)

        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1]), None)
        if path is None:
            return
        libtiff = ctypes.CDLL(path)
        libc = ctypes.CDLL(None)
        vsnprintf = libc.vsnprintf
        vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        vsnprintf.restype = ctypes.c_int
    except (OSError, AttributeError, ImportError):
        return

    def make(kind: str):
        def handler(module: bytes | None, fmt: bytes | None, ap: int | None) -> None:
            try:
                buf = ctypes.create_string_buffer(1024)
                vsnprintf(buf, len(buf), fmt or b"", ap)
                text = buf.value.decode("utf-8", "replace")
                if _sink() is not None:
                    _add(f"libtiff: {text}")
                else:  # libtiff's default format
                    where = f"{module.decode('utf-8', 'replace')}: " if module else ""
                    sys.stderr.write(f"{where}{kind}{text}.\n")
            except Exception:  # an exception must never cross back into C
                pass

        return _HANDLER(handler)

    for setter, kind in (("TIFFSetWarningHandler", "Warning, "), ("TIFFSetErrorHandler", "")):
        fn = getattr(libtiff, setter, None)
        if fn is None:
            continue
        callback = make(kind)
        fn.argtypes = [_HANDLER]
        fn.restype = ctypes.c_void_p
        fn(callback)
        _libtiff_handlers.append(callback)
