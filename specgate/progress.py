"""What long runs show while they run and leave for CI: a tqdm bar on a terminal, plain lines
when not a terminal or under CI, and the markdown report on GitHub's job summary page.

Plain lines (one per tenth of the work, and the last) keep CI logs short and greppable; a bar
would fill them with carriage returns.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


def interactive(stream: TextIO = sys.stderr) -> bool:
    """A terminal a person watches: not redirected, not CI (most CI systems set CI=true)."""
    return stream.isatty() and not os.environ.get("CI")


class Progress:
    """Count `total` steps of `label`; `note` names the step just finished."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr):
        self.total, self.label, self.stream = max(total, 0), label, stream
        self.done = 0
        self._next_line = 0
        self._bar = None
        if interactive(stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=label, file=stream, leave=True)

    def update(self, note: str = "", steps: int = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            return
        if self.done >= self._next_line or self.done >= self.total:
            share = f" ({100 * self.done // self.total}%)" if self.total else ""
            suffix = f": {note}" if note else ""
            print(f"{self.label}: {self.done}/{self.total}{share}{suffix}", file=self.stream)
            self.stream.flush()
            self._next_line = self.done + max(1, self.total // 10)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def append_step_summary(markdown: str) -> None:
    """GitHub Actions shows the file named by $GITHUB_STEP_SUMMARY on the run's page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")
