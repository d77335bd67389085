"""Tables of schedules (filled in by the schedules issue)."""
