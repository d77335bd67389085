"""Who holds a claim, and whether they are still there: the one liveness rule for the
batches senders claim, the schedule and "Send now" runs, and the scheduler's leader lock.

A claimer is ``host:pid:nonce``. A claim is abandoned when its lease ran out; or when
its claimer ran on this host and its process is gone; or when its claimer is this very
process and no longer at work here (:func:`at_work`: a send that ended, a run that
finished, a lock let go). Another machine's claimer is trusted until its lease ends.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

# Claimers of this process still at work: a web request, the scheduler and its worker
# may all hold claims at once, each under its own nonce.
_AT_WORK: set[str] = set()


def worker_identity() -> str:
    """This process as a claimer: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@contextmanager
def at_work(me: str) -> Iterator[str]:
    """Mark the claimer ``me`` of this process alive while the block runs."""
    hold(me)
    try:
        yield me
    finally:
        let_go(me)


def hold(me: str) -> None:
    """Mark the claimer ``me`` of this process alive until :func:`let_go`."""
    _AT_WORK.add(me)


def let_go(me: str) -> None:
    """Its work is over: a claim ``me`` still holds is abandoned from now on."""
    _AT_WORK.discard(me)


def claimer_gone(claimed_by: str | None, lease_until: datetime | None, now: datetime,
                 *, me: str | None = None) -> bool:
    """Whether a claim is abandoned (see the module's rule); never one of ``me``'s."""
    if me is not None and claimed_by == me:
        return False
    if claimed_by is None or lease_until is None or lease_until < now:
        return True
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's claimer: trust its lease
    if int(pid_text) == os.getpid():
        return claimed_by not in _AT_WORK
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False
