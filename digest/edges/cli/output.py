"""How a command prints rows: a table for people, or JSON or CSV for scripts.

Every command that lists things declares its columns once and hands its rows to
:func:`print_rows`; :func:`row_formats` gives it `--json` and `--csv`. JSON is one array
of objects keyed by the columns' names, with numbers, lists and nulls as they are; CSV
has a header row of the same names. A table on a terminal fits its width; anywhere else
(a pipe, a file, cron's mail) it is printed at its full width, so no cell is cut.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from digest.edges.cli.base import out

F = TypeVar("F", bound=Callable[..., Any])


class RowFormat(StrEnum):
    """How a listing is printed."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def _plain(value: Any) -> str:
    """A value as one table or CSV cell: lists joined with "; ", times to the second."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return "; ".join(_plain(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Column:
    """One column of a listing: its name in JSON and CSV, its heading in the table, and
    how a value reads as text in the table and in CSV (JSON keeps the value itself)."""

    key: str
    heading: str = ""
    show: Callable[[Any], str] = _plain
    # What the table shows for a value whose text is empty ("-", "never fetched"); CSV
    # and JSON leave such a cell empty, as scripts expect.
    placeholder: str = ""

    @property
    def title(self) -> str:
        """The table's heading for this column."""
        return self.heading or self.key.replace("_", " ")


def row_formats(func: F) -> F:
    """Give a listing command `--json` and `--csv`; it receives ``row_format``."""

    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, as_csv: bool, **kwargs: Any) -> Any:
        if as_json and as_csv:
            raise click.UsageError("--json and --csv are alternatives: give one of them.")
        chosen = RowFormat.JSON if as_json else RowFormat.CSV if as_csv else RowFormat.TABLE
        return func(*args, row_format=chosen, **kwargs)

    wrapper = click.option("--csv", "as_csv", is_flag=True,
                           help="Print the rows as CSV with a header row, for scripts "
                                "and spreadsheets.")(wrapper)
    wrapper = click.option("--json", "as_json", is_flag=True,
                           help="Print the rows as one JSON array of objects, for "
                                "scripts.")(wrapper)
    return wrapper  # type: ignore[return-value]


def print_table(table: Table, console: Console = out) -> None:
    """Print a rich table: fitted to a terminal, at its full width anywhere else."""
    if console.is_terminal:
        console.print(table)
        return
    wide = Measurement.get(console, console.options.update(max_width=1_000_000), table)
    Console(file=console.file, width=max(wide.maximum, 1), highlight=False,
            color_system=None).print(table)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def print_rows(columns: Sequence[Column], rows: Iterable[Mapping[str, Any]],
               row_format: RowFormat, *, empty: str = "") -> None:
    """Print ``rows`` (each a mapping from column key to value) in ``row_format``.

    A table with no rows prints ``empty`` instead, when given; JSON prints ``[]`` and CSV
    its header row, so a script reads an empty listing like any other.
    """
    rows = list(rows)
    if row_format is RowFormat.JSON:
        import json
        click.echo(json.dumps([{c.key: _json_value(row.get(c.key)) for c in columns}
                               for row in rows], ensure_ascii=False, indent=2))
        return
    if row_format is RowFormat.CSV:
        import csv

        from subscribers.imports import spreadsheet_safe
        writer = csv.writer(sys.stdout)
        writer.writerow([c.key for c in columns])
        for row in rows:
            # Feed names, titles and errors are others' text: a cell a spreadsheet would
            # run as a formula gets the same quote as in a subscribers export.
            writer.writerow([spreadsheet_safe(c.show(row.get(c.key))) for c in columns])
        return
    if not rows and empty:
        out.print(empty, markup=False)
        return
    table = Table(*(c.title for c in columns))
    for row in rows:
        # Text, not markup: a cell may hold a feed's own text, whose invisible or
        # control characters are shown as escapes rather than sent to the terminal.
        table.add_row(*(Text(visible(c.show(row.get(c.key)) or c.placeholder))
                        for c in columns))
    print_table(table)


def visible(text: str) -> str:
    """``text`` with each character a terminal would act on or hide (escape sequences,
    bidirectional overrides, zero-width marks) written as its escape, e.g. ``\\u202e``."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
