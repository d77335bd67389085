"""The editor's workbench, below the page: versioned edits (a stale save is refused and
names who saved), entry order within sections, titles and leads rewritten and reverted,
a pinned top story, hidden images, undo, and the diff against the feeds' issue."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from digest.services.building.drafts import draft_issue
from digest.services.building.editing import (
    StaleEdit,
    edit_diff,
    edit_version,
    save_edit,
    undo_last,
)
from digest.services.feeds.collect import add_feed, collect
from digest.services.storage.context import Context
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.conftest import make_settings
from tests.feedserver import FeedServer, rss
from tests.test_send import recap


@pytest.fixture
def desk(tmp_path: Path, feed_server: FeedServer, database_url: str) -> Context:
    ctx = Context.open(make_settings(tmp_path, database_url, keyword_order=["Syria", "Iran"]))
    items = [recap(1, tags=["Syria"]), recap(2, tags=["Syria"]), recap(3, tags=["Iran"])]
    items[0]["summary"] = ('<p>Lead one.</p><img src="https://img.example/a.png" '
                           'width="600" height="300" alt="A">')
    add_feed(ctx.db, feed_server.add("/f.xml", body=rss(items)))
    collect(ctx.db, ctx.settings)
    create_list(ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(ctx.db, "weekly", "reader@example.org")
    return ctx


def ids_by_title(ctx: Context) -> dict[str, int]:
    draft = draft_issue(ctx, "weekly")
    assert draft is not None
    return {i.title.split(":")[0]: i.id for i in draft.items}


def test_a_stale_save_is_refused_and_names_the_other_editor(desk: Context) -> None:
    version, _ = edit_version(desk, "weekly")
    assert save_edit(desk, "weekly", "amal", expected_version=version, subject="One")
    with pytest.raises(StaleEdit) as refused:
        save_edit(desk, "weekly", "badr", expected_version=version, subject="Two")
    assert refused.value.by == "amal" and "amal changed this issue" in refused.value.message
    draft = draft_issue(desk, "weekly")
    assert draft is not None and draft.rendered.subject == "One"  # nothing lost silently
    newer, by = edit_version(desk, "weekly")
    assert newer == version + 1 and by == "amal"
    assert save_edit(desk, "weekly", "badr", expected_version=newer, subject="Two")


def test_two_saves_at_once_cannot_both_win(desk: Context) -> None:
    version, _ = edit_version(desk, "weekly")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def save(editor: str) -> None:
        barrier.wait()
        try:
            save_edit(desk, "weekly", editor, expected_version=version, subject=editor)
            outcomes.append("saved")
        except StaleEdit:
            outcomes.append("refused")

    threads = [threading.Thread(target=save, args=(name,)) for name in ("amal", "badr")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused", "saved"]
    assert edit_version(desk, "weekly")[0] == version + 1


def test_order_overrides_pin_hidden_image_undo_and_diff(desk: Context) -> None:
    ids = ids_by_title(desk)
    one, two, three = ids["Recap 1"], ids["Recap 2"], ids["Recap 3"]
    save_edit(desk, "weekly", "amal", entry_order={"syria": [two, one]})
    draft = draft_issue(desk, "weekly")
    assert draft is not None
    syria = next(s for s in draft.sections if s.key == "syria")
    assert [p.item.id for p in syria.entries] == [two, one]
    # Editor text is made plain like feed text, and escaped when rendered.
    save_edit(desk, "weekly", "amal", overrides={one: {
        "title": "Iran <b>moves</b> & <script>x()</script>in", "lead": "A <i>new</i> lead."}})
    draft = draft_issue(desk, "weekly")
    assert draft is not None
    html = draft.rendered.html
    assert "Iran moves &amp; in" in html and "<script" not in html and "<b>" not in html
    assert "A new lead." in html and "Lead one." not in html
    save_edit(desk, "weekly", "amal", pinned=three, hidden_images=[one])
    draft = draft_issue(desk, "weekly")
    assert draft is not None
    html, text = draft.rendered.html, draft.rendered.text
    assert html.index(">Top story</h2>") < html.index(">Syria</h2>")
    assert 'class="top-title"' in html and "Recap 3" in html.split(">Syria</h2>")[0]
    assert ">Iran</h2>" not in html  # its one entry is the top story now
    assert "img.example/a.png" not in html
    assert text.index("Top story\n---------") < text.index("Syria (2)")
    diff = edit_diff(desk, draft_issue(desk, "weekly"))
    assert any(line.startswith("Title of ") and "Iran moves & in" in line for line in diff)
    assert "Top story: Recap 3: Iran Moves in Syria" in diff
    assert any(line.startswith("Image hidden:") for line in diff)
    assert any(line.startswith("Entries reordered in: Syria") for line in diff)
    # Revert the title and lead: the feed's text is back.
    save_edit(desk, "weekly", "amal", overrides={})
    draft = draft_issue(desk, "weekly")
    assert draft is not None and "Lead one." in draft.rendered.html
    assert "Iran moves &amp; in" not in draft.rendered.html
    # Undo, step by step, back to the feeds' issue.
    assert undo_last(desk, "weekly", "amal")  # the overrides come back
    draft = draft_issue(desk, "weekly")
    assert draft is not None and "Iran moves &amp; in" in draft.rendered.html
    while undo_last(desk, "weekly", "amal"):
        pass
    draft = draft_issue(desk, "weekly")
    assert draft is not None and ">Top story</h2>" not in draft.rendered.html
    assert edit_diff(desk, draft_issue(desk, "weekly")) == []


def test_the_change_endpoint_refuses_bad_bodies_and_missing_tokens(desk: Context) -> None:
    import re

    from starlette.testclient import TestClient

    from digest.edges.web.app import create_app
    from digest.services.building.editors import add_editor
    add_editor(desk.db, "amal", "a long enough password")
    client = TestClient(create_app(desk), base_url="https://digest.example")
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert csrf
    client.post("/login", data={"csrf": csrf[1], "name": "amal",
                                "password": "a long enough password"})
    page = client.get("/editor/lists/weekly").text
    # The desk has one reader: the page counts in words as the CLI does.
    assert "1 active subscriber ·" in page and "Send now to 1 subscriber<" in page
    token = re.search(r'data-csrf="([^"]+)"', page)
    version = re.search(r'data-version="(\d+)"', page)
    assert token and version
    url = "/editor/lists/weekly/change"
    assert client.post(url, json={"version": 0, "op": "undo"}).status_code == 403
    headers = {"X-CSRF-Token": token[1]}
    assert client.post(url, json={"op": "undo"}, headers=headers).status_code == 400
    bad = client.post(url, json={"version": 0, "op": "order",
                                 "sections": [{"key": "syria", "entries": ["x"]}]},
                      headers=headers)
    assert bad.status_code == 400
    assert client.post(url, json={"version": 0, "op": "text", "entry": 999},
                       headers=headers).status_code == 400
    ok = client.post(url, json={"version": int(version[1]), "op": "pin", "entry": None},
                     headers=headers)
    assert ok.status_code == 200
