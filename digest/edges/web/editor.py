"""Editor pages: sign in, dashboard, preview, edit, approve, send a test, send now."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from digest.edges.web.base import WebApp
from digest.edges.web.security import (
    client_address,
    csrf_ok,
    csrf_token,
    current_editor,
    editor_only,
    sign_in,
)
from digest.errors import DigestError
from digest.services import metrics
from digest.services.dashboard import dashboard
from digest.services.editing import (
    StaleEdit,
    apply_change,
    approve,
    dropped_entries,
    edit_diff,
    edit_version,
    preview,
    save_edit,
    segments,
    send_test,
)
from digest.services.editors import audit, audit_log, authenticate, end_sessions, start_session
from digest.services.pipeline import RunRequest, run_list
from digest.services.recording import audience_size
from subscribers.lists import get_list

log = logging.getLogger(__name__)


def _safe_next(target: str) -> str:
    """Only local paths: a sign-in link must not send editors elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/editor"


def _wait_text(seconds: float) -> str:
    """"12 seconds", "4 minutes": how long a refused sign-in waits, rounded up."""
    if seconds <= 90:
        n = max(1, math.ceil(seconds))
        return f"{n} second{'s' if n != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


def _ints(form: FormData, name: str) -> list[int]:
    return [int(str(v)) for v in form.getlist(name) if str(v).isdigit()]


