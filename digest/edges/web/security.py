"""Sessions, CSRF tokens, sign-in checks and rate limits of the web app."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import wraps

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from digest.services.db import Database, utcnow
from digest.services.models import RateHit

Endpoint = Callable[[Request], Awaitable[Response]]


class RateLimiter:
    """At most ``limit`` events per key in a sliding window of ``seconds``, counted in the
    database so that every instance of the web app shares one allowance.

    Keys (an IP address, a sign-in name) are stored only as hashes. Blocking calls: run
    them in a thread from async code.
    """

    def __init__(self, db: Database, bucket: str, limit: int, seconds: float) -> None:
        self.db, self.bucket, self.limit, self.seconds = db, bucket, limit, seconds

    def _key(self, key: str) -> str:
        return hashlib.sha256(f"{self.bucket}:{key}".encode()).hexdigest()

    def _count(self, session: Session, key: str, now: datetime) -> int:
        since = now - timedelta(seconds=self.seconds)
        return session.scalar(select(func.count()).select_from(RateHit).where(
            RateHit.bucket == self.bucket, RateHit.key == key, RateHit.at > since)) or 0

    def blocked(self, key: str) -> bool:
        """Whether ``key`` has used up its window (records nothing)."""
        with self.db.session() as session:
            return self._count(session, self._key(key), utcnow()) >= self.limit

    def hit(self, key: str) -> bool:
        """Record one event; False when it is over the limit (then it is not recorded)."""
        hashed, now = self._key(key), utcnow()
        with self.db.session() as session:
            # Events older than the window go first (every key's, so keys that never
            # come back do not pile up): the table holds one window at most.
            session.execute(delete(RateHit).where(
                RateHit.bucket == self.bucket,
                RateHit.at <= now - timedelta(seconds=self.seconds)))
            if self._count(session, hashed, now) >= self.limit:
                return False
            session.add(RateHit(bucket=self.bucket, key=hashed, at=now))
            return True


def client_address(request: Request) -> str:
    """The address a request came from (for limits and logs)."""
    return request.client.host if request.client else "unknown"


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, submitted: object) -> bool:
    """Whether a submitted form's token is this session's."""
    expected = request.session.get("csrf")
    return (isinstance(expected, str) and isinstance(submitted, str)
            and hmac.compare_digest(expected, submitted))


def current_editor(request: Request) -> str | None:
    """The signed-in editor's name, if any."""
    name = request.session.get("editor")
    return name if isinstance(name, str) else None


def editor_only(endpoint: Endpoint) -> Endpoint:
    """Refuse anonymous requests: pages redirect to sign-in, other requests get 401."""
    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        if current_editor(request) is None:
            if request.method == "GET":
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            return Response("sign in first", status_code=401)
        return await endpoint(request)
    return guarded
