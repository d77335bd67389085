"""Build the Starlette app: public pages, editor pages, webhooks, and security headers."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from digest.core.rendering import template_dir
from digest.edges.web import editor, public
from digest.edges.web.base import PAGE_CSP, WebApp, no_scheduler, web_of
from digest.edges.web.security import BodyLimit, EditorSessions, current_editor
from digest.services.storage.context import Context
from digest.services.storage.db import schema_problem, schema_revision
from digest.services.telemetry import metrics
from schedules.daemon import scheduler_leads
from schedules.worker import RunWorker

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "SAMEORIGIN",
}


class SecurityHeaders:
    """Adds security headers to every response (a page's own CSP wins), and
    ``Cache-Control: no-store`` to every one but the static files: editor pages and the
    pages a token opens (unsubscribe, preferences, confirm) must stay in no cache, and
    any page may carry a CSRF token or an editor's name."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        wanted = {**SECURITY_HEADERS, "Content-Security-Policy": PAGE_CSP}
        if not scope["path"].startswith("/static/"):
            wanted["Cache-Control"] = "no-store"

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in wanted.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class RequestMetrics:
    """Counts every request by route template (never the path itself: it may hold a
    token) and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def noting_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if isinstance(route, Mount):
                path += "/…"
            metrics.WEB_REQUESTS.labels(path, scope.get("method", ""), str(status[0])).inc()


def health_report(ctx: Context, scheduler: Callable[[], str]) -> tuple[bool, dict[str, Any]]:
    """(healthy, what /healthz says): the database, its schema, the scheduler's role."""
    report: dict[str, Any] = {"database": "unreachable", "schema": None,
                              "schema_at_head": False, "scheduler": scheduler()}
    try:
        with ctx.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as e:  # whatever the driver raises: say what, never the URL
        report["problem"] = f"database unreachable ({type(e).__name__})"
        return False, report
    revision = schema_revision(ctx.db.engine)
    problem = schema_problem(revision)
    report.update(database="reachable", schema=revision, schema_at_head=problem is None)
    if problem:
        report["problem"] = problem
        return False, report
    return True, report


def _from_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    proxied = any(h in request.headers for h in ("x-forwarded-for", "forwarded"))
    return not proxied and (host.startswith("127.") or host in ("::1", "localhost"))


def _is_scraper(request: Request, metrics_token: str) -> bool:
    """Whether /metrics would answer this request: its bearer token, or (with none set)
    this machine, not through a proxy."""
    if metrics_token:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {metrics_token}".encode())
    return _from_loopback(request)


async def health(request: Request) -> Response:
    """/healthz: ok or unhealthy to anyone; what and why to editors and the monitor."""
    web = web_of(request)
    healthy, report = await run_in_threadpool(health_report, web.ctx, web.scheduler_state)
    # Anyone may ask whether the service is up; what it runs and where it hurts is
    # for its editors and its monitor.
    shown = (report if current_editor(request)
             or _is_scraper(request, web.ctx.settings.metrics_token) else {})
    return JSONResponse({"status": "ok" if healthy else "unhealthy", **shown},
                        status_code=200 if healthy else 503,
                        headers={"Cache-Control": "no-store"})


async def metrics_page(request: Request) -> Response:
    """/metrics for Prometheus: to its bearer token, or (with none set) this machine."""
    metrics_token = web_of(request).ctx.settings.metrics_token
    if metrics_token:
        if not _is_scraper(request, metrics_token):
            return PlainTextResponse("a bearer token is needed", status_code=401,
                                     headers={"WWW-Authenticate": "Bearer"})
    elif not _from_loopback(request):
        return PlainTextResponse("/metrics answers only this machine; set metrics_token "
                                 "to scrape it from elsewhere", status_code=403)
    body = await run_in_threadpool(metrics.exposition)
    return Response(body, media_type=metrics.CONTENT_TYPE,
                    headers={"Cache-Control": "no-store"})


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 as pages of ours (bare text has no title, no lang)."""
    web = web_of(request)
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return web.not_found(request)
    return web.page(request, "web/message.html", {
        "title": str(getattr(exc, "detail", "")) or "Error",
        "text": "This address does not answer that kind of request."}, status=status)


def create_app(ctx: Context, *,
               on_start: Callable[[], Awaitable[None]] | None = None,
               on_stop: Callable[[], Awaitable[None]] | None = None,
               scheduler_state: Callable[[], str] = no_scheduler) -> Starlette:
    """The web app for a context; ``on_start``/``on_stop`` run with the server (scheduler),
    ``scheduler_state`` says "leader", "standby" or "off" for /healthz."""
    web = WebApp(ctx, scheduler_state)
    if web.webhook_key is None:
        log.warning("no sendgrid_webhook_public_key: /webhooks/sendgrid refuses every "
                    "SendGrid event (403) until it is set")

    # "Send now" runs: left to the scheduler while one leads, else carried out here, on
    # one thread this app owns and joins when it stops.
    runs = RunWorker(ctx, defer=lambda: scheduler_leads(ctx))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_start is not None:
            await on_start()
        runs.nudge()  # one asked for before this app (re)started
        try:
            yield
        finally:
            try:
                if on_stop is not None:
                    await on_stop()
            finally:
                await run_in_threadpool(runs.close)

    routes: list[BaseRoute] = [
        Route("/healthz", health),
        Route("/metrics", metrics_page),
        Mount("/static", StaticFiles(directory=template_dir() / "web" / "static"),
              name="static"),
        *public.ROUTES,
        *editor.ROUTES,
    ]
    https = ctx.settings.base_url.startswith("https://")
    middleware = [
        Middleware(RequestMetrics),
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, form_bytes=ctx.settings.web_max_form_bytes,
                   webhook_bytes=ctx.settings.web_max_webhook_bytes),
        Middleware(SessionMiddleware, secret_key=ctx.tokens.session_key,
                   session_cookie="digest_session", same_site="lax", https_only=https,
                   max_age=ctx.settings.session_hours * 3600),
        Middleware(EditorSessions, db=ctx.db),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.web = web
    app.state.runs = runs
    return app
