"""Logging set-up: rich text on a terminal, plain lines elsewhere, or JSON lines for a
log collector.

Either way every record passes :class:`Redact` first, which takes out what must never
reach a log: email addresses, signed tokens in links, API keys and bearer tokens. Log
calls pass their structured fields as ``extra=fields(list=…, issue=…)``; JSON lines carry
them as keys, text lines ignore them.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from rich.console import Console

# An address anywhere in a message or field (also inside <…> and after "to:").
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A token in one of our links (/u/…, /c/…, /p/…), a SendGrid key, a bearer token, and
# anything after key=/token=/password= in a query string or message.
_SECRETS = [
    (re.compile(r"(/(?:u|c|p|unsubscribe|confirm|preferences)/)[A-Za-z0-9_.\-]{16,}"),
     r"\1[token]"),
    (re.compile(r"SG\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}"), "[key]"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+"), r"\1[token]"),
    (re.compile(r"(?i)\b((?:api_?key|token|password|secret)=)[^\s&\"']+"), r"\1[secret]"),
]
NOISY = ("httpx", "httpcore", "alembic", "CSSUTILS", "cssutils", "premailer", "apscheduler",
         "uvicorn.access")
# Fields a record may carry (extra=…); the JSON formatter writes any, this is the vocabulary.
FIELDS = ("list", "issue", "batch", "feed", "schedule", "slot", "count", "counts",
          "duration", "status", "error", "worker", "route")


def scrub(text: str) -> str:
    """``text`` without addresses, tokens and keys."""
    text = _ADDRESS.sub("[address]", text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def fields(**values: Any) -> dict[str, Any]:
    """Structured fields for a log call: ``log.info("…", extra=fields(list="weekly"))``."""
    return {k: v for k, v in values.items() if v is not None}


class Redact(logging.Filter):
    """Formats the message once and scrubs it and every string field."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string still gets logged, as written
            message = str(record.msg)
        record.msg, record.args = scrub(message), None
        for name in FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, str):
                record.__dict__[name] = scrub(value)
        if record.exc_info:
            # Both formatters fall back on exc_text once exc_info is gone, so the
            # traceback they print is the scrubbed one.
            record.exc_text = scrub(record.exc_text
                                    or logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler writing one JSON object per line (python-json-logger)."""
    from pythonjsonlogger.json import JsonFormatter
    handler = logging.StreamHandler(stream or sys.stderr)
    # "time" is ISO 8601 in UTC with microseconds (python-json-logger's timestamp).
    handler.setFormatter(JsonFormatter(
        "%(levelname)s %(name)s %(message)s", timestamp="time",
        rename_fields={"levelname": "level", "name": "logger"}, json_ensure_ascii=False))
    return handler


def text_handler(stream: Any = None) -> logging.Handler:
    """A handler writing one plain line per record, for a log file or cron's mail: the
    time, the level and the message, never wrapped (rich's columns, away from a
    terminal, wrap at 80 characters, and laying out columns costs far more than a line)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    return handler


class LogWriter:
    """A file for a rich console that turns each line printed into a log record, so that
    with JSON logs a command's messages on stderr are JSON lines too."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self._pending = logger, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self.logger.info(self._pending.rstrip())
        self._pending = ""

    def isatty(self) -> bool:
        return False


def configure(*, level: str, log_format: str, console: Console) -> None:
    """Set up the root logger for one run of the tool (and, for JSON, route the
    console's messages through it)."""
    handler: logging.Handler
    if log_format == "json":
        handler = json_handler()
    elif console.is_terminal:
        from rich.logging import RichHandler
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = text_handler(console.file)
    handler.addFilter(Redact())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_format == "json":
        # A command's own messages (its summary, what failed) show at any log level.
        messages = logging.getLogger("digest.edges.cli")
        messages.setLevel(logging.INFO)
        console.file = LogWriter(messages)  # type: ignore[assignment]
        console.soft_wrap = True  # one message, one line
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
