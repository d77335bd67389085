"""The `digest` command's top-level group and what every command shares: the settings,
the context opened on demand, error handling, consoles and progress bars.

Commands live in :mod:`digest.edges.cli.run_commands` and :mod:`digest.edges.cli.service_commands`;
:mod:`digest.cli` registers them with the group.
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from digest import __version__
from digest.errors import DigestError
from digest.settings import LoadedSettings, load_settings, sqlite_url

# Only what `digest --help` needs is imported here; each command imports the modules it
# uses (SQLAlchemy, httpx, feedparser, premailer, sendgrid…), so every command starts fast.
# tests/test_cli.py checks that importing this module loads none of them.
if TYPE_CHECKING:
    from digest.services.storage.context import Context

F = TypeVar("F", bound=Callable[..., Any])
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
log = logging.getLogger("digest")


class State:
    """What the top-level options gave: the settings, and a context opened on demand."""

    def __init__(self, loaded: LoadedSettings, config_path: str | None = None,
                 overrides: tuple[str, ...] = ()) -> None:
        self.loaded = loaded
        self.config_path = config_path
        self.overrides = overrides
        self._ctx: Context | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            from digest.services.storage.context import Context
            self._ctx = Context.open(self.loaded.settings)
        return self._ctx


# The one place that tunes Python's cycle collector, for the whole process
# (tests/test_architecture.py keeps it the only one).
#
# The collector starts its youngest round every 700 new objects, and a round that
# promotes enough survivors walks every object of the process. A command allocates far
# more than that without making garbage: importing SQLAlchemy and declaring the models
# (modules, classes, mappers that live as long as the process), a send's batch of 1000
# recipients, an import's chunk of 5,000 rows waiting between threads. Each was promoted
# and walked again, round after round; rounds every YOUNGEST_ROUND new objects collect
# the same garbage in fewer walks.
#
# When the command is over, what it built lives until the process ends, and the
# interpreter's teardown would walk all of it again in its own collections (most of what
# a command spends tearing down). Frozen, it is left out of those walks; the
# teardown itself runs as usual: exit handlers, buffers flushed, modules cleared, objects
# freed.
YOUNGEST_ROUND = 10_000


@contextmanager
def collector_tuned() -> Iterator[None]:
    """Run the process's command with the cycle collector tuned for it: the console
    script's entry point wraps its one command in this, once."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNGEST_ROUND, middle, oldest)
    try:
        yield
    finally:
        gc.freeze()


def boundary(func: F) -> F:
    """Turn library errors into a clean message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DigestError as e:
            message = e.message + (f"\nHint: {e.hint}" if e.hint else "")
            raise click.ClickException(message) from e

    return wrapper  # type: ignore[return-value]


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, *, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on a terminal; plain log lines (every 10 %) otherwise."""
    if enabled:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TaskProgressColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=err, transient=False,
                            refresh_per_second=4)
        task = progress.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            # Started on the first update, so a question asked before the work begins
            # (send's confirmation) is not drawn under a live bar.
            if not progress.live.is_started:
                progress.start()
            elapsed = progress.tasks[0].elapsed or 0
            per_second = done / elapsed if elapsed > 0.5 else 0.0
            rate = "" if not per_second else (
                f"{per_second:,.1f}/s" if per_second < 10 else f"{per_second:,.0f}/s")
            progress.update(task, completed=done, total=total, rate=rate)

        try:
            yield update
        finally:
            if progress.live.is_started:
                progress.stop()
        return
    last = [-1]

    def log_line(done: int, total: int) -> None:
        # A total that is an estimate (an import's rows) may shrink: a line only when
        # another tenth is done, never a step back.
        step = done * 10 // total if total else 10
        if step > last[0]:
            last[0] = step
            log.info("%s: %d of %d", description, done, total)

    yield log_line


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="digest")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Settings file (default: ./digest.toml, or $DIGEST_CONFIG).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one setting for this run (repeatable).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
              metavar="PATH",
              help="The SQLite database file to use: the same as --set "
                   "database_url=sqlite:///PATH, over DIGEST_DATABASE_URL and digest.toml.")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
@click.pass_context
@boundary
def cli(click_ctx: click.Context, config_path: str | None, overrides: tuple[str, ...],
        db_path: Path | None, verbose: bool) -> None:
    """Turn feeds of news recaps into a weekly email digest and send it."""
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        pairs[key.strip()] = value
    if db_path is not None:
        if "database_url" in pairs:
            raise click.UsageError("--db and --set database_url=… both name the database: "
                                   "give one of them.")
        # Absolute, so that `send --jobs`' helpers, started with these overrides, open the
        # same file wherever they run.
        overrides = (*overrides, f"database_url={sqlite_url(db_path)}")
        pairs["database_url"] = sqlite_url(db_path)
    loaded = load_settings(config_path, overrides=pairs)
    for console in (out, err):
        # Away from a terminal (a log file, cron's mail, a pipe) a message stays one line,
        # so a feed URL or an address in it is whole for grep and copying.
        console.soft_wrap = console.soft_wrap or not console.is_terminal
    from digest.services.telemetry.logs import configure
    configure(level="DEBUG" if verbose else loaded.settings.log_level,
              log_format=loaded.settings.log_format, console=err)
    click_ctx.obj = State(loaded, config_path, overrides)
    click_ctx.call_on_close(lambda: click_ctx.obj._ctx and click_ctx.obj._ctx.close())


def list_option(help: str, *, required: bool = True) -> Callable[[F], F]:
    """The `--list NAME` option: every command that works on one list names it so."""
    return click.option("--list", "list_name", required=required, metavar="NAME", help=help)


def state() -> State:
    """The State of the running command."""
    value: State = click.get_current_context().find_object(State)  # type: ignore[assignment]
    return value
