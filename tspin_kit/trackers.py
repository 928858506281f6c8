"""Experiment trackers (`report_to`): the run's records echoed to trackio, TensorBoard or W&B.

The run directory stays the record; a tracker gets a copy of what the session already computed:

- per optimiser step (global step = steps of all earlier iterations + this one's): ``train/loss`` and
  the batch means of the method's loss terms and gradient weights (``train/current_term``,
  ``train/historical_term``, ``train/current_weight``, ``train/historical_weight``, where it has them);
- per iteration (step = iteration t): every numeric metric of ``metrics.json`` under ``iteration/``
  (scores, advantage means and quantiles, degenerate and misalignment shares, entropy, timings);
- per iteration: the instability alarms (``iteration/alarm_<name>``: 0 quiet, 1 warning, 2 critical);
- per iteration: tables of the top and bottom ``k`` triplets by current advantage u and by historical
  advantage v after training (texts and log-probs), named ``triplets/{current,historical}_advantage``.

Each tracker is an optional extra (``pip install 'tspin-kit[trackio]'``, ``[tensorboard]``, ``[wandb]``);
naming one that is not installed is a ``ConfigError`` that says what to install. W&B runs in offline mode
unless ``WANDB_MODE`` says otherwise. Only the main process reports.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .config import ConfigError

TOP_K = 5
TABLE_COLUMNS = [
    "example_id",
    "prompt",
    "annotated",
    "synthetic",
    "proto",
    "annotated_logp_after",
    "synthetic_logp_after",
    "proto_logp_after",
    "current_advantage_after",
    "historical_advantage_after",
]


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics row (strings such as ``method`` and NaNs are left out)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k == "iteration":
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def triplet_tables(examples: pd.DataFrame, k: int = TOP_K) -> dict[str, pd.DataFrame]:
    """Top and bottom ``k`` triplets of one iteration by u and by v after training, with a ``rank`` column
    (``top 1`` = largest)."""
    out = {}
    cols = [c for c in TABLE_COLUMNS if c in examples]
    for name in ("current_advantage", "historical_advantage"):
        col = f"{name}_after"
        if col not in examples or examples[col].isna().all():
            continue
        ordered = examples.sort_values([col, "example_id"], ascending=[False, True])
        top, bottom = ordered.head(k), ordered.tail(k).iloc[::-1]
        table = pd.concat(
            [
                top.assign(rank=[f"top {i + 1}" for i in range(len(top))]),
                bottom.assign(rank=[f"bottom {i + 1}" for i in range(len(bottom))]),
            ]
        )
        out[name] = table[["rank"] + cols].reset_index(drop=True)
    return out


def step_rows(losses: list[float], terms: dict[str, list[float]] | None = None) -> list[dict[str, float]]:
    """One dict per optimiser step: ``train/loss`` and ``train/<term>`` for each recorded loss term."""
    rows = [{"train/loss": float(x)} for x in losses]
    for name, values in (terms or {}).items():
        for row, v in zip(rows, values):
            row[f"train/{name}"] = float(v)
    return rows


SEVERITY_LEVEL = {"warning": 1.0, "critical": 2.0}


def alarm_metrics(records, iteration: int, label: str | None = None) -> dict[str, float]:
    """The instability alarms (tspin_kit.alarms) of one iteration as numbers a tracker can plot:
    ``alarm_<name>`` = 0 (quiet), 1 (warning) or 2 (critical), for every alarm name."""
    from .alarms import ALARM_NAMES, find_alarms

    out = {f"alarm_{name}": 0.0 for name in ALARM_NAMES}
    for a in find_alarms(records, label=label):
        if a.iteration == iteration:
            out[f"alarm_{a.name}"] = max(out[f"alarm_{a.name}"], SEVERITY_LEVEL.get(a.severity, 1.0))
    return out


class Tracker:
    name = "base"

    def log_steps(self, first_step: int, losses: list[float], terms: dict[str, list[float]] | None = None) -> None: ...
    def log_iteration(self, iteration: int, metrics: dict[str, float], tables: dict[str, pd.DataFrame]) -> None: ...
    def close(self) -> None: ...


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"run.report_to names {extra}, but {module} is not installed: pip install 'tspin-kit[{extra}]'"
        ) from None


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, log_dir: Path, config: dict):
        _need("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", "```\n" + _yaml(config) + "\n```", 0)

    def log_steps(self, first_step, losses, terms=None):
        for i, row in enumerate(step_rows(losses, terms)):
            for k, v in row.items():
                self.writer.add_scalar(k, v, first_step + i)

    def log_iteration(self, iteration, metrics, tables):
        for k, v in metrics.items():
            self.writer.add_scalar(f"iteration/{k}", v, iteration)
        for name, t in tables.items():
            self.writer.add_text(
                f"triplets/{name}", t.to_markdown(index=False) if _has_tabulate() else t.to_html(index=False), iteration
            )
        self.writer.flush()

    def close(self):
        self.writer.close()


class TrackioTracker(Tracker):
    name = "trackio"

    def __init__(self, project: str, run_name: str, config: dict):
        self.trackio = _need("trackio", "trackio")
        self.run = self.trackio.init(project=project, name=run_name, config=config, embed=False)

    def log_steps(self, first_step, losses, terms=None):
        for i, row in enumerate(step_rows(losses, terms)):
            self.run.log(row, step=first_step + i)

    def log_iteration(self, iteration, metrics, tables):
        # trackio keeps one step axis per run: iteration rows go at step = iteration, under their own keys
        row = {f"iteration/{k}": v for k, v in metrics.items()}
        row.update({f"triplets/{n}": self.trackio.Table(dataframe=t) for n, t in tables.items()})
        self.run.log(row, step=iteration)

    def close(self):
        self.run.finish()


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, project: str, run_name: str, config: dict, log_dir: Path):
        import os

        self.wandb = _need("wandb", "wandb")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            project=project,
            name=run_name,
            config=config,
            dir=str(log_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("iteration/iteration")
        self.run.define_metric("iteration/*", step_metric="iteration/iteration")
        self.run.define_metric("triplets/*", step_metric="iteration/iteration")

    def log_steps(self, first_step, losses, terms=None):
        for i, row in enumerate(step_rows(losses, terms)):
            self.run.log({"train/step": first_step + i, **row})

    def log_iteration(self, iteration, metrics, tables):
        row = {"iteration/iteration": iteration, **{f"iteration/{k}": v for k, v in metrics.items()}}
        row.update({f"triplets/{n}": self.wandb.Table(dataframe=t) for n, t in tables.items()})
        self.run.log(row)

    def close(self):
        self.run.finish()


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def make_trackers(names: list[str] | None, *, run_dir: str | None, label: str, config: dict) -> list[Tracker]:
    """The trackers of ``report_to``. Local files (TensorBoard events, W&B offline runs) go under
    ``run_dir/trackers/``; trackio uses its own store (``TRACKIO_DIR``), project ``tspin-kit``."""
    root = Path(run_dir or ".") / "trackers"
    run_name = f"{label}-{Path(run_dir).name}" if run_dir else label
    out: list[Tracker] = []
    for name in names or []:
        if name == "tensorboard":
            out.append(TensorBoardTracker(root / "tensorboard", config))
        elif name == "trackio":
            out.append(TrackioTracker("tspin-kit", run_name, config))
        elif name == "wandb":
            out.append(WandbTracker("tspin-kit", run_name, config, root))
    return out
