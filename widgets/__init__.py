"""Interactive views over tspin_kit's run records (ipywidgets + plotly FigureWidget).

Each widget takes a live ``SelfPlaySession``, a finished run directory or records, and is an
``ipywidgets.VBox`` you can ``display``. The engine never imports this package.
"""

from .advantages import AdvantageDecay
from .alpha_beta import AlphaBetaPanel, ObjectiveLab
from .compare import RunComparison
from .dashboard import Dashboard
from .triplets import TripletBrowser
from .workshop import workshop_tabs

__all__ = [
    "AdvantageDecay",
    "AlphaBetaPanel",
    "Dashboard",
    "ObjectiveLab",
    "RunComparison",
    "TripletBrowser",
    "workshop_tabs",
]
