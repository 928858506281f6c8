"""Ready-made configs and run helpers for the notebooks, the workshop and the Voila dashboard.

Every notebook has one smoke switch: ``smoke_mode()`` reads the environment variable
``TSPIN_SMOKE`` (unset or ``0``: the real settings; ``1``: tiny settings so that all notebooks
together execute in CI in a few minutes on 2 CPU cores). ``toy_config`` builds a ``RunConfig`` for
the embedded toy world at either size; ``run_toy`` runs (or reloads) one method and
``run_toy_methods`` several, side by side (a thin wrapper over the grid runner ``compare.run_grid``);
``score_table`` is ``compare.score_table``, the one table of scores per run and policy.

Run directories are named by a hash of their config under ``runs_root()`` (``$TSPIN_RUNS``, else
``runs/`` at the repository root), so a notebook run twice with the same settings reloads its
finished runs instead of training again, two notebooks that ask for the same run share it, and a
changed setting never collides with an older run directory.

The smoke numbers mean nothing (pi_0 is barely trained); every notebook says so and quotes the
full-mode behaviour in prose instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import compare
from .compare import score_table
from .config import RunConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "FULL",
    "SMOKE",
    "config_hash",
    "load_policy",
    "pick_triplet",
    "run_toy",
    "run_toy_methods",
    "runs_root",
    "score_table",
    "smoke_mode",
    "toy_config",
]

# The settings smoke mode changes; everything else keeps RunConfig's defaults.
SMOKE: dict[str, dict[str, Any]] = {
    "data": {"num_examples": 64, "eval_size": 32},
    "model": {"toy_sft_examples": 64, "toy_sft_epochs": 5},
    "train": {"batch_size": 32, "epochs": 1},
    "sampling": {"max_new_tokens": 6},
    "run": {"iterations": 2},
}
# Full mode: the real defaults (docs/toy-world: 1000 annotated pairs, pi_0 SFT 40 epochs, 5 iterations).
FULL: dict[str, dict[str, Any]] = {"run": {"iterations": 5}}


def smoke_mode(default: bool = False) -> bool:
    """True when ``TSPIN_SMOKE`` is set to 1/true/yes/on (CI sets it); ``default`` when unset or empty."""
    value = os.environ.get("TSPIN_SMOKE")
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def runs_root() -> Path:
    """Where notebook runs live: ``$TSPIN_RUNS``, else ``runs/`` in the repository (git-ignored)."""
    env = os.environ.get("TSPIN_RUNS")
    if env:
        return Path(env).expanduser()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "tspin_kit").is_dir():
            return folder / "runs"
    return here / "runs"


def config_hash(config: RunConfig) -> str:
    """A short stable hash of everything in ``config`` except where it is stored."""
    d = config.to_dict()
    d.pop("run_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _merge(config: RunConfig, section: str, values: dict[str, Any]) -> None:
    target = config if section == "run" else getattr(config, section)
    for key, value in values.items():
        if not hasattr(target, key):
            raise TypeError(f"toy_config: {section} has no setting {key!r}")
        setattr(target, key, value)


def toy_config(
    method: str = "tspin",
    /,
    *,
    smoke: bool | None = None,
    seed: int = 0,
    iterations: int | None = None,
    task: str = "addition",
    name: str | None = None,
    **overrides: Any,
) -> RunConfig:
    """A validated ``RunConfig`` for the embedded toy world.

    ``smoke`` (default: ``smoke_mode()``) picks the tiny CI settings or the real defaults. Overrides
    are sections given as dicts, or top-level run fields::

        toy_config("tspin", method={"beta": 1.0}, train={"lr": 5e-5}, iterations=10)

    ``method`` is a name of the table of methods (``tspin_kit.methods``) or a grid preset (``compare.PRESETS``,
    e.g. ``"sft_4x"``). The run directory is ``runs_root()/<name or method>-<hash of the config>``; pass
    ``run_dir=None`` to keep a run in memory.
    """
    smoke = smoke_mode() if smoke is None else smoke
    cfg = RunConfig()
    cfg.data.source = f"toy:{task}"
    if task == "scratchpad":
        cfg.sampling.max_new_tokens = 32
    for section, values in (SMOKE if smoke else FULL).items():
        if task == "scratchpad" and section == "sampling":
            continue
        _merge(cfg, section, values)
    cfg.seed = seed
    if iterations is not None:
        cfg.iterations = iterations
    run_dir_given = "run_dir" in overrides
    run_dir = overrides.pop("run_dir", None)
    for key, value in overrides.items():
        if isinstance(value, dict):
            if key not in ("model", "data", "method", "train", "sampling"):
                raise TypeError(f"toy_config: {key!r} is not a config section (model, data, method, train, sampling)")
            _merge(cfg, key, value)
        else:
            _merge(cfg, "run", {key: value})
    # ``method``: a method of the table of methods, or a preset of the grid runner (e.g. sft_4x: SFT on 4x the pairs)
    compare.configure(cfg, method)
    # Re-run the dataclass checks on the merged values: a bad override fails here, naming the field.
    cfg = RunConfig.from_dict(cfg.to_dict(), source="toy_config")
    if run_dir_given:
        cfg.run_dir = None if run_dir is None else str(run_dir)
    else:
        cfg.run_dir = str(runs_root() / f"{name or method}-s{seed}-{config_hash(cfg)}")
    return cfg


def run_toy(config: RunConfig, *, label: str | None = None, progress=None):
    """Run ``config`` to the end, or reload it if its run directory already holds the finished run.

    Returns ``RunRecords``. A half-finished run directory is resumed from its last completed phase.
    """
    from .session import SelfPlaySession
    from .store import load_run

    label = label or compare.label(config.method.name)
    if config.run_dir and (Path(config.run_dir) / "manifest.json").is_file():
        session = SelfPlaySession.resume(config.run_dir)
    else:
        session = SelfPlaySession(copy.deepcopy(config), label=label)
    session.run(progress)
    return load_run(config.run_dir) if config.run_dir else session.records()


def run_toy_methods(
    methods: Iterable[str],
    *,
    seeds: Iterable[int] = (0,),
    smoke: bool | None = None,
    iterations: int | None = None,
    workers: int | None = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Run several methods (and seeds) on one toy world with otherwise identical settings.

    Returns ``{label: RunRecords}`` in the order asked, labels like ``"T-SPIN"`` or, with several
    seeds, ``"T-SPIN s1"``: ready for ``widgets.RunComparison`` and ``widgets.AdvantageDecay``.
    ``overrides`` go to every ``toy_config`` call (e.g. ``method={"lam": 0.1}``). The grid runs through
    ``compare.run_grid``: one run after the other in this process (``workers=1``), or ``workers`` processes.
    """
    seeds, methods = list(seeds), list(methods)
    configs = {
        (m, seed): toy_config(m, smoke=smoke, seed=seed, iterations=iterations, **copy.deepcopy(overrides))
        for seed in seeds
        for m in methods
    }
    records = compare.run_grid(configs, workers=workers)
    return {compare.label(m) + (f" s{seed}" if len(seeds) > 1 else ""): records[(m, seed)] for (m, seed) in configs}


