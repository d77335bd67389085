"""What every page handler shares: the context, templates, limits and page helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from digest.core.rendering import long_date, template_dir
from digest.core.words import counted
from digest.edges.web.security import RateLimiter, current_editor
from digest.services.storage.context import Context
from subscribers.events import load_key

# The largest row id or issue number a URL or form may name: both databases' 32-bit
# integer. A bigger one names nothing (SQLite would refuse it with an error, not a miss).
MAX_ROW_NUMBER = 2**31 - 1


def row_number(text: object) -> int | None:
    """A row id or issue number written in a URL or form, or None when it is none (not
    only ASCII digits, or too big to be one)."""
    value = str(text)
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        return None
    number = int(value)
    return number if number <= MAX_ROW_NUMBER else None


def page_csp(images: str = "'self' data:") -> str:
    """The Content-Security-Policy of a page, whose images may come from ``images``."""
    return (f"default-src 'self'; img-src {images}; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; frame-src 'self'; frame-ancestors 'self'; form-action 'self'")


PAGE_CSP = page_csp()


def no_scheduler() -> str:
    """The scheduler's role in a web app served without one: "off"."""
    return "off"


class WebApp:
    """The long-lived state of one web app, kept on ``app.state.web``; every handler
    finds it there with ``web_of(request)``.

    ``scheduler_state`` says whether the scheduler serving beside it is the "leader", a
    "standby" or "off" (for /healthz)."""

    def __init__(self, ctx: Context, scheduler_state: Callable[[], str] = no_scheduler) -> None:
        self.ctx = ctx
        self.scheduler_state = scheduler_state
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())),
                                 autoescape=True, undefined=jinja2.StrictUndefined,
                                 trim_blocks=True, lstrip_blocks=True)
        env.filters["longdate"] = long_date
        env.globals["counted"] = counted
        self.templates = Jinja2Templates(env=env)
        s = ctx.settings
        self.subscribe_limit = RateLimiter(ctx.db, "subscribe", s.subscribe_per_ip_per_hour,
                                           3600)
        self.login_limit = RateLimiter(ctx.db, "sign-in", s.login_attempts_per_15_minutes,
                                       900)
        self.webhook_key = (load_key(s.sendgrid_webhook_public_key)
                            if s.sendgrid_webhook_public_key else None)

    def page(self, request: Request, name: str, values: dict[str, Any] | None = None,
             status: int = 200) -> Response:
        """A page from templates/web, with the signed-in editor (if any) known to it."""
        context = {"editor": current_editor(request), **(values or {})}
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def forbidden(self, request: Request) -> Response:
        """The answer to a form without this session's CSRF token."""
        return self.page(request, "web/message.html", {
            "title": "This form expired",
            "text": "Go back, reload the page and try again."}, status=403)

    def not_found(self, request: Request) -> Response:
        """A 404 page."""
        return self.page(request, "web/message.html", {
            "title": "Not found", "text": "There is no page here."}, status=404)


def web_of(request: Request) -> WebApp:
    """The WebApp of the app answering ``request`` (create_app puts it on app.state)."""
    web: WebApp = request.app.state.web
    return web


def plain_error(status: int, text: str) -> Response:
    """A minimal HTML error page (for errors outside any template)."""
    return HTMLResponse(f"<!DOCTYPE html><title>{status}</title><p>{text}</p>",
                        status_code=status)
