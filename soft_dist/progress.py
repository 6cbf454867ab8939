"""Progress on long work, for people: a tqdm bar on a terminal; in a log file or CI (stderr is not a
terminal) a plain line at every tenth of the work instead, because a bar's carriage-return frames would
pile up there as one unreadable line."""

from __future__ import annotations

import sys
import time

LOG_STEPS = 10  # lines a non-terminal gets over the whole work


class LineProgress:
    """The part of tqdm's interface soft-dist uses (update, write, close, context manager), printing
    ``desc: 450/1797 img (25%), 12 s`` each time another tenth of ``total`` is done."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, file=None):
        self.total, self.desc, self.unit, self.n = max(int(total), 0), desc, unit, int(initial)
        self.file = file if file is not None else sys.stderr
        self._started = time.perf_counter()
        self._next_step = self._step_of(self.n) + 1

    def _step_of(self, n: int) -> int:
        return LOG_STEPS if self.total == 0 else min(LOG_STEPS, n * LOG_STEPS // self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        step = self._step_of(self.n)
        if step >= self._next_step:
            self._next_step = step + 1
            seconds = time.perf_counter() - self._started
            print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n // max(self.total, 1)}%), "
                  f"{seconds:.0f} s", file=self.file, flush=True)

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoProgress(LineProgress):
    """Progress turned off (``--no-progress``): counts, prints nothing."""

    def __init__(self, total: int = 0, desc: str = "", unit: str = "", initial: int = 0, file=None):
        super().__init__(total, desc, unit, initial, file)

    def update(self, n: int = 1) -> None:
        self.n += n


def counted(number: int, noun: str) -> str:
    """``number`` with ``noun`` in the singular or plural, for console lines: "1 worker", "2 workers"."""
    return f"{number} {noun}{'' if abs(number) == 1 else 's'}"


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool = True, initial: int = 0,
                 leave: bool = False, lines_in_logs: bool = True):
    """A tqdm bar on a terminal; ``LineProgress`` in a log (or nothing when ``lines_in_logs`` is False,
    for work that already prints its own line per step, like training epochs); nothing when disabled."""
    if not enabled:
        return NoProgress(total, desc, unit, initial)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr)
    if not lines_in_logs:
        return NoProgress(total, desc, unit, initial)
    return LineProgress(total, desc, unit, initial)
