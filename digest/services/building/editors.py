"""Editor accounts (scrypt-hashed passwords), their sessions, and the audit log of what
they changed.

A session is a row of ``editor_sessions``: the browser's cookie carries a random id and
the row only that id's hash, so the database decides on every request whether the
session still stands. Signing out, a new password and removing the editor delete every
row of that editor at once, whatever copies of the cookie exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from digest.errors import InvalidInputError
from digest.services.storage.db import Database, utcnow
from digest.services.storage.models import AuditEntry, Editor, EditorSession

# scrypt, as OWASP recommends it: N=2^15, r=8, p=1 (32 MiB of memory for each hash).
_N, _R, _P = 2 ** 15, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
# A hash to compare against when the name is unknown, so timing tells nothing.
_DUMMY: str | None = None
# A session's last-seen time is written at most this often, not on every request.
_TOUCH_EVERY = timedelta(minutes=1)


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` with a random 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P,
                            maxmem=64 * 1024 * 1024, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a stored hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt),
                                  n=int(n), r=int(r), p=int(p), maxmem=64 * 1024 * 1024,
                                  dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def add_editor(db: Database, name: str, password: str) -> bool:
    """Create an editor account (True), or set a new password for an existing one, which
    ends its sessions (False)."""
    if not _NAME.match(name):
        raise InvalidInputError(f"editor name {name!r} may hold letters, digits and . _ @ - "
                                "(up to 100)")
    if len(password) < 10:
        raise InvalidInputError("the password must have at least 10 characters")
    hashed = hash_password(password)
    with db.session() as session:
        editor = session.scalars(select(Editor).where(Editor.name == name)).first()
        if editor is None:
            session.add(Editor(name=name, password_hash=hashed))
            return True
        editor.password_hash = hashed
        # A new password is often the answer to a leaked one: every browser signed in
        # with the old one is signed out.
        _end_sessions(session, editor.id)
        return False


def authenticate(db: Database, name: str, password: str) -> bool:
    """Whether the name and password belong to an editor (records the sign-in)."""
    global _DUMMY
    with db.session() as session:
        editor = session.scalars(select(Editor).where(Editor.name == name)).first()
        if editor is None:
            _DUMMY = _DUMMY or hash_password(secrets.token_hex(8))
            check_password(password, _DUMMY)
            return False
        if not check_password(password, editor.password_hash):
            return False
        editor.last_login_at = utcnow()
        return True


def list_editors(db: Database) -> list[tuple[str, datetime | None]]:
    """Every editor's name and last sign-in."""
    with db.session() as session:
        return [(e.name, e.last_login_at)
                for e in session.scalars(select(Editor).order_by(Editor.name))]


def remove_editor(db: Database, name: str) -> bool:
    """Delete an editor account and end its sessions; True if there was one."""
    with db.session() as session:
        editor = session.scalars(select(Editor).where(Editor.name == name)).first()
        if editor is None:
            return False
        _end_sessions(session, editor.id)
        session.delete(editor)
        return True


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _end_sessions(session: Session, editor_id: int) -> int:
    mine = EditorSession.editor_id == editor_id
    count = session.scalar(select(func.count()).select_from(EditorSession).where(mine)) or 0
    session.execute(delete(EditorSession).where(mine))
    return count


def start_session(db: Database, name: str, hours: float) -> str:
    """A new session of the editor ``name`` for ``hours``: the random id for its cookie.

    Sessions that have expired (anyone's) are deleted on the way, so the table holds
    only live ones.
    """
    token, now = secrets.token_urlsafe(32), utcnow()
    with db.session() as session:
        editor_id = session.scalar(select(Editor.id).where(Editor.name == name))
        if editor_id is None:
            raise InvalidInputError(f"no editor named {name!r}")
        session.execute(delete(EditorSession).where(EditorSession.expires_at <= now))
        session.add(EditorSession(token_hash=_token_hash(token), editor_id=editor_id,
                                  created_at=now, last_seen_at=now,
                                  expires_at=now + timedelta(hours=hours)))
    return token


def session_editor(db: Database, token: str) -> str | None:
    """The name of the editor whose live session ``token`` is, or None (signed out,
    expired, removed, or never a session)."""
    now = utcnow()
    with db.session() as session:
        found = session.execute(
            select(EditorSession, Editor.name)
            .join(Editor, Editor.id == EditorSession.editor_id)
            .where(EditorSession.token_hash == _token_hash(token),
                   EditorSession.expires_at > now)).first()
        if found is None:
            return None
        row, name = found
        if now - row.last_seen_at >= _TOUCH_EVERY:
            row.last_seen_at = now
        return str(name)


def end_sessions(db: Database, name: str) -> int:
    """End every session of the editor ``name`` (sign out everywhere); how many there were."""
    with db.session() as session:
        editor_id = session.scalar(select(Editor.id).where(Editor.name == name))
        return 0 if editor_id is None else _end_sessions(session, editor_id)


@dataclass(frozen=True)
class AuditView:
    """One line of the audit log."""

    at: datetime
    actor: str
    action: str
    list_name: str | None
    detail: str


def audit(db: Database, actor: str, action: str, detail: str = "",
          list_id: int | None = None) -> None:
    """Record that ``actor`` did ``action``."""
    with db.session() as session:
        session.add(AuditEntry(actor=actor, action=action, detail=detail[:4000],
                               list_id=list_id, at=utcnow()))


def audit_log(db: Database, limit: int = 200) -> list[AuditView]:
    """The latest changes, newest first."""
    from digest.services.storage.subscriber_models import MailingList
    with db.session() as session:
        return [AuditView(a.at, a.actor, a.action, name, a.detail) for a, name in
                session.execute(select(AuditEntry, MailingList.name)
                                .outerjoin(MailingList, MailingList.id == AuditEntry.list_id)
                                .order_by(AuditEntry.id.desc()).limit(limit))]
