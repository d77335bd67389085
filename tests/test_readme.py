"""The README's "Use it" walk, run as written: each line of its first shell block typed
into a shell, in a fresh folder, with a loopback feed in place of news.example."""

from __future__ import annotations

import email
import email.policy
import html
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import click
import pytest

from digest.edges.cli import cli
from tests.feedserver import FeedServer, rss

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE_FEED = "https://news.example/recaps.xml"
TITLES = ["Recap: With Russia Busy in Ukraine, Iran Moves in Syria",
          "Recap: Syria's Currency Hits a New Low"]


def use_it_lines() -> list[str]:
    """The lines of the first ```sh block under the README's "## Use it"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the README's Use it section has no ```sh block"
    return [line for line in block[1].splitlines() if line.strip()]


def command_of(line: str) -> str:
    """The `digest` command a line runs ("feeds add", "preview"…)."""
    argv = shlex.split(line, comments=True)
    assert argv[0] == "digest", line
    group: click.Command = cli
    path = []
    for word in argv[1:]:
        sub = group.commands.get(word) if isinstance(group, click.Group) else None
        if sub is None:
            break
        path.append(word)
        group = sub
    return " ".join(path)


Check = Callable[[str, Path, str], None]


def added_feed(out: str, folder: Path, url: str) -> None:
    assert f"Added feed Middle East Desk ({url})." in out


def created_list(out: str, folder: Path, url: str) -> None:
    assert "Created list weekly (The Weekly Recap)." in out


def subscribed(out: str, folder: Path, url: str) -> None:
    assert "Subscribed reader@example.org to weekly." in out


def previewed(out: str, folder: Path, url: str) -> None:
    # It collected first, and wrote the issue it found; nothing went out.
    assert "Collected 1 feed: 2 new entries" in out
    assert re.search(r"Issue 1 of weekly: '.+', 2 entries in \d+ sections?", out)
    for name in ("preview.html", "preview.txt"):
        text = html.unescape((folder / name).read_text(encoding="utf-8"))
        assert all(title in text for title in TITLES), name
    assert not (folder / "outbox").exists()


def sent(out: str, folder: Path, url: str) -> None:
    assert "1 accepted, 0 failed, 0 uncertain, 0 skipped" in out
    [path] = (folder / "outbox").rglob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert str(message["To"]) == "Reader <reader@example.org>"
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert all(title in text for title in TITLES)


def listed_issues(out: str, folder: Path, url: str) -> None:
    # One row: issue 1 of weekly, sent, then its creation time and 1 accepted (the cells
    # of a boxed table, or of columns apart by two spaces or more).
    [row] = [line for line in out.splitlines() if re.search(r"\bweekly\b", line)]
    cells = re.split(r"\s*│\s*|\s{2,}", row.strip(" │"))
    assert cells[:3] == ["1", "weekly", "1"], cells
    assert cells[cells.index("sent") + 2] == "1", cells


CHECKS: dict[str, Check] = {
    "feeds add": added_feed,
    "lists create": created_list,
    "subscribers add": subscribed,
    "preview": previewed,
    "send": sent,
    "issues list": listed_issues,
}


def test_the_readme_use_it_walk_works_as_written(tmp_path: Path,
                                                 feed_server: FeedServer) -> None:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "digest").exists():
        pytest.skip(f"no `digest` console script beside {sys.executable}")
    date = format_datetime(datetime.now(UTC) - timedelta(days=1))
    url = feed_server.add("/recaps.xml", body=rss([
        {"title": TITLES[0], "guid": "1", "link": "https://n.example/1", "date": date,
         "tags": ["Iran", "Syria"]},
        {"title": TITLES[1], "guid": "2", "link": "https://n.example/2", "date": date,
         "tags": ["Syria"]}]))
    lines = use_it_lines()
    assert [command_of(line) for line in lines] == list(CHECKS), \
        "the README's Use it walk changed: change this test's checks with it"
    assert EXAMPLE_FEED in lines[0]
    # A fresh folder and a user's shell, with the installed `digest` on the PATH and none
    # of this machine's DIGEST_* settings.
    folder = tmp_path / "desk"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    for line in lines:
        done = subprocess.run(["bash", "-c", line.replace(EXAMPLE_FEED, url)], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
        assert done.returncode == 0, (line, out)
        assert "Traceback" not in out, (line, out)
        CHECKS[command_of(line)](out, folder, url)
