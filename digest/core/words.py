"""Words around numbers: "1 section", "2 sections", the same way in every message."""

from __future__ import annotations


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """Return ``count`` with its noun, singular for exactly one: ``counted(2, "entry",
    "entries")`` is "2 entries"; the plural is the singular plus "s" unless given."""
    noun = singular if count == 1 else plural or singular + "s"
    return f"{count} {noun}"
