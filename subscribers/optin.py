"""Double opt-in: a request makes a pending subscription and mails a signed link.

Pending subscriptions never receive issues. The link (a timed, signed token) makes the
subscription active; unconfirmed ones expire after ``confirm_expiry_hours``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from enum import StrEnum

from sqlalchemy import delete, select, update

from digest.core.messages import address_for_header, compose, format_sender
from digest.core.rendering import Sender
from digest.core.tokens import InvalidToken
from digest.services.storage.context import Context
from digest.services.storage.db import utcnow
from digest.services.storage.models import delete_deliveries
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import MailingList, Subscriber, Subscription
from digest.services.transports import Transport, make_transport
from subscribers.addresses import normalize_address
from subscribers.fields import one_line
from subscribers.lists import get_list
from subscribers.subscriptions import (
    clean_keywords,
    find_subscription,
    is_suppressed,
    person_for,
    segment_of,
)

log = logging.getLogger(__name__)

# A person who left on their own may come back by confirming again; a bounced or
# complained address, or a forgotten person, may not.
MAY_REJOIN = (SubscriptionStatus.PENDING, SubscriptionStatus.UNSUBSCRIBED,
              SubscriptionStatus.PAUSED)


class OptIn(StrEnum):
    """What a subscribe request did."""

    SENT = "sent"            # a confirmation link went out
    ALREADY = "already"      # the subscription is active
    REFUSED = "refused"      # suppressed, bounced or complained
    THROTTLED = "throttled"  # a confirmation went out just now


@dataclass(frozen=True)
class OptInResult:
    """What a subscribe request did, and to which address.

    The public form answers the same for all of them, so it tells nobody who is subscribed.
    """

    outcome: OptIn
    email: str


def request_subscription(ctx: Context, list_name: str, email: str, *, name: str = "",  # noqa: PLR0913 - keyword-only: the form's fields, the transport and the clock
                         keywords: Sequence[str] = (), source: str = "form",
                         transport: Transport | None = None,
                         now: datetime | None = None) -> OptInResult:
    """Record a pending subscription and send its confirmation email."""
    now = now or utcnow()
    address = normalize_address(email)
    resend_after = timedelta(minutes=ctx.settings.confirm_resend_minutes)
    with ctx.db.session() as session:
        mailing_list = get_list(session, list_name)
        if is_suppressed(session, address):
            return OptInResult(OptIn.REFUSED, address)
        # A form anyone can fill in never renames someone already known.
        person = person_for(session, address, name=one_line(name, most=300), now=now)
        sub = find_subscription(session, person.id, mailing_list.id)
        if sub is not None and sub.status == SubscriptionStatus.ACTIVE:
            return OptInResult(OptIn.ALREADY, person.email)
        if sub is not None and sub.status not in MAY_REJOIN:
            return OptInResult(OptIn.REFUSED, person.email)
        if (sub is not None and sub.status == SubscriptionStatus.PENDING
                and sub.confirm_sent_at and now - sub.confirm_sent_at < resend_after):
            return OptInResult(OptIn.THROTTLED, person.email)
        if sub is None:
            sub = Subscription(subscriber_id=person.id, list_id=mailing_list.id,
                               created_at=now, source=source)
            session.add(sub)
        sub.status, sub.confirm_sent_at, sub.updated_at = SubscriptionStatus.PENDING, now, now
        if keywords:
            chosen = clean_keywords(keywords)
            sub.keywords, sub.segment = chosen, segment_of(chosen)
        session.flush()
        message = confirmation_message(ctx, mailing_list, person, sub.id)
    with transport or make_transport(ctx.settings) as sender:
        sender.send_message(message)
    log.info("confirmation sent for list %s (subscription %s)", list_name, sub.id)
    return OptInResult(OptIn.SENT, person.email)


def confirmation_message(ctx: Context, mailing_list: MailingList, person: Subscriber,
                         subscription_id: int) -> EmailMessage:
    """The email with the signed confirmation link."""
    s = ctx.settings
    link = ctx.url("confirm/" + ctx.tokens.make("confirm", subscription_id))
    # A name stored before names were cleaned where they enter may still hold a line
    # break, which no header can carry: this email goes to whoever asked just now.
    name = one_line(person.name)
    values = {"list_title": mailing_list.title, "link": link, "name": name,
              "hours": s.confirm_expiry_hours,
              "sender": Sender(s.from_name, s.from_email, s.postal_address)}
    env = ctx.renderer.env
    html = ctx.renderer.inline(env.get_template("email/confirm.html").render(values))
    text = env.get_template("email/confirm.txt").render(values)
    return compose(subject=f"Confirm your subscription to {mailing_list.title}",
                   sender=format_sender(s.from_name, s.from_email),
                   to=address_for_header(person.email, name), text=text, html=html,
                   reply_to=s.reply_to or None,
                   headers={"Auto-Submitted": "auto-generated"})


@dataclass(frozen=True)
class Confirmed:
    """A confirmed subscription: its list's title, and whether it was already active."""

    list_title: str
    already: bool


def confirm_subscription(ctx: Context, token: str, *, now: datetime | None = None
                         ) -> Confirmed:
    """Activate the pending subscription a confirmation token names."""
    now = now or utcnow()
    max_age = ctx.settings.confirm_expiry_hours * 3600
    subscription_id = ctx.tokens.read("confirm", token, max_age=max_age)
    with ctx.db.session() as session:
        sub = session.get(Subscription, subscription_id)
        if sub is None:
            raise InvalidToken("this confirmation link has expired; subscribe again")
        mailing_list = session.get(MailingList, sub.list_id)
        assert mailing_list is not None
        if sub.status == SubscriptionStatus.ACTIVE:
            return Confirmed(mailing_list.title, already=True)
        if sub.status != SubscriptionStatus.PENDING:
            raise InvalidToken("this subscription can no longer be confirmed")
        sub.status, sub.confirmed_at, sub.updated_at = SubscriptionStatus.ACTIVE, now, now
        return Confirmed(mailing_list.title, already=False)


def expire_pending(ctx: Context, *, now: datetime | None = None) -> int:
    """Delete subscriptions left unconfirmed too long; return how many."""
    now = now or utcnow()
    cutoff = now - timedelta(hours=ctx.settings.confirm_expiry_hours)
    stale = (Subscription.status == SubscriptionStatus.PENDING,
             Subscription.confirm_sent_at < cutoff)
    with ctx.db.session() as session:
        # Someone who had left and asked to come back, but never confirmed, stays left:
        # deleting the record would let an import revive them.
        session.execute(update(Subscription).where(
            *stale, Subscription.unsubscribed_at.is_not(None))
            .values(status=SubscriptionStatus.UNSUBSCRIBED, updated_at=now)
            .execution_options(synchronize_session=False))
        ids = list(session.scalars(select(Subscription.id).where(*stale)))
        if ids:
            session.execute(delete(Subscription).where(Subscription.id.in_(ids)))
            # People left with no subscription at all were only ever a request.
            gone = select(Subscriber.id).where(
                Subscriber.id.not_in(select(Subscription.subscriber_id)))
            delete_deliveries(session, subscriber_ids=gone)
            session.execute(delete(Subscriber).where(Subscriber.id.in_(gone)))
    if ids:
        log.info("expired %d unconfirmed subscriptions", len(ids))
    return len(ids)
