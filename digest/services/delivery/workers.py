"""Helper processes that join a send (``digest send --jobs N``): started, then reaped.

Each helper is ``digest send --worker`` on the same list with the same configuration: it
waits for the list's issue to start going out, claims batches of it beside this process
(:mod:`digest.services.delivery.sending` keeps every batch to one claimer) and ends when none is
left. The process that builds the issue starts them while it records the issue, so they
are ready when its first batch is.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

# How long a helper waits for the issue to start going out before it gives up.
JOIN_WAIT_SECONDS = 300


@dataclass(frozen=True)
class HelperExit:
    """A helper that ended with a failure: its exit status and the end of its stderr."""

    returncode: int
    stderr: str


class SendHelpers:
    """``count`` helper processes joining one list's send; a context manager that reaps
    every one it started when it exits.

    ``config_path`` and ``overrides`` (``--config``, ``--set``) give the helpers this
    process's configuration. :meth:`start` may be called any number of times; the
    helpers start once.
    """

    def __init__(self, list_name: str, count: int, *, config_path: str | None = None,
                 overrides: Sequence[str] = ()) -> None:
        self.list_name = list_name
        self.count = max(0, count)
        self.config_path = config_path
        self.overrides = tuple(overrides)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.failures: list[HelperExit] = []

    def command(self) -> list[str]:
        """The command line of one helper."""
        argv = [sys.executable, "-m", "digest"]
        if self.config_path:
            argv += ["--config", self.config_path]
        for item in self.overrides:
            argv += ["--set", item]
        return [*argv, "send", "--list", self.list_name, "--worker", "--yes",
                "--wait-for-issue", str(JOIN_WAIT_SECONDS)]

    def start(self) -> None:
        """Start the helpers (once)."""
        if self.processes or not self.count:
            return
        argv = self.command()
        for _ in range(self.count):
            self.processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE))

    def reap(self) -> list[HelperExit]:
        """End and wait for every helper; those that failed (not ended by us)."""
        for helper in self.processes:
            # The send returns once no batch is left and none is held, so a helper still
            # running is idle: waiting for an issue to join (perhaps one already sent
            # before it started), or told to stop with us.
            helper.terminate()
            _, problem = helper.communicate()
            if helper.returncode not in (0, -signal.SIGTERM):
                self.failures.append(HelperExit(
                    helper.returncode, problem.decode(errors="replace").strip()[-500:]))
        self.processes = []
        return self.failures

    def __enter__(self) -> SendHelpers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.reap()
