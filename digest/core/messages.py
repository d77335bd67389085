"""Compose RFC 5322 messages: multipart/alternative, text then HTML, UTF-8."""

from __future__ import annotations

import email.policy
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

# Lines stay under 998 octets and end in CRLF, as SMTP needs.
POLICY = email.policy.SMTP


def format_sender(name: str, address: str) -> str:
    """A From header value with the display name encoded as needed."""
    return formataddr((name, address)) if name else address


def domain_of(address: str) -> str:
    """The domain part of an address (for Message-ID and List-Id)."""
    return address.rsplit("@", 1)[-1].lower() if "@" in address else "localhost"


def compose(*, subject: str, sender: str, to: str, text: str, html: str | None = None,  # noqa: PLR0913 - keyword-only, one per part or header of a message
            headers: Mapping[str, str] | None = None, message_id: str | None = None,
            reply_to: str | None = None, date: datetime | None = None) -> EmailMessage:
    """One message: a text part, then an HTML alternative when there is one."""
    msg = EmailMessage(policy=POLICY)
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = to
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = message_id or f"<{datetime.now(UTC).timestamp():.6f}@{domain_of(sender)}>"
    msg["MIME-Version"] = "1.0"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text, charset="utf-8")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


def address_for_header(email_address: str, name: str = "") -> str:
    """A To header value; falls back to the bare address when it cannot be structured."""
    try:
        local, _, domain = email_address.rpartition("@")
        return str(Address(display_name=name, username=local, domain=domain))
    except (ValueError, IndexError):
        return email_address
