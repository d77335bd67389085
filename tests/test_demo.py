"""`digest demo` runs the whole job offline, in a folder of its own, and leaves a working
desk behind: its settings, a database the web app shows as the email did, pictures that
still load, and the commands that go on from there."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from digest.core.grouping import keyword_key
from digest.edges.cli import cli
from digest.edges.demo import DEMO_SETTINGS, digest_command
from digest.edges.web.app import create_app
from digest.services.storage.context import Context
from digest.settings import load_settings
from tests.conftest import free_port

FOLDER = "digest-demo"


def demo(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli, [*args, "demo"] if args[:1] == ("-v",) else ["demo", *args],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def parse(path: Path) -> EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def html_of(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]


class _Outline(HTMLParser):
    """An email's sections (its h2s) with their recaps' titles (the h3s under each), its
    pictures, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.words: list[str] = []
        self.images: list[dict[str, str]] = []
        self._open: str | None = None
        self._text = ""
        self._section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3"):
            self._open, self._text = tag, ""
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs})

    def handle_data(self, data: str) -> None:
        self.words += data.split()
        if self._open:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        text = " ".join(self._text.split())
        if tag == "h2" and self._open == "h2":
            self._section = text
            self.sections[text] = []
        elif tag == "h3" and self._section:
            self.sections[self._section].append(text)
        if tag in ("h2", "h3"):
            self._open = None


def outline(html: str) -> _Outline:
    parser = _Outline()
    parser.feed(html)
    return parser


def shows(html: str, titles: list[str]) -> list[str]:
    """Those of ``titles`` that a page does not show."""
    text = " ".join(outline(html).words)
    return [title for title in titles if title not in text]


def test_demo_writes_its_folder_and_a_second_run_starts_afresh(runner: CliRunner,
                                                               tmp_path: Path) -> None:
    for _ in range(2):  # a second run replaces what the first wrote
        output = demo(runner)
    folder = tmp_path / FOLDER
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]  # nothing beside it
    html = (folder / "preview.html").read_text(encoding="utf-8")
    emails = sorted((folder / "outbox").rglob("*.eml"))
    assert len(emails) == 3  # the fourth subscriber unsubscribed
    for path in emails:
        assert str(path.relative_to(folder)) in output
    for name in ("demo.db", "digest.toml", "preview.html", "preview.txt", "images/"):
        assert f"  {name}  (" in output
    # Hostile HTML from the sample wire feed is gone; the Arabic feed reads right to left.
    assert "<script" not in html and "javascript:" not in html and "onclick" not in html
    assert "tracker.example" not in html
    assert "ملخص" in html and 'dir="auto"' in html
    msg = parse(emails[0])
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Collected 25 entries from 4 feeds" in output
    # Settings, database and messages are their owner's alone.
    for path in (folder / "digest.toml", folder / "demo.db", emails[0]):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert folder.stat().st_mode & 0o777 == 0o700


def test_demo_never_deletes_what_it_did_not_write(runner: CliRunner, tmp_path: Path) -> None:
    # An older outbox of the user's own, where the demo used to write.
    planted = tmp_path / "outbox" / "weekly-0007" / "00000001-reader@example.org.eml"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"Subject: an issue sent for real\r\n\r\nkeep me\r\n")
    demo(runner)
    assert planted.read_bytes().endswith(b"keep me\r\n")
    assert (tmp_path / FOLDER / "demo.db").exists()

    # Told to work in that folder, it refuses, naming the file, and writes nothing.
    result = runner.invoke(cli, ["demo", "--dir", "."])
    assert result.exit_code == 1
    assert "outbox/weekly-0007/00000001-reader@example.org.eml is in the demo's way" \
        in result.output and "Traceback" not in result.output
    assert planted.read_bytes().endswith(b"keep me\r\n")
    assert not (tmp_path / "demo.db").exists() and not (tmp_path / "digest.toml").exists()

    # In its own folder, a file it wrote and someone changed since is not its own anymore;
    # nor is a message another command added to its outbox.
    settings = tmp_path / FOLDER / "digest.toml"
    settings.write_text(settings.read_text(encoding="utf-8") + "lookback_days = 14\n",
                        encoding="utf-8")
    result = runner.invoke(cli, ["demo"])
    assert result.exit_code == 1 and f"{FOLDER}/digest.toml is in the demo's way" in result.output
    assert "lookback_days = 14" in settings.read_text(encoding="utf-8")
    assert len(list((tmp_path / FOLDER / "outbox").rglob("*.eml"))) == 3
    settings.unlink()
    sent_later = tmp_path / FOLDER / "outbox" / "weekly-0002" / "00000004-x@example.org.eml"
    sent_later.parent.mkdir()
    sent_later.write_bytes(b"later")
    result = runner.invoke(cli, ["demo"])
    assert result.exit_code == 1 and "weekly-0002/00000004-x@example.org.eml" in result.output
    assert sent_later.exists() and (tmp_path / FOLDER / "demo.db").exists()


