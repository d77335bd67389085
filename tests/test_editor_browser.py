"""An editor's week in Chromium against the real app, the session and CSRF rules tried
with hand-made requests, and the workbench: edit beside the live preview, drag and
keyboard reordering, titles and leads, a top story, two editors at once, axe-core.
Screenshots of every page land in test-artifacts/."""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from digest.services.building.editors import add_editor
from digest.services.feeds.collect import add_feed, collect
from digest.services.storage.context import Context
from schedules.service import add_schedule
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.conftest import ARTIFACTS, LiveServer, free_port, make_settings
from tests.feedserver import FeedServer, rss
from tests.test_email_craft import axe_violations
from tests.test_send import recap

PASSWORD = "correct horse battery"


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str, feed_server: FeedServer) -> Iterator[LiveServer]:
    port = free_port()
    ctx = Context.open(make_settings(tmp_path, sqlite_url,
                                     base_url=f"http://127.0.0.1:{port}",
                                     keyword_order=["Iran", "Syria", "Yemen"]))
    url = feed_server.add("/feed.xml", body=rss([
        recap(1), recap(2, tags=["Syria"]), recap(3, tags=["Yemen"]),
        recap(4, tags=["Syria", "Iran"])]))
    add_feed(ctx.db, url, "Desk")
    collect(ctx.db, ctx.settings)
    create_list(ctx.db, "weekly", "The Weekly Recap")
    for address in ("alice@example.org", "bob@example.org"):
        add_subscriber(ctx.db, "weekly", address)
    add_subscriber(ctx.db, "weekly", "yemen@example.org", keywords=["Yemen"])
    add_schedule(ctx.db, "monday", "weekly", "0 8 * * mon", "Europe/London",
                 hold_for_approval=True)
    add_editor(ctx.db, "layla", PASSWORD)
    server = LiveServer(ctx, port)
    server.ctx = ctx  # type: ignore[attr-defined]
    yield server
    server.close()
    ctx.close()


