"""tspin-kit: SPIN and T-SPIN self-play fine-tuning you can step through.

Engine only: no UI imports here (the interactive views live in the separate ``widgets`` package).
"""

from ._version import __version__
from .config import (
    ConfigError,
    MethodConfig,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
)
from .losses import spin_loss, tspin_loss, tspin_ref_loss
from .store import RunDirError, RunRecords, load_run


def __getattr__(name):
    # The session pulls in transformers/accelerate; import it lazily so `load_run` stays light.
    if name in ("SelfPlaySession", "run"):
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module 'tspin_kit' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "MethodConfig",
    "ModelConfig",
    "RunConfig",
    "RunDirError",
    "RunRecords",
    "SamplingConfig",
    "SelfPlaySession",
    "TrainConfig",
    "__version__",
    "load_run",
    "run",
    "spin_loss",
    "tspin_loss",
    "tspin_ref_loss",
]
