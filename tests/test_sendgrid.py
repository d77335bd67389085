"""The SendGrid transport against a loopback stand-in that speaks the v3 API."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from digest.core.rendering import Recipient, RenderedIssue
from digest.edges.cli import cli
from digest.errors import DeliveryError
from digest.services.feeds.collect import add_feed
from digest.services.pipeline import RunRequest, run_list
from digest.services.storage.context import Context
from digest.services.storage.models import Delivery, SendBatch
from digest.services.transports.base import OutgoingIssue, OutgoingRecipient
from digest.services.transports.sendgrid import SendGridTransport
from subscribers.lists import create_list
from subscribers.subscriptions import add_subscriber
from tests.feedserver import FeedServer, rss
from tests.sendgrid_standin import SendGridStandIn, schema_errors
from tests.test_send import recap

KEY = "SG.test-key-do-not-log"


@pytest.fixture
def standin() -> Iterator[SendGridStandIn]:
    server = SendGridStandIn(KEY)
    yield server
    server.close()


def transport(standin: SendGridStandIn, **kwargs: object) -> SendGridTransport:
    options: dict[str, object] = {"host": standin.url, "timeout": 1.0, "attempts": 4,
                                  "max_wait": 1.0, "sleep": lambda s: time.sleep(min(s, 0.3))}
    options.update(kwargs)
    return SendGridTransport(KEY, **options)  # type: ignore[arg-type]


@pytest.fixture
def newsroom(ctx: Context, feed_server: FeedServer) -> Context:
    ctx.settings = ctx.settings.replace(batch_size=2)
    add_feed(ctx.db, feed_server.add("/f.xml", body=rss([recap(1), recap(2, tags=["Syria"])])))
    create_list(ctx.db, "weekly", "The Weekly Recap")
    for i in range(5):
        add_subscriber(ctx.db, "weekly", f"reader{i}@example.org", name=f"Reader {i}")
    return ctx


def deliveries(ctx: Context) -> list[tuple[str, str | None, str | None]]:
    with ctx.db.session() as s:
        return [(d.status, d.message_id, d.error)
                for d in s.scalars(select(Delivery).order_by(Delivery.id))]


def test_batches_follow_the_published_schema_and_limits(newsroom: Context,
                                                        standin: SendGridStandIn) -> None:
    result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.send is not None and result.send.counts == {"accepted": 5}
    assert standin.rejections == []
    assert len(standin.bodies) == 3  # batches of 2, 2 and 1
    for body in standin.bodies:
        assert schema_errors(body) == []
        assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
        assert body["categories"] == ["weekly"]
        assert body["custom_args"] == {"issue_id": "1", "list": "weekly"}
        text, html = body["content"][0]["value"], body["content"][1]["value"]
        # The substitution keys are the issue's own markers, found in what was sent.
        key = RenderedIssue(body["subject"], html, text, "").tokens[0]
        for p in body["personalizations"]:
            unsubscribe = p["headers"]["List-Unsubscribe"]
            assert p["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            url = unsubscribe[1:-1]
            # The HTML goes once; each recipient's link arrives through substitutions.
            assert p["substitutions"][key] == url
            assert html.count(key) == 1 and url not in html
            assert all(isinstance(v, str) for v in p["custom_args"].values())
            assert p["custom_args"]["delivery_id"].isdigit()
    assert sum(standin.accepted.values()) == 5 and max(standin.accepted.values()) == 1
    # X-Message-Id on every record of a batch.
    ids = [m for _, m, _ in deliveries(newsroom)]
    assert all(ids) and ids[0] == ids[1] != ids[2]


def test_the_validator_catches_what_sendgrid_refuses() -> None:
    assert schema_errors({"personalizations": []})  # no from, subject, content
    body = {"personalizations": [{"to": [{"email": "a@example.org"}],
                                  "custom_args": {"n": 1}}],
            "from": {"email": "d@example.org"}, "subject": "s",
            "content": [{"type": "text/html", "value": "h"},
                        {"type": "text/plain", "value": "t"}],
            "custom_args": {"issue": 3}}
    problems = " ".join(schema_errors(body))
    assert "text/plain must come first" in problems
    assert "custom_args: values must be strings" in problems


def test_429_waits_for_the_reset_then_retries(newsroom: Context,
                                              standin: SendGridStandIn) -> None:
    standin.faults = ["429", "429"]
    started = time.monotonic()
    result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.send is not None and result.send.counts == {"accepted": 5}
    assert time.monotonic() - started >= 0.2
    assert max(standin.accepted.values()) == 1


def test_5xx_is_retried_with_backoff(newsroom: Context, standin: SendGridStandIn) -> None:
    standin.faults = ["500", "503", None, "500"]
    result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.send is not None and result.send.counts == {"accepted": 5}
    assert standin.requests == 6 and max(standin.accepted.values()) == 1


def test_400_fails_the_batch_with_sendgrids_message(newsroom: Context,
                                                    standin: SendGridStandIn) -> None:
    standin.faults = ["400"]
    result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.send is not None
    assert result.send.counts == {"failed": 2, "accepted": 3}
    assert not result.send.ok
    reasons = {reason for _, reason in result.send.failures}
    assert any("verified Sender Identity" in r for r in reasons)


def test_bad_key_stops_at_once_and_nothing_is_lost(newsroom: Context,
                                                   standin: SendGridStandIn,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad = SendGridTransport("SG.wrong-key", host=standin.url, timeout=1.0)
    with pytest.raises(DeliveryError, match="401"):
        run_list(newsroom, RunRequest("weekly"), transport=bad)
    assert standin.requests == 1
    assert {s for s, _, _ in deliveries(newsroom)} == {"pending"}
    assert "SG.wrong-key" not in caplog.text and KEY not in caplog.text
    # With the right key the same issue goes out, once.
    result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.resumed and result.send is not None
    assert result.send.counts == {"accepted": 5}


def test_connection_lost_after_sending_is_uncertain_and_resent_only_when_asked(
        newsroom: Context, standin: SendGridStandIn) -> None:
    standin.faults = [None, "drop_after_accept", "slow"]
    standin.slow_seconds = 2.0  # the client gives up after 1 s: the request was sent
    result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.send is not None
    assert result.send.counts == {"accepted": 2, "uncertain": 3}
    assert not result.send.ok
    assert all("no answer from SendGrid" in reason for _, reason in result.send.failures)
    again = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert again.nothing_new  # not resent silently
    resent = run_list(newsroom, RunRequest("weekly", resend_uncertain=True),
                      transport=transport(standin))
    assert resent.send is not None and resent.send.counts == {"accepted": 5}


def test_unreachable_sendgrid_stops_the_send_with_the_batch_still_pending(
        newsroom: Context) -> None:
    dead = SendGridTransport(KEY, host="http://127.0.0.1:9", timeout=1.0, attempts=2,
                             sleep=lambda s: None)
    with pytest.raises(DeliveryError, match="cannot reach SendGrid"):
        run_list(newsroom, RunRequest("weekly"), transport=dead)
    assert {s for s, _, _ in deliveries(newsroom)} == {"pending"}


def test_cli_sandbox_and_key_from_environment(runner: CliRunner, tmp_path: Path,
                                              feed_server: FeedServer,
                                              standin: SendGridStandIn) -> None:
    env = {"SENDGRID_API_KEY": KEY, "DIGEST_TRANSPORT": "sendgrid",
           "DIGEST_SENDGRID_HOST": standin.url}
    for args in (["feeds", "add", feed_server.add("/f.xml", body=rss([recap(1)]))],
                 ["lists", "create", "--list", "weekly"],
                 ["subscribers", "add", "a@example.org", "--list", "weekly"]):
        assert runner.invoke(cli, args, env=env).exit_code == 0
    result = runner.invoke(cli, ["-v", "send", "--list", "weekly", "--sandbox"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 accepted" in result.output and KEY not in result.output
    assert standin.requests == 1 and not standin.accepted  # validated, not delivered
    config = runner.invoke(cli, ["config"], env=env)
    assert KEY not in config.output
    # The sandbox run used up nothing: the real send still has the issue to send.
    result = runner.invoke(cli, ["send", "--list", "weekly"], env=env)
    assert result.exit_code == 0, result.output
    assert standin.accepted == {"a@example.org": 1}
    assert "Issue 1 of weekly" in result.output
    # Without a key the error says what to set.
    result = runner.invoke(cli, ["send", "--list", "weekly", "--no-collect"],
                           env={**env, "SENDGRID_API_KEY": ""})
    assert result.exit_code == 1 and "SENDGRID_API_KEY" in result.output


def test_the_vendored_spec_is_the_shared_one() -> None:
    from tests.sendgrid_standin import SPEC
    shared = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sendgrid" / \
        "tsg_mail_v3.json"
    if not shared.exists():
        pytest.skip(f"no {shared} beside this clone to compare with")
    assert SPEC.read_bytes() == shared.read_bytes(), "refresh tests/reference/sendgrid"


def _body_as_dicts(issue: OutgoingIssue, recipients: list[OutgoingRecipient]) -> dict[str, Any]:
    """The Mail Send body built the plain way, as the transport's text must read."""
    return {
        "personalizations": [
            {"to": [{"email": r.email, "name": r.name} if r.name else {"email": r.email}],
             "substitutions": issue.rendered.substitutions(r.values),
             "headers": r.own_headers(),
             "custom_args": {"delivery_id": str(r.delivery_id),
                             "subscriber_id": str(r.subscriber_id)}}
            for r in recipients],
        "from": {"email": issue.sender_email, "name": issue.sender_name},
        "subject": issue.rendered.subject,
        "content": [{"type": "text/plain", "value": issue.rendered.text},
                    {"type": "text/html", "value": issue.rendered.html}],
        "headers": dict(issue.headers), "categories": [issue.list_name],
        "custom_args": {"issue_id": str(issue.issue_id), "list": issue.list_name},
        "reply_to": {"email": issue.reply_to}}


