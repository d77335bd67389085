"""Renders per issue when readers choose keywords: one per distinct set of sections.

Goal (issue 4): rendering is per segment, never per subscriber. 100,000 subscribers
with random preferences over 8 keywords (a quarter with none); an issue of 40 recaps
tagged with those keywords. Reports the renders, the time to record the issue with its
deliveries (segments included), and the send to the outbox-free locmem transport is not
part of it.

Run: .venv/bin/python bench/bench_segments.py [N] [DATABASE_URL]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402

from digest.services.building.drafts import draft_issue  # noqa: E402
from digest.services.delivery.recording import record_issue  # noqa: E402
from digest.services.storage.context import Context  # noqa: E402
from digest.services.storage.models import Delivery, Entry, IssueVariant  # noqa: E402
from digest.services.storage.subscriber_models import Subscriber, Subscription  # noqa: E402
from digest.settings import load_settings  # noqa: E402
from subscribers.lists import create_list  # noqa: E402
from subscribers.subscriptions import segment_of  # noqa: E402

KEYWORDS = ["Iran", "Syria", "Iraq", "Yemen", "Turkey", "Israel", "Lebanon", "Egypt"]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        url = sys.argv[2] if len(sys.argv) > 2 else f"sqlite:///{tmp}/bench.db"
        settings = load_settings(env={}).settings.replace(database_url=url)
        ctx = Context.open(settings)
        mailing_list = create_list(ctx.db, "bench", "The Bench Recap")
        now = datetime.now(UTC)
        with ctx.db.session() as s:
            s.execute(insert(Entry), [
                {"title": f"Recap {i}", "link": f"https://news.example/{i}",
                 "summary_html": "<p>Summary.</p>",
                 "keywords": rng.sample(KEYWORDS[:6], rng.randint(1, 2)),
                 "first_seen_at": now, "dated_at": now, "updated_at": now}
                for i in range(40)])
            people, subs = [], []
            for i in range(n):
                chosen = [] if rng.random() < 0.25 else rng.sample(KEYWORDS,
                                                                   rng.randint(1, 4))
                people.append({"id": i + 1, "email": f"r{i}@example.org",
                               "email_key": f"r{i}@example.org", "name": ""})
                subs.append({"subscriber_id": i + 1, "list_id": mailing_list.id,
                             "status": "active", "source": "bench", "keywords": chosen,
                             "segment": segment_of(chosen)})
            s.execute(insert(Subscriber), people)
            s.execute(insert(Subscription), subs)
        with ctx.db.session() as s:
            segments = s.scalar(select(func.count(Subscription.segment.distinct())))
        started = time.perf_counter()
        draft = draft_issue(ctx, "bench", now=now)
        assert draft is not None
        issue_id = record_issue(ctx, draft, now=now)
        took = time.perf_counter() - started
        with ctx.db.session() as s:
            renders = 1 + (s.scalar(select(func.count()).select_from(IssueVariant)) or 0)
            by_status = dict(s.execute(select(Delivery.status, func.count())
                                       .where(Delivery.issue_id == issue_id)
                                       .group_by(Delivery.status)).all())
        print(f"{n:,} subscribers in {segments} distinct keyword segments "
              f"({url.split(':')[0]}): {renders} renders for the issue "
              f"(1 full + {renders - 1} segments); draft + record with every delivery "
              f"{took:.2f} s; deliveries {by_status}")
        ctx.close()


if __name__ == "__main__":
    main()
