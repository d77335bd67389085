"""The in-memory transport: keeps messages in a list, for tests and dry runs."""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from typing import ClassVar, Self

from digest.services.storage.models import ACCEPTED
from digest.services.transports.base import (
    Outcome,
    OutgoingIssue,
    OutgoingRecipient,
    RecipientError,
    Transport,
    build_message,
)
from digest.settings import Settings


class LocmemTransport(Transport):
    """Appends every message to the class-wide ``outbox`` list (like Django's locmem)."""

    name = "locmem"
    outbox: ClassVar[list[EmailMessage]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    def send_batch(self, issue: OutgoingIssue,
                   recipients: Sequence[OutgoingRecipient]) -> list[Outcome]:
        outcomes = []
        for recipient in recipients:
            try:
                self.outbox.append(build_message(issue, recipient))
            except RecipientError as e:
                outcomes.append(e.outcome(recipient.delivery_id))
                continue
            outcomes.append(Outcome(recipient.delivery_id, ACCEPTED,
                                    message_id=recipient.message_id))
        return outcomes

    def send_message(self, message: EmailMessage) -> None:
        self.outbox.append(message)
