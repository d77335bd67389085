"""The SendGrid transport: v3 Mail Send through the official client, 1000 recipients a call.

The issue's HTML and text go once per request; each recipient's values go in
``substitutions`` (they reach only subject and content), their List-Unsubscribe headers
in ``personalizations[].headers``, and ids in ``custom_args`` (strings) so Event Webhook
events map back to the delivery record.

What an answer means for the batch:
- 202 (200 in sandbox mode): accepted; X-Message-Id goes on every record.
- 429: wait until X-RateLimit-Reset (bounded), then try again.
- 5xx, or a connection that failed before the request went out: back off and try
  again, bounded; when tries run out the send stops and the batch stays pending.
- 400/413: the batch fails, with SendGrid's error messages on each record.
- 401/403: the send stops at once (bad key, unverified sender).
- Connection lost or timed out after the request went out: uncertain.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import time
import urllib.error
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import parseaddr
from functools import partial
from json.encoder import encode_basestring_ascii
from typing import Any, Self

from python_http_client import exceptions as sg_errors
from sendgrid import SendGridAPIClient

from digest.errors import ConfigError, DeliveryError
from digest.services.storage.models import ACCEPTED, FAILED, UNCERTAIN
from digest.services.telemetry import metrics
from digest.services.telemetry.logs import fields
from digest.services.transports.base import (
    ONE_CLICK,
    HandOver,
    Outcome,
    OutgoingIssue,
    OutgoingRecipient,
    Transport,
    backoff,
    sendable,
)
from digest.settings import Settings

log = logging.getLogger(__name__)


def _error(code: int | str) -> None:
    metrics.TRANSPORT_ERRORS.labels("sendgrid", str(code)).inc()


MAX_RECIPIENTS = 1000
JSON_TEXT = {"Content-Type": "application/json; charset=utf-8"}
_json_string = encode_basestring_ascii  # a str as a JSON string literal, in C
# python_http_client logs every request's headers (the API key) and body (every address)
# at DEBUG: those lines are never written, whatever our own log level.
logging.getLogger("python_http_client").setLevel(logging.WARNING)


def sendgrid_errors(error: sg_errors.HTTPError) -> str:
    """SendGrid's own error messages from an error answer, joined for a person."""
    try:
        body = json.loads(error.body or b"{}")
        messages = [f"{e.get('message', '')}" + (f" (field {e['field']})" if e.get("field")
                                                 else "")
                    for e in body.get("errors", [])]
    except (ValueError, AttributeError, TypeError):
        messages = []
    return "; ".join(m for m in messages if m) or f"HTTP {error.status_code} {error.reason}"


