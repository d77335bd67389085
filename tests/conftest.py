"""Shared fixtures: settings on tmp_path, fresh databases, a feed server, a CLI runner."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from digest.services.storage.context import Context
from digest.services.transports.locmem import LocmemTransport
from digest.settings import Settings, load_settings
from tests.feedserver import FeedServer

POSTGRES_URL = os.environ.get("DIGEST_TEST_POSTGRES_URL", "")
CHROMIUM = os.environ.get("DIGEST_TEST_CHROMIUM", "/usr/bin/chromium")


def _postgres_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests skipped: set DIGEST_TEST_POSTGRES_URL "
                    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) to run them")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    base = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' cache of compiled templates and inlined emails, not the user's (the
    variable reaches the commands the tests start, too)."""
    folder = tmp_path_factory.mktemp("cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind: SQLite always, PostgreSQL when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database, for tests that are not about storage."""
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (skips with a message when none is configured)."""
    yield from _postgres_schema_url()


def make_settings(tmp_path: Path, database_url: str, **changes: object) -> Settings:
    """Test settings: everything under tmp_path, a fixed secret, the outbox transport."""
    base = load_settings(env={}, cwd=tmp_path).settings
    values: dict[str, object] = {
        "database_url": database_url, "outbox_dir": str(tmp_path / "outbox"),
        "secret_key": "test-secret", "base_url": "https://digest.example",
        "from_email": "desk@news.example", "from_name": "The Desk", "fetch_timeout": 5.0}
    return base.replace(**{**values, **changes})


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    """Settings on a fresh SQLite file under tmp_path."""
    return make_settings(tmp_path, sqlite_url)


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    """An opened context (migrated SQLite database)."""
    context = Context.open(settings)
    yield context
    context.close()


@pytest.fixture
def any_ctx(tmp_path: Path, database_url: str) -> Iterator[Context]:
    """An opened context on each database kind."""
    context = Context.open(make_settings(tmp_path, database_url))
    yield context
    context.close()


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    """A loopback feed server on a free port."""
    server = FeedServer()
    yield server
    server.close()


@pytest.fixture
def locmem() -> Iterator[type[LocmemTransport]]:
    """The in-memory transport with an empty outbox."""
    LocmemTransport.outbox.clear()
    yield LocmemTransport
    LocmemTransport.outbox.clear()


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner working in tmp_path with a clean DIGEST_* environment."""
    for key in list(os.environ):
        if key.startswith("DIGEST_") or key == "SENDGRID_API_KEY":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def chromium_path() -> str:
    """Debian's chromium, or skip with how to install it."""
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests skipped: no Chromium at {CHROMIUM}; "
                    "install it with `apt-get install chromium` (never a downloaded browser)")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    path = chromium_path()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        instance = p.chromium.launch(
            executable_path=path, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync",
                  "--disable-quic"])
        yield instance
        instance.close()


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class LiveServer:
    """The web app served by uvicorn on a loopback port, in a thread."""

    def __init__(self, ctx: Context, port: int) -> None:
        import threading
        import time

        import uvicorn

        from digest.edges.web.app import create_app
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the web app did not start")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
