"""Sessions, CSRF tokens, sign-in checks, rate limits and body limits of the web app.

The session cookie (Starlette's, signed) holds only a CSRF token and, once an editor has
signed in, the random id of a server-side session (digest.services.building.editors): who is
signed in is looked up in the database on every request, never taken from the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from digest.errors import DigestError
from digest.services.building.editors import session_editor
from digest.services.storage.db import Database, utcnow
from digest.services.storage.models import RateHit

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


class RateLimiter:
    """At most ``limit`` events per key in a sliding window of ``seconds``, counted in the
    database so that every instance of the web app shares one allowance.

    Keys (IP addresses) are stored only as hashes. Blocking calls: run
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

    def hit(self, key: str) -> bool:
        """Record one event; False when it is over the limit (then it is not recorded)."""
        hashed, now = self._key(key), utcnow()
        with self.db.session() as session:
            self._begin(session, hashed, now)
            if self._count(session, hashed, now) >= self.limit:
                return False
            session.add(RateHit(bucket=self.bucket, key=hashed, at=now))
            return True

    def attempt(self, key: str, delay: float) -> float:
        """Record one attempt by ``key``, unless it must wait first; the seconds it must
        wait (0: recorded, go ahead).

        With the window used up, it waits until the oldest event leaves the window;
        before that, ``delay`` after its latest event, doubled for each earlier one in
        the window. Recorded before the work it guards, so requests sent all at once
        cannot all slip in before the first one is counted.
        """
        hashed, now = self._key(key), utcnow()
        with self.db.session() as session:
            self._begin(session, hashed, now)
            count, oldest, latest = session.execute(
                select(func.count(), func.min(RateHit.at), func.max(RateHit.at))
                .where(RateHit.bucket == self.bucket, RateHit.key == hashed)).one()
            if count >= self.limit:
                free_at = oldest + timedelta(seconds=self.seconds)
            elif count:
                free_at = latest + timedelta(
                    seconds=min(delay * 2 ** (count - 1), self.seconds))
            else:
                free_at = now
            if free_at > now:
                return (free_at - now).total_seconds()
            session.add(RateHit(bucket=self.bucket, key=hashed, at=now))
            return 0.0

    def _begin(self, session: Session, hashed: str, now: datetime) -> None:
        if self.db.is_postgres:
            # One event of a key at a time, as SQLite's single writer gives: under READ
            # COMMITTED two at once would both count the same events and both pass.
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                            {"key": f"recap-digest-rate:{hashed}"})
        # Events older than the window go (every key's, so keys that never come back do
        # not pile up): the table holds one window at most.
        session.execute(delete(RateHit).where(
            RateHit.bucket == self.bucket,
            RateHit.at <= now - timedelta(seconds=self.seconds)))

    def clear(self, key: str) -> None:
        """Forget ``key``'s events (a sign-in that succeeded)."""
        with self.db.session() as session:
            session.execute(delete(RateHit).where(RateHit.bucket == self.bucket,
                                                  RateHit.key == self._key(key)))


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
    """The signed-in editor's name, if any (as EditorSessions found it in the database)."""
    name = getattr(request.state, "editor", None)
    return name if isinstance(name, str) else None


def sign_in(request: Request, token: str) -> None:
    """Make this browser's session the server-side session ``token`` (a new cookie: no
    value from before signing in carries over)."""
    request.session.clear()
    request.session["sid"] = token
    csrf_token(request)


class EditorSessions:
    """Looks up, on each request, the server-side session the cookie names, so that
    ``current_editor`` says who is signed in now: a session that was ended (signed out,
    a new password, the editor removed) or has expired signs nobody in, and its id is
    dropped from the cookie. Goes inside Starlette's SessionMiddleware."""

    def __init__(self, app: Any, db: Database) -> None:
        self.app, self.db = app, db

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/static/"):
            cookie = scope.get("session", {})
            token, name = cookie.get("sid"), None
            if isinstance(token, str):
                name = await run_in_threadpool(session_editor, self.db, token)
                if name is None:
                    cookie.pop("sid", None)
            scope.setdefault("state", {})["editor"] = name
        await self.app(scope, receive, send)


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


class RequestTooLarge(DigestError):
    """A request body passed its limit while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class BodyLimit:
    """Caps every request body: ``webhook_bytes`` under /webhooks/, ``form_bytes``
    elsewhere. A Content-Length over the cap is answered 413 before anything is read; a
    body without one (chunked) is counted as it streams in, and answered 413 once it
    passes the cap. The answer closes the connection, so the rest is never read either;
    so does any answer given before its request's body was read to the end (a page that
    refuses a request unread), instead of the server draining whatever is still coming.
    """

    def __init__(self, app: Any, form_bytes: int, webhook_bytes: int) -> None:
        self.app, self.form_bytes, self.webhook_bytes = app, form_bytes, webhook_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.webhook_bytes if scope["path"].startswith("/webhooks/") \
            else self.form_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        chunked = any(k == b"transfer-encoding" for k, _ in scope["headers"])
        received, started = 0, False
        complete = not chunked and declared in (None, b"0")

        async def counting() -> Any:
            nonlocal received, complete
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit)
                complete = complete or not message.get("more_body", False)
            return message

        async def noting_start(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not complete:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counting, noting_start)
        except RequestTooLarge:
            if started:  # too late to answer 413: the connection just ends
                raise
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Any, receive: Any, send: Any, limit: int) -> None:
        log.warning("request to %s refused: body over %d bytes", scope["path"], limit)
        answer = PlainTextResponse(
            f"This request is larger than the {limit} bytes this address accepts.",
            status_code=413, headers={"Connection": "close"})
        await answer(scope, receive, send)
