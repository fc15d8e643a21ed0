"""The ``eventcore`` command: its parser and :func:`main`.

The commands come from modules named for what they are about: the system
itself (:mod:`~eventcore.cli.system`) and tasks (:mod:`~eventcore.cli.tasks`),
which need only ``eventcore``, and from each role, whose command runs it
and whose tools need its code (``workers.cli``, ``projections.cli``,
``web.cli``). The top-level help lists them grouped by noun (:data:`GROUPS`).

Every command loads the settings first, so a wrong value stops it at once
with the key named. Errors eventcore raises on purpose are printed as one
line (``eventcore: error: ...``) with exit status 2 for configuration and 1
for everything else; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from eventcore.cli import system, tasks
from eventcore.config import Settings, load_settings
from eventcore.errors import ConfigError, EventcoreError
from history import cli as history_cli
from projections import cli as projections_cli
from web import cli as web_cli
from workers import cli as workers_cli

__all__ = ["GROUPS", "Commands", "build", "build_parser", "main"]

Handler = Callable[[argparse.Namespace, Settings], int]

# Each module adds its commands in this order, which is also the order of
# argparse's "invalid choice ... (choose from ...)".
MODULES: tuple[ModuleType, ...] = (
    system,
    workers_cli,
    tasks,
    projections_cli,
    history_cli,
    web_cli,
)

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("run the system", ("up", "worker", "project", "sql", "web", "redis")),
    ("tasks", ("submit",)),
    ("the log", ("events",)),
    ("the views", ("status", "as-of", "replay")),
    ("the history", ("history",)),
    ("administration", ("check", "config", "token")),
)
"""The headings of the top-level help and the commands under each; every
command is in exactly one group (tests/test_cli.py checks it)."""


class CommandParser(argparse.ArgumentParser):
    """A parser that takes the common options (``--config``, ``-v``) wherever
    they are put: before the command, after it, or after a sub-command
    (``eventcore events export --config F``).

    argparse makes every sub-parser with the class of its parent, so the
    options defined here reach each command, the roles' commands included,
    without any of them declaring them. On sub-parsers they default to
    "not given", so one given earlier on the line is not reset.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help="TOML settings file (default: $EVENTCORE_CONFIG)",
        )
        self.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log debug messages",
        )


class Commands:
    """The commands of ``parser``, as each module adds them: every command's
    handler and one-line help, by name.

    Each module's ``add_commands`` is handed this in place of argparse's
    sub-parsers action and calls only its ``add_parser``; argparse keeps the
    one-line helps only in private attributes, so they are noted here on the
    way, for the grouped list of :func:`grouped_help`.
    """

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        # Hidden from the help, which lists the commands by group instead.
        self._action = parser.add_subparsers(
            dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS
        )
        self.handlers: dict[str, Handler] = {}
        self.helps: dict[str, str] = {}

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """``argparse``'s ``add_parser``, noting the command's ``help``."""
        self.helps[name] = kwargs.get("help", "")
        return self._action.add_parser(name, **kwargs)

    def add(self, module: ModuleType) -> None:
        """Add the commands of ``module`` (its ``add_commands(sub)`` returns
        a handler by command name)."""
        self.handlers.update(module.add_commands(self))


def grouped_help(helps: Mapping[str, str], width: int) -> str:
    """The commands under the headings of :data:`GROUPS`, each with its
    one-line help wrapped to ``width`` columns, as argparse lays out options."""
    indent = 2 + max(len(name) for _, names in GROUPS for name in names) + 2
    lines: list[str] = []
    for heading, names in GROUPS:
        lines += ["", f"{heading}:"]
        for name in names:
            text = textwrap.wrap(helps[name], max(width - indent, 20)) or [""]
            lines.append(f"  {name:<{indent - 2}}{text[0]}")
            lines += [" " * indent + more for more in text[1:]]
    return "\n".join(lines)


def build() -> Commands:
    """The ``eventcore`` parser and its commands."""
    parser = CommandParser(
        prog="eventcore",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="'eventcore COMMAND --help' shows the options of a command.",
    )
    parser.set_defaults(config=None, verbose=False)
    commands = Commands(parser)
    for module in MODULES:
        commands.add(module)
    # argparse would draw the usage without the hidden COMMAND; set only now,
    # because the sub-parsers' own usage line is derived from the parent's.
    parser.usage = "%(prog)s [-h] [--config FILE] [-v] COMMAND ..."
    # The description is shown as written (argparse lists no headings for
    # sub-commands), so it is wrapped here, to argparse's width.
    width = shutil.get_terminal_size().columns - 2
    parser.description = "Event-sourced tasks on Redis Streams.\n" + grouped_help(
        commands.helps, width
    )
    return commands


def build_parser() -> argparse.ArgumentParser:
    """The ``eventcore`` parser; ``command`` of what it parses names the command."""
    return build().parser


def main(argv: Sequence[str] | None = None) -> int:
    commands = build()
    args = commands.parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        settings = load_settings(args.config)
        return commands.handlers[args.command](args, settings)
    except ConfigError as exc:
        print(f"eventcore: error: {exc}", file=sys.stderr)
        return 2
    except EventcoreError as exc:
        print(f"eventcore: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
