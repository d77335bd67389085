"""Signed tokens for unsubscribe, preferences and confirmation links.

Tokens carry a subscription id, never an address. They are signed with the newest
secret key and checked against every key still listed, so keys can be rotated
without breaking links in emails already sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from itsdangerous import BadData, URLSafeSerializer, URLSafeTimedSerializer

from digest.errors import DigestError

PURPOSES = ("unsubscribe", "preferences", "confirm")


class InvalidToken(DigestError):
    """A token was tampered with, signed by an unknown key, or has expired."""


class Tokens:
    """Make and check the signed tokens of one instance."""

    def __init__(self, secret_keys: Sequence[str]) -> None:
        keys = [k for k in secret_keys if k]
        if not keys:
            raise ValueError("at least one secret key is needed")
        # itsdangerous signs with the last key and accepts all of them.
        ordered = list(reversed(keys))
        self._plain = {p: URLSafeSerializer(ordered, salt=f"digest.{p}") for p in PURPOSES}
        self._timed = URLSafeTimedSerializer(ordered, salt="digest.confirm.timed")

    def make(self, purpose: str, subscription_id: int) -> str:
        """A token for ``purpose`` naming one subscription."""
        if purpose == "confirm":
            return str(self._timed.dumps(subscription_id))
        return str(self._plain[purpose].dumps(subscription_id))

    def read(self, purpose: str, token: str, *, max_age: int | None = None) -> int:
        """The subscription id in a token; raise :class:`InvalidToken` if it is not good."""
        try:
            if purpose == "confirm":
                value = self._timed.loads(token, max_age=max_age)
            else:
                value = self._plain[purpose].loads(token)
        except (BadData, KeyError) as e:
            raise InvalidToken("this link is not valid (changed, or from elsewhere)") from e
        if not isinstance(value, int):
            raise InvalidToken("this link is not valid")
        return value
