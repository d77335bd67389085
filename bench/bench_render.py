"""Render and inline a 100-entry issue; fill in one recipient's values.

Goals (issue 2): render + inline ≤ 30 ms; one recipient's values ≤ 20 µs.
Run: .venv/bin/python bench/bench_render.py
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.core.grouping import Item, KeywordConfig, group
from digest.core.rendering import IssueContent, Recipient, Renderer, Sender

KEYWORDS = ["Syria", "Iran", "Ukraine", "Russia", "Turkey", "Iraq", "Lebanon", "Yemen"]
NOW = datetime(2026, 11, 23, 8, tzinfo=UTC)
SUMMARY = ("<p>As Moscow pulls aircraft and advisers toward the Ukrainian front, "
           "Iranian-backed units have taken over several positions Russia held around "
           "<strong>Deir ez-Zor</strong> and the Palmyra road. Our correspondents map who "
           "now controls the <a href=\"https://news.example/map\">desert crossings</a>.</p>")


def content(n: int = 100) -> IssueContent:
    items = [Item(i, f"Recap {i}: With Russia Busy in Ukraine, Iran Moves in Syria",
                  f"https://news.example/recaps/{i}", SUMMARY,
                  (KEYWORDS[i % 8], KEYWORDS[(i * 3) % 8]) if i % 10 else (),
                  NOW - timedelta(hours=i), "Middle East Desk") for i in range(n)]
    sections = group(items, KeywordConfig(order=("Syria", "Iran")))
    return IssueContent("weekly", "The Weekly Recap", 42, "The Weekly Recap", NOW, sections,
                        Sender("The Desk", "desk@news.example", "1 Example Street"),
                        "https://digest.example/archive/weekly/42")


def main() -> None:
    renderer = Renderer()
    issue = content()
    renderer.render_issue(issue)  # warm up: template compile, CSS parse cache
    times = []
    for _ in range(30):
        start = time.perf_counter()
        rendered = renderer.render_issue(issue)
        times.append(time.perf_counter() - start)
    print(f"render+inline 100 entries: median {statistics.median(times) * 1000:.1f} ms, "
          f"min {min(times) * 1000:.1f} ms (HTML {rendered.html_bytes:,} bytes; goal ≤ 30 ms)")
    recipients = [Recipient(f"https://digest.example/u/{i}.tok3nsignature",
                            f"https://digest.example/p/{i}.tok3nsignature", f"Reader {i}")
                  for i in range(20_000)]
    rendered.personalize(recipients[0])
    start = time.perf_counter()
    for r in recipients:
        rendered.personalize(r)
    per = (time.perf_counter() - start) / len(recipients)
    print(f"personalize (HTML + text) for one recipient: {per * 1e6:.1f} µs (goal ≤ 20 µs)")


if __name__ == "__main__":
    main()