def shoot(page: Any, name: str) -> None:
    """Screenshots at 1280 and 375 px, and no sideways scroll on a phone."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (1280, 375):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"web-{name}-{width}px.png"), full_page=True)
        if width == 375 and not name.startswith("editor-issue"):
            scroll = page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= 375, f"{name} is {scroll}px wide on a phone"
    page.set_viewport_size({"width": 1280, "height": 900})


def press(locator: Any) -> None:
    """Scroll to a control, then click it (the page shifts while its frames load)."""
    locator.scroll_into_view_if_needed()
    time.sleep(0.2)
    locator.click()


def shows(locator: Any, timeout: float = 15.0) -> None:
    """Wait until the locator is visible (polling: the preview frames keep loading)."""
    deadline = time.monotonic() + timeout
    while not locator.is_visible():
        assert time.monotonic() < deadline, f"not shown: {locator}"
        time.sleep(0.1)


def sign_in(page: Any, url: str) -> None:
    page.goto(url + "/editor")
    assert "/login" in page.url  # anonymous: sent to sign in
    page.get_by_label("Name").fill("layla")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/editor")


def outbox(site: LiveServer) -> list[email.message.EmailMessage]:
    folder = Path(site.ctx.settings.outbox_dir)  # type: ignore[attr-defined]
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted(folder.rglob("*.eml"))]


def test_an_editors_week(site: LiveServer, browser: Any) -> None:  # noqa: PLR0915 - one browser session through the week, step by step
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(site.url + "/login")
    shoot(page, "login")
    sign_in(page, site.url)
    # The dashboard: the list with its counts, the schedule, the feed with its chart.
    assert page.get_by_role("cell", name="The Weekly Recap weekly").is_visible()
    assert page.get_by_text("0 8 * * mon").is_visible()
    assert page.locator(".chart span").count() == 30
    assert page.get_by_text("Desk").first.is_visible()
    shoot(page, "dashboard")

    # The preview, as sent, at both widths.
    page.get_by_role("link", name="Next issue").click()
    page.wait_for_url(re.compile(r".*/editor/lists/weekly$"))
    desktop = page.frame_locator("iframe.desktop")
    phone = page.frame_locator("iframe.phone")
    assert desktop.get_by_text("Recap 1: Iran Moves in Syria").is_visible()
    assert phone.get_by_text("Recap 3: Iran Moves in Syria").is_visible()
    # The sandboxed frame is another origin to the page; Playwright looks inside anyway.
    assert phone.locator("html").evaluate("e => e.scrollWidth") <= 375
    assert page.get_by_text("of Gmail's ~102 KB clip").is_visible()
    shoot(page, "editor-issue")

    # Edit the subject and drop an entry: the preview follows.
    page.get_by_label("Subject (empty: from the template)").fill("Iran and Syria this week")
    drop = page.locator("input[name=drop][value='3']")
    drop.scroll_into_view_if_needed()  # the frames load and shift the page meanwhile
    drop.check()
    press(page.get_by_role("button", name="Save changes"))
    page.wait_for_url(re.compile(r".*notice=.*"))
    assert page.locator("#subject").inner_text() == "Iran and Syria this week"
    assert page.frame_locator("iframe.desktop").get_by_text("Recap 1: Iran").is_visible()
    assert page.frame_locator("iframe.desktop").get_by_text("Recap 3:").count() == 0

    # Preview as the Yemen readers: with recap 3 dropped, nothing is left for them.
    page.get_by_label("Preview as readers of").select_option("yemen")
    page.get_by_role("button", name="Show").click()
    shows(page.get_by_text("Nothing in this issue matches these keywords"))
    page.get_by_label("Preview as readers of").select_option("")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*segment=$"))

    # Send a test: it is in the outbox, marked as a test.
    page.get_by_label("Send a test to").fill("desk@example.org")
    press(page.get_by_role("button", name="Send test"))
    shows(page.get_by_text("Test sent to desk@example.org"))
    [test_mail] = outbox(site)
    assert str(test_mail["Subject"]) == "[Test] Iran and Syria this week"

    # Approve: the page says who approved.
    press(page.get_by_role("button", name=re.compile("Approve issue 1")))
    shows(page.get_by_text("approved by layla"))

    # Send now: the confirmation names the list and the count.
    messages: list[str] = []
    page.once("dialog", lambda d: (messages.append(d.message), d.accept()))
    press(page.get_by_role("button", name="Send now to 3 subscribers"))
    page.wait_for_url(re.compile(r".*/editor\?notice=.*"))
    assert messages == ["Send issue 1 of The Weekly Recap now to 3 subscribers?"]
    deadline = time.monotonic() + 20
    while len(outbox(site)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    sent = [m for m in outbox(site) if not str(m["Subject"]).startswith("[Test]")]
    # Two full issues; the Yemen reader had nothing (skip).
    assert sorted(str(m["To"]) for m in sent) == ["alice@example.org", "bob@example.org"]
    assert {str(m["Subject"]) for m in sent} == {"Iran and Syria this week"}

    # The changes are recorded with the editor's name.
    page.goto(site.url + "/editor/audit")
    for action in ("edit", "send test", "approve", "send now", "sign in"):
        assert page.get_by_role("cell", name=action, exact=True).first.is_visible()
    shoot(page, "audit")

    # The archive (the email's "View in browser" link goes there).
    time.sleep(0.5)
    view = re.search(r'href="([^"]+/archive/weekly/1)"',
                     str(sent[0].get_body(("html",)).get_content()))  # type: ignore[union-attr]
    assert view
    page.goto(site.url + "/archive/weekly")
    shoot(page, "archive-list")
    page.get_by_role("link", name="Iran and Syria this week").click()
    shows(page.get_by_text("Recap 1: Iran Moves in Syria"))
    shows(page.get_by_role("link", name="Subscribe"))  # a web page, not the email
    page.goto(site.url + "/archive")
    shoot(page, "archive")

    # Sign out: the editor pages refuse again.
    page.goto(site.url + "/editor")
    page.get_by_role("button", name=re.compile("Sign out")).click()
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(site.url + "/editor")
    assert "/login" in page.url
    context.close()

    # A subscriber leaves from the page their link opens.
    reader = browser.new_context(viewport={"width": 375, "height": 800})
    page = reader.new_page()
    link = str(sent[0]["List-Unsubscribe"]).strip("<>")
    page.goto(link)
    shoot(page, "unsubscribe")
    page.get_by_role("button", name="Unsubscribe").click()
    shows(page.get_by_role("heading", name="You are unsubscribed"))
    shoot(page, "unsubscribed")
    prefs = re.search(r'href="([^"]+/p/[^"]+)"',
                      str(sent[1].get_body(("html",)).get_content()))  # type: ignore[union-attr]
    assert prefs
    page.goto(prefs[1])
    shoot(page, "preferences")
    page.goto(site.url + "/subscribe")
    shoot(page, "subscribe")
    page.goto(site.url + "/u/tampered")
    assert page.get_by_role("heading", name="This link does not work").is_visible()
    shoot(page, "bad-link")
    reader.close()


def test_sessions_csrf_and_sign_in_limits_by_hand(site: LiveServer) -> None:
    with httpx.Client(base_url=site.url, follow_redirects=False) as anonymous:
        # Every editor page refuses anonymous access.
        for path in ("/editor", "/editor/audit", "/editor/lists/weekly",
                     "/editor/lists/weekly/email"):
            answer = anonymous.get(path)
            assert answer.status_code == 303 and "/login" in answer.headers["location"]
        for path in ("/editor/lists/weekly/send", "/editor/lists/weekly/approve",
                     "/editor/lists/weekly/edit", "/editor/lists/weekly/test"):
            assert anonymous.post(path, data={"confirm_list": "weekly"}).status_code == 401
        # Signing in needs the form's CSRF token.
        assert anonymous.post("/login", data={"name": "layla",
                                              "password": PASSWORD}).status_code == 403

    with httpx.Client(base_url=site.url, follow_redirects=False) as editor:
        form = editor.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)[1]  # type: ignore[index]
        signed_in = editor.post("/login", data={"csrf": csrf, "name": "layla",
                                                "password": PASSWORD, "next": "//evil.example"})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/editor"  # no open redirect
        cookie = signed_in.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        assert "secure" not in cookie.lower()  # base_url is http here
        # Signed in, but a form without this session's token is refused.
        page = editor.get("/editor/lists/weekly")
        assert page.status_code == 200
        assert editor.post("/editor/lists/weekly/approve").status_code == 403
        assert editor.post("/editor/lists/weekly/approve",
                           data={"csrf": "forged"}).status_code == 403
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]  # type: ignore[index]
        assert editor.post("/editor/lists/weekly/approve",
                           data={"csrf": token}).status_code == 303
        # A tampered session cookie is no session.
        value = editor.cookies["digest_session"]
        editor.cookies.set("digest_session", value[:-4] + "AAAA", domain="127.0.0.1")
        assert editor.get("/editor").status_code == 303

    with httpx.Client(base_url=site.url, follow_redirects=False) as guesser:
        csrf = re.search(r'name="csrf" value="([^"]+)"',  # type: ignore[index]
                         guesser.get("/login").text)[1]
        codes = [guesser.post("/login", data={"csrf": csrf, "name": "layla",
                                              "password": f"wrong {i}"}).status_code
                 for i in range(3)]
        # A failed sign-in makes this address wait (a second, then doubling) before
        # its next try; even the right password waits now.
        assert codes == [401, 429, 429]
        waiting = guesser.post("/login", data={"csrf": csrf, "name": "layla",
                                               "password": PASSWORD})
        assert waiting.status_code == 429 and waiting.headers["Retry-After"] == "1"
        # tests/test_web_security.py tries the doubling and the lock-out by address.


def test_the_session_cookie_is_secure_on_https(tmp_path: Path, sqlite_url: str) -> None:
    from starlette.testclient import TestClient

    from digest.edges.web.app import create_app
    ctx = Context.open(make_settings(tmp_path, sqlite_url))  # base_url https://…
    add_editor(ctx.db, "layla", PASSWORD)
    client = TestClient(create_app(ctx), base_url="https://digest.example",
                        follow_redirects=False)
    csrf = re.search(r'name="csrf" value="([^"]+)"',  # type: ignore[index]
                     client.get("/login").text)[1]
    answer = client.post("/login", data={"csrf": csrf, "name": "layla",
                                         "password": PASSWORD})
    assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()
    ctx.close()


# --- the workbench: edit beside the live preview ---------------------------------------

def open_issue(browser: Any, site: LiveServer,
               editor: str = "layla") -> tuple[Any, Any]:
    # bypass_csp: the page's CSP (script-src 'self') would refuse axe's injected script.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    if editor == "layla":
        sign_in(page, site.url)
    else:
        page.goto(site.url + "/login")
        page.get_by_label("Name").fill(editor)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(site.url + "/editor")
    page.goto(site.url + "/editor/lists/weekly")
    page.wait_for_selector("#workbench")
    page.wait_for_function("() => window.Sortable !== undefined")
    page.evaluate("window.__notReloaded = true")  # gone if the page reloads
    return context, page


def section_of(frame: Any, title: str) -> str:
    """The heading of the section an entry sits under in the previewed email."""
    return str(frame.locator("h3", has_text=title).first.evaluate(
        """h => { let row = h.closest('tr');
                  while (row && !row.querySelector('h2')) row = row.previousElementSibling;
                  return row ? row.querySelector('h2').textContent : ''; }"""))


def preview_shows(page: Any, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check(page.frame_locator("iframe.desktop")):
                return
        except Exception:  # the frame is reloading
            pass
        assert time.monotonic() < deadline, "the preview did not follow"
        time.sleep(0.2)


def test_side_by_side_and_stacked(site: LiveServer, browser: Any) -> None:
    context, page = open_issue(browser, site)
    panel = page.locator("section.panel").bounding_box()
    preview = page.locator("section.preview").bounding_box()
    assert panel and preview and preview["x"] > panel["x"] + panel["width"] - 1  # beside
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-workbench-1280px.png"), full_page=False)
    page.set_viewport_size({"width": 375, "height": 900})
    panel = page.locator("section.panel").bounding_box()
    preview = page.locator("section.preview").bounding_box()
    assert panel and preview and preview["y"] >= panel["y"] + panel["height"] - 1  # below
    page.screenshot(path=str(ARTIFACTS / "web-workbench-375px.png"), full_page=False)
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > 376)
        .map(e => e.tagName + '.' + e.className).slice(0, 8)""")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, wide
    assert page.get_by_role("button", name="Move Recap 1: Iran Moves in Syria down").is_visible()
    page.set_viewport_size({"width": 1280, "height": 900})
    assert axe_violations(page) == []
    context.close()


