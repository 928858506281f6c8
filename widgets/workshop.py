"""The workshop dashboard (``notebooks/dashboard.ipynb``, ``make dashboard``): four tabs in one widget.

Tab 1 drives a live session; tabs 2-4 explore a finished run. Kept here, not in the notebook, so the
browser test opens the very same dashboard (style: any helper a second notebook would want lives in
the package).
"""

from __future__ import annotations

import ipywidgets as W

from .advantages import AdvantageDecay
from .alpha_beta import AlphaBetaPanel
from .dashboard import Dashboard
from .triplets import TripletBrowser

TITLES = ("Live run", "Triplets", "Advantages", "alpha / beta / entropy")


def workshop_tabs(live, finished) -> W.Tab:
    """``live``: a ``SelfPlaySession`` to step through; ``finished``: a run directory or records."""
    triplets = TripletBrowser(finished)
    advantages = AdvantageDecay(finished)
    panel = AlphaBetaPanel(finished)
    tabs = W.Tab(children=[Dashboard(live), triplets, advantages, panel])
    for i, title in enumerate(TITLES):
        tabs.set_title(i, title)

    # linked views: a point clicked in the advantage or alpha/beta tabs opens that triplet
    def open_triplet(t, example_id):
        triplets.show(t, [int(example_id)], note="clicked in a chart")
        tabs.selected_index = 1

    advantages.on_open_triplet = open_triplet
    panel.on_open_triplet = open_triplet
    return tabs
