"""The consoles metabench prints to and its one-line error format. In a terminal rich fits the
window; written to a file or a pipe (SLURM logs, CI, ``| tee``) it would cut tables at 80
columns, so there every line is as wide as its content and no value is ever truncated."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

UNBOUNDED = 100_000  # columns when not a terminal: tables take their natural width


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        tty = False
    return Console(stderr=stderr) if tty else Console(stderr=stderr, width=UNBOUNDED)


console = make_console()
err_console = make_console(stderr=True)


def report_error(e: Exception | str) -> None:
    """``error: <line>`` on stderr for each line of the message."""
    text = e if isinstance(e, str) else str(e)
    for line in text.splitlines() or [type(e).__name__]:
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False,
                          soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)
