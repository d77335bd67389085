"""What the tool can always rebuild and keeps between runs to start faster: compiled
templates and inlined emails, in a private folder of the user's cache.

Nothing here is ever the only copy of anything: a missing, unreadable or foreign folder
means no cache, never an error. The folder must belong to the user and be writable by
nobody else, because what is read back from it is run (compiled templates) or mailed
(inlined HTML).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

APP_FOLDER = "recap-digest"
OFF = "off"
# A cache never grows past this many inlined emails; the least recently made go first.
MAX_INLINED = 256


def cache_folder(setting: str) -> Path | None:
    """The cache folder the ``cache_dir`` setting names, made if need be (None: off, or
    not safe or possible to use)."""
    if setting.strip().lower() == OFF:
        return None
    if setting:
        folder = Path(setting).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
        folder = Path(base) / APP_FOLDER
    return private_folder(folder)


def private_folder(folder: Path) -> Path | None:
    """``folder``, made with owner-only permissions if missing; None (and why, logged)
    when it cannot be made or someone other than this user could write into it."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as e:
        log.info("no cache: cannot make %s (%s)", folder, e.strerror or e)
        return None
    if not stat.S_ISDIR(info.st_mode):
        log.warning("no cache: %s is not a folder", folder)
        return None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("no cache: %s belongs to someone else or others may write in it; "
                    "set cache_dir to a folder of your own", folder)
        return None
    return folder


def template_cache(folder: Path | None) -> Any:
    """Jinja2's cache of compiled templates in ``folder``/templates (None: no cache).
    Jinja2 checks each template's source and its own version before it uses an entry."""
    if folder is None:
        return None
    templates = private_folder(folder / "templates")
    if templates is None:
        return None
    import jinja2

    class TemplateCache(jinja2.FileSystemBytecodeCache):
        """Jinja2's own, except that an unreadable entry is a miss and an unwritable
        folder means nothing kept: the template is compiled again, never an error."""

        def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            try:
                super().load_bytecode(bucket)
            except Exception as e:  # a truncated or foreign file: compile it again
                log.debug("compiled template not reused: %s", e)
                bucket.reset()

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError as e:
                log.debug("compiled template not kept: %s", e)

    return TemplateCache(str(templates))


class FileCache:
    """Text values by key, one file each, written whole or not at all. Each file starts
    with its value's SHA-256: a damaged file is a miss, never a wrong value."""

    def __init__(self, folder: Path, *, salt: str = "", limit: int = MAX_INLINED) -> None:
        self.folder = folder
        self.salt = salt
        self.limit = limit

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.salt}\0{key}".encode("utf-8", "surrogatepass"))
        return self.folder / f"{digest.hexdigest()}.txt"

    def get(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        try:
            check, _, value = self._path(key).read_text(encoding="utf-8").partition("\n")
        except (OSError, UnicodeDecodeError):
            return None
        if check != _checksum(value):
            return None
        return value

    def put(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (silently nothing when the folder is not
        writable), keeping at most ``limit`` values."""
        path = self._path(key)
        try:
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=self.folder,
                                             suffix=".tmp", delete=False) as out:
                out.write(f"{_checksum(value)}\n{value}")
            os.replace(out.name, path)
            self._prune()
        except OSError as e:
            log.debug("cache not written: %s", e)

    def _prune(self) -> None:
        entries = list(self.folder.glob("*.txt"))
        if len(entries) <= self.limit:
            return

        def made(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0
        for old in sorted(entries, key=made)[:len(entries) - self.limit]:
            old.unlink(missing_ok=True)


def _checksum(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def inline_cache(folder: Path | None) -> FileCache | None:
    """Inlined emails in ``folder``/inlined, keyed by what premailer was given and the
    versions of premailer and the libraries that shape its output."""
    if folder is None:
        return None
    inlined = private_folder(folder / "inlined")
    if inlined is None:
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        salt = ",".join(f"{name}={version(name)}" for name in ("premailer", "cssutils", "lxml"))
    except PackageNotFoundError:
        return None
    return FileCache(inlined, salt=salt)
