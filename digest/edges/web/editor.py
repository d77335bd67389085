"""Editor pages: sign in, dashboard, preview, edit, approve, send a test, send now.

Each page is one module-level handler; what it shares with the others (the context,
templates, limits) it finds on ``request.app.state`` through ``web_of``.
"""

from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from digest.core.words import counted
from digest.edges.web.base import WebApp, row_number, web_of
from digest.edges.web.security import (
    client_address,
    csrf_ok,
    csrf_token,
    current_editor,
    editor_only,
    sign_in,
)
from digest.errors import DigestError
from digest.services.building.editing import (
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
from digest.services.building.editors import (
    audit,
    audit_log,
    authenticate,
    end_sessions,
    start_session,
)
from digest.services.delivery.recording import audience_size
from digest.services.operations.dashboard import dashboard
from digest.services.telemetry import metrics
from schedules.runner import request_run
from subscribers.lists import get_list

log = logging.getLogger(__name__)


def _safe_next(target: str) -> str:
    """Only local paths: a sign-in link must not send editors elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/editor"


def _wait_text(seconds: float) -> str:
    """"12 seconds", "4 minutes": how long a refused sign-in waits, rounded up."""
    if seconds <= 90:
        n = max(1, math.ceil(seconds))
        return counted(n, "second")
    return f"{math.ceil(seconds / 60)} minutes"


def _ints(form: FormData, name: str) -> list[int]:
    return [n for v in form.getlist(name) if (n := row_number(v)) is not None]


def _list_name(request: Request) -> str:
    return str(request.path_params["name"])


def _back(name: str, notice: str, segment: str = "") -> Response:
    """Back to the list's issue page (and segment), with a notice."""
    url = f"/editor/lists/{quote(name)}?notice={quote(notice)}"
    if segment:
        url += f"&segment={quote(segment)}"
    return RedirectResponse(url, status_code=303)


async def _checked_form(request: Request) -> FormData | None:
    """The posted form, or None when it lacks this session's CSRF token."""
    form = await request.form()
    return form if csrf_ok(request, form.get("csrf")) else None



async def login(request: Request) -> Response:
    """The sign-in form (GET) and a sign-in (POST)."""
    web = web_of(request)
    ctx = web.ctx
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
    web = web_of(request)
    form = await request.form()
    if not csrf_ok(request, form.get("csrf")):
        return web.forbidden(request)
    name = current_editor(request)
    if name is not None:
        ended = await run_in_threadpool(end_sessions, web.ctx.db, name)
        await run_in_threadpool(audit, web.ctx.db, name, "sign out",
                                f"{counted(ended, 'session')} ended")
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@editor_only
async def home(request: Request) -> Response:
    """The dashboard: every list, its next issue and its last sends."""
    web = web_of(request)
    board = await run_in_threadpool(dashboard, web.ctx)
    return web.page(request, "web/dashboard.html", {
        "board": board, "csrf": csrf_token(request),
        "notice": request.query_params.get("notice", "")})


@editor_only
async def issue_page(request: Request) -> Response:
    """A list's next issue, its workbench and its checks."""
    return await _show_issue(request, request.query_params.get("segment", ""), check=False)


@editor_only
async def issue_links_page(request: Request) -> Response:
    """The issue page with every link checked. A POST with this session's CSRF
    token, never a GET: the check makes the server fetch whatever the issue links to,
    and no other site may make an editor's browser ask for that."""
    form = await _checked_form(request)
    if form is None:
        return web_of(request).forbidden(request)
    return await _show_issue(request, str(form.get("segment", "")), check=True)


async def _show_issue(request: Request, segment: str, *, check: bool) -> Response:
    web = web_of(request)
    try:
        values = await run_in_threadpool(_issue_values, web, _list_name(request), segment,
                                         check)
    except DigestError as e:
        return web.page(request, "web/message.html", {"title": "Cannot show this issue",
                                                      "text": e.message}, status=404)
    return web.page(request, "web/issue.html", {
        **values, "csrf": csrf_token(request),
        "notice": request.query_params.get("notice", ""),
        "segment_q": quote(segment)})


def _issue_values(web: WebApp, name: str, segment: str, check: bool) -> dict[str, Any]:
    """What the issue page shows of list ``name`` (blocking: run it in a thread)."""
    ctx = web.ctx
    with ctx.db.session() as session:
        mailing_list = get_list(session, name)
        list_id, title = mailing_list.id, mailing_list.title
    shown = preview(ctx, name, segment)
    checked = None
    if shown is not None and check:
        from digest.services.feeds.linkcheck import check_links, issue_links
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


@editor_only
async def issue_email(request: Request) -> Response:
    """The next issue's email as a reader gets it (HTML, or ?part=text)."""
    ctx = web_of(request).ctx
    name = _list_name(request)
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


@editor_only
async def edit(request: Request) -> Response:
    """Save the edit form: subject, intro, dropped and moved entries, section order."""
    web = web_of(request)
    form = await _checked_form(request)
    if form is None:
        return web.forbidden(request)
    name, editor = _list_name(request), current_editor(request) or ""
    moves = {}
    for key, value in form.multi_items():
        if key.startswith("move-") and (entry := row_number(key[5:])) is not None and str(value):
            moves[entry] = str(value)
    # Position i shows the section chosen in the i-th select (first choice wins).
    order = list(dict.fromkeys(str(v) for v in form.getlist("order")))
    changed = await run_in_threadpool(lambda: save_edit(
        web.ctx, name, editor, subject=str(form.get("subject", "")),
        intro=str(form.get("intro", "")), dropped=_ints(form, "drop"), moves=moves,
        section_order=order if form.get("reorder") == "yes" else None))
    return _back(name, "Saved: " + "; ".join(changed) if changed else "No changes.",
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
    name, editor = _list_name(request), current_editor(request) or ""
    try:
        new_version, changed = await run_in_threadpool(
            apply_change, web_of(request).ctx, name, editor, body, version)
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
    """Send the next issue to one address as a test."""
    web = web_of(request)
    form = await _checked_form(request)
    if form is None:
        return web.forbidden(request)
    name, editor = _list_name(request), current_editor(request) or ""
    segment = str(form.get("segment", ""))
    try:
        to = await run_in_threadpool(lambda: send_test(
            web.ctx, name, str(form.get("address", "")), editor, segment=segment))
    except DigestError as e:
        return _back(name, f"Test not sent: {e.message}", segment)
    return _back(name, f"Test sent to {to}.", segment)


@editor_only
async def approve_issue(request: Request) -> Response:
    """Approve the next issue for its scheduled send."""
    web = web_of(request)
    form = await _checked_form(request)
    if form is None:
        return web.forbidden(request)
    name = _list_name(request)
    number = await run_in_threadpool(approve, web.ctx, name, current_editor(request) or "")
    return _back(name, f"Issue {number} approved.")


@editor_only
async def send_now(request: Request) -> Response:
    """Send the next issue now, once the editor confirmed the list and its audience."""
    web = web_of(request)
    ctx = web.ctx
    form = await _checked_form(request)
    if form is None:
        return web.forbidden(request)
    name, editor = _list_name(request), current_editor(request) or ""

    def start() -> str:
        with ctx.db.session() as session:
            list_id = get_list(session, name).id
        audience = audience_size(ctx, list_id)
        if str(form.get("confirm_list", "")) != name or \
                str(form.get("audience", "")) != str(audience):
            return (f"Not sent: confirm sending to {name} "
                    f"({counted(audience, 'active subscriber')}) again; the numbers changed.")
        # A run the scheduler (or, while none leads, this app's worker) claims and
        # carries out; while it waits or runs, asking again is the same run.
        _, asked = request_run(ctx, name, editor)
        if not asked:
            return (f"A send of {name} is already requested or running; its state is "
                    "under Send now.")
        audit(ctx.db, editor, "send now", f"to {counted(audience, 'subscriber')}", list_id)
        return (f"Sending to {counted(audience, 'subscriber')} of {name}: requested; its "
                "state is under Send now.")

    notice = await run_in_threadpool(start)
    request.app.state.runs.nudge()
    return RedirectResponse(f"/editor?notice={quote(notice)}", status_code=303)


@editor_only
async def audit_page(request: Request) -> Response:
    """The audit log: who signed in, edited, approved and sent what."""
    web = web_of(request)
    entries = await run_in_threadpool(audit_log, web.ctx.db)
    return web.page(request, "web/audit.html", {"entries": entries,
                                                "csrf": csrf_token(request)})


ROUTES = (
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/editor", home, methods=["GET"]),
    Route("/editor/audit", audit_page, methods=["GET"]),
    Route("/editor/lists/{name}", issue_page, methods=["GET"]),
    Route("/editor/lists/{name}/links", issue_links_page, methods=["POST"]),
    Route("/editor/lists/{name}/change", change, methods=["POST"]),
    Route("/editor/lists/{name}/email", issue_email, methods=["GET"]),
    Route("/editor/lists/{name}/edit", edit, methods=["POST"]),
    Route("/editor/lists/{name}/test", test, methods=["POST"]),
    Route("/editor/lists/{name}/approve", approve_issue, methods=["POST"]),
    Route("/editor/lists/{name}/send", send_now, methods=["POST"]),
)
