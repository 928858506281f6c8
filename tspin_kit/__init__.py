"""tspin-kit: SPIN and T-SPIN self-play fine-tuning you can step through.

Engine only: no UI imports here (the interactive views live in the separate ``widgets`` package).
"""

__version__ = "0.1.0"

from .config import (  # noqa: E402
    ConfigError,
    MethodConfig,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
)
from .losses import spin_loss, tspin_loss, tspin_ref_loss  # noqa: E402
from .store import RunDirError, RunRecords, load_run  # noqa: E402


def __getattr__(name):
    # The session pulls in transformers/accelerate; import it lazily so `load_run` stays light.
    if name in ("SelfPlaySession", "run"):
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module 'tspin_kit' has no attribute {name!r}")


__all__ = [
    "ConfigError", "MethodConfig", "ModelConfig", "RunConfig", "SamplingConfig", "TrainConfig",
    "spin_loss", "tspin_loss", "tspin_ref_loss", "RunDirError", "RunRecords", "load_run", "SelfPlaySession", "run",
]