class SendGridTransport(Transport):
    """Sends batches through SendGrid's v3 Mail Send API."""

    name = "sendgrid"
    batch_size = MAX_RECIPIENTS  # one request each: half the requests of 500
    # A request is mostly waiting for SendGrid's answer: the next batch is read, signed
    # and serialized meanwhile (python_http_client opens a connection per request, so
    # nothing is shared between the two threads but the client's settings).
    overlaps = True

    def __init__(  # noqa: PLR0913  (keyword-only, one a setting: from_settings)
            self, api_key: str, *, host: str = "https://api.sendgrid.com",
            timeout: float = 30.0, attempts: int = 5, max_wait: float = 60.0,
            sleep: Callable[[float], None] = time.sleep) -> None:
        if not api_key:
            raise ConfigError("no SendGrid API key: set SENDGRID_API_KEY",
                              key="sendgrid_api_key")
        self.client = SendGridAPIClient(api_key, host=host.rstrip("/"))
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_wait = max_wait
        self.sleep = sleep
        self.requests = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.sendgrid_api_key, host=settings.sendgrid_host,
                   timeout=settings.sendgrid_timeout, attempts=settings.retry_attempts,
                   max_wait=settings.retry_max_wait)

    def __repr__(self) -> str:  # never show the key
        return f"SendGridTransport(host={self.client.host!r})"

    def request_body(self, issue: OutgoingIssue,
                     recipients: Sequence[OutgoingRecipient]) -> str:
        """The v3 Mail Send body for one batch, as JSON text.

        What the recipients share is serialized once; each recipient's part is written
        from a template with its strings JSON-escaped by the json module's own C escaper:
        far less work than building a dict per recipient and serializing the whole
        (tests/test_sendgrid.py checks the text against the same body built as dicts).
        """
        if len(recipients) > MAX_RECIPIENTS:
            raise ValueError(f"a SendGrid request holds at most {MAX_RECIPIENTS} recipients")
        rendered = issue.rendered
        sender_name = issue.sender_name
        shared: dict[str, Any] = {
            "from": ({"email": issue.sender_email, "name": sender_name} if sender_name
                     else {"email": issue.sender_email}),
            "subject": rendered.subject,
            # text/plain must come before text/html.
            "content": [{"type": "text/plain", "value": rendered.text},
                        {"type": "text/html", "value": rendered.html}],
            "headers": dict(issue.headers),
            "categories": [issue.list_name[:255]],
            "custom_args": {"issue_id": str(issue.issue_id), "list": issue.list_name},
        }
        if issue.reply_to:
            shared["reply_to"] = {"email": issue.reply_to}
        if issue.sandbox:
            shared["mail_settings"] = {"sandbox_mode": {"enable": True}}
        q = _json_string
        # The issue's own markers, which stand only where its templates put them.
        k1, k2, k3, k4, k5, k6 = (q(token) for token in rendered.tokens)
        one_click = f'"List-Unsubscribe-Post":{q(ONE_CLICK)}'
        people = []
        for r in recipients:
            to = (f'{{"email":{q(r.email)},"name":{q(r.name)}}}' if r.name
                  else f'{{"email":{q(r.email)}}}')
            v1, v2, v3, v4, v5, v6 = r.values.parts()
            # A value that needs no HTML escaping is the same string in both parts
            # (links always are): escaped for JSON once.
            u1 = q(v1)
            u2 = u1 if v2 is v1 else q(v2)
            p1 = q(v3)
            p2 = p1 if v4 is v3 else q(v4)
            n1 = q(v5)
            n2 = n1 if v6 is v5 else q(v6)
            # u2 is the link as a JSON string, and JSON escapes neither "<" nor ">".
            headers = (f'"List-Unsubscribe":"<{u2[1:-1]}>",{one_click}'
                       if not r.headers else
                       ",".join([f"{q(k)}:{q(v)}" for k, v in r.own_headers().items()]))
            people.append(
                f'{{"to":[{to}],"substitutions":{{{k1}:{u1},{k2}:{u2},{k3}:{p1},'
                f'{k4}:{p2},{k5}:{n1},{k6}:{n2}}},"headers":{{{headers}}},'
                f'"custom_args":{{"delivery_id":"{r.delivery_id:d}",'
                f'"subscriber_id":"{r.subscriber_id:d}"}}}}')
        return ('{"personalizations":[' + ",".join(people) + "],"
                + json.dumps(shared, separators=(",", ":"))[1:])

    def _post(self, body: str) -> Any:
        """POST a Mail Send body that is JSON text already.

        Given a Content-Type other than exactly "application/json", the client sends a
        string body as it is instead of serializing it again; "application/json;
        charset=utf-8" is what SendGrid's own Node.js client sends.
        """
        return self.client.client.mail.send.post(request_body=body,
                                                 request_headers=JSON_TEXT,
                                                 timeout=self.timeout)

    def _wait_for_reset(self, error: sg_errors.HTTPError, attempt: int) -> float:
        reset = None
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            reset = float(error.headers.get("X-RateLimit-Reset"))
        wait = reset - time.time() if reset else backoff(attempt, self.max_wait)
        return min(max(wait, 0.05), self.max_wait)

    def send_batch(self, issue: OutgoingIssue,
                   recipients: Sequence[OutgoingRecipient]) -> list[Outcome]:
        return self.prepare_batch(issue, recipients)()

    def prepare_batch(self, issue: OutgoingIssue,
                      recipients: Sequence[OutgoingRecipient]) -> HandOver:
        """Build the request body now; the hand-over POSTs it (and retries). A recipient
        no message can be made for fails alone (transports.base.sendable)."""
        good, refused = sendable(recipients)
        if not good:
            return lambda: refused
        hand_over = partial(self._hand_over, self.request_body(issue, good),
                            [r.delivery_id for r in good])
        return hand_over if not refused else lambda: [*hand_over(), *refused]

    def _hand_over(self, body: str, ids: list[int]) -> list[Outcome]:
        def all_as(status: str, message_id: str | None = None,
                   error: str | None = None) -> list[Outcome]:
            return [Outcome(d, status, message_id=message_id, error=error) for d in ids]

        last_problem = ""
        for attempt in range(self.attempts):
            self.requests += 1
            try:
                response = self._post(body)
            except (sg_errors.UnauthorizedError, sg_errors.ForbiddenError) as e:
                _error(e.status_code)
                raise DeliveryError(
                    f"SendGrid refused the request ({e.status_code}): {sendgrid_errors(e)}",
                    hint="check SENDGRID_API_KEY (it needs the Mail Send permission) and "
                         "that the sender address or domain is verified") from None
            except (sg_errors.BadRequestsError, sg_errors.PayloadTooLargeError) as e:
                _error(e.status_code)
                return all_as(FAILED, error=f"SendGrid {e.status_code}: {sendgrid_errors(e)}")
            except sg_errors.TooManyRequestsError as e:
                wait = self._wait_for_reset(e, attempt)
                last_problem = "rate limited (429)"
                log.info("SendGrid rate limit; waiting %.1f s", wait,
                         extra=fields(duration=round(wait, 3), status=429))
                _error(429)
                metrics.RATE_LIMIT_WAITS.labels(self.name).inc()
                metrics.RATE_LIMIT_WAIT_SECONDS.labels(self.name).inc(wait)
                self.sleep(wait)
                continue
            except sg_errors.HTTPError as e:
                _error(e.status_code)
                if e.status_code >= 500:
                    last_problem = f"SendGrid {e.status_code}: {sendgrid_errors(e)}"
                    log.warning("%s; retrying", last_problem)
                    self.sleep(backoff(attempt, self.max_wait))
                    continue
                return all_as(FAILED, error=f"SendGrid {e.status_code}: {sendgrid_errors(e)}")
            except urllib.error.URLError as e:
                # urllib raises URLError only while connecting and sending: nothing was
                # accepted, so trying again cannot duplicate.
                last_problem = f"cannot reach SendGrid: {e.reason}"
                _error("connection")
                log.warning("%s; retrying", last_problem)
                self.sleep(backoff(attempt, self.max_wait))
                continue
            except (OSError, http.client.HTTPException) as e:
                # The request went out and no answer came back: SendGrid may have it.
                _error("no_answer")
                return all_as(UNCERTAIN, error=f"no answer from SendGrid after sending "
                                               f"({type(e).__name__}: {e})")
            status = response.status_code
            if status in (200, 202):
                message_id = response.headers.get("X-Message-Id") if response.headers \
                    else None
                return all_as(ACCEPTED, message_id=message_id)
            return all_as(UNCERTAIN, error=f"unexpected answer from SendGrid: HTTP {status}")
        raise DeliveryError(f"SendGrid did not take the batch after {self.attempts} tries: "
                            f"{last_problem}",
                            hint="nothing in this batch was sent; run the send again to "
                                 "resume")

    def send_message(self, message: EmailMessage) -> None:
        """Send one ready-made message (a confirmation, a test), retrying 429 and 5xx."""
        body = json.dumps(message_body(message))
        for attempt in range(self.attempts):
            try:
                self._post(body)
                return
            except sg_errors.TooManyRequestsError as e:
                self.sleep(self._wait_for_reset(e, attempt))
            except sg_errors.HTTPError as e:
                if e.status_code < 500:
                    raise DeliveryError(f"SendGrid refused the message ({e.status_code}): "
                                        f"{sendgrid_errors(e)}") from None
                self.sleep(backoff(attempt, self.max_wait))
            except urllib.error.URLError:
                self.sleep(backoff(attempt, self.max_wait))
        raise DeliveryError(f"SendGrid did not take the message after {self.attempts} tries")


# Headers SendGrid sets itself or takes from other fields of the request.
_OWN_HEADERS = {"subject", "from", "to", "reply-to", "date", "mime-version", "content-type",
                "content-transfer-encoding", "message-id"}


def message_body(message: EmailMessage) -> dict[str, Any]:
    """A v3 Mail Send body for one whole message (text, then HTML)."""
    def address(value: str) -> dict[str, str]:
        name, email_address = parseaddr(value)
        return {"email": email_address, "name": name} if name else {"email": email_address}

    content = []
    for subtype in ("plain", "html"):
        part = message.get_body((subtype,))
        if part is not None:
            content.append({"type": f"text/{subtype}", "value": part.get_content()})
    body: dict[str, Any] = {
        "personalizations": [{"to": [address(str(message["To"]))]}],
        "from": address(str(message["From"])), "subject": str(message["Subject"]),
        "content": content,
    }
    headers = {k: str(v) for k, v in message.items() if k.lower() not in _OWN_HEADERS}
    if headers:
        body["headers"] = headers
    if message["Reply-To"]:
        body["reply_to"] = address(str(message["Reply-To"]))
    return body