def test_an_edited_manifest_cannot_make_the_user_s_files_the_demos(
        runner: CliRunner, tmp_path: Path) -> None:
    """Only the database is recorded without a digest: a manifest that claims any other
    file without one (copied with a folder, or edited) doesn't make it the demo's."""
    import json
    folder = tmp_path / FOLDER
    folder.mkdir()
    own = folder / "digest.toml"
    own.write_text('secret_key = "mine"\n', encoding="utf-8")
    (folder / ".digest-demo.json").write_text(json.dumps(
        {"files": {"digest.toml": None, "preview.html": None}}), encoding="utf-8")
    result = runner.invoke(cli, ["demo"])
    assert result.exit_code == 1 and f"{FOLDER}/digest.toml is in the demo's way" in result.output
    assert own.read_text(encoding="utf-8") == 'secret_key = "mine"\n'


def test_the_web_app_on_the_demos_settings_shows_what_the_email_showed(
        runner: CliRunner, tmp_path: Path) -> None:
    demo(runner)
    folder = tmp_path / FOLDER
    email_outline = outline(html_of(parse(sorted((folder / "outbox").rglob("*.eml"))[0])))
    sections = email_outline.sections
    assert list(sections)[:3] == ["Syria", "Iran", "Ukraine"] and "Israel" in sections
    assert len(sections["Syria"]) == 5
    # What `digest --config digest-demo/digest.toml serve` runs on, from another folder.
    loaded = load_settings(folder / "digest.toml", env={}, cwd=tmp_path.parent)
    for key, value in DEMO_SETTINGS.items():
        assert getattr(loaded.settings, key) == value, key
    ctx = Context.open(loaded.settings)
    try:
        client = TestClient(create_app(ctx))
        archived = client.get("/archive/weekly/1")
        assert archived.status_code == 200
        assert list(outline(archived.text).sections) == list(sections)
        # Every section's recaps are on its keyword page: all five Syria recaps (two of
        # them tagged سوريا), the Israel rule's, Türkiye's under Turkey.
        for title, recaps in sections.items():
            if title == loaded.settings.untagged_section:
                continue
            page = client.get(f"/archive/weekly/k/{keyword_key(title)}")
            assert page.status_code == 200, title
            assert not shows(page.text, recaps), (title, shows(page.text, recaps))
        # The email's pictures are served where it says, in the shape it gives them.
        for image in email_outline.images:
            assert image["src"].startswith(ctx.url("static/demo/")), image["src"]
            picture = client.get("/" + image["src"].removeprefix(ctx.url("")))
            assert picture.headers["content-type"] == "image/png"
            width, height = struct.unpack(">II", picture.content[16:24])
            shown = int(image["width"]) * height - int(image["height"]) * width
            assert abs(shown) <= max(width, height), (image, width, height)
    finally:
        ctx.close()


