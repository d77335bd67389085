"""Fuzz the CSV import: any bytes as a file, imported into a list of a fresh SQLite database.

Run: ``.venv/bin/python -m tests.fuzz.fuzz_imports -max_total_time=30`` (``make fuzz``).
Holds: nothing but a DigestError leaves import_csv; each row is counted once at most and
each rejected row names a line of the file; importing the same file again adds and
changes nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from digest.errors import DigestError
    from digest.services.storage.context import Context
    from digest.settings import load_settings
    from subscribers.imports import import_csv
    from subscribers.lists import create_list

# One database for the run, made afresh (make fuzz puts it under .cache/fuzz).
FOLDER = Path(os.environ.get("DIGEST_FUZZ_WORK", tempfile.gettempdir())) / "fuzz-imports"
shutil.rmtree(FOLDER, ignore_errors=True)
FOLDER.mkdir(parents=True)
SOURCE = FOLDER / "people.csv"


def _context() -> Context:
    base = load_settings(env={}, cwd=FOLDER).settings
    settings = base.replace(database_url=f"sqlite:///{FOLDER / 'fuzz.db'}",
                            outbox_dir=str(FOLDER / "outbox"), secret_key="fuzz",
                            base_url="https://digest.example")
    ctx = Context.open(settings)
    create_list(ctx.db, "fuzz")
    return ctx


CTX = _context()


def one_input(data: bytes) -> None:
    """Check one input."""
    SOURCE.write_bytes(data)
    try:
        report = import_csv(CTX.db, "fuzz", SOURCE)
    except DigestError:
        return
    lines = len(data.splitlines()) + 1  # the file is read with \r, \n and \r\n as ends
    counted = report.added + report.updated + report.unchanged + report.suppressed
    assert counted + len(report.rejected) <= report.rows, report
    assert all(1 <= line <= lines for line, _ in report.rejected), report.rejected
    again = import_csv(CTX.db, "fuzz", SOURCE)
    assert (again.added, again.updated) == (0, 0), (report, again)


def main() -> None:
    """Fuzz until libFuzzer's flags (-max_total_time, -runs) say stop."""
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
