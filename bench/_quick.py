"""``--quick``: every size of a benchmark shrunk so that the whole script runs in
seconds. Every phase still runs and the figures print in the same format, but
they mean nothing: the point is to see at once that the benchmark still starts
and finishes (scripts/bench-quick runs every script this way).

Each script passes its quick sizes, by argument name; they become the defaults,
so an option given on the command line still wins (``--quick --runs 2``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

HELP = "every phase at a tiny size, in seconds: checks that it runs (the figures mean nothing)"


def parse_args(
    parser: argparse.ArgumentParser, quick: dict[str, Any], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse the command line, with ``quick`` as the defaults when --quick is given."""
    parser.add_argument("--quick", action="store_true", help=HELP)
    args = parser.parse_args(argv)
    unknown = sorted(set(quick) - set(vars(args)))
    if unknown:  # a misspelt size would silently stay full
        raise ValueError(f"quick sizes name no option: {', '.join(unknown)}")
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args