def test_drag_an_entry_to_another_section_and_see_it_move(site: LiveServer,
                                                          browser: Any) -> None:
    context, page = open_issue(browser, site)
    frame = page.frame_locator("iframe.desktop")
    shows(frame.get_by_text("Recap 3: Iran Moves in Syria"))
    assert section_of(frame, "Recap 3:") == "Yemen"
    page.set_viewport_size({"width": 1280, "height": 1800})  # both lists on the screen
    entry = page.locator(".entry-item", has_text="Recap 3:")
    target = page.locator(".entries[data-key='syria']")
    handle = entry.locator(".handle").first
    handle.scroll_into_view_if_needed()
    box, goal = handle.bounding_box(), target.bounding_box()
    assert box and goal
    # Sortable's fallback (used for mice and touch alike) looks under the pointer every
    # 50 ms: a person's drag, slow enough to be seen.
    page.mouse.move(box["x"] + 4, box["y"] + 4)
    page.mouse.down()
    end_y = goal["y"] + goal["height"] - 10
    for step in range(1, 21):
        page.mouse.move(box["x"] + 4, box["y"] + 4 + (end_y - box["y"] - 4) * step / 20)
        time.sleep(0.06)
    time.sleep(0.3)
    page.mouse.up()
    assert page.locator(".entries[data-key='syria'] .entry-item",
                        has_text="Recap 3:").count() == 1
    preview_shows(page, lambda f: section_of(f, "Recap 3:") == "Syria")
    assert page.evaluate("window.__notReloaded") is True
    context.close()


