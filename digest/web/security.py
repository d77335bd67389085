"""Sessions, CSRF tokens, sign-in checks and rate limits of the web app."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import wraps

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]


class RateLimiter:
    """At most ``limit`` events per key in a sliding window of ``seconds`` (one process)."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.seconds:
            events.popleft()
        return events

    def blocked(self, key: str) -> bool:
        """Whether ``key`` has used up its window (records nothing)."""
        with self._lock:
            return len(self._recent(key, time.monotonic())) >= self.limit

    def hit(self, key: str) -> bool:
        """Record one event; False when it is over the limit (then it is not recorded)."""
        with self._lock:
            events = self._recent(key, time.monotonic())
            if len(events) >= self.limit:
                return False
            events.append(time.monotonic())
            if len(self._events) > 100_000:  # forget idle keys rather than grow forever
                self._events = {k: v for k, v in self._events.items() if v}
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
