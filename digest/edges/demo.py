"""`digest demo`: the whole job, offline, on bundled sample feeds and a fresh SQLite file.

The sample feeds are served from a loopback HTTP server, so the demo goes through the
same fetch → parse → store path as a real run.
"""

from __future__ import annotations

import email.utils
import re
import shutil
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rich.console import Console

from digest.services.building.drafts import draft_issue, write_preview_files
from digest.services.feeds.collect import add_feed, collect
from digest.services.pipeline import RunEvents, RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import DeliveryStatus
from digest.settings import load_settings
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


def render_sample(name: str, base: str, now: datetime) -> bytes:
    """A sample feed with its placeholders filled: dates relative to now, the server URL."""
    text = (SAMPLES / name).read_text(encoding="utf-8")
    for days in range(0, 31):
        when = now - timedelta(days=days, hours=2)
        text = text.replace(f"{{{{days_ago {days}}}}}", email.utils.format_datetime(when))
        text = text.replace(f"{{{{iso_days_ago {days}}}}}",
                            when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return text.replace("{{base}}", base).replace("{{long_text}}", LONG_TEXT).encode("utf-8")


_PICTURE = re.compile(r"img/([a-z-]+)-(\d{2,4})x(\d{2,4})\.png")


def sample_png(width: int, height: int, name: str) -> bytes:
    """A PNG of ``width`` × ``height`` in two bands of a colour picked from ``name``."""
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
    """Serve the sample feeds on 127.0.0.1 on a free port, with ETags."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/").split("?")[0]
                picture = _PICTURE.fullmatch(name)
                if picture:  # /img/NAME-WxH.png: a plain picture of that size
                    body = sample_png(int(picture[2]), int(picture[3]), picture[1])
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if name not in SAMPLE_FEEDS:
                    self.send_error(404)
                    return
                body = render_sample(name, server.base, server.now)
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


DEMO_CONFIG = {
    "keyword_order": "Syria,Iran,Ukraine",
    "transport": "outbox",
    "from_name": "The Recap Desk",
    "from_email": "digest@recap-digest.example",
    "postal_address": "The Recap Desk · 1 Example Street · Example City",
}


def demo_settings_overrides(directory: Path) -> dict[str, str]:
    """The settings the demo runs with, as command-line style overrides."""
    return {**DEMO_CONFIG, "database_url": f"sqlite:///{directory / 'demo.db'}",
            "outbox_dir": str(directory / "outbox")}


def _fresh(directory: Path) -> None:
    for name in ("demo.db", "demo.db-wal", "demo.db-shm"):
        (directory / name).unlink(missing_ok=True)
    for old in (directory / "outbox").glob(f"{DEMO_LIST}-*"):
        shutil.rmtree(old)


@contextmanager
def _no_progress(description: str, *, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    yield lambda done, total: None


class _Progress(RunEvents):
    """The demo's part in a run: it only shows progress."""

    def __init__(self, update: Callable[[int, int], None]) -> None:
        self.update = update

    def progress(self, done: int, total: int) -> None:
        self.update(done, total)


def run_demo(directory: Path, *, console: Console, interactive: bool = False,
             progress: ProgressFactory = _no_progress) -> list[Path]:
    """Run the demo into ``directory``; return the files it wrote."""
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    _fresh(directory)
    loaded = load_settings(env={}, overrides=demo_settings_overrides(directory), cwd=directory)
    settings = loaded.settings.replace(
        keyword_aliases={"Türkiye": "Turkey", "سوريا": "Syria", "إيران": "Iran",
                         "لبنان": "Lebanon", "العراق": "Iraq", "اليمن": "Yemen"},
        keyword_rules={"Israel": ["Golan", "Knesset"]},
        # The sample feeds' images are on SampleServer, 127.0.0.1: sized, like a real
        # feed's; no other private address is opened.
        fetch_allow_private=["127.0.0.1/32"])
    now = utcnow()
    ctx = Context.open(settings)
    try:
        with SampleServer(now) as server:
            for name, (title, _) in SAMPLE_FEEDS.items():
                add_feed(ctx.db, server.url(name), title)
            create_list(ctx.db, DEMO_LIST, "The Weekly Recap")
            edit_list(ctx.db, DEMO_LIST, logo_url=f"{server.base}/img/masthead-1200x160.png",
                      logo_alt="The Weekly Recap", logo_size=(1200, 160))
            for address, person in DEMO_SUBSCRIBERS:
                add_subscriber(ctx.db, DEMO_LIST, address, name=person, source="demo")
            remove_subscriber(ctx.db, DEMO_LIST, "dana@example.org")
            console.print(f"Serving {len(SAMPLE_FEEDS)} sample feeds at {server.base}; "
                          f"list {DEMO_LIST!r} has {len(DEMO_SUBSCRIBERS)} subscribers "
                          "(one of them unsubscribed).")
            with progress("Fetching feeds", enabled=interactive) as update:
                fetched = [0]

                def on_fetched(_result: object) -> None:
                    fetched[0] += 1
                    update(fetched[0], len(SAMPLE_FEEDS))

                report = collect(ctx.db, settings, now=now, on_fetched=on_fetched)
        console.print(f"Collected {report.new} entries from {len(report.feeds)} feeds.")
        for feed in report.feeds:
            if feed.error or feed.warning:
                console.print(f"  {feed.url}: {feed.error or feed.warning}")
        draft = draft_issue(ctx, DEMO_LIST, now=now)
        assert draft is not None, "the sample feeds always give an issue"
        preview_html, preview_txt = directory / "preview.html", directory / "preview.txt"
        write_preview_files(ctx, draft, preview_html, preview_txt)
        sections = ", ".join(f"{s.title} ({len(s.entries)})" for s in draft.sections)
        console.print(f"Issue {draft.number}: {draft.rendered.subject!r}")
        console.print(f"Sections: {sections}")
        with progress("Sending", enabled=interactive) as update:
            result = run_list(ctx, RunRequest(DEMO_LIST, collect_first=False),
                              _Progress(update), now=now)
        assert result.send is not None
        counts = result.send.counts
        console.print(f"Sent: {counts[DeliveryStatus.ACCEPTED]} accepted, "
                      f"{counts[DeliveryStatus.FAILED]} failed, "
                      f"{counts[DeliveryStatus.SKIPPED]} skipped.")
        emails = sorted((directory / "outbox").glob(f"{DEMO_LIST}-*/*.eml"))
    finally:
        ctx.close()
    written = [directory / "demo.db", preview_html, preview_txt, *emails]
    console.print(f"\nFiles written by the demo, in {directory}:", soft_wrap=True)

    def say(path: Path, what: str) -> None:
        console.print(f"  {path.relative_to(directory)}  ({what})", soft_wrap=True,
                      markup=False, highlight=False)

    say(written[0], "a fresh SQLite database: feeds, entries, the issue, its deliveries")
    say(preview_html, f"the issue as HTML, {draft.rendered.html_bytes:,} bytes; open it in a "
                      "browser")
    say(preview_txt, "the issue's plain-text part")
    for path in emails:
        say(path, "one email as sent; open it in a mail client")
    console.print("\nNext, the web app on the demo database (archive, unsubscribe links, and "
                  "the editors' pages after `digest editors add NAME`):\n"
                  "  DIGEST_DATABASE_URL=sqlite:///demo.db .venv/bin/digest serve",
                  soft_wrap=True, markup=False, highlight=False)
    return written
