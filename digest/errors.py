"""The one exception root of the project, with subclasses that carry the facts."""

from __future__ import annotations


class DigestError(Exception):
    """Base of every error the tool reports to a user.

    ``hint`` says what the user can do about it; the CLI prints it under the message.
    """

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        """The message without the hint."""
        return str(self.args[0]) if self.args else ""


class ConfigError(DigestError):
    """A setting is unknown, mistyped or malformed."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None,
                 hint: str | None = None) -> None:
        where = []
        if key:
            where.append(f"key {key!r}")
        if source:
            where.append(f"in {source}")
        full = f"{message} ({', '.join(where)})" if where else message
        super().__init__(full, hint=hint)
        self.key = key
        self.source = source


class FeedError(DigestError):
    """A feed could not be fetched or parsed."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class NotFoundError(DigestError):
    """A named thing (list, feed, issue, subscriber) does not exist."""


class InvalidInputError(DigestError):
    """User input (an address, a CSV row, an expression) is not acceptable."""


class DeliveryError(DigestError):
    """A transport failed in a way that stops the whole send (bad credentials, no connection)."""
