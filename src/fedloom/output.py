"""How commands show what they print: wrapped to a terminal's width, but into a file or a pipe
a line stays one line, however long (and a table as wide as it needs); ``--json`` as indented
UTF-8 JSON."""

from __future__ import annotations

import json

import click
from rich.console import Console

UNWRAPPED = 100_000  # columns of a console that writes into a file or a pipe


def command_console() -> Console:
    """The console for a command's output."""
    console = Console(highlight=False)
    if console.is_terminal:
        return console
    return Console(highlight=False, soft_wrap=True, width=UNWRAPPED)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