def test_the_keyboard_path_reorders_and_the_preview_follows(site: LiveServer,
                                                             browser: Any) -> None:
    context, page = open_issue(browser, site)
    frame = page.frame_locator("iframe.desktop")
    shows(frame.get_by_text("Recap 1: Iran Moves in Syria"))
    first_section = page.locator(".section-item").first
    title = first_section.locator("strong").first.inner_text()
    # The first section moves down with the keyboard: focus its ↓ and press Enter.
    down = page.get_by_role("button", name=f"Move section {title} down")
    down.focus()
    page.keyboard.press("Enter")
    assert page.locator(".section-item").nth(1).locator("strong").first.inner_text() == title
    preview_shows(page, lambda f: f.locator("h2").nth(1).inner_text().lower() == title.lower())
    # An entry to another section with its labelled select.
    page.get_by_label("Section of Recap 3: Iran Moves in Syria").select_option("iran")
    preview_shows(page, lambda f: section_of(f, "Recap 3:") == "Iran")
    assert page.evaluate("window.__notReloaded") is True
    context.close()


def test_edit_a_title_revert_it_and_pin_a_top_story(site: LiveServer,
                                                     browser: Any) -> None:
    context, page = open_issue(browser, site)
    entry = page.locator(".entry-item", has_text="Recap 2:")
    entry.locator("summary").click()
    entry.get_by_label("Title").fill("Syria's <b>new</b> front line")
    entry.get_by_role("button", name="Save title and lead").click()
    preview_shows(page, lambda f: f.get_by_text("Syria's <b>new</b> front line").count() == 0
                  and f.get_by_text("Syria's new front line").count() == 1)
    assert page.evaluate("window.__notReloaded") is True
    entry.get_by_role("button", name="Revert to the feed's text").click()
    page.wait_for_function("() => window.__notReloaded === undefined")  # revert reloads
    preview_shows(page, lambda f: f.get_by_text("Recap 2: Iran Moves in Syria").count() == 1)
    page.evaluate("window.__notReloaded = true")
    page.get_by_role("button", name="Top story: Recap 4: Iran Moves in Syria").click()
    preview_shows(page, lambda f: f.locator("h2").first.text_content() == "Top story"
                  and "Recap 4" in f.locator("h3.top-title").text_content())
    page.get_by_role("button", name="Undo last change").click()
    page.wait_for_function("() => window.__notReloaded === undefined")
    preview_shows(page, lambda f: f.locator("h3.top-title").count() == 0)
    context.close()


def test_two_editors_at_once_the_stale_save_is_refused_with_a_name(site: LiveServer,
                                                                    browser: Any) -> None:
    add_editor(site.ctx.db, "omar", PASSWORD)  # type: ignore[attr-defined]
    first, page_one = open_issue(browser, site)
    second, page_two = open_issue(browser, site, "omar")
    page_one.get_by_role("button", name="Top story: Recap 2: Iran Moves in Syria").click()
    page_one.wait_for_function(
        "() => document.getElementById('workbench-status').textContent.startsWith('Saved')")
    page_two.get_by_role("button", name="Top story: Recap 1: Iran Moves in Syria").click()
    alert = page_two.get_by_role("alert")
    shows(alert)
    assert "layla changed this issue meanwhile" in alert.inner_text()
    # Nothing of omar's went in: reloaded, his page shows layla's top story.
    page_two.reload()
    preview_shows(page_two, lambda f: "Recap 2" in f.locator("h3.top-title").text_content())
    first.close()
    second.close()
