"""Transports, chosen by name."""

from __future__ import annotations

from digest.errors import ConfigError
from digest.settings import Settings
from digest.transports.base import Outcome, OutgoingIssue, OutgoingRecipient, Transport
from digest.transports.locmem import LocmemTransport
from digest.transports.outbox import OutboxTransport
from digest.transports.sendgrid import SendGridTransport
from digest.transports.smtp import SMTPTransport

TRANSPORTS: dict[str, type[Transport]] = {
    OutboxTransport.name: OutboxTransport,
    LocmemTransport.name: LocmemTransport,
    SMTPTransport.name: SMTPTransport,
    SendGridTransport.name: SendGridTransport,
}

__all__ = [
    "TRANSPORTS",
    "Outcome",
    "OutgoingIssue",
    "OutgoingRecipient",
    "Transport",
    "make_transport",
]


def make_transport(settings: Settings, name: str | None = None) -> Transport:
    """The transport named by ``name`` or the ``transport`` setting."""
    chosen = name or settings.transport
    try:
        factory = TRANSPORTS[chosen]
    except KeyError:
        raise ConfigError(f"unknown transport {chosen!r}; known: {', '.join(TRANSPORTS)}",
                          key="transport") from None
    return factory.from_settings(settings)