def test_the_demos_preview_shows_its_pictures_after_it_ended(runner: CliRunner,
                                                             tmp_path: Path,
                                                             browser: object) -> None:
    demo(runner)  # its sample feed server is gone when it returns
    preview = tmp_path / FOLDER / "preview.html"
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(preview.as_uri(), wait_until="load")
        pictures = page.evaluate(
            "[...document.images].map(i => [i.getAttribute('src'), i.complete, "
            "i.naturalWidth])")
    finally:
        page.close()
    assert len(pictures) == 3  # the masthead and two recaps' pictures
    for src, complete, width in pictures:
        assert complete and width > 0, f"{src} did not load"


def test_the_demo_tells_its_story_and_logs_only_with_v(runner: CliRunner) -> None:
    log_line = re.compile(r"^\S+ \S+ +(DEBUG|INFO) ", re.MULTILINE)
    quiet = demo(runner)
    assert not log_line.search(quiet), quiet
    assert quiet.splitlines()[0].startswith("Serving 4 sample feeds")
    assert "Sent: 3 accepted, 0 failed, 0 skipped." in quiet
    loud = demo(runner, "-v")
    assert re.search(r"INFO +collected 4 feeds: 25 new entries", loud), loud
    assert "Sent: 3 accepted, 0 failed, 0 skipped." in loud


def test_the_next_commands_it_prints_run_as_printed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "digest"
    if not script.exists():
        pytest.skip(f"no `digest` console script beside {sys.executable}")
    # A user's shell: their PATH without this virtualenv, none of this machine's DIGEST_*.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env["PATH"] = "/usr/bin:/bin"
    done = subprocess.run([str(script), "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    nexts = lines[lines.index("Next, on the demo's settings and database:") + 1:]
    run = f"{shlex.quote(str(script))} --config {FOLDER}/digest.toml"
    assert [line.split(" # ")[0].split() for line in nexts] == [
        [*shlex.split(run), "editors", "add", "editor"], [*shlex.split(run), "serve"]]
    # The serve line as printed (on a free port: 8000 may be taken here), from this folder.
    port = free_port()
    argv = [*shlex.split(nexts[1].split(" # ")[0]), "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(f"{base}/archive/weekly/k/syria")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert page.status_code == 200
        email_outline = outline(html_of(parse(
            sorted((tmp_path / FOLDER / "outbox").rglob("*.eml"))[0])))
        assert not shows(page.text, email_outline.sections["Syria"])
        for image in email_outline.images:
            path = image["src"].removeprefix(DEMO_SETTINGS["base_url"])
            assert httpx.get(base + path).headers["content-type"] == "image/png", path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_command_it_names_is_the_one_the_user_ran(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"  # where the user is
    venv = checkout / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "digest").write_text("#!/bin/sh\n")
    (venv / "python").write_text("#!/bin/sh\n")
    installed = tmp_path / "home" / ".local" / "bin" / "digest"
    installed.parent.mkdir(parents=True)
    installed.write_text("#!/bin/sh\n")

    def named(argv0: str, which: Path | None) -> str:
        return digest_command(argv0, cwd=checkout, which=str(which) if which else None,
                              executable=str(venv / "python"))

    # A checkout's .venv, not activated: its path, relative to where the user is.
    assert named(".venv/bin/digest", None) == ".venv/bin/digest"
    assert named(".venv/bin/digest", installed) == ".venv/bin/digest"
    # Activated, or installed with pip or pipx: the name on the PATH.
    assert named(".venv/bin/digest", venv / "digest") == "digest"
    assert named(str(installed), installed) == "digest"
    # Elsewhere and not on the PATH: its whole path.
    assert named(str(installed), None) == str(installed)
    # `python -m digest`: the same Python.
    assert named("/somewhere/digest/__main__.py", installed) == ".venv/bin/python -m digest"
    # A folder with a space is quoted for the shell.
    spaced = tmp_path / "my demo" / "digest"
    spaced.parent.mkdir()
    spaced.write_text("#!/bin/sh\n")
    assert named(str(spaced), None) == shlex.quote(str(spaced))
