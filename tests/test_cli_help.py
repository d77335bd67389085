"""`digest … --help` as a newcomer reads it: every command and option explains itself,
groups say what they hold, and the words in capitals are the arguments they name."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
from click.testing import CliRunner

from digest.edges.cli import cli

# Capitalized words in help texts that are not a command's parameters.
ACRONYMS = {"URL", "URLS", "HTML", "CSV", "JSON", "OPML", "SMTP", "UTC", "PNG", "JPEG", "IANA",
            "TCP", "UTF", "BOM", "SIGTERM", "HTTP", "SQLITE", "ID", "KEY", "VALUE", "KB",
            "TLS", "API", "XML", "DIGEST_DATABASE_URL", "DIGEST_CONFIG", "PATH_TO"}


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    """Every command of the `digest` group, with the words that run it."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, command in [((), cli), *commands()]:
        where = " ".join(("digest", *path))
        if not (command.help or "").strip():
            missing.append(f"{where}: no description")
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{where} {param.opts[0]}: no help text")
    assert not missing, "\n".join(missing)


def test_each_group_names_every_command_it_holds(runner: CliRunner) -> None:
    listed = runner.invoke(cli, ["--help"]).output
    for path, command in commands():
        if not isinstance(command, click.Group):
            continue
        summary = command.get_short_help_str(limit=1000).lower()
        # Whole in `digest --help`, not cut with "...".
        assert f"{path[-1]}  " in listed and summary in listed.lower(), (path, listed)
        for name in command.list_commands(click.Context(command)):
            assert name.replace("-", " ") in summary.replace("-", " "), (
                f"`digest {' '.join(path)}` says {command.help!r} but holds `{name}`")


def test_the_capitalized_words_of_a_help_are_its_parameters() -> None:
    wrong = []
    for path, command in [((), cli), *commands()]:
        ctx = click.Context(command)
        names = {param.make_metavar(ctx).strip("[]. ").upper() for param in command.params}
        names |= {(param.metavar or "").upper() for param in command.params}
        for param in command.params:
            names |= {part.upper() for part in re.findall(r"[A-Z][A-Z_]+", param.metavar or "")}
        texts = [command.help or ""] + [p.help or "" for p in command.params
                                        if isinstance(p, click.Option)]
        for text in texts:
            for word in re.findall(r"\b[A-Z][A-Z_]{1,}\b", text):
                if word not in names and word not in ACRONYMS:
                    wrong.append(f"digest {' '.join(path)}: {word!r} in {text!r}")
    assert not wrong, "\n".join(wrong)


def test_a_list_is_named_with_list_name_in_every_command() -> None:
    # One spelling everywhere: `--list NAME`, never an argument.
    for path, command in commands():
        for param in command.params:
            if param.name == "list_name":
                assert isinstance(param, click.Option), path
                assert param.opts == ["--list"] and param.metavar == "NAME", path
        if len(path) == 2 and path[0] == "lists" and path[1] != "list":
            assert "list_name" in {p.name for p in command.params}, path
            assert not any(isinstance(p, click.Argument) for p in command.params), path


def test_states_are_offered_as_choices(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["subscribers", "list", "--list", "weekly", "--status", "gone"])
    assert result.exit_code == 2
    assert "'gone' is not one of" in result.output and "'unsubscribed'" in result.output
    shown = runner.invoke(cli, ["subscribers", "export", "--help"]).output
    assert "[pending|active|paused|unsubscribed|bounced|complained|all]" in shown


def test_cron_and_every_are_alternatives(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["lists", "create", "--list", "weekly"]).exit_code == 0
    base = ["schedules", "add", "monday", "--list", "weekly", "--timezone", "UTC"]
    both = runner.invoke(cli, [*base, "--cron", "0 8 * * mon", "--every", "daily at 07:30"])
    assert both.exit_code == 2
    assert "--cron and --every are alternatives: give one of them, not both." in both.output
    neither = runner.invoke(cli, base)
    assert neither.exit_code == 2 and "with --cron or --every" in neither.output
    shown = runner.invoke(cli, ["schedules", "add", "--help"]).output
    assert "alternative to --every" in shown and "alternative to --cron" in shown
    assert runner.invoke(cli, [*base, "--every", "daily at 07:30"]).exit_code == 0


def test_serve_and_history_explain_their_options(runner: CliRunner) -> None:
    serve = runner.invoke(cli, ["serve", "--help"]).output
    assert "Address to listen on" in serve and "TCP port to listen on" in serve
    history = runner.invoke(cli, ["schedules", "history", "--help"]).output
    assert "How many runs to show" in history
    subscribers = runner.invoke(cli, ["subscribers", "add", "--help"]).output
    assert "--list NAME" in subscribers and "The list to subscribe the address to" in subscribers
