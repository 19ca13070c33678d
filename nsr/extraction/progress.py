"""Progress display of long extractions: a bar on a terminal, one line per step in a log file."""

from __future__ import annotations

import math
import sys
import time
from typing import Any


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "neuron") -> Any:
    """A progress bar on a terminal; where stderr is a file or a pipe (a log), a line at every
    tenth of the work instead of carriage-return redraws; ``None`` when not ``enabled``."""
    if not enabled:
        return None
    if not _stderr_is_terminal():
        return _LineProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class _LineProgress:
    """The part of tqdm's interface the extraction uses, printing plain lines to stderr: one per
    tenth of ``total`` (one per 100 steps where the total is unknown) and one at the end."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.postfix: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self._next, self._last = self._step(), 0

    def _step(self) -> int:
        return self.n + (max(1, math.ceil(self.total / 10)) if self.total else 100)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self._next:
            self._line()
            self._next = self._step()

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = kwargs

    def close(self) -> None:
        if self.n != self._last:
            self._line()

    def _line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        post = "".join(f", {k}={v:,}" if isinstance(v, int) else f", {k}={v}" for k, v in self.postfix.items())
        self._last = self.n
        print(f"{self.desc}: {self.n}{of} {self.unit}s{post} ({time.perf_counter() - self.t0:.1f} s)",
              file=sys.stderr, flush=True)