def test_the_next_batch_is_read_and_built_while_a_request_is_in_flight(
        newsroom: Context, standin: SendGridStandIn) -> None:
    """SendGrid's answer is waited for beside the next batch's work, one request at a
    time: each request is held until the database shows the next batch claimed."""
    def next_batch_claimed() -> bool:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with newsroom.db.engine.connect() as conn:
                if conn.scalar(select(func.count()).select_from(SendBatch)
                               .where(SendBatch.status == "claimed")):
                    return True
            time.sleep(0.01)
        return False

    seen: list[bool] = []
    standin.on_request = lambda: seen.append(next_batch_claimed())
    result = run_list(newsroom, RunRequest("weekly"),
                      transport=transport(standin, timeout=5.0))
    assert result.send is not None and result.send.counts == {"accepted": 5}
    assert seen == [True, True, False]  # batches of 2, 2 and 1: nothing after the last
    assert standin.most_in_flight == 1
    assert sorted(standin.accepted.values()) == [1] * 5


def test_a_batch_that_cannot_go_leaves_the_one_prepared_behind_it_pending(
        newsroom: Context, standin: SendGridStandIn) -> None:
    standin.faults = ["503"] * 4  # every try of the first batch
    with pytest.raises(DeliveryError, match="did not take the batch after 4 tries"):
        run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    with newsroom.db.session() as session:
        assert set(session.scalars(select(SendBatch.status))) == {"pending"}
    assert {s for s, _, _ in deliveries(newsroom)} == {"pending"}
    assert not standin.accepted
    result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.resumed and result.send is not None
    assert result.send.counts == {"accepted": 5}
    assert sorted(standin.accepted.values()) == [1] * 5


