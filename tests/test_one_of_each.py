"""One of each: the editor's link list reads links as the link check does, one sample
reader for previews, one next issue number, one feed-health row, one liveness rule."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from starlette.testclient import TestClient

from digest.edges.web.app import create_app
from digest.services.building.editors import add_editor
from digest.services.feeds.collect import add_feed, collect
from digest.services.storage.claims import at_work, claimer_gone, worker_identity
from digest.services.storage.context import Context
from schedules.daemon import LeaderLock
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.conftest import make_settings
from tests.feedserver import FeedServer, Route, rss
from tests.test_send import recap

LOOPBACK = ["127.0.0.1/32"]


def signed_in(ctx: Context) -> TestClient:
    add_editor(ctx.db, "amal", "a long enough password")
    client = TestClient(create_app(ctx), base_url="https://digest.example")
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf
    client.post("/login", data={"csrf": csrf[1], "name": "amal",
                                "password": "a long enough password"})
    return client


def link_items(html: str) -> list[str]:
    """The <li> of the editor page's link list."""
    found = re.search(r'<ul class="links">(.*?)</ul>', html, re.S)
    assert found, "the page has a link list"
    return re.findall(r"<li[^>]*>.*?</li>", found[1], re.S)


def test_a_link_with_an_ampersand_is_listed_once_as_it_is_and_gets_its_mark(
        tmp_path: Path, feed_server: FeedServer) -> None:
    feed_server.add("/post?a=1&b=2", Route(body=b"fine", content_type="text/html"))
    link = f"{feed_server.base}/post?a=1&b=2"
    # In the feed's XML the ampersand is written as a reference, as feeds must.
    items = [dict(recap(1), link=link.replace("&", "&amp;"))]
    ctx = Context.open(make_settings(tmp_path, f"sqlite:///{tmp_path}/d.db",
                                     fetch_allow_private=LOOPBACK))
    add_feed(ctx.db, feed_server.add("/f.xml", body=rss(items)), "Desk")
    collect(ctx.db, ctx.settings)
    create_list(ctx.db, "weekly", "The Weekly Recap")
    add_subscriber(ctx.db, "weekly", "reader@example.org")
    client = signed_in(ctx)

    page = client.get("/editor/lists/weekly")
    listed = [li for li in link_items(page.text) if "/post?" in li]
    # Escaped once for the page: a browser shows (and follows) ?a=1&b=2.
    shown = link.replace("&", "&amp;")
    assert len(listed) == 1 and f'href="{shown}"' in listed[0] and "&amp;amp;" not in page.text

    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token
    checked = client.post("/editor/lists/weekly/links", data={"csrf": token[1]}).text
    [item] = [li for li in link_items(checked) if "/post?" in li]
    assert item.startswith('<li class="link-ok">'), item
    assert ("GET", "/post?a=1&b=2") in feed_server.seen
    ctx.close()


def test_one_liveness_rule_for_every_claim() -> None:
    now = datetime.now(UTC)
    soon = now + timedelta(seconds=60)
    me = worker_identity()
    host = socket.gethostname()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    assert claimer_gone(me, now - timedelta(seconds=1), now)  # its lease ran out
    assert claimer_gone(None, soon, now)
    assert claimer_gone(f"{host}:{ended.stdout.strip()}:abc", soon, now)  # process gone
    assert not claimer_gone(f"elsewhere.example:{os.getpid()}:abc", soon, now)  # trusted
    assert claimer_gone(me, soon, now)  # this process's, not at work: its work ended
    assert not claimer_gone(me, now - timedelta(seconds=1), now, me=me)  # the asker's own
    with at_work(me):
        assert not claimer_gone(me, soon, now)
    assert claimer_gone(me, soon, now)


def test_a_second_scheduler_in_one_process_leaves_a_live_leader_its_lock(
        ctx: Context) -> None:
    first, second = LeaderLock(ctx), LeaderLock(ctx)
    assert first.try_acquire()
    # Asking whether someone leads and trying to lead give one answer.
    assert second.held_elsewhere() and not second.try_acquire()
    assert first.try_acquire()  # still the leader
    first.release()
    assert not second.held_elsewhere() and second.try_acquire()
    second.release()
