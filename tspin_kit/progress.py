"""Progress bars (`tqdm.auto`: a widget in notebooks, text in a terminal), one switch to silence them.

Set ``TSPIN_PROGRESS=0`` to turn bars off (the CLI does so when stderr is not a terminal, so CI logs stay
readable). Only the main process draws bars.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def bar(total: int, desc: str, *, main: bool = True):
    return tqdm(total=total, desc=desc, leave=False, disable=not main or os.environ.get("TSPIN_PROGRESS") == "0")
