"""recap-digest: turn feeds of weekly news recaps into an email digest."""

__version__ = "0.1.0"
