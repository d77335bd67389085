"""`digest demo` runs the whole job offline and says what it wrote."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from click.testing import CliRunner

from digest.edges.cli import cli


def test_demo_writes_database_preview_and_emails(runner: CliRunner, tmp_path: Path) -> None:
    for _ in range(2):  # a second run starts afresh
        result = runner.invoke(cli, ["demo"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "demo.db").exists()
    html = (tmp_path / "preview.html").read_text(encoding="utf-8")
    emails = sorted((tmp_path / "outbox").rglob("*.eml"))
    assert len(emails) == 3  # the fourth subscriber unsubscribed
    for path in emails:
        assert str(path.relative_to(tmp_path)) in result.output
    assert "preview.html" in result.output and "demo.db" in result.output
    # Hostile HTML from the sample wire feed is gone; the Arabic feed reads right to left.
    assert "<script" not in html and "javascript:" not in html and "onclick" not in html
    assert "tracker.example" not in html
    assert "ملخص" in html and 'dir="auto"' in html
    msg = email.message_from_bytes(emails[0].read_bytes(), policy=email.policy.default)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # 25 entries collected across 4 feeds, 8+ keywords, the old one left out of the issue.
    assert "Collected 25 entries from 4 feeds" in result.output
