"""atheris harnesses: feed parsing, sanitizing and the CSV import, each with the invariants
it must keep (``make fuzz`` runs each for a bounded time)."""