def load_policy(records, t: int):
    """(model, tokenizer) of pi_t from a finished toy run directory (``keep_weights="all"``).

    ``t`` = 0 is the initial policy, ``t`` = k the policy after iteration k-1. The model is in eval mode.
    """
    from . import toy
    from .store import RunDirError, RunStore, load_weights

    if records.run_dir is None:
        raise RunDirError("load_policy needs a run kept on disk (config.run_dir set)")
    if records.manifest["config"]["model"]["name_or_path"] != "toy":
        raise RunDirError("load_policy rebuilds the embedded toy model; this run used another model")
    folder = RunStore(records.run_dir).policy_dir(t)
    if not folder.exists():
        raise RunDirError(f"{folder}: no weights of pi_{t} (was the run kept with keep_weights='last'?)")
    tokenizer = toy.build_tokenizer()
    model = toy.build_model(tokenizer)
    load_weights(model, folder)
    return model.eval(), tokenizer


def pick_triplet(records, iteration: int) -> pd.Series:
    """One example of ``iteration`` whose y, y' and y0 are three different texts (else the first row).

    Prefers a triplet whose texts re-tokenise to the recorded token counts (a sampled response can hold a
    special token that decoding drops), so a hand computation from the texts matches the records.
    """
    from .templates import encode_response

    part = records.examples[records.examples["iteration"] == iteration].sort_values("example_id")
    if part.empty:
        raise KeyError(f"iteration {iteration} is not in the records")
    tokenizer = None
    if records.manifest["config"]["model"]["name_or_path"] == "toy":
        from . import toy

        tokenizer = toy.build_tokenizer()
    fallback = None
    for _, row in part.iterrows():
        same_counts = tokenizer is None or all(
            len(encode_response(tokenizer, row[r])) == row[f"{r}_ntokens"] for r in ("annotated", "synthetic", "proto")
        )
        if not same_counts:
            continue
        fallback = row if fallback is None else fallback
        if len({row["annotated"], row["synthetic"], row["proto"]}) == 3:
            return row
    return fallback if fallback is not None else part.iloc[0]
