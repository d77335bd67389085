"""Public pages: unsubscribe, preferences, subscribe and confirm, the archive, webhooks.

None of these needs a login: the unsubscribe and preferences pages act on the
subscription their signed token names, and the webhook proves itself by signature.
Each page is one module-level handler; what it shares with the others it finds on
``request.app.state`` through ``web_of``.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from digest.core.atom import ATOM_MEDIA_TYPE, AtomEntry, AtomFeed, atom_feed
from digest.core.grouping import KeywordNames, key_finder
from digest.core.tokens import InvalidToken
from digest.core.words import counted
from digest.edges.web.base import WebApp, page_csp, row_number, web_of
from digest.edges.web.security import client_address, csrf_ok, csrf_token
from digest.errors import DeliveryError, DigestError, InvalidInputError, NotFoundError
from digest.services.building.drafts import item_of, keyword_config
from digest.services.delivery.archive import ArchivePage, archive_page, archived_issue
from digest.services.storage.models import Entry, Issue, IssueEntry, IssueStatus
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import MailingList
from subscribers.addresses import normalize_address
from subscribers.events import WebhookRefused, apply_events, verify
from subscribers.lists import get_list
from subscribers.optin import confirm_subscription, request_subscription
from subscribers.preferences import (
    keyword_choices,
    leave_every_list,
    one_click_unsubscribe,
    preferences,
    save_preferences,
)

log = logging.getLogger(__name__)


def _bad_link(request: Request, error: InvalidToken) -> Response:
    return web_of(request).page(request, "web/message.html", {
        "title": "This link does not work",
        "text": f"{error.message}. Nothing was changed. If you copied the link, check "
                "that it is complete."}, status=400)


async def unsubscribe_page(request: Request) -> Response:
    """The unsubscribe link: GET shows the button, POST (one click, RFC 8058) leaves."""
    web = web_of(request)
    ctx = web.ctx
    token = request.path_params["token"]
    try:
        subscription_id = ctx.tokens.read("unsubscribe", token)
    except InvalidToken as e:
        return _bad_link(request, e)
    if request.method in ("GET", "HEAD"):
        # Link scanners fetch with GET: it only shows the button.
        try:
            view = await run_in_threadpool(preferences, ctx.db, subscription_id)
        except InvalidToken as e:
            return _bad_link(request, e)
        return web.page(request, "web/unsubscribe.html", {
            "view": view, "token": token,
            "preferences_token": ctx.tokens.make("preferences", subscription_id)})
    # RFC 8058: the body is List-Unsubscribe=One-Click; no cookie, no login, no
    # redirect. The confirm button posts the same. The token is the authority.
    form = await request.form()
    if form.get("List-Unsubscribe") != "One-Click":
        return web.page(request, "web/message.html", {
            "title": "Nothing was changed",
            "text": "This request did not ask to unsubscribe (List-Unsubscribe="
                    "One-Click missing)."}, status=400)
    try:
        left = await run_in_threadpool(one_click_unsubscribe, ctx.db, subscription_id)
    except InvalidToken as e:
        return _bad_link(request, e)
    log.info("subscription %s unsubscribed by link", subscription_id)
    return web.page(request, "web/message.html", {
        "title": "You are unsubscribed",
        "text": f"You will get no more emails from {left.list_title}."
                if left.changed else f"You were already off {left.list_title}."})


async def preferences_page(request: Request) -> Response:
    """A subscription's preferences: keywords, pause, leave every list."""
    web = web_of(request)
    ctx = web.ctx
    token = request.path_params["token"]
    try:
        subscription_id = ctx.tokens.read("preferences", token)
    except InvalidToken as e:
        return _bad_link(request, e)
    saved = ""
    if request.method not in ("GET", "HEAD"):
        form = await request.form()
        if not csrf_ok(request, form.get("csrf")):
            return web.forbidden(request)
        try:
            if form.get("action") == "leave_all":
                n = await run_in_threadpool(leave_every_list, ctx.db, subscription_id)
                return web.page(request, "web/message.html", {
                    "title": "You left every list",
                    "text": f"Unsubscribed from {counted(n, 'list')}. "
                            "You will get no more emails from us."})
            status = await run_in_threadpool(
                lambda: save_preferences(
                    ctx.db, subscription_id,
                    keywords=[str(k) for k in form.getlist("keywords")],
                    paused=form.get("paused") == "on"))
        except InvalidToken as e:
            return _bad_link(request, e)
        saved = "Saved. " + ("Your emails are paused." if status == SubscriptionStatus.PAUSED
                             else "You will get the sections you chose.")
    try:
        view = await run_in_threadpool(preferences, ctx.db, subscription_id,
                                       keyword_config(ctx))
    except InvalidToken as e:
        return _bad_link(request, e)
    return web.page(request, "web/preferences.html", {
        "view": view, "saved": saved, "csrf": csrf_token(request),
        "unsubscribe_token": ctx.tokens.make("unsubscribe", subscription_id)})


