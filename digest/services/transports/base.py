"""The transport contract: open, close, send a batch → one outcome per recipient."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from functools import partial
from types import MappingProxyType, TracebackType
from typing import ClassVar, NamedTuple, Self

from digest.core.messages import address_for_header, compose
from digest.core.rendering import Recipient, RenderedIssue
from digest.errors import DigestError
from digest.services.storage.models import FAILED
from digest.settings import Settings


def backoff(attempt: int, max_wait: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential, full jitter.

    The jitter keeps many workers retrying at once from moving in step.
    """
    return float(min(max_wait, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0))


@dataclass(frozen=True)
class OutgoingIssue:
    """What every recipient of a batch shares."""

    issue_id: int
    list_id: int
    list_name: str
    list_title: str
    number: int
    rendered: RenderedIssue
    sender: str          # From header value
    sender_email: str
    sender_name: str = ""
    reply_to: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # List-Id and the like
    sandbox: bool = False


NO_HEADERS: Mapping[str, str] = MappingProxyType({})
ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058's List-Unsubscribe-Post value


# Recipients and outcomes are named tuples: a send makes one of each per recipient, and a
# tuple is made far more cheaply than a frozen dataclass, which sets each field through
# object.__setattr__.
class OutgoingRecipient(NamedTuple):
    """One recipient of a batch, with the values and headers that are theirs alone.

    Every recipient's message carries RFC 8058's one-click unsubscribe headers, made from
    their unsubscribe link (:meth:`own_headers`); ``headers`` holds any others.
    """

    delivery_id: int
    subscriber_id: int
    email: str
    name: str
    values: Recipient
    headers: Mapping[str, str] = NO_HEADERS
    message_id: str = ""

    def own_headers(self) -> dict[str, str]:
        """The headers of this recipient's message alone: List-Unsubscribe and
        List-Unsubscribe-Post, then ``headers``."""
        return {"List-Unsubscribe": f"<{self.values.unsubscribe_url}>",
                "List-Unsubscribe-Post": ONE_CLICK, **self.headers}


class Outcome(NamedTuple):
    """What happened to one recipient of a batch."""

    delivery_id: int
    status: str  # accepted, failed, uncertain
    message_id: str | None = None
    error: str | None = None


# A batch made ready to go: calling it hands the batch over and gives its outcomes.
HandOver = Callable[[], list[Outcome]]


class RecipientError(DigestError):
    """No message can be made for one recipient (their name or address holds what no
    email can carry). It fails that recipient's delivery, with ``reason``; the rest of
    the batch goes."""

    def __init__(self, email: str, reason: str) -> None:
        super().__init__(f"no message can be made for {email!r}: {reason}",
                         hint="correct the subscriber (digest subscribers add ADDRESS "
                              "--list LIST --name NAME), then send again")
        self.email = email
        self.reason = reason

    def outcome(self, delivery_id: int) -> Outcome:
        """The failed outcome of the delivery it stopped."""
        return Outcome(delivery_id, FAILED, error=self.reason)


# What str.splitlines() splits at, which the email package refuses in a header value:
# names entering now are cleaned of them (subscribers.fields), but older rows may not be.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def unfit(recipient: OutgoingRecipient) -> str | None:
    """Why no message can carry this recipient's name or address; None when one can."""
    if recipient.name.isprintable() and recipient.email.isprintable():
        return None  # no line break is printable: the usual case, checked at once
    for what, value in (("name", recipient.name), ("address", recipient.email)):
        if value.isprintable():  # no line break is printable
            continue
        for char in value:
            if char in _LINE_BREAKS:
                return (f"the subscriber's {what} holds U+{ord(char):04X}, a line break, "
                        "which no email header can carry")
    return None


def sendable(recipients: Sequence[OutgoingRecipient]
             ) -> tuple[list[OutgoingRecipient], list[Outcome]]:
    """The recipients a message can be made for, and a failed outcome for each other
    one (for transports that hand the values over rather than whole messages)."""
    good: list[OutgoingRecipient] = []
    refused: list[Outcome] = []
    for recipient in recipients:
        reason = unfit(recipient)
        if reason is None:
            good.append(recipient)
        else:
            refused.append(RecipientError(recipient.email, reason).outcome(
                recipient.delivery_id))
    return good, refused


def build_message(issue: OutgoingIssue, recipient: OutgoingRecipient) -> EmailMessage:
    """The full message one recipient gets (for transports that send whole messages).

    Raise :class:`RecipientError` when it cannot be made for this recipient.
    """
    html, text = issue.rendered.personalize(recipient.values)
    try:
        return compose(subject=issue.rendered.subject, sender=issue.sender,
                       to=address_for_header(recipient.email, recipient.name), text=text,
                       html=html, headers={**issue.headers, **recipient.own_headers()},
                       message_id=recipient.message_id or None, reply_to=issue.reply_to)
    except ValueError as e:  # the email package's refusals (UnicodeError is one too)
        raise RecipientError(recipient.email, unfit(recipient)
                             or f"the message cannot be made: {e}") from e


class Transport(ABC):
    """Sends batches of one issue. Use it as a context manager: open, send…, close."""

    name: ClassVar[str]
    # Recipients a batch when the batch_size setting leaves it to the transport: a batch
    # is one claim, three database transactions and, after a crash, the most recipients
    # whose delivery can be uncertain.
    batch_size: ClassVar[int] = 500
    # Whether a batch's hand-over (see prepare_batch) may run on a thread of its own while
    # the sender prepares the next batch: for transports whose hand-over is mostly waiting
    # on the network, with nothing of the caller's thread (its database connection) in it.
    overlaps: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Make the transport from the settings."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Get ready to send (connect, log in)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    def send_batch(self, issue: OutgoingIssue,
                   recipients: Sequence[OutgoingRecipient]) -> list[Outcome]:
        """Send the issue to each recipient; one outcome each, in any order."""

    def prepare_batch(self, issue: OutgoingIssue,
                      recipients: Sequence[OutgoingRecipient]) -> HandOver:
        """Do what comes before a batch's hand-over, on the caller's thread; return the
        hand-over itself. By default everything is in the hand-over (``send_batch``)."""
        return partial(self.send_batch, issue, recipients)

    def already_sent(self, issue: OutgoingIssue,
                     recipients: Sequence[OutgoingRecipient]) -> set[int]:
        """Delivery ids among ``recipients`` known to have gone out (after a crash).

        Transports that cannot tell return an empty set; those deliveries become uncertain.
        """
        return set()

    def send_message(self, message: EmailMessage) -> None:
        """Send one ready-made message (confirmations, tests)."""
        raise NotImplementedError(f"the {self.name} transport cannot send single messages")

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
