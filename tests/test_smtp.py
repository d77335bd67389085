"""The SMTP transport against a real aiosmtpd server on loopback."""

from __future__ import annotations

import email
import email.policy
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from digest.errors import DeliveryError
from digest.services.feeds.collect import add_feed
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.transports.smtp import SMTPTransport
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.feedserver import FeedServer, rss
from tests.test_send import recap


@dataclass
class Handler:
    """Keeps messages; rejects or defers chosen recipients; can drop the connection."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)          # 550
    defer: dict[str, int] = field(default_factory=dict)    # 451 this many times
    drop_connection_once_at_rcpt: set[str] = field(default_factory=set)
    sessions: int = 0

    async def handle_EHLO(self, server: SMTPServer, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.drop_connection_once_at_rcpt:
            self.drop_connection_once_at_rcpt.discard(address)
            server.transport.close()  # type: ignore[union-attr]
            return "421 closing"
        if address in self.reject:
            return "550 5.1.1 mailbox unavailable"
        if self.defer.get(address, 0) > 0:
            self.defer[address] -= 1
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session,
                          envelope: Envelope) -> str:
        self.messages.append(email.message_from_bytes(
            envelope.original_content or b"", policy=email.policy.default))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


@pytest.fixture
def smtpd() -> Iterator[tuple[Handler, int]]:
    handler = Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def free_port() -> int:
    """A port nobody listens on now (aiosmtpd's Controller cannot start on port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def smtp(port: int, **kwargs: object) -> SMTPTransport:
    options: dict[str, object] = {"attempts": 4, "sleep": lambda s: None, "timeout": 5.0}
    options.update(kwargs)
    return SMTPTransport("127.0.0.1", port, **options)  # type: ignore[arg-type]


@pytest.fixture
def newsroom(ctx: Context, feed_server: FeedServer) -> Context:
    add_feed(ctx.db, feed_server.add("/f.xml", body=rss([recap(1)])))
    create_list(ctx.db, "weekly", "The Weekly Recap")
    for i in range(6):
        add_subscriber(ctx.db, "weekly", f"reader{i}@example.org")
    return ctx


def test_one_connection_carries_every_message(newsroom: Context,
                                              smtpd: tuple[Handler, int]) -> None:
    handler, port = smtpd
    transport = smtp(port)
    result = run_list(newsroom, RunRequest("weekly"), transport=transport)
    assert result.send is not None and result.send.counts == {"accepted": 6}
    assert transport.connections == 1 and handler.sessions == 1
    assert sorted(str(m["To"]) for m in handler.messages) == [
        f"reader{i}@example.org" for i in range(6)]
    msg = handler.messages[0]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_5xx_is_recorded_on_the_recipient_and_4xx_is_retried(
        newsroom: Context, smtpd: tuple[Handler, int]) -> None:
    handler, port = smtpd
    handler.reject = {"reader1@example.org"}
    handler.defer = {"reader2@example.org": 2}
    result = run_list(newsroom, RunRequest("weekly"), transport=smtp(port))
    assert result.send is not None
    assert result.send.counts == {"accepted": 5, "failed": 1}
    [(address, reason)] = result.send.failures
    assert address == "reader1@example.org" and "550" in reason
    delivered = [str(m["To"]) for m in handler.messages]
    assert delivered.count("reader2@example.org") == 1  # deferred twice, then once


def test_a_dropped_connection_is_reopened(newsroom: Context,
                                          smtpd: tuple[Handler, int]) -> None:
    handler, port = smtpd
    handler.drop_connection_once_at_rcpt = {"reader3@example.org"}
    transport = smtp(port)
    result = run_list(newsroom, RunRequest("weekly"), transport=transport)
    assert result.send is not None and result.send.counts == {"accepted": 6}
    assert transport.connections == 2
    assert sorted(str(m["To"]) for m in handler.messages).count("reader3@example.org") == 1


def test_rate_limit_spaces_messages(newsroom: Context, smtpd: tuple[Handler, int]) -> None:
    _, port = smtpd
    started = time.monotonic()
    result = run_list(newsroom, RunRequest("weekly"),
                      transport=smtp(port, rate=20.0, sleep=time.sleep))
    assert result.send is not None and result.send.counts == {"accepted": 6}
    assert time.monotonic() - started >= 5 / 20


def test_no_server_stops_the_send_with_nothing_lost(newsroom: Context) -> None:
    with pytest.raises(DeliveryError, match="cannot connect to the SMTP server"):
        run_list(newsroom, RunRequest("weekly"), transport=smtp(9, attempts=2))
