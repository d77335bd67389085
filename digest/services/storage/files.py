"""Files only their owner may read: the database, backups, sent messages, exports.

They hold the instance's secret key, editors' password hashes, readers' addresses and
their signed links, so they are created mode 0600 whatever the process's umask (which
the library leaves alone: it belongs to whoever runs it). Folders made for them are 0700.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def _private(path: str, flags: int) -> int:
    """Open ``path`` as :func:`os.open` does, creating it 0600 and making it so if it was
    not: a file about to hold private data is nobody else's to read, even one that was."""
    descriptor = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


@overload
def open_private(path: Path | str, mode: Literal["w", "a", "x"] = "w",
                 **options: Any) -> TextIO: ...
@overload
def open_private(path: Path | str, mode: Literal["wb", "ab", "xb"], **options: Any
                 ) -> BinaryIO: ...
def open_private(path: Path | str, mode: str = "w", **options: Any) -> IO[Any]:
    """:func:`open` a file for writing, as a file only its owner may read (mode 0600)."""
    return open(path, mode, opener=_private, **options)


def create_private(path: Path) -> bool:
    """Create ``path`` empty and mode 0600 unless it exists; True if it was created.

    For files another library fills in (SQLite's database): made before it opens them,
    they keep the mode. A file that exists is left as it is.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return False
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
    finally:
        os.close(descriptor)
    return True


def private_folder(path: Path) -> None:
    """Make a folder (and its parents) that only its owner may enter, unless it exists."""
    path.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