async def subscribe_page(request: Request) -> Response:
    """The subscribe form; a post is answered alike whoever is subscribed already."""
    web = web_of(request)
    ctx = web.ctx
    lists = await run_in_threadpool(_public_lists, web)
    choices = await run_in_threadpool(keyword_choices, ctx.db, keyword_config(ctx))
    values = {"lists": lists, "choices": choices, "error": "", "email": "", "name": "",
              "chosen": request.query_params.get("list", "")}
    if request.method in ("GET", "HEAD"):
        return web.page(request, "web/subscribe.html", {**values, "csrf": csrf_token(request)})
    form = await request.form()
    if not csrf_ok(request, form.get("csrf")):
        return web.forbidden(request)
    done = web.page(request, "web/message.html", {
        "title": "Check your inbox",
        "text": "If the address can receive our emails, a message with a confirmation "
                "link is on its way. Click it to start your subscription."})
    if form.get("website"):  # the honeypot: people never see it, bots fill it in
        log.info("subscribe form: honeypot filled from %s", client_address(request))
        return done
    if not await run_in_threadpool(web.subscribe_limit.hit, client_address(request)):
        return web.page(request, "web/message.html", {
            "title": "Too many requests",
            "text": "Please try again in an hour."}, status=429)
    email, list_name = str(form.get("email", "")), str(form.get("list", ""))
    name = str(form.get("name", ""))
    keywords = [str(k) for k in form.getlist("keywords") if str(k).strip()]
    try:
        # Only what is wrong with the form itself is told: never anything that
        # depends on who is subscribed already.
        await run_in_threadpool(_check_subscribe_form, web, list_name, email)
    except (InvalidInputError, NotFoundError) as e:
        return web.page(request, "web/subscribe.html", {
            **values, "error": e.message, "email": email, "name": name,
            "chosen": list_name, "csrf": csrf_token(request)}, status=400)
    # The work (and the email, when one is due) happens after the answer is sent, so
    # a known address, a new one and a suppressed one are answered alike and at the
    # same moment: the time to answer tells nobody who is subscribed.
    done.background = BackgroundTask(_subscribe_later, web, list_name, email, name,
                                     keywords)
    return done


async def confirm_page(request: Request) -> Response:
    """The confirmation link: GET shows the button, POST confirms."""
    web = web_of(request)
    token = request.path_params["token"]
    if request.method in ("GET", "HEAD"):
        # A scanner's GET must not confirm for the reader: show the button.
        return web.page(request, "web/confirm.html", {"token": token})
    try:
        confirmed = await run_in_threadpool(confirm_subscription, web.ctx, token)
    except InvalidToken as e:
        return _bad_link(request, e)
    return web.page(request, "web/message.html", {
        "title": "Subscription confirmed",
        "text": f"You are on {confirmed.list_title}. The next issue comes to your inbox."
        if not confirmed.already else f"You were already on {confirmed.list_title}."})


async def archive_index(request: Request) -> Response:
    """Every list's archive."""
    web = web_of(request)
    lists = await run_in_threadpool(_public_lists, web)
    return web.page(request, "web/archive_index.html", {"lists": lists})


