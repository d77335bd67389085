"""Transports, chosen by name.

A transport's module (and the client library it needs) is imported only when that
transport is chosen, so a command that sends nothing never loads sendgrid or smtplib.
"""

from __future__ import annotations

from importlib import import_module

from digest.errors import ConfigError
from digest.services.transports.base import Outcome, OutgoingIssue, OutgoingRecipient, Transport
from digest.settings import Settings

# name → "module:class"
TRANSPORTS: dict[str, str] = {
    "outbox": "digest.services.transports.outbox:OutboxTransport",
    "locmem": "digest.services.transports.locmem:LocmemTransport",
    "smtp": "digest.services.transports.smtp:SMTPTransport",
    "sendgrid": "digest.services.transports.sendgrid:SendGridTransport",
}

__all__ = [
    "TRANSPORTS",
    "Outcome",
    "OutgoingIssue",
    "OutgoingRecipient",
    "Transport",
    "batch_size",
    "make_transport",
    "transport_class",
]


def transport_class(name: str) -> type[Transport]:
    """The transport class registered under ``name``; a clear error for an unknown one."""
    try:
        module, _, attribute = TRANSPORTS[name].partition(":")
    except KeyError:
        raise ConfigError(f"unknown transport {name!r}; known: {', '.join(TRANSPORTS)}",
                          key="transport") from None
    found: type[Transport] = getattr(import_module(module), attribute)
    return found


def make_transport(settings: Settings, name: str | None = None) -> Transport:
    """The transport named by ``name`` or the ``transport`` setting."""
    return transport_class(name or settings.transport).from_settings(settings)


def batch_size(settings: Settings) -> int:
    """Recipients handed to the transport at once: the ``batch_size`` setting, or when it
    is 0 (the default) the size that suits the configured transport."""
    return settings.batch_size or transport_class(settings.transport).batch_size
