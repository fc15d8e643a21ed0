"""A progress line for long operations (rebuild, verify, snapshot, export,
import): a count, the rate, and a bar when the total is known.

It draws on stderr, and only when stderr is a terminal: in logs, pipes and
tests it stays silent, and the command prints its own one-line summary when
it ends. No dependency: a carriage return and a padded line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]

BAR_WIDTH = 24


class Progress:
    """``with Progress("rebuilding", total=n) as bar: ... bar.update(done)``.

    ``update`` is cheap when called often: it redraws at most every
    ``interval`` seconds.
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "entries",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.2,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.interval = interval
        self.done = 0
        self.fraction: float | None = None
        self.started = clock()
        self._drawn_at: float | None = None
        self._width = 0
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):  # closed or not a real file
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def rate(self) -> float:
        """Units per second so far."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, done: int, *, fraction: float | None = None) -> None:
        """Set the count (and, when the work is not measured in the counted
        unit, e.g. bytes of a file read, the fraction done)."""
        self.done = done
        self.fraction = fraction
        if not self.enabled:
            return
        now = self.clock()
        if self._drawn_at is None or now - self._drawn_at >= self.interval:
            self._drawn_at = now
            self._draw()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n, fraction=self.fraction)

    def line(self) -> str:
        """The progress line as it would be drawn now."""
        fraction = self.fraction
        if fraction is None and self.total:
            fraction = self.done / self.total
        parts = [self.label]
        if fraction is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            filled = int(fraction * BAR_WIDTH)
            parts.append(f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%")
        count = f"{self.done:,}" if self.total is None else f"{self.done:,}/{self.total:,}"
        parts.append(f"{count} {self.unit}")
        parts.append(f"{self.rate:,.0f}/s")
        parts.append(f"{self.elapsed:.1f}s")
        return "  ".join(parts)

    def close(self) -> None:
        """Draw the final state and end the line (nothing when not drawing)."""
        if self.enabled and self._drawn_at is not None:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self._drawn_at = None

    def _draw(self) -> None:
        text = self.line()
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write(f"\r{text}{' ' * pad}")
        self.stream.flush()
