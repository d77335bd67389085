"""The `digest` command: the top-level group, and the one place its commands are
registered (each command module defines its commands and imports nothing of the others).
"""

from __future__ import annotations

from digest.edges.cli import run_commands, service_commands
from digest.edges.cli.base import cli, collector_tuned

for _command in (*run_commands.COMMANDS, *service_commands.COMMANDS):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the console script: run one command and exit with its status."""
    with collector_tuned():
        cli(prog_name="digest")


__all__ = ["cli", "main"]
