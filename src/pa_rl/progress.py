"""Progress of long loops: a tqdm bar on a terminal, plain lines every few seconds in a log file."""

from __future__ import annotations

import sys
import time
from typing import Any


class LineProgress:
    """Progress for a log file rather than a terminal: a plain line every ``every`` seconds, where a
    tqdm bar would write a carriage-return frame at every refresh. Takes tqdm's calls that pa-rl makes."""

    def __init__(self, total: int, desc: str, initial: int = 0, every: float = 10.0) -> None:
        self.total, self.desc, self.n, self.every = total, desc, initial, every
        self.postfix = ""
        self._start_n, self._start = initial, time.monotonic()
        self._last = self._start

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            rate = (self.n - self._start_n) / (now - self._start)
            print(f"{self.desc}: {self.n}/{self.total} ({self.n / max(self.total, 1):.0%}), {rate:.3g}/s{self.postfix}",
                  file=sys.stderr, flush=True)

    def set_postfix(self, values: dict[str, object] | None = None, refresh: bool = True) -> None:
        self.postfix = "".join(f", {key}={value:.3g}" if isinstance(value, float) else f", {key}={value}"
                               for key, value in (values or {}).items())

    def close(self) -> None:
        """Nothing to clear: lines already written stay."""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, **tqdm_options: Any) -> Any:
    """A tqdm bar on a terminal; when stderr is not one (a log file, a pipe), a :class:`LineProgress`."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, **tqdm_options)