def routes(web: WebApp) -> list[tuple[str, Callable[..., Any], list[str]]]:
    """(path, endpoint, methods) of the editor pages."""
    ctx = web.ctx

    async def login(request: Request) -> Response:
        next_path = _safe_next(request.query_params.get("next", "/editor"))
        if request.method in ("GET", "HEAD"):
            return web.page(request, "web/login.html", {
                "csrf": csrf_token(request), "error": "", "next": next_path, "name": ""})
        form = await request.form()
        if not csrf_ok(request, form.get("csrf")):
            return web.forbidden(request)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        # Sign-ins count against the address they come from, never the name: a
        # stranger guessing at an editor's name slows only themselves. Each failure
        # doubles the wait before the next try; a full window locks the address out.
        # The try is counted before the password is checked, and forgotten when right.
        address = f"ip:{client_address(request)}"
        wait = await run_in_threadpool(web.login_limit.attempt, address,
                                       ctx.settings.login_delay_seconds)
        if wait > 0:
            log.warning("sign-in refused (too many attempts) for %r from %s", name,
                        client_address(request))
            metrics.SIGN_IN_FAILURES.labels("rate_limited").inc()
            refused = web.page(request, "web/login.html", {
                "csrf": csrf_token(request), "next": next_path, "name": name,
                "error": f"Too many failed sign-ins from your address. Wait "
                         f"{_wait_text(wait)} and try again."}, status=429)
            refused.headers["Retry-After"] = str(math.ceil(wait))
            return refused
        if not await run_in_threadpool(authenticate, ctx.db, name, password):
            log.info("failed sign-in for %r from %s", name, client_address(request))
            metrics.SIGN_IN_FAILURES.labels("password").inc()
            return web.page(request, "web/login.html", {
                "csrf": csrf_token(request), "next": next_path, "name": name,
                "error": "That name and password do not match."}, status=401)
        await run_in_threadpool(web.login_limit.clear, address)
        token = await run_in_threadpool(start_session, ctx.db, name,
                                        ctx.settings.session_hours)
        sign_in(request, token)
        await run_in_threadpool(audit, ctx.db, name, "sign in", f"from {client_address(request)}")
        return RedirectResponse(_safe_next(str(form.get("next", next_path))), status_code=303)

    async def logout(request: Request) -> Response:
        """Sign out everywhere: every session of this editor ends, so no copy of any of
        their cookies signs anyone in again."""
        form = await request.form()
        if not csrf_ok(request, form.get("csrf")):
            return web.forbidden(request)
        name = current_editor(request)
        if name is not None:
            ended = await run_in_threadpool(end_sessions, ctx.db, name)
            await run_in_threadpool(audit, ctx.db, name, "sign out",
                                    f"{ended} session{'s' if ended != 1 else ''} ended")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @editor_only
    async def home(request: Request) -> Response:
        board = await run_in_threadpool(dashboard, ctx)
        return web.page(request, "web/dashboard.html", {
            "board": board, "csrf": csrf_token(request),
            "notice": request.query_params.get("notice", "")})

    def list_name_of(request: Request) -> str:
        return str(request.path_params["name"])

    @editor_only
    async def issue_page(request: Request) -> Response:
        return await show_issue(request, request.query_params.get("segment", ""),
                                check=False)

    @editor_only
    async def issue_links_page(request: Request) -> Response:
        """The issue page with every link checked. A POST with this session's CSRF
        token, never a GET: the check makes the server fetch whatever the issue links to,
        and no other site may make an editor's browser ask for that."""
        form = await checked_form(request)
        if form is None:
            return web.forbidden(request)
        return await show_issue(request, str(form.get("segment", "")), check=True)

    async def show_issue(request: Request, segment: str, *, check: bool) -> Response:
        name = list_name_of(request)

        def gather() -> dict[str, Any]:
            with ctx.db.session() as session:
                mailing_list = get_list(session, name)
                list_id, title = mailing_list.id, mailing_list.title
            shown = preview(ctx, name, segment)
            checked = None
            if shown is not None and check:
                from digest.services.linkcheck import check_links, issue_links
                checked = {r.url: r for r in check_links(
                    issue_links(shown.html, ctx.settings.base_url),
                    allow_private=ctx.settings.fetch_allow_private)}
            version, by = edit_version(ctx, name)
            draft = shown.draft if shown is not None else None
            return {"list_name": name, "list_title": title, "shown": shown,
                    "segment": segment, "segments": segments(ctx, name),
                    "audience": audience_size(ctx, list_id), "checked": checked,
                    "version": version, "version_by": by,
                    "dropped_entries": dropped_entries(ctx, draft.edit if draft else None),
                    "diff": edit_diff(ctx, draft)}

        try:
            values = await run_in_threadpool(gather)
        except DigestError as e:
            return web.page(request, "web/message.html", {"title": "Cannot show this issue",
                                                          "text": e.message}, status=404)
        return web.page(request, "web/issue.html", {
            **values, "csrf": csrf_token(request),
            "notice": request.query_params.get("notice", ""),
            "segment_q": quote(segment)})

    @editor_only
    async def issue_email(request: Request) -> Response:
        name = list_name_of(request)
        part = request.query_params.get("part", "html")
        shown = await run_in_threadpool(preview, ctx, name,
                                        request.query_params.get("segment", ""))
        if shown is None:
            return Response("Nothing new for the next issue.", media_type="text/plain")
        if part == "text":
            return Response(shown.text, media_type="text/plain; charset=utf-8")
        # The email runs no script and loads nothing from here.
        return Response(shown.html, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": "default-src 'none'; img-src * data:; "
                                       "style-src 'unsafe-inline'; frame-ancestors 'self'; "
                                       "sandbox allow-popups allow-popups-to-escape-sandbox"})

    def back(name: str, notice: str, segment: str = "") -> Response:
        url = f"/editor/lists/{quote(name)}?notice={quote(notice)}"
        if segment:
            url += f"&segment={quote(segment)}"
        return RedirectResponse(url, status_code=303)

    async def checked_form(request: Request) -> FormData | None:
        form = await request.form()
        return form if csrf_ok(request, form.get("csrf")) else None

    @editor_only
    async def edit(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return web.forbidden(request)
        name, editor = list_name_of(request), current_editor(request) or ""
        moves = {}
        for key, value in form.multi_items():
            if key.startswith("move-") and key[5:].isdigit() and str(value):
                moves[int(key[5:])] = str(value)
        # Position i shows the section chosen in the i-th select (first choice wins).
        order = list(dict.fromkeys(str(v) for v in form.getlist("order")))
        changed = await run_in_threadpool(lambda: save_edit(
            ctx, name, editor, subject=str(form.get("subject", "")),
            intro=str(form.get("intro", "")), dropped=_ints(form, "drop"), moves=moves,
            section_order=order if form.get("reorder") == "yes" else None))
        return back(name, "Saved: " + "; ".join(changed) if changed else "No changes.",
                    str(form.get("segment", "")))

    @editor_only
    async def change(request: Request) -> Response:
        """One workbench change as JSON: {"version": n, "op": …}. The CSRF token comes in
        the X-CSRF-Token header. 409 with the other editor's name for a stale version."""
        if not csrf_ok(request, request.headers.get("x-csrf-token")):
            return JSONResponse({"error": "This page expired: reload it."}, status_code=403)
        try:
            body = await request.json()
            version = int(body["version"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "a change needs a JSON body with its version"},
                                status_code=400)
        name, editor = list_name_of(request), current_editor(request) or ""
        try:
            new_version, changed = await run_in_threadpool(
                apply_change, ctx, name, editor, body, version)
        except StaleEdit as e:
            return JSONResponse({"error": e.message, "by": e.by, "version": e.version},
                                status_code=409)
        except DigestError as e:
            return JSONResponse({"error": e.message}, status_code=400)
        except (ValueError, TypeError, AttributeError):  # a hand-made body of the wrong shape
            return JSONResponse({"error": "that change is not one the workbench makes"},
                                status_code=400)
        return JSONResponse({"version": new_version, "changed": changed})

    @editor_only
    async def test(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return web.forbidden(request)
        name, editor = list_name_of(request), current_editor(request) or ""
        segment = str(form.get("segment", ""))
        try:
            to = await run_in_threadpool(lambda: send_test(
                ctx, name, str(form.get("address", "")), editor, segment=segment))
        except DigestError as e:
            return back(name, f"Test not sent: {e.message}", segment)
        return back(name, f"Test sent to {to}.", segment)

    @editor_only
    async def approve_issue(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return web.forbidden(request)
        name = list_name_of(request)
        number = await run_in_threadpool(approve, ctx, name, current_editor(request) or "")
        return back(name, f"Issue {number} approved.")

    @editor_only
    async def send_now(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return web.forbidden(request)
        name, editor = list_name_of(request), current_editor(request) or ""

        def start() -> str:
            with ctx.db.session() as session:
                list_id = get_list(session, name).id
            audience = audience_size(ctx, list_id)
            if str(form.get("confirm_list", "")) != name or \
                    str(form.get("audience", "")) != str(audience):
                return (f"Not sent: confirm sending to {name} ({audience} active "
                        "subscribers) again; the numbers changed.")
            audit(ctx.db, editor, "send now", f"to {audience} subscribers", list_id)
            # What was previewed is what goes out: no collecting first.
            threading.Thread(target=_send, args=(name,), daemon=False,
                             name=f"send-{name}").start()
            return f"Sending to {audience} subscribers of {name} started."

        def _send(list_name: str) -> None:
            try:
                result = run_list(ctx, RunRequest(list_name, collect_first=False))
                log.info("send now of %s: %s", list_name,
                         result.send.counts if result.send else "nothing new")
            except Exception:
                log.exception("send now of %s failed", list_name)

        notice = await run_in_threadpool(start)
        return RedirectResponse(f"/editor?notice={quote(notice)}", status_code=303)

    @editor_only
    async def audit_page(request: Request) -> Response:
        entries = await run_in_threadpool(audit_log, ctx.db)
        return web.page(request, "web/audit.html", {"entries": entries,
                                                    "csrf": csrf_token(request)})

    return [
        ("/login", login, ["GET", "POST"]),
        ("/logout", logout, ["POST"]),
        ("/editor", home, ["GET"]),
        ("/editor/audit", audit_page, ["GET"]),
        ("/editor/lists/{name}", issue_page, ["GET"]),
        ("/editor/lists/{name}/links", issue_links_page, ["POST"]),
        ("/editor/lists/{name}/change", change, ["POST"]),
        ("/editor/lists/{name}/email", issue_email, ["GET"]),
        ("/editor/lists/{name}/edit", edit, ["POST"]),
        ("/editor/lists/{name}/test", test, ["POST"]),
        ("/editor/lists/{name}/approve", approve_issue, ["POST"]),
        ("/editor/lists/{name}/send", send_now, ["POST"]),
    ]
