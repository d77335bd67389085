"""Signed tokens for unsubscribe, preferences and confirmation links.

Tokens carry a subscription id, never an address. They are signed with the newest
secret key and checked against every key still listed, so keys can be rotated
without breaking links in emails already sent.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any

from itsdangerous import BadData, URLSafeSerializer, URLSafeTimedSerializer

from digest.errors import DigestError

PURPOSES = ("unsubscribe", "preferences", "confirm")


class InvalidToken(DigestError):
    """A token was tampered with, signed by an unknown key, or has expired."""


_URL_SAFE = bytes.maketrans(b"+/", b"-_")
# How the links in emails already sent were signed: pinned, so that a new itsdangerous
# with other defaults still reads them.
_SIGNING: dict[str, Any] = {"key_derivation": "django-concat", "digest_method": hashlib.sha1}


class Tokens:
    """Make and check the signed tokens of one instance."""

    def __init__(self, secret_keys: Sequence[str]) -> None:
        keys = [k for k in secret_keys if k]
        if not keys:
            raise ValueError("at least one secret key is needed")
        # itsdangerous signs with the last key and accepts all of them.
        ordered = list(reversed(keys))
        self._plain = {p: URLSafeSerializer(ordered, salt=f"digest.{p}", signer_kwargs=_SIGNING)
                       for p in PURPOSES}
        self._timed = URLSafeTimedSerializer(ordered, salt="digest.confirm.timed",
                                             signer_kwargs=_SIGNING)
        # A send makes two tokens for every recipient. Each is what the serializer's
        # dumps makes (payload, ".", signature; tests/test_tokens.py checks it), the
        # signature an HMAC under the key itsdangerous derives, keyed once per purpose and
        # copied per token (the standard library's way to sign many messages under one
        # key): far less work a token than itsdangerous' Signer, which derives the key
        # again for every signature, or dumps, which serializes the payload as well.
        self._keyed = {purpose: hmac.new(serializer.make_signer().derive_key(),
                                         digestmod=hashlib.sha1)
                       for purpose, serializer in self._plain.items()}
        # The web app's session cookies are signed with a key of their own.
        self.session_key = hmac.new(keys[0].encode("utf-8"), b"digest.session",
                                    "sha256").hexdigest()

    def make(self, purpose: str, subscription_id: int) -> str:
        """A token for ``purpose`` naming one subscription."""
        if purpose == "confirm":
            return str(self._timed.dumps(subscription_id))
        return self.maker(purpose)(subscription_id)

    def maker(self, purpose: str) -> Callable[[int], str]:
        """A function making ``purpose`` tokens (not "confirm"), for a send's hot loop."""
        keyed = self._keyed[purpose]
        b64 = binascii.b2a_base64

        def make(subscription_id: int) -> str:
            # The payload is the id's JSON (its digits) in URL-safe base64 without padding;
            # digits need no URL-safe translation, a 20-byte signature one "=" dropped.
            payload = b64(b"%d" % subscription_id, newline=False).rstrip(b"=")
            mac = keyed.copy()
            mac.update(payload)
            signature = b64(mac.digest(), newline=False)[:-1].translate(_URL_SAFE)
            return (payload + b"." + signature).decode("ascii")

        return make

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
