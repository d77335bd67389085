"""Signed tokens for unsubscribe, preferences and confirmation links.

Tokens carry a subscription id, never an address. They are signed with the newest
secret key and checked against every key still listed, so keys can be rotated
without breaking links in emails already sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from itsdangerous import BadData, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

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
        # Making a token is on the hot path of a send (two per recipient). This produces
        # exactly what URLSafeSerializer.dumps does (tests/test_tokens.py checks it):
        # payload, ".", base64 of HMAC-SHA1 under the derived key; but the key is derived
        # once and the HMAC takes the C fast path.
        self._keys = {purpose: serializer.make_signer().derive_key()
                      for purpose, serializer in self._plain.items()}
        # The web app's session cookies are signed with a key of their own.
        self.session_key = hmac.new(keys[0].encode("utf-8"), b"digest.session",
                                    "sha256").hexdigest()

    def make(self, purpose: str, subscription_id: int) -> str:
        """A token for ``purpose`` naming one subscription."""
        if purpose == "confirm":
            return str(self._timed.dumps(subscription_id))
        payload = base64_encode(str(int(subscription_id)).encode("ascii"))
        signature = base64_encode(hmac.digest(self._keys[purpose], payload, "sha1"))
        return (payload + b"." + signature).decode("ascii")

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
