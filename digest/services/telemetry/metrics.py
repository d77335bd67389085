"""Prometheus metrics of sends, collects, schedules and the web app (prometheus_client).

One process keeps them in prometheus_client's default registry. Several processes that
should add up (`digest send --jobs N`, several uvicorn workers, one `digest serve` and its
scheduler's sends) need ``PROMETHEUS_MULTIPROC_DIR`` set to an empty folder before they
start: each then writes its own files there, and :func:`exposition` adds them up.
`digest send --metrics-file` sets it by itself for its helpers.

Labels carry list names, outcomes, transports, error codes and route templates only —
never an address or a token.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class SendOutcome(StrEnum):
    """How a send run ended (the ``outcome`` label of ``SENDS``)."""

    OK = "ok"            # every delivery accepted
    FAILED = "failed"    # some failed or are uncertain, or the run raised
    STOPPED = "stopped"  # told to stop before the issue was done


SENDS = Counter("digest_sends", "Send runs by how they ended (ok, failed, stopped).",
                ["list", "outcome"])
RECIPIENTS = Counter("digest_recipients", "Recipients handed to a transport, by outcome "
                     "(accepted, failed, uncertain, skipped).", ["list", "outcome"])
SEND_SECONDS = Histogram("digest_send_duration_seconds", "Duration of one send run.",
                         ["list"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600))
BATCH_SECONDS = Histogram("digest_batch_duration_seconds",
                          "Time a transport took to take one batch.", ["transport"],
                          buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
TRANSPORT_ERRORS = Counter("digest_transport_errors", "Error replies and failed connections "
                           "of SendGrid or SMTP, by code (HTTP status, SMTP reply code, or "
                           "'connection').", ["transport", "code"])
RATE_LIMIT_WAITS = Counter("digest_rate_limit_waits", "Waits after a 429 (SendGrid) or a 421/"
                           "450-class SMTP reply.", ["transport"])
RATE_LIMIT_WAIT_SECONDS = Counter("digest_rate_limit_wait_seconds",
                                  "Seconds waited before trying again after a 429 "
                                  "(SendGrid) or any 4xx reply (SMTP).", ["transport"])
FEED_FETCHES = Counter("digest_feed_fetches", "Feed fetches by outcome (ok, not_modified, "
                       "error).", ["outcome"])
COLLECT_SECONDS = Histogram("digest_collect_duration_seconds", "Duration of one collect.",
                            buckets=(.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
SCHEDULE_RUNS = Counter("digest_schedule_runs", "Scheduled slots by outcome (sent, "
                        "nothing_new, not_approved, failed, missed…).",
                        ["schedule", "outcome"])
WEB_REQUESTS = Counter("digest_web_requests", "Web requests by route template and status.",
                       ["route", "method", "status"])
SIGN_IN_FAILURES = Counter("digest_sign_in_failures", "Refused editor sign-ins, by reason "
                           "(password, rate_limited).", ["reason"])
LAST_SUCCESS = Gauge("digest_last_success_timestamp_seconds", "When a send or collect last "
                     "ended well (Unix time).", ["job"], multiprocess_mode="max")


def _registry() -> CollectorRegistry:
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return REGISTRY
    from prometheus_client import multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> bytes:
    """Every metric in Prometheus text format (added up over processes when shared)."""
    return generate_latest(_registry())


def write_textfile(path: Path) -> None:
    """Write every metric for node_exporter's textfile collector (atomically)."""
    write_to_textfile(str(path), _registry())
