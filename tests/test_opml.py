"""Feeds in bulk: `digest feeds import FILE.opml` and `digest feeds export`, as feed
readers write and read them; hostile files are refused whole or outline by outline."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from digest.edges.cli import cli

READER_EXPORT = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>My feeds</title></head>
  <body>
    <outline text="Middle East">
      <outline type="rss" text="Desk" xmlUrl="https://desk.example/recaps.xml"/>
      <outline text="Gulf">
        <outline type="rss" title="Gulf &amp; Iran" xmlUrl="https://gulf.example/feed"/>
      </outline>
    </outline>
    <outline type="rss" text="No address"/>
    <outline type="rss" text="FTP" xmlUrl="ftp://old.example/feed"/>
    <outline type="rss" text="Hidden" xmlUrl="https://a.example/&#x202E;lmx.feed"/>
    <outline type="rss" text="C1 control" xmlUrl="https://b.example/&#x85;feed"/>
    <outline type="rss" text="Desk again" xmlUrl="https://desk.example/recaps.xml"/>
    <outline type="rss" text="  Levant&#x200B;&#9;
        Weekly " xmlUrl="  https://levant.example/rss  "/>
  </body>
</opml>
"""


def run(runner: CliRunner, *argv: str, code: int = 0) -> str:
    result = runner.invoke(cli, list(argv))
    assert result.exit_code == code, result.output
    return result.output


def test_an_opml_export_is_imported_with_its_categories(runner: CliRunner,
                                                        tmp_path: Path) -> None:
    (tmp_path / "feeds.opml").write_text(READER_EXPORT, encoding="utf-8")
    run(runner, "feeds", "add", "https://gulf.example/feed", "--name", "Gulf")
    shown = run(runner, "feeds", "import", "feeds.opml")
    assert "line 11: no xmlUrl: it names no feed; left out" in shown
    assert "line 12: xmlUrl 'ftp://old.example/feed' is not an http(s) URL" in shown
    # The invisible character is shown escaped, never printed to reorder the line.
    assert "line 13: xmlUrl 'https://a.example/\\u202elmx.feed' holds the character U+202E" \
        in shown
    assert "line 14:" in shown and "U+0085" in shown
    assert ("Read 4 feeds from feeds.opml: 2 added, 2 already there; 4 outlines left out."
            in shown)
    feeds = json.loads(run(runner, "feeds", "list", "--json"))
    assert [(f["url"], f["name"]) for f in feeds] == [
        ("https://gulf.example/feed", "Gulf"),
        ("https://desk.example/recaps.xml", "Desk"),
        ("https://levant.example/rss", "Levant Weekly")]  # made one clean line
    again = run(runner, "feeds", "import", "feeds.opml")
    assert "0 added, 4 already there" in again


def test_an_export_round_trips_through_import(runner: CliRunner, tmp_path: Path) -> None:
    for n in range(3):
        run(runner, "feeds", "add", f"https://n{n}.example/feed?x=1&y={n}", "--name",
            f"Desk {n} <&>")
    exported = run(runner, "feeds", "export")
    assert exported.startswith("<?xml version='1.0' encoding='UTF-8'?>\n<opml version=\"2.0\">")
    written = run(runner, "feeds", "export", "--out", "out.opml")
    assert "Wrote 3 feeds to out.opml." in written
    assert (tmp_path / "out.opml").stat().st_mode & 0o777 == 0o600  # URLs may hold keys
    assert (tmp_path / "out.opml").read_text(encoding="utf-8").split("<dateCreated>")[0] == \
        exported.split("<dateCreated>")[0]
    assert "Read 3 feeds from out.opml: 0 added, 3 already there." in run(
        runner, "feeds", "import", "out.opml")
    fresh = run(runner, "--db", "other.db", "feeds", "import", "out.opml")
    assert "Read 3 feeds from out.opml: 3 added, 0 already there." in fresh
    assert json.loads(run(runner, "--db", "other.db", "feeds", "list", "--json")) == \
        json.loads(run(runner, "feeds", "list", "--json"))
    one = run(runner, "--db", "one.db", "feeds", "add", "https://one.example/")
    assert "Added feed one.example" in one
    (tmp_path / "one.opml").write_bytes(runner.invoke(
        cli, ["--db", "one.db", "feeds", "export"]).stdout_bytes)
    assert "Read 1 feed from one.opml: 0 added, 1 already there." in run(
        runner, "--db", "one.db", "feeds", "import", "one.opml")
    # A name from someone's file is printed as written, never read as markup.
    run(runner, "--db", "one.db", "feeds", "add", "https://two.example/", "--name",
        "Reuters [/] [bold red]FAKE[/]")
    removed = run(runner, "--db", "one.db", "feeds", "remove", "https://two.example/")
    assert "Removed feed Reuters [/] [bold red]FAKE[/] (https://two.example/)." in removed


def test_a_hostile_or_broken_file_is_refused_whole(runner: CliRunner, tmp_path: Path) -> None:
    laughs = "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10))
    cases = {
        "laughs.opml": f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a0 "lol">{laughs}]>'
                       '<opml version="2.0"><body><outline text="&a9;" '
                       'xmlUrl="https://x.example/"/></body></opml>',
        "small-entity.opml": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "Desk">]>'
                             '<opml version="2.0"><body><outline text="&e;" '
                             'xmlUrl="https://x.example/"/></body></opml>',
        "external.opml": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM '
                         '"file:///etc/passwd">]><opml version="2.0"><body><outline '
                         'text="&e;" xmlUrl="https://x.example/"/></body></opml>',
        "broken.opml": '<?xml version="1.0"?>\n<opml version="2.0">\n<body>\n'
                       '<outline text="x" xmlUrl="https://x.example/">\n</body></opml>',
        "rss.opml": '<?xml version="1.0"?><rss version="2.0"><channel/></rss>',
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        shown = run(runner, "feeds", "import", name, code=1)
        assert name in shown and "Traceback" not in shown, shown
        assert "root:" not in shown and "/etc/passwd" not in shown.replace(
            "file:///etc/passwd", "")
    assert "line 5: not well-formed XML" in run(runner, "feeds", "import", "broken.opml",
                                                code=1)
    assert "declares XML entities" in run(runner, "feeds", "import", "small-entity.opml",
                                          code=1)
    assert "not <opml>" in run(runner, "feeds", "import", "rss.opml", code=1)
    assert json.loads(run(runner, "feeds", "list", "--json")) == []


def test_hundreds_of_feeds_in_one_process(runner: CliRunner, tmp_path: Path) -> None:
    outlines = "\n".join(f'<outline type="rss" text="Desk {n}" '
                         f'xmlUrl="https://desk{n}.example/feed"/>' for n in range(500))
    (tmp_path / "many.opml").write_text(
        f'<?xml version="1.0"?><opml version="2.0"><body>{outlines}</body></opml>',
        encoding="utf-8")
    assert "Read 500 feeds from many.opml: 500 added, 0 already there." in run(
        runner, "feeds", "import", "many.opml")
    assert len(json.loads(run(runner, "feeds", "list", "--json"))) == 500
