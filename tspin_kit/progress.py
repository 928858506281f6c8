"""Progress of the engine's loops: one line per phase in notebooks, tqdm in a terminal, off on request.

- In a notebook (an IPython kernel), ``bar`` draws no tqdm widget: each phase is one text line,
  updated in place (``generate: 128/256`` ... ``generate: 256/256 in 3.1 s``), so a cell that runs
  several phases shows a few lines instead of a stack of bars burying the widgets below it.
- In a terminal it is ``tqdm`` (``leave=False``).
- ``TSPIN_PROGRESS=0`` turns it off (the CLI does so when stderr is not a terminal, so CI logs stay
  readable); ``with quiet():`` turns it off for the current thread (the dashboard runs phases in a
  background thread and shows their progress itself). Only the main process draws.

Importing this module also silences the progress bars that transformers and huggingface_hub draw
when they load or save weights ("Loading weights", "Writing model shards"): up to 22 of them per
notebook cell otherwise. ``TSPIN_LIBRARY_BARS=1`` keeps them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from tqdm.auto import tqdm

_local = threading.local()


def _silence_library_bars() -> None:
    if os.environ.get("TSPIN_LIBRARY_BARS") == "1":
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001, S110 - transformers missing or changed: nothing to silence
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # noqa: BLE001, S110 - huggingface_hub missing: nothing to silence
        pass


_silence_library_bars()


@contextlib.contextmanager
def quiet():
    """No bars from this thread inside the block."""
    before = getattr(_local, "quiet", False)
    _local.quiet = True
    try:
        yield
    finally:
        _local.quiet = before


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """One text line per phase, updated in place at most every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, interval: float = 0.5) -> None:
        from IPython.display import display

        self.total, self.desc, self.n, self.interval = int(total), desc, 0, interval
        self.t0 = self._last = time.perf_counter()
        self.handle = display(self._text(), display_id=True)

    def _text(self, done: bool = False):
        from IPython.display import Pretty

        tail = f" in {time.perf_counter() - self.t0:.1f} s" if done else " …"
        return Pretty(f"{self.desc}: {self.n}/{self.total}{tail}")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval and self.handle is not None:
            self._last = now
            self.handle.update(self._text())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.update(self._text(done=True))
            self.handle = None


def bar(total: int, desc: str, *, main: bool = True):
    """A progress object with ``update(n)`` and ``close()`` for ``total`` items of phase ``desc``."""
    if not main or os.environ.get("TSPIN_PROGRESS") == "0" or getattr(_local, "quiet", False):
        return _Off()
    if in_notebook():
        return LineProgress(total, desc)
    return tqdm(total=total, desc=desc, leave=False)
