"""The email as sent, parsed by Python's email package and opened in Chromium."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from click.testing import CliRunner

from digest.edges.cli import cli
from tests.conftest import ARTIFACTS


def test_demo_email_reads_well_on_desktop_and_phone(runner: CliRunner, tmp_path: Path,
                                                    browser: object) -> None:
    result = runner.invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    path = sorted((tmp_path / "digest-demo" / "outbox").rglob("*.eml"))[0]
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    unsubscribe = str(msg["List-Unsubscribe"])[1:-1]
    page_file = tmp_path / "mail.html"
    page_file.write_text(html, encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (600, 375):
        page = browser.new_page(viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
        page.goto(page_file.as_uri())
        # Nothing wider than the screen: no sideways scrolling on a phone.
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, f"{scroll_width}px wide at {width}px"
        link = page.get_by_role("link", name="Unsubscribe")
        assert link.get_attribute("href") == unsubscribe
        assert link.is_visible()
        # The Arabic recap is laid out right to left.
        arabic = page.locator("h3", has_text="ملخص").first
        assert arabic.evaluate("e => getComputedStyle(e).direction") == "rtl"
        english = page.locator("h3", has_text="Iran Moves in Syria").first
        assert english.evaluate("e => getComputedStyle(e).direction") == "ltr"
        # Hostile feed HTML left nothing that runs.
        assert page.locator("script, iframe, form, object").count() == 0
        page.screenshot(path=str(ARTIFACTS / f"email-{width}px.png"), full_page=False)
        page.close()
