"""Collect 200 feeds of 20 entries from a loopback server, cold and when all answer 304.

Goals (issue 2): cold ≤ 5 s; all 304 ≤ 1 s.
Run: .venv/bin/python bench/bench_collect.py
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.services.feeds.collect import add_feed, collect
from digest.services.storage.context import Context
from digest.settings import load_settings
from tests.feedserver import FeedServer, Route, rss

FEEDS, ENTRIES = 200, 20


def serve(now: datetime, ready: multiprocessing.Queue, stop: object) -> None:  # type: ignore[type-arg]
    """The feed server, in a process of its own so it does not share our GIL."""
    server = FeedServer()
    for f in range(FEEDS):
        items = [{"title": f"Recap {f}-{i}: Iran Moves in Syria", "guid": f"{f}-{i}",
                  "link": f"https://news.example/{f}/{i}",
                  "date": format_datetime(now - timedelta(hours=i)),
                  "tags": ["Iran", "Syria"],
                  "summary": "<p>" + "A short recap of the week. " * 8 + "</p>"}
                 for i in range(ENTRIES)]
        server.add(f"/feed{f}.xml", Route(body=rss(items), etag=f'"{f}"'))
    ready.put(server.base)
    stop.wait()  # type: ignore[attr-defined]
    server.close()


def main(database_url: str | None = None) -> None:
    now = datetime.now(UTC)
    ready: multiprocessing.Queue[str] = multiprocessing.Queue()
    stop = multiprocessing.Event()
    process = multiprocessing.Process(target=serve, args=(now, ready, stop), daemon=True)
    process.start()
    base = ready.get(timeout=60)
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite:///{tmp}/bench.db"
        settings = load_settings(env={}).settings.replace(database_url=url)
        ctx = Context.open(settings)
        for f in range(FEEDS):
            add_feed(ctx.db, f"{base}/feed{f}.xml")
        from digest.services.feeds.fetch import FetchLimits, FetchRequest, fetch_all
        start = time.perf_counter()
        fetch_all([FetchRequest(f"{base}/feed{f}.xml") for f in range(FEEDS)], FetchLimits())
        fetch_s = time.perf_counter() - start
        start = time.perf_counter()
        cold = collect(ctx.db, settings)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = collect(ctx.db, settings)
        warm_s = time.perf_counter() - start
        ctx.close()
    stop.set()
    process.join(5)
    assert cold.new == FEEDS * ENTRIES, cold.new
    assert all(f.status == "not_modified" for f in warm.feeds)
    kind = url.split(":", 1)[0]
    print(f"collect {FEEDS} feeds × {ENTRIES} entries ({kind}): cold {cold_s:.2f} s "
          f"(goal ≤ 5 s), all 304 {warm_s:.2f} s (goal ≤ 1 s); "
          f"the fetching alone takes {fetch_s:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
