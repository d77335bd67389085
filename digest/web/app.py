"""Build the Starlette app: public pages, editor pages, webhooks, and security headers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from digest.context import Context
from digest.rendering import template_dir
from digest.web import editor, public
from digest.web.base import WebApp

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "SAMEORIGIN",
}
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-src 'self'; frame-ancestors 'self'; form-action 'self'")


class SecurityHeaders:
    """Adds security headers to every response (a page's own CSP wins)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in {**SECURITY_HEADERS,
                                    "Content-Security-Policy": PAGE_CSP}.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(ctx: Context, *,
               on_start: Callable[[], Awaitable[None]] | None = None,
               on_stop: Callable[[], Awaitable[None]] | None = None) -> Starlette:
    """The web app for a context; ``on_start``/``on_stop`` run with the server (scheduler)."""
    web = WebApp(ctx)
    if web.webhook_key is None:
        log.warning("no sendgrid_webhook_public_key: SendGrid events are accepted unsigned")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_start is not None:
            await on_start()
        try:
            yield
        finally:
            if on_stop is not None:
                await on_stop()

    routes: list[BaseRoute] = [
        Route("/healthz", health),
        Mount("/static", StaticFiles(directory=template_dir() / "web" / "static"),
              name="static"),
    ]
    for path, endpoint, methods in [*public.routes(web), *editor.routes(web)]:
        routes.append(Route(path, endpoint, methods=methods))
    https = ctx.settings.base_url.startswith("https://")
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=ctx.tokens.session_key,
                   session_cookie="digest_session", same_site="lax", https_only=https,
                   max_age=ctx.settings.session_hours * 3600),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.web = web
    return app