async def archive_list(request: Request) -> Response:
    """A list's sent issues, newest first, each with its lead story and sections; a page
    of them at a time (``?before=N``: those numbered below N)."""
    web = web_of(request)
    before = request.query_params.get("before")
    below = None if before is None else row_number(before)
    if before is not None and below is None:
        return web.not_found(request)
    page = await run_in_threadpool(archive_page, web.ctx, request.path_params["list"],
                                   before=below)
    if page is None:
        return web.not_found(request)
    return web.page(request, "web/archive_list.html", {"page": page, "paged": bool(before)})


async def archive_issue(request: Request) -> Response:
    """A sent issue as a web page: its sections and recaps, and a way to subscribe."""
    web = web_of(request)
    number = row_number(request.path_params["number"])
    found = None if number is None else await run_in_threadpool(
        archived_issue, web.ctx, request.path_params["list"], number)
    if found is None:
        return web.not_found(request)
    page, earlier, later = found
    response = web.page(request, "web/archive_issue.html", {
        "page": page, "issue": page.issues[0], "earlier": earlier, "later": later})
    # The recaps' pictures are where their feeds put them, as in the email.
    response.headers["Content-Security-Policy"] = page_csp("'self' data: https: http:")
    return response


async def archive_feed(request: Request) -> Response:
    """A list's latest sent issues as an Atom feed."""
    web = web_of(request)
    page = await run_in_threadpool(archive_page, web.ctx, request.path_params["list"])
    if page is None:
        return web.not_found(request)
    return Response(_atom_of(web, page), media_type=f"{ATOM_MEDIA_TYPE}; charset=utf-8")


async def archive_keyword(request: Request) -> Response:
    """The recaps of a list's sent issues under one keyword, at one address per keyword:
    any other spelling of it (or an alias) is redirected to its key's page."""
    web = web_of(request)
    name, keyword = request.path_params["list"], request.path_params["keyword"]
    names = KeywordNames(keyword_config(web.ctx))
    key = names.key(keyword)
    if not key:
        return web.not_found(request)
    if key != keyword and names.key(key) == key:  # never a loop, whatever Unicode does
        return RedirectResponse(f"/archive/{quote(name, safe='')}/k/{quote(key, safe='')}",
                                status_code=301)
    found = await run_in_threadpool(_keyword_recaps, web, name, key)
    # No recaps: no page, so that a made-up keyword can't put its words in a heading here.
    if found is None or not found["recaps"]:
        return web.not_found(request)
    return web.page(request, "web/archive_keyword.html", found)


async def sendgrid_webhook(request: Request) -> Response:
    """SendGrid's event webhook: bounces, complaints and unsubscribes, signed."""
    web = web_of(request)
    # Events stop addresses everywhere: without a key to prove them, none is applied.
    if web.webhook_key is None:
        log.warning("SendGrid webhook refused from %s: no sendgrid_webhook_public_key "
                    "is set", client_address(request))
        return JSONResponse({"error": "this webhook is off until the server's "
                                      "sendgrid_webhook_public_key is set"},
                            status_code=403)
    body = await request.body()
    try:
        verify(web.webhook_key, request.headers, body,
               max_age=web.ctx.settings.webhook_max_age_seconds)
    except WebhookRefused as e:
        log.warning("SendGrid webhook refused from %s: %s", client_address(request), e)
        return JSONResponse({"error": e.message}, status_code=e.status)
    try:
        events = json.loads(body)
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if not isinstance(events, list):
        return JSONResponse({"error": "expected a JSON array of events"}, status_code=400)
    counts = await run_in_threadpool(apply_events, web.ctx.db, events)
    return JSONResponse({"applied": dict(counts)})


async def home(request: Request) -> Response:
    """The site's front page is the archive."""
    return RedirectResponse("/archive", status_code=303)


