"""SendGrid Event Webhook: verify a batch's signature, then apply each event once.

Bounces (hard), drops, spam reports and unsubscribes change subscriptions; delivered,
open and click events count on the delivery record. An event is applied once, by its
``sg_event_id``, however often SendGrid redelivers it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.errors import DigestError
from digest.services.storage.db import Database, utcnow
from digest.services.storage.models import Delivery, WebhookEvent
from digest.services.storage.states import SubscriptionStatus
from digest.services.storage.subscriber_models import Subscriber, Subscription, Suppression
from subscribers.addresses import address_hash, address_key
from subscribers.subscriptions import ON_LIST, unsubscribe

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# event → (new status, whether it is about the address everywhere, suppress it)
STATUS_EVENTS = {
    "bounce": (SubscriptionStatus.BOUNCED, True, True),
    "dropped": (SubscriptionStatus.BOUNCED, False, False),
    "spamreport": (SubscriptionStatus.COMPLAINED, True, True),
    "unsubscribe": (SubscriptionStatus.UNSUBSCRIBED, False, False),
    "group_unsubscribe": (SubscriptionStatus.UNSUBSCRIBED, False, False),
}
COUNT_EVENTS = ("delivered", "open", "click")


class WebhookRefused(DigestError):
    """A webhook request that is not provably from SendGrid; ``status`` is the answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def load_key(public_key: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key, as shown in its settings (base64 DER, or PEM)."""
    text = public_key.strip()
    if "BEGIN PUBLIC KEY" in text:
        text = "".join(line for line in text.splitlines() if "PUBLIC KEY" not in line)
    try:
        key = load_der_public_key(base64.b64decode(text))
    except (ValueError, binascii.Error) as e:
        raise DigestError("sendgrid_webhook_public_key is not a valid public key") from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DigestError("sendgrid_webhook_public_key is not an elliptic-curve key")
    return key


def verify(key: ec.EllipticCurvePublicKey, headers: Mapping[str, str], body: bytes, *,
           max_age: int, now: float | None = None) -> None:
    """Check the ECDSA P-256 signature over timestamp + body; raise WebhookRefused."""
    signature, timestamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise WebhookRefused("the request is not signed", 401)
    try:
        age = abs((now or time.time()) - int(timestamp))
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise WebhookRefused("the signature or timestamp is malformed", 403) from None
    if age > max_age:
        raise WebhookRefused(f"the timestamp is {age:.0f} s old (replayed?)", 403)
    try:
        key.verify(raw, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise WebhookRefused("the signature does not match", 403) from None


def _subscriptions(session: Session, event: Mapping[str, Any],
                   everywhere: bool) -> list[Subscription]:
    """The subscriptions an event is about: its delivery's, or all of the address's."""
    delivery_id = str(event.get("delivery_id", ""))
    if not everywhere and delivery_id.isdigit():
        delivery = session.get(Delivery, int(delivery_id))
        if delivery is not None:
            sub = session.get(Subscription, delivery.subscription_id)
            return [sub] if sub is not None else []
    email = str(event.get("email", ""))
    person = session.scalars(select(Subscriber).where(
        Subscriber.email_key == address_key(email))).first()
    if person is None:
        return []
    return list(session.scalars(select(Subscription).where(
        Subscription.subscriber_id == person.id)))


def _apply(session: Session, event: Mapping[str, Any]) -> str:
    kind = str(event.get("event", ""))
    if kind == "bounce" and str(event.get("type", "bounce")) != "bounce":
        return "ignored"  # "blocked" is a temporary refusal, not a dead address
    if kind in STATUS_EVENTS:
        status, everywhere, suppress = STATUS_EVENTS[kind]
        for sub in _subscriptions(session, event, everywhere):
            if sub.status in ON_LIST:
                unsubscribe(session, sub, status=status)
        email = str(event.get("email", ""))
        if suppress and email and session.get(Suppression, address_hash(email)) is None:
            session.add(Suppression(email_hash=address_hash(email), reason=status))
        return kind
    if kind in COUNT_EVENTS:
        delivery_id = str(event.get("delivery_id", ""))
        if not delivery_id.isdigit():
            return "ignored"
        query = update(Delivery).where(Delivery.id == int(delivery_id))
        if kind == "delivered":
            query = query.values(delivered_at=utcnow())
        elif kind == "open":
            query = query.values(opens=Delivery.opens + 1)
        else:
            query = query.values(clicks=Delivery.clicks + 1)
        session.execute(query.execution_options(synchronize_session=False))
        return kind
    return "ignored"


def apply_events(db: Database, events: Iterable[Any]) -> Counter[str]:
    """Apply a batch of events, each once; return counts by event kind (and duplicate)."""
    counts: Counter[str] = Counter()
    with db.session() as session:
        for event in events:
            if not isinstance(event, Mapping):
                counts["malformed"] += 1
                continue
            event_id = str(event.get("sg_event_id", ""))[:200]
            if not event_id:
                counts["malformed"] += 1
                continue
            try:
                with session.begin_nested():
                    session.add(WebhookEvent(event_id=event_id,
                                             kind=str(event.get("event", ""))[:50]))
                    session.flush()
                    counts[_apply(session, event)] += 1
            except IntegrityError:
                counts["duplicate"] += 1
    log.info("SendGrid events: %s", dict(counts))
    return counts
