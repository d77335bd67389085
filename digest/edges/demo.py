"""`digest demo`: the whole job, offline, on bundled sample feeds, in a folder of its own.

The sample feeds are served from a loopback HTTP server, so the demo goes through the
same fetch → parse → store path as a real run. What it leaves behind is a working desk:
its settings in ``digest.toml`` beside ``demo.db``, so that ``digest serve`` on them
groups, names and signs as the email did, and its pictures where they stay (``digest
serve`` serves them to the email; ``preview.html`` finds its copies beside it). It
deletes only what an earlier demo wrote in that folder, and refuses, naming the file,
when anything else is in its way.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import shlex
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console

from digest.core.rendering import template_dir
from digest.errors import InvalidInputError
from digest.services.building.drafts import draft_issue, write_preview_files
from digest.services.feeds.collect import add_feed, collect
from digest.services.pipeline import RunEvents, RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.files import open_private, private_folder
from digest.services.storage.models import DeliveryStatus
from digest.settings import DEFAULT_CONFIG_NAME, load_settings, settings_toml, sqlite_url
from subscribers.lists import create_list, edit_list
from subscribers.subscriptions import add_subscriber, remove_subscriber

SAMPLES = Path(__file__).resolve().parent.parent / "samples"  # digest/samples
SAMPLE_FEEDS = {
    "mideast.xml": ("Middle East Desk", "application/rss+xml; charset=utf-8"),
    "europe.atom": ("Europe Desk", "application/atom+xml; charset=utf-8"),
    "arabic.xml": ("القسم العربي", "application/rss+xml; charset=utf-8"),
    "hostile.xml": ("Wire Service", "application/rss+xml; charset=utf-8"),
}
DEMO_LIST = "weekly"
DEMO_SUBSCRIBERS = [
    ("Alice.Reader@Example.org", "Alice"),
    ("bob@example.net", ""),
    ("layla@example.com", "ليلى"),
    ("dana@example.org", "Dana"),
]
LONG_TEXT = " ".join(["The desk kept writing long after the point was made."] * 40)

ProgressFactory = Callable[..., AbstractContextManager[Callable[[int, int], None]]]


def render_sample(name: str, base: str, now: datetime, images: str = "") -> bytes:
    """A sample feed with its placeholders filled: dates relative to now, the server's URL
    (``base``) and where its pictures are (``images``)."""
    text = (SAMPLES / name).read_text(encoding="utf-8")
    for days in range(0, 31):
        when = now - timedelta(days=days, hours=2)
        text = text.replace(f"{{{{days_ago {days}}}}}", email.utils.format_datetime(when))
        text = text.replace(f"{{{{iso_days_ago {days}}}}}",
                            when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return (text.replace("{{base}}", base).replace("{{images}}", images or f"{base}/img")
            .replace("{{long_text}}", LONG_TEXT).encode("utf-8"))


def sample_png(width: int, height: int, name: str) -> bytes:
    """A PNG of ``width`` × ``height`` in two bands of a colour picked from ``name`` (the
    demo's pictures in templates/web/static/demo were made by it)."""
    hue = zlib.crc32(name.encode()) % 4
    top, bottom = [((38, 70, 83), (42, 157, 143)), ((231, 111, 81), (244, 162, 97)),
                   ((29, 53, 87), (69, 123, 157)), ((106, 76, 147), (178, 140, 212))][hue]
    rows = b"".join(b"\x00" + bytes(top if y < height * 2 // 3 else bottom) * width
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 drops connections under concurrent fetches
    daemon_threads = True


class SampleServer:
    """Serve the sample feeds on 127.0.0.1 on a free port, with ETags; their pictures
    point at ``images`` (by default a folder of this server that has none)."""

    def __init__(self, now: datetime, images: str = "") -> None:
        self.now = now
        self.images = images
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/").split("?")[0]
                if name not in SAMPLE_FEEDS:
                    self.send_error(404)
                    return
                body = render_sample(name, server.base, server.now, server.images)
                etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", SAMPLE_FEEDS[name][1])
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def url(self, name: str) -> str:
        """The URL a sample feed is served at."""
        return f"{self.base}/{name}"

    def __enter__(self) -> SampleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


DATABASE = "demo.db"
MANIFEST = ".digest-demo.json"  # what the demo wrote, so that a rerun removes only that
# Every place the demo writes to; a file there that it did not write stops it.
OWN_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f"{DATABASE}-journal",
             DEFAULT_CONFIG_NAME, "preview.html", "preview.txt")
OWN_FOLDERS = ("images", "outbox")
PICTURES = template_dir() / "web" / "static" / "demo"  # served by `digest serve` at
PICTURES_PATH = "static/demo/"                           # this path of base_url

# The desk the demo sets up, written to its digest.toml: `digest serve` and every other
# command run on that file group, name and sign exactly as the demo's email did.
DEMO_SETTINGS: dict[str, Any] = {
    # Where `digest serve` answers by default: the email's links and pictures work there.
    "base_url": "http://127.0.0.1:8000",
    "transport": "outbox",
    "from_name": "The Recap Desk",
    "from_email": "digest@recap-digest.example",
    "postal_address": "The Recap Desk · 1 Example Street · Example City",
    "keyword_order": ["Syria", "Iran", "Ukraine"],
    "keyword_aliases": {"Türkiye": "Turkey", "سوريا": "Syria", "إيران": "Iran",
                        "لبنان": "Lebanon", "العراق": "Iraq", "اليمن": "Yemen"},
    "keyword_rules": {"Israel": ["Golan", "Knesset"]},
}


def demo_settings(directory: Path) -> dict[str, Any]:
    """The settings the demo writes for ``directory``: paths in it are absolute, so that
    ``--config DIRECTORY/digest.toml`` works from any folder."""
    return {"database_url": sqlite_url(directory / DATABASE),
            "outbox_dir": str(directory / "outbox"), **DEMO_SETTINGS}


def _digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files_in_the_way(directory: Path) -> Iterator[Path]:
    """Every file (or link, or anything not a folder) in the places the demo writes to."""
    for name in OWN_FILES:
        path = directory / name
        if path.exists() or path.is_symlink():
            yield path
    for name in OWN_FOLDERS:
        folder = directory / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            yield folder
        elif folder.is_dir():
            yield from sorted(p for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())


def _recorded(directory: Path) -> dict[str, str | None]:
    """What an earlier demo wrote here, by path: its digest (None: the database, which
    the web app goes on changing and stays the demo's)."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(k): v for k, v in files.items()} if isinstance(files, dict) else {}


def _written_here(path: Path, directory: Path, recorded: dict[str, str | None]) -> bool:
    """Whether ``path`` is as an earlier demo left it."""
    if path.is_symlink() or not path.is_file():
        return False  # the demo writes neither links nor anything but plain files
    name = path.relative_to(directory).as_posix()
    if name.startswith(f"{DATABASE}-"):
        name = DATABASE  # SQLite's companions belong to the database
    if name not in recorded:
        return False
    if name == DATABASE:  # the one file recorded without a digest
        return True
    # Anything else must match its digest: a manifest copied or edited by hand can't
    # make the demo take a file of the user's for its own.
    return recorded[name] is not None and recorded[name] == _digest_of(path)


def shown_path(path: Path, cwd: Path) -> str:
    """``path`` for a message or a command line: relative to ``cwd`` when inside it."""
    try:
        text = str(path.relative_to(cwd)) or "."
    except ValueError:
        text = str(path)
    return text


def clear_folder(directory: Path, *, cwd: Path) -> None:
    """Make ``directory`` ready for the demo: remove what an earlier demo wrote there, or
    refuse, changing nothing, when a file in the demo's places was not written by it (or
    was changed since)."""
    recorded = _recorded(directory)
    found = list(_files_in_the_way(directory))
    foreign = [p for p in found if not _written_here(p, directory, recorded)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InvalidInputError(
            f"{shown_path(foreign[0], cwd)}{more} is in the demo's way: the demo did not "
            "write it (its desk may have, after it), or it changed since. The demo deletes "
            "nothing it did not write; nothing was changed",
            hint="move it away (or delete the demo's folder, if nothing in it is yours to "
                 "keep), or run the demo in another folder: digest demo --dir OTHER-FOLDER")
    for path in found:
        path.unlink()
    for name in OWN_FOLDERS:
        folder = directory / name
        if folder.is_dir():
            for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
                sub.rmdir()  # empty now: every file under it was the demo's
            folder.rmdir()
    (directory / MANIFEST).unlink(missing_ok=True)


def _record(directory: Path) -> None:
    """Write down what the demo wrote (everything now in its places: they were cleared
    before it started), so that the next demo removes exactly that."""
    files: dict[str, str | None] = {}
    for path in _files_in_the_way(directory):
        name = path.relative_to(directory).as_posix()
        if name.startswith(f"{DATABASE}-"):
            continue  # SQLite's, come and gone with the database
        files[name] = None if name == DATABASE else _digest_of(path)
    with open_private(directory / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump({"written_by": "digest demo", "files": files}, handle, indent=1,
                  ensure_ascii=False)


def digest_command(argv0: str, *, cwd: Path, which: str | None, executable: str) -> str:
    """How to run this same ``digest`` again from ``cwd``, for a command line to copy:
    ``digest`` when that name on the PATH is this program (a pip or pipx install, an
    activated virtualenv), else its path (``.venv/bin/digest`` in a checkout), or this
    Python with ``-m digest``."""
    script = Path(argv0)
    if script.name == "__main__.py":  # python -m digest
        return shlex.quote(shown_path(Path(os.path.abspath(executable)), cwd)) + " -m digest"
    if script.stem != "digest":
        return "digest"  # not started as a command (a test runner): the usual name
    here = Path(os.path.abspath(cwd / script))
    if which is not None and Path(which).resolve() == here.resolve():
        return "digest"
    return shlex.quote(shown_path(here, cwd))


@contextmanager
def _no_progress(description: str, *, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    yield lambda done, total: None


class _Progress(RunEvents):
    """The demo's part in a run: it only shows progress."""

    def __init__(self, update: Callable[[int, int], None]) -> None:
        self.update = update

    def progress(self, done: int, total: int) -> None:
        self.update(done, total)


def _write_settings(directory: Path) -> Path:
    path = directory / DEFAULT_CONFIG_NAME
    text = settings_toml(demo_settings(directory), comment=(
        "The demo's settings (`digest demo` wrote them, and rewrites them when run again).\n"
        "Commands run in this folder read them; from elsewhere, pass --config with this "
        "file's path."))
    with open_private(path, "w", encoding="utf-8") as handle:  # as any settings file
        handle.write(text)
    return path


def _copy_pictures(directory: Path) -> list[Path]:
    """Copy the sample pictures beside preview.html, which loads them from there."""
    folder = directory / "images"
    folder.mkdir()
    copies = []
    for picture in sorted(PICTURES.glob("*.png")):
        copies.append(Path(shutil.copyfile(picture, folder / picture.name)))
    return copies


def run_demo(directory: Path, *, console: Console, interactive: bool = False,
             progress: ProgressFactory = _no_progress, command: str = "digest") -> list[Path]:
    """Run the demo into ``directory``; return the files it wrote.

    ``command`` is how the user runs ``digest``, for the next commands it prints (paths
    in them are relative to the working folder).
    """
    cwd = Path.cwd().resolve()
    directory = (cwd / directory).resolve()
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"{shown_path(directory, cwd)} is a file, not a folder",
                                hint="digest demo --dir NEW-FOLDER")
    clear_folder(directory, cwd=cwd)
    private_folder(directory)  # its database holds the secret key that signs links
    try:
        return _run(directory, console=console, interactive=interactive, progress=progress,
                    command=command, cwd=cwd)
    finally:
        _record(directory)


