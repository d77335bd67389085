"""The `digest` command: the top-level group, and the one place its commands are
registered (each command module defines its commands and imports nothing of the others).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from digest.edges.cli import run_commands, service_commands
from digest.edges.cli.base import cli, pause_collector

for _command in (*run_commands.COMMANDS, *service_commands.COMMANDS):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the console script.

    When the command is over, the process ends without tearing the interpreter down: the
    exit handlers run (log handlers flush, finalizers, helper pools), the standard streams
    are flushed, and then the process exits. Freeing every module and object one by one
    took 0.08-0.14 s after each command; nothing of it is needed once the command has
    closed its database and files. A command that leaves a thread running (none does on
    purpose) gets the normal shutdown instead, which waits for it.
    """
    pause_collector()  # until the command's database is open (base.State.ctx)
    try:
        cli(prog_name="digest")
    except SystemExit as stop:
        code = stop.code
    else:  # pragma: no cover - click's standalone mode always ends with SystemExit
        code = 0
    if threading.active_count() > 1:
        sys.exit(code)
    _exit_at_once(code)


def _exit_at_once(code: object) -> None:
    if isinstance(code, str):  # what sys.exit("message") would print
        print(code, file=sys.stderr)
        code = 1
    status = code if isinstance(code, int) else 0 if code is None else 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`digest … | head`) or stream
            status = status or 1
    os._exit(status)


__all__ = ["cli", "main"]