def test_the_clients_debug_log_never_holds_the_recipients(
        newsroom: Context, standin: SendGridStandIn,
        caplog: pytest.LogCaptureFixture) -> None:
    """python_http_client logs each request's body (readers' addresses and links) and
    headers (the API key) at DEBUG; with our own log at DEBUG (`digest -v`) those lines
    are never written."""
    with caplog.at_level(logging.DEBUG):
        result = run_list(newsroom, RunRequest("weekly"), transport=transport(standin))
    assert result.send is not None and result.send.counts == {"accepted": 5}
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # ours were written
    assert not [r for r in caplog.records if r.name.startswith("python_http_client")]
    assert "reader0@example.org" not in caplog.text and KEY not in caplog.text
    assert len(standin.bodies) == 3  # and the bodies arrived whole


def test_the_request_text_is_the_body_a_dict_would_give() -> None:
    issue = OutgoingIssue(
        issue_id=7, list_id=1, list_name="weekly", list_title="The \"Weekly\"", number=3,
        rendered=RenderedIssue("Iran & Syria — \u201cRecap\u201d", "<p>h\u00e9\u0644</p>",
                               "t\u00e9xt\n\ttab", ""),
        sender="x", sender_email="desk@news.example", sender_name="The Desk \u00e9",
        reply_to="r@news.example", headers={"List-Id": "The <weekly.news.example>"})
    names = ["", "Ann", 'Quote " and \\ backslash', "ليلى", "tab\tnew\nline\x00\x7f",
             "emoji \U0001f600 & <b>"]
    recipients = [OutgoingRecipient(
        i + 1, 100 + i, f"reader{i}@example.org", name,
        Recipient(f"https://d.example/u/{i}.abc", f"https://d.example/p/{i}.a&b", name),
        # As a send makes them (the one-click headers only), and with a header more.
        {"X-Entity-Ref-ID": f"ref {i} \u00e9 \"q\""} if i % 2 else {}, f"<m{i}@x>")
        for i, name in enumerate(names)]
    text = SendGridTransport(KEY).request_body(issue, recipients)
    assert text.isascii()
    assert json.loads(text) == _body_as_dicts(issue, recipients)
    headers = [p["headers"] for p in json.loads(text)["personalizations"]]
    assert headers[0] == {"List-Unsubscribe": "<https://d.example/u/0.abc>",
                          "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert headers[1]["X-Entity-Ref-ID"] == 'ref 1 \u00e9 "q"' and len(headers[1]) == 3
    assert schema_errors(json.loads(text)) == []
