"""The outbox transport: one .eml file per recipient, written atomically."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Self

from digest.services.storage.db import utcnow
from digest.services.storage.files import open_private, private_folder
from digest.services.storage.models import ACCEPTED, FAILED
from digest.services.transports.base import (
    Outcome,
    OutgoingIssue,
    OutgoingRecipient,
    RecipientError,
    Transport,
    build_message,
)
from digest.settings import Settings

_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")


class OutboxTransport(Transport):
    """Writes ``outbox_dir/<list>-<number>/<delivery>-<address>.eml``.

    A file is written under a temporary name and renamed into place, so a file that
    exists is complete; after a crash that existence proves the message went out.
    """

    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(Path(settings.outbox_dir))

    def issue_dir(self, issue: OutgoingIssue) -> Path:
        """The folder one issue's messages go in."""
        return self.directory / f"{issue.list_name}-{issue.number:04d}"

    def path_for(self, issue: OutgoingIssue, recipient: OutgoingRecipient) -> Path:
        """Where one recipient's message is written."""
        safe = _UNSAFE.sub("_", recipient.email)[:120]
        return self.issue_dir(issue) / f"{recipient.delivery_id:08d}-{safe}.eml"

    def _write(self, path: Path, message: EmailMessage) -> None:
        # A message holds its reader's address and signed links, and its name says whom
        # it is for: the folder and the file are the owner's alone.
        private_folder(path.parent)
        temporary = path.with_suffix(".tmp")
        with open_private(temporary, "wb") as handle:
            handle.write(message.as_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def send_batch(self, issue: OutgoingIssue,
                   recipients: Sequence[OutgoingRecipient]) -> list[Outcome]:
        outcomes = []
        for recipient in recipients:
            path = self.path_for(issue, recipient)
            try:
                self._write(path, build_message(issue, recipient))
            except RecipientError as e:
                outcomes.append(e.outcome(recipient.delivery_id))
                continue
            except OSError as e:
                outcomes.append(Outcome(recipient.delivery_id, FAILED,
                                        error=f"cannot write {path}: {e.strerror}"))
                continue
            outcomes.append(Outcome(recipient.delivery_id, ACCEPTED,
                                    message_id=recipient.message_id or path.name))
        return outcomes

    def already_sent(self, issue: OutgoingIssue,
                     recipients: Sequence[OutgoingRecipient]) -> set[int]:
        return {r.delivery_id for r in recipients if self.path_for(issue, r).exists()}

    def send_message(self, message: EmailMessage) -> None:
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        to = _UNSAFE.sub("_", str(message["To"]))[:120]
        self._write(self.directory / "single" / f"{stamp}-{to}.eml", message)
