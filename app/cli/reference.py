"""The command reference in `docs/cli.md`, written from the parsers themselves (`tests/test_cli_docs.py` keeps the
file equal to it), so the documentation cannot drift from the commands."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

MARKER = "<!-- Generated from the argparse parsers of app/cli by tests/test_cli_docs.py: do not edit below. -->"


def _commands(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, str]]:
    """Every runnable command (a parser without subcommands), with its one-line help, in the order of `ctx --help`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                    yield from _commands(child)
                else:
                    yield child, helps.get(name, "")


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=10_000)  # one line, whatever the terminal
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _option(action: argparse.Action) -> str:
    names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        names += " (" + " \\| ".join(f"`{choice}`" for choice in action.choices) + ")"
    return names


def _default(action: argparse.Action) -> str:
    if action.required or action.default in (None, False, "", argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return f"`{action.default}`"


def markdown(parser: argparse.ArgumentParser) -> str:
    """The reference: per command its usage and a table of its arguments."""
    sections: list[str] = []
    for command, summary in _commands(parser):
        rows = [
            f"| {_option(action)} | {'yes' if action.required else ''} | {_default(action)} | "
            f"{(action.help or '').replace('|', chr(92) + '|')} |"
            for action in command._actions
            if not isinstance(action, argparse._HelpAction)
        ]
        table = ["| argument | required | default | meaning |", "| --- | --- | --- | --- |", *rows] if rows else []
        sections.append(
            "\n".join(
                [
                    f"### {command.prog}",
                    "",
                    f"{summary[:1].upper()}{summary[1:]}.",
                    "",
                    "```",
                    _usage(command),
                    "```",
                    "",
                    *table,
                ]
            )
        )
    return "\n\n".join(sections) + "\n"
