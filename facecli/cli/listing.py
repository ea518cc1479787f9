"""Output of the listing commands (`runs list`, `collections list`, `persons list`, `models list`):
a table on the terminal, one JSON object with --json, or CSV (a header, one row per entry) with --csv.

Times are ISO-8601 with a time zone everywhere they are printed (tables, --json, --csv), e.g.
``2026-12-01T12:44:41+00:00``; the run ledger keeps epoch seconds internally.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from facecli.errors import ConfigError
from facecli.pipeline.report import write_csv


def iso_time(ts: float | None) -> str | None:
    """Epoch seconds -> ISO-8601 in UTC with its offset (``2026-12-01T12:44:41+00:00``); None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def check_format(json_out: bool, csv_out: bool) -> None:
    """--json and --csv are two answers to one question: refuse both at once (exit 2)."""
    if json_out and csv_out:
        raise ConfigError("--json and --csv: choose one")


def print_csv(columns: list[str] | tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """The rows as CSV on stdout (cells as in the CSV report: lists of codes joined with ';', nested
    values as compact JSON, formula-like text neutralised)."""
    write_csv(sys.stdout, columns, rows)
    sys.stdout.flush()


def columns_of(base: list[str] | tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    """``base`` then every other key the rows have, in order of first appearance (a server's extra
    person fields), so no field of the --json output is missing from the CSV."""
    cols = list(base)
    for row in rows:
        cols += [k for k in row if k not in cols]
    return cols


def time_value(value: Any) -> Any:
    """A time a target gave: epoch seconds (a number) as ISO-8601; text (the engines' ISO times) as is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso_time(float(value))
    return value