ROUTES = (
    Route("/", home, methods=["GET"]),
    Route("/u/{token}", unsubscribe_page, methods=["GET", "POST"]),
    Route("/p/{token}", preferences_page, methods=["GET", "POST"]),
    Route("/subscribe", subscribe_page, methods=["GET", "POST"]),
    Route("/confirm/{token}", confirm_page, methods=["GET", "POST"]),
    Route("/archive", archive_index, methods=["GET"]),
    Route("/archive/{list}", archive_list, methods=["GET"]),
    Route("/archive/{list}/{number:int}", archive_issue, methods=["GET"]),
    Route("/archive/{list}/feed.atom", archive_feed, methods=["GET"]),
    Route("/archive/{list}/k/{keyword:path}", archive_keyword, methods=["GET"]),
    Route("/webhooks/sendgrid", sendgrid_webhook, methods=["POST"]),
)


def _check_subscribe_form(web: WebApp, list_name: str, email: str) -> None:
    """Raise what is wrong with a subscribe form whoever fills it in: an address that is
    not one, a list that does not exist."""
    normalize_address(email)
    with web.ctx.db.session() as session:
        get_list(session, list_name)


def _subscribe_later(web: WebApp, list_name: str, email: str, name: str,
                     keywords: list[str]) -> None:
    """The subscribe form's work, after its answer: record the request, mail the link."""
    try:
        request_subscription(web.ctx, list_name, email, name=name, keywords=keywords,
                             source="form")
    except DeliveryError as e:
        log.error("confirmation email not sent: %s", e)
    except DigestError as e:
        log.warning("subscribe request not recorded: %s", e)


def _public_lists(web: WebApp) -> list[tuple[str, str]]:
    with web.ctx.db.session() as session:
        return [(m.name, m.title) for m in
                session.scalars(select(MailingList).order_by(MailingList.name))]


def _keyword_recaps(web: WebApp, name: str, wanted: str) -> dict[str, Any] | None:
    """The recaps of a list's sent issues under a keyword's key (its aliases included),
    newest first, for /archive/LIST/k/KEY, and the keyword's one name: an entry is
    there if it carries the keyword or was placed in its section (an editor rule, an
    editor's move); an untagged one, if a rule puts it there, as in the email."""
    config = keyword_config(web.ctx)
    names, keys_of = KeywordNames(config), key_finder(config)
    with web.ctx.db.session() as session:
        try:
            mailing_list = get_list(session, name)
        except NotFoundError:
            return None
        rows = session.execute(
            select(Entry, IssueEntry.section, Issue.number)
            .join(IssueEntry, IssueEntry.entry_id == Entry.id)
            .join(Issue, Issue.id == IssueEntry.issue_id)
            .where(Issue.list_id == mailing_list.id, Issue.status == IssueStatus.SENT)
            .order_by(Entry.dated_at.desc(), Entry.id)).all()
        recaps, seen = [], set()
        for entry, section, number in rows:
            # The section is stored by its title; the untagged one is no keyword's.
            placed_here = section != config.untagged_title and names.key(section) == wanted
            if entry.id in seen or not (placed_here or wanted in keys_of(item_of(entry, None))):
                continue
            seen.add(entry.id)
            for tag in entry.keywords or []:
                names.add(tag)
            recaps.append({"title": entry.title, "link": entry.link, "date": entry.dated_at,
                           "lead": entry.lead, "number": number})
        return {"list_name": name, "list_title": mailing_list.title,
                "keyword": names.name(wanted), "recaps": recaps}


def _atom_of(web: WebApp, page: ArchivePage) -> bytes:
    """The Atom feed of a page of a list's issues, each entry's content the issue's
    sections and recaps (rendered by the same macros as its page, links absolute)."""
    ctx = web.ctx
    home = ctx.url(f"archive/{page.list_name}")
    template = web.templates.get_template("web/archive_feed_entry.html")
    entries = [AtomEntry(
        url=f"{home}/{issue.number}", title=issue.subject, published=issue.sent_at,
        summary=f"In this issue: {issue.contents}" if issue.sections else "",
        content_html=template.render(page=page, issue=issue, home=home,
                                     subscribe=ctx.url(f"subscribe?list={page.list_name}")))
        for issue in page.issues]
    newest = page.issues[0].sent_at if page.issues else page.created_at
    return atom_feed(AtomFeed(title=page.list_title, url=home,
                              feed_url=f"{home}/feed.atom", author=ctx.settings.from_name,
                              updated=newest, entries=entries))
