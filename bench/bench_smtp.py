"""SMTP: messages per second to a local aiosmtpd server over one reused connection.

Run: .venv/bin/python bench/bench_smtp.py [N]
The server runs in its own process; the digest is the 25-entry demo issue.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.core.grouping import Item, KeywordConfig, group
from digest.core.rendering import IssueContent, Recipient, Renderer, Sender
from digest.services.transports.base import OutgoingIssue, OutgoingRecipient
from digest.services.transports.smtp import SMTPTransport


def serve(port: int, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()  # type: ignore[attr-defined]
    while True:
        time.sleep(3600)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(port, ready), daemon=True)
    server.start()
    ready.wait(30)
    now = datetime.now(UTC)
    items = [Item(i, f"Recap {i}: Iran Moves in Syria", f"https://news.example/{i}",
                  "<p>" + "A short recap of the week. " * 8 + "</p>", ("Iran",),
                  now - timedelta(hours=i)) for i in range(25)]
    content = IssueContent("weekly", "The Weekly Recap", 1, "The Weekly Recap", now,
                           group(items, KeywordConfig()), Sender("Desk", "d@example.org", "x"),
                           "https://digest.example/archive/weekly/1")
    rendered = Renderer().render_issue(content)
    issue = OutgoingIssue(1, 1, "weekly", "The Weekly Recap", 1, rendered,
                          "Desk <d@example.org>", "d@example.org")
    recipients = [OutgoingRecipient(i, i, f"reader{i}@example.org", "",
                                    Recipient(f"https://d.example/u/{i}",
                                              f"https://d.example/p/{i}"))
                  for i in range(n)]
    transport = SMTPTransport("127.0.0.1", port)
    with transport:
        started = time.perf_counter()
        outcomes = transport.send_batch(issue, recipients)
        elapsed = time.perf_counter() - started
    assert all(o.status == "accepted" for o in outcomes)
    print(f"SMTP: {n} messages of {rendered.html_bytes / 1000:.0f} KB HTML in {elapsed:.1f} s "
          f"= {n / elapsed:.0f} messages/s over {transport.connections} connection")
    server.terminate()


if __name__ == "__main__":
    main()