def _run(directory: Path, *, console: Console, interactive: bool,  # noqa: PLR0913 - run_demo's, passed on
         progress: ProgressFactory, command: str, cwd: Path) -> list[Path]:
    config = _write_settings(directory)
    # The demo runs on the file it wrote, and on nothing of this machine's DIGEST_*.
    settings = load_settings(config, env={}, cwd=directory).settings
    pictures = _copy_pictures(directory)
    now = utcnow()
    ctx = Context.open(settings)
    served = ctx.url(PICTURES_PATH)
    try:
        with SampleServer(now, images=served.rstrip("/")) as server:
            for name, (title, _) in SAMPLE_FEEDS.items():
                add_feed(ctx.db, server.url(name), title)
            create_list(ctx.db, DEMO_LIST, "The Weekly Recap")
            edit_list(ctx.db, DEMO_LIST, logo_url=f"{served}masthead.png",
                      logo_alt="The Weekly Recap", logo_size=(1200, 160))
            for address, person in DEMO_SUBSCRIBERS:
                add_subscriber(ctx.db, DEMO_LIST, address, name=person, source="demo")
            remove_subscriber(ctx.db, DEMO_LIST, "dana@example.org")
            console.print(f"Serving {len(SAMPLE_FEEDS)} sample feeds at {server.base}; "
                          f"list {DEMO_LIST!r} has {len(DEMO_SUBSCRIBERS)} subscribers "
                          "(one of them unsubscribed).", markup=False)
            with progress("Fetching feeds", enabled=interactive) as update:
                fetched = [0]

                def on_fetched(_result: object) -> None:
                    fetched[0] += 1
                    update(fetched[0], len(SAMPLE_FEEDS))

                report = collect(ctx.db, settings, now=now, on_fetched=on_fetched)
        console.print(f"Collected {report.new} entries from {len(report.feeds)} feeds.")
        for feed in report.feeds:
            if feed.error or feed.warning:
                console.print(f"  {feed.url}: {feed.error or feed.warning}", markup=False)
        draft = draft_issue(ctx, DEMO_LIST, now=now)
        assert draft is not None, "the sample feeds always give an issue"
        preview_html, preview_txt = directory / "preview.html", directory / "preview.txt"
        write_preview_files(ctx, draft, preview_html, preview_txt)
        # The email loads its pictures from `digest serve`, as a reader's would from a
        # desk's server; the preview, a file opened in a browser whenever, loads the
        # copies beside it.
        preview_html.write_text(preview_html.read_text(encoding="utf-8")
                                .replace(served, "images/"), encoding="utf-8")
        sections = ", ".join(f"{s.title} ({len(s.entries)})" for s in draft.sections)
        console.print(f"Issue {draft.number}: {draft.rendered.subject!r}", markup=False)
        console.print(f"Sections: {sections}", markup=False)
        with progress("Sending", enabled=interactive) as update:
            result = run_list(ctx, RunRequest(DEMO_LIST, collect_first=False),
                              _Progress(update), now=now)
        assert result.send is not None
        counts = result.send.counts
        console.print(f"Sent: {counts[DeliveryStatus.ACCEPTED]} accepted, "
                      f"{counts[DeliveryStatus.FAILED]} failed, "
                      f"{counts[DeliveryStatus.SKIPPED]} skipped.")
        # The outbox was empty when the demo began: every message in it is this issue's.
        emails = sorted((directory / "outbox").rglob("*.eml"))
    finally:
        ctx.close()
    written = [directory / DATABASE, config, preview_html, preview_txt, *pictures, *emails]
    _tell(console, directory, cwd, html_bytes=draft.rendered.html_bytes, pictures=len(pictures),
          emails=emails)
    run = f"{command} --config {shlex.quote(shown_path(config, cwd))}"
    console.print(
        "\nNext, on the demo's settings and database:\n"
        f"  {run} editors add editor # an editor, to sign in at {ctx.url('login')}\n"
        f"  {run} serve              # the web app at {ctx.url('')}: the archive, the "
        "email's links and pictures",
        soft_wrap=True, markup=False, highlight=False)
    return written


def _tell(console: Console, directory: Path, cwd: Path, *, html_bytes: int,  # noqa: PLR0913 - what the listing names
          pictures: int, emails: list[Path]) -> None:
    """List the files the demo wrote, each with what it is."""
    console.print(f"\nFiles written by the demo, in {shown_path(directory, cwd)}:",
                  soft_wrap=True, markup=False)

    def say(name: str, what: str) -> None:
        console.print(f"  {name}  ({what})", soft_wrap=True, markup=False, highlight=False)

    say(DATABASE, "a fresh SQLite database: feeds, entries, the issue, its deliveries")
    say(DEFAULT_CONFIG_NAME, "the demo's settings: keyword order, aliases and rules, the "
                             "sender")
    say("preview.html", f"the issue as HTML, {html_bytes:,} bytes; open it in a browser")
    say("preview.txt", "the issue's plain-text part")
    say("images/", f"{pictures} sample pictures, which preview.html shows")
    for path in emails:
        say(str(path.relative_to(directory)), "one email as sent; open it in a mail client")
