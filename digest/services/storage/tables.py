"""Every module that defines tables, in one place, so that the metadata is complete.

The table modules take their declarative base from :mod:`digest.db`, and :mod:`digest.db`
imports none of them: the dependency goes one way. Whatever needs every table known —
opening a context (a flush orders inserts by foreign keys across modules), the
migrations, `digest db check` — calls :func:`load_all_models` first.
"""

from __future__ import annotations


def load_all_models() -> None:
    """Import every module that defines tables."""
    import digest.services.storage.models
    import digest.services.storage.schedule_models
    import digest.services.storage.subscriber_models  # noqa: F401
