"""The SMTP transport: one connection reused, re-opened on failure, rate-limited.

Each message goes MAIL, RCPT, DATA by hand so the moment of risk is known: a failure
before the server has the whole message is safe to retry; a connection lost while
waiting for the answer to DATA leaves the message uncertain.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Self

from digest.errors import DeliveryError
from digest.services.storage.models import ACCEPTED, FAILED, UNCERTAIN
from digest.services.telemetry import metrics
from digest.services.telemetry.logs import fields
from digest.services.transports.base import (
    Outcome,
    OutgoingIssue,
    OutgoingRecipient,
    RecipientError,
    Transport,
    backoff,
    build_message,
)
from digest.settings import Settings

log = logging.getLogger(__name__)


class _Retry(Exception):
    """A temporary failure (4xx or a lost connection before DATA): try again."""


class SMTPTransport(Transport):
    """Sends each recipient's message over one SMTP connection."""

    name = "smtp"
    # Messages go one by one, a round trip each: a small batch keeps what a crash can leave
    # uncertain to a moment of sending, and a larger one would save little, as the time
    # goes into those round trips.
    batch_size = 100

    def __init__(self, host: str, port: int, *, security: str = "none", username: str = "",  # noqa: PLR0913 - one per smtp_* setting
                 password: str = "", rate: float = 0.0, attempts: int = 5,
                 max_wait: float = 60.0, timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.host, self.port, self.security = host, port, security
        self.username, self._password = username, password
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.attempts = max(1, attempts)
        self.max_wait = max_wait
        self.timeout = timeout
        self.sleep = sleep
        self.conn: smtplib.SMTP | None = None
        self._last_send = 0.0
        self.connections = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.smtp_host, settings.smtp_port, security=settings.smtp_security,
                   username=settings.smtp_username, password=settings.smtp_password,
                   rate=settings.smtp_rate, attempts=settings.retry_attempts,
                   max_wait=settings.retry_max_wait)

    def __repr__(self) -> str:  # never show the password
        return f"SMTPTransport({self.host}:{self.port}, {self.security})"

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        conn: smtplib.SMTP
        if self.security == "tls":
            conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                    context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        conn.ehlo()
        if self.security == "starttls":
            conn.starttls(context=context)
            conn.ehlo()
        if self.username:
            try:
                conn.login(self.username, self._password)
            except smtplib.SMTPAuthenticationError as e:
                conn.close()
                raise DeliveryError(f"the SMTP server {self.host}:{self.port} refused the "
                                    f"login ({e.smtp_code})",
                                    hint="check smtp_username and smtp_password") from None
        self.connections += 1
        return conn

    def _connection(self) -> smtplib.SMTP:
        if self.conn is None:
            for attempt in range(self.attempts):
                try:
                    self.conn = self._connect()
                    break
                except (OSError, smtplib.SMTPException) as e:
                    if attempt == self.attempts - 1:
                        raise DeliveryError(
                            f"cannot connect to the SMTP server {self.host}:{self.port}: {e}",
                            hint="nothing in this batch was sent; run the send again to "
                                 "resume") from None
                    self.sleep(backoff(attempt, self.max_wait))
        assert self.conn is not None
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None

    def open(self) -> None:
        self._connection()

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.conn.quit()
            self._drop()

    def _pace(self) -> None:
        if self.interval:
            wait = self._last_send + self.interval - time.monotonic()
            if wait > 0:
                self.sleep(wait)
        self._last_send = time.monotonic()

    def _send_once(self, sender: str, recipient: str, data: bytes) -> Outcome | None:
        """One try: an Outcome when settled, None when it needs another try."""
        conn = self._connection()
        options = ["SMTPUTF8"] if not recipient.isascii() and conn.has_extn("smtputf8") \
            else []
        try:
            code, reply = conn.mail(sender, options)
            if code != 250:
                return self._judge(code, reply, "MAIL FROM")
            code, reply = conn.rcpt(recipient)
            if code not in (250, 251):
                conn.rset()
                return self._judge(code, reply, "RCPT TO")
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            self._drop()
            metrics.TRANSPORT_ERRORS.labels("smtp", "connection").inc()
            raise _Retry(f"connection lost before the message was sent: {e}") from None
        try:
            code, reply = conn.data(data)
        except smtplib.SMTPDataError as e:
            return self._judge(e.smtp_code, e.smtp_error, "DATA")
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            self._drop()
            return Outcome(0, UNCERTAIN, error=f"connection lost while the server took the "
                                               f"message: {e}")
        return Outcome(0, ACCEPTED, message_id=reply.decode("utf-8", "replace")[:300])

    @staticmethod
    def _judge(code: int, reply: bytes | str, step: str) -> Outcome:
        said = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
        text = f"{step} refused: {code} {said}"
        metrics.TRANSPORT_ERRORS.labels("smtp", str(code)).inc()
        if 400 <= code < 500:
            if code in (421, 450, 451, 452):
                metrics.RATE_LIMIT_WAITS.labels("smtp").inc()
            raise _Retry(text)
        return Outcome(0, FAILED, error=text)

    def deliver_one(self, sender: str, recipient: str, message: EmailMessage) -> Outcome:
        """Send one message with retries for temporary failures."""
        data = message.as_bytes()
        problem = ""
        for attempt in range(self.attempts):
            self._pace()
            try:
                outcome = self._send_once(sender, recipient, data)
            except _Retry as e:
                problem = str(e)
                # No address in the log: the reply may name it, so it is scrubbed too.
                wait = backoff(attempt, self.max_wait)
                log.info("SMTP %s; retrying in %.1f s", problem, wait,
                         extra=fields(duration=round(wait, 3)))
                metrics.RATE_LIMIT_WAIT_SECONDS.labels("smtp").inc(wait)
                self.sleep(wait)
                continue
            if outcome is not None:
                return outcome
        return Outcome(0, FAILED, error=f"gave up after {self.attempts} tries: {problem}")

    def send_batch(self, issue: OutgoingIssue,
                   recipients: Sequence[OutgoingRecipient]) -> list[Outcome]:
        outcomes = []
        for r in recipients:
            try:
                message = build_message(issue, r)
            except RecipientError as e:
                outcomes.append(e.outcome(r.delivery_id))
                continue
            outcome = self.deliver_one(issue.sender_email, r.email, message)
            outcomes.append(Outcome(r.delivery_id, outcome.status,
                                    message_id=r.message_id if outcome.status == ACCEPTED
                                    else None, error=outcome.error))
        return outcomes

    def send_message(self, message: EmailMessage) -> None:
        sender = message["From"].addresses[0].addr_spec
        to = message["To"].addresses[0].addr_spec
        outcome = self.deliver_one(sender, to, message)
        if outcome.status != ACCEPTED:
            raise DeliveryError(f"could not send to {to}: {outcome.error}")
