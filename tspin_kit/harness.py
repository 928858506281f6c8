"""Scores from lm-evaluation-harness for the policies of a run, kept with the run's records.

    tspin eval RUN_DIR --tasks arc_easy,my_task --include-path my_tasks/ [--limit 100] [--policies all|last]
    RunConfig(eval_harness=HarnessConfig(tasks=["my_task"], include_path="my_tasks"))   # pi_0 and every pi_{t+1}

Each policy is scored with ``lm_eval.simple_evaluate`` through its Hugging Face wrapper ``HFLM``, given the
model object itself (a peft model as it is, so LoRA adapters are included) and the run's tokenizer. The
scores go to ``RUN_DIR/harness.parquet``, one row per (policy, task, metric, filter), and `load_run` reads
them into ``RunRecords.harness``:

    iteration   -1 for pi_0, t for pi_{t+1} (the policy after iteration t), as in ``heldout``
    policy      t of pi_t (= iteration + 1), the x of the score figure
    task, metric, filter, value, stderr      as lm-eval reports them (``acc,none`` -> metric acc, filter none)
    requested   the task was named (a group's subtasks are kept too, but figures and tables show the named ones)
    n_samples, num_fewshot, limit, higher_is_better, lm_eval, seconds, created

Scoring a policy on a task again replaces that policy's rows of that task. The package ``lm-eval`` is the
optional extra ``eval`` (``pip install 'tspin-kit[eval]'``); nothing here imports it before it is needed.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .store import RunDirError, RunStore, read_json, read_parquet, write_parquet

logger = logging.getLogger(__name__)

HARNESS_FILE = "harness.parquet"
COLUMNS = [
    "iteration",
    "policy",
    "task",
    "metric",
    "filter",
    "value",
    "stderr",
    "requested",
    "n_samples",
    "num_fewshot",
    "limit",
    "higher_is_better",
    "lm_eval",
    "seconds",
    "created",
]
INSTALL_HINT = "install the extra with `pip install 'tspin-kit[eval]'` (lm-eval >= 0.4)"


class HarnessError(ValueError):
    """lm-evaluation-harness cannot run as asked: not installed, an unknown task, a missing task folder."""


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise HarnessError(f"lm-evaluation-harness is not installed; {INSTALL_HINT}") from None
    return lm_eval


def parse_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (at least one name)."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise HarnessError("no lm-eval task given; name at least one, e.g. --tasks arc_easy")
    return names


def task_manager(tasks: list[str], include_path: str | Path | None = None):
    """An ``lm_eval.tasks.TaskManager`` that knows every name in ``tasks``, or a :class:`HarnessError` naming
    those it does not know (with close matches).

    When ``include_path`` holds every task asked for, only that folder is indexed: indexing lm-eval's ~15k
    built-in task files takes about 10 s.
    """
    _lm_eval()
    from lm_eval.tasks import TaskManager

    tasks = parse_tasks(tasks)
    folder = None
    if include_path is not None:
        folder = Path(include_path).expanduser()
        if not folder.is_dir():
            raise HarnessError(f"include_path {include_path}: no such folder (it should hold lm-eval task YAML files)")
        tm = TaskManager(include_path=str(folder), include_defaults=False)
        if all(t in tm.all_tasks for t in tasks):
            return tm
    tm = TaskManager(include_path=str(folder) if folder else None)
    known = set(tm.all_tasks)
    unknown = [t for t in tasks if t not in known and not (t.endswith((".yaml", ".yml")) and Path(t).is_file())]
    if unknown:
        hints = []
        for t in unknown:
            close = difflib.get_close_matches(t, tm.all_tasks, n=3, cutoff=0.75)
            hints.append(f"{t!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        where = (
            f"the built-in tasks nor in {folder}"
            if folder
            else "the built-in tasks (add --include-path for your own YAMLs)"
        )
        raise HarnessError(
            f"unknown lm-eval task {', '.join(hints)}: not among {where}; `lm-eval ls tasks` lists the built-in ones"
        )
    return tm


@contextlib.contextmanager
def _kept_state(model):
    """``simple_evaluate`` seeds python, numpy and torch and HFLM puts the model in eval mode: give a training
    session back its random streams and its mode, so a run with ``eval_harness`` trains as one without."""
    import torch

    was_training = model.training
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        model.train(was_training)


def evaluate_model(
    model,
    tokenizer,
    tasks: list[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    tasks_index=None,
) -> dict:
    """``lm_eval.simple_evaluate`` of one model object (a peft model as it is), as lm-eval returns it.

    ``tasks_index`` is a :func:`task_manager` to reuse (else one is built from ``tasks``/``include_path``).
    Per-sample logs are off; lm-eval's default seeds are used, so a policy scores the same every time.
    """
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    tasks = parse_tasks(tasks)
    tm = tasks_index if tasks_index is not None else task_manager(tasks, include_path)
    hf_log = logging.getLogger("lm_eval.models.huggingface")
    hf_log.addFilter(_model_object_warnings)
    try:
        with _kept_state(model):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=False)
    finally:
        hf_log.removeFilter(_model_object_warnings)


def _model_object_warnings(record: logging.LogRecord) -> bool:
    """HFLM warns whenever it is given a model object rather than a hub id, which is what we mean to do."""
    msg = record.getMessage()
    return not ("`pretrained` model kwarg is not of type `str`" in msg or "already-initialized model" in msg)


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for a stderr it could not compute
        return float("nan")


def results_frame(
    results: dict,
    policy: int,
    *,
    tasks: list[str] | None = None,
    limit: int | None = None,
    seconds: float = float("nan"),
) -> pd.DataFrame:
    """The rows of ``harness.parquet`` for one policy from what ``simple_evaluate`` returned (``tasks``: the
    names asked for)."""
    rows = []
    version = results.get("lm_eval_version") or ""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for task, res in (results.get("results") or {}).items():
        for key, value in res.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue
            rows.append(
                {
                    "iteration": policy - 1,
                    "policy": policy,
                    "task": task,
                    "metric": metric,
                    "filter": filt,
                    "value": _number(value),
                    "stderr": _number(res.get(f"{metric}_stderr,{filt}")),
                    "requested": tasks is None or task in tasks,
                    "n_samples": _number((results.get("n-samples") or {}).get(task, {}).get("effective")),
                    "num_fewshot": _number((results.get("n-shot") or {}).get(task)),
                    "limit": _number(limit),
                    "higher_is_better": (results.get("higher_is_better") or {}).get(task, {}).get(metric),
                    "lm_eval": str(version),
                    "seconds": float(seconds),
                    "created": created,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def record_scores(run_dir: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``frame`` to ``RUN_DIR/harness.parquet`` (atomically), replacing earlier rows of the same policy and
    task; returns the whole table."""
    path = Path(run_dir) / HARNESS_FILE
    old = read_parquet(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    done = set(zip(frame["policy"], frame["task"]))
    keep = old[[(p, t) not in done for p, t in zip(old["policy"], old["task"])]] if len(old) else old
    parts = [f for f in (keep, frame) if len(f)]
    out = pd.concat(parts, ignore_index=True) if parts else frame
    out = out.sort_values(["policy", "task", "metric", "filter"], kind="stable").reset_index(drop=True)
    write_parquet(path, out)
    return out


# ----------------------------------------------------------------------------- during a run


def score_session(session, iteration: int) -> pd.DataFrame | None:
    """The ``eval_harness`` hook of `SelfPlaySession`: score its current policy (pi_0 at ``iteration`` -1,
    pi_{t+1} after iteration t) and keep the rows (``harness.parquet`` and the session's records).

    Every process checks the task names (an unknown task stops all of them alike); the main process scores."""
    hc = session.config.eval_harness
    if hc is None:
        return None
    if getattr(session, "_harness_tasks", None) is None:
        session._harness_tasks = task_manager(hc.tasks, hc.include_path)
    if not session._main:
        return None
    t0 = time.perf_counter()
    res = evaluate_model(
        session.model,
        session.tokenizer,
        hc.tasks,
        limit=hc.limit,
        batch_size=hc.batch_size,
        tasks_index=session._harness_tasks,
    )
    frame = results_frame(res, iteration + 1, tasks=hc.tasks, limit=hc.limit, seconds=time.perf_counter() - t0)
    if session.store is not None:
        record_scores(session.store.root, frame)
    frames = session.__dict__.setdefault("_harness_frames", [])
    frames[:] = [f[f["policy"] != iteration + 1] for f in frames] + [frame]
    logger.info("%s pi_%d lm-eval: %s", session.label, iteration + 1, _summary(frame))
    return frame


def session_frame(session) -> pd.DataFrame:
    """The harness rows of a session's records: its run's ``harness.parquet``, else what it scored in memory."""
    store = getattr(session, "store", None)
    if store is not None and (store.root / HARNESS_FILE).is_file():
        return read_parquet(store.root / HARNESS_FILE)
    frames = [f for f in getattr(session, "_harness_frames", None) or [] if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _summary(frame: pd.DataFrame) -> str:
    return ", ".join(
        f"{r.task} {r.metric} {r.value:.4f}" for r in frame.itertuples() if r.filter in ("none", "")
    ) or ", ".join(f"{r.task} {r.metric}/{r.filter} {r.value:.4f}" for r in frame.itertuples())


# ----------------------------------------------------------------------------- after a run (`tspin eval`)


def saved_policies(run_dir: str | Path) -> list[int]:
    """The t of every pi_t whose weights the run kept (``weights/policy_NNN`` with safetensors), ascending."""
    out = []
    for p in (Path(run_dir) / "weights").glob("policy_*"):
        m = re.fullmatch(r"policy_(\d+)", p.name)
        if m and p.is_dir() and any(p.glob("*.safetensors")):
            out.append(int(m.group(1)))
    return sorted(out)


class PolicyLoader:
    """(model, tokenizer) of pi_t of a finished or stopped run, rebuilt as the run built them.

    A full fine-tune's ``policy_NNN`` is a complete ``save_pretrained`` folder and loads as it is. Under LoRA
    it holds only the adapter: the run's base model (the toy pi_0, or the hub model) is rebuilt once, the way
    the session builds it, and each policy's adapter is loaded into it. pi_0 of a full fine-tune of a hub
    model is not saved (it is the hub model): it is loaded from ``model.name_or_path``.
    """

    def __init__(self, run_dir: str | Path):
        from .config import ConfigError, RunConfig

        self.store = RunStore(run_dir)
        manifest = read_json(self.store.manifest_path)
        try:
            self.config = RunConfig.from_dict(manifest["config"], source=str(self.store.manifest_path))
        except (KeyError, TypeError, ConfigError) as e:
            raise RunDirError(f"{self.store.manifest_path}: cannot rebuild the run's config ({e})") from None
        self.config.run_dir = None  # the session below only builds the model; it writes nothing
        self.config.eval_harness = None
        self._world = None

    @property
    def policies(self) -> list[int]:
        """Policies that can be scored: the saved ones, and pi_0 of a full fine-tune of a hub model."""
        found = saved_policies(self.store.root)
        m = self.config.model
        if 0 not in found and m.name_or_path != "toy" and m.lora_r == 0:
            found = [0, *found]
        return found

    def _session(self):
        if self._world is None:
            from .session import SelfPlaySession

            s = SelfPlaySession(self.config)
            s._load_world()
            self._world = s
        return self._world

    def load(self, t: int):
        import torch

        folder = self.store.policy_dir(t)
        cfg = self.config.model
        if (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from . import toy
            from .models import DTYPES

            tokenizer = (
                toy.build_tokenizer()
                if cfg.name_or_path == "toy"
                else AutoTokenizer.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
            )
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
            )
            cuda = torch.cuda.is_available() and not self.config.cpu
            return model.to("cuda" if cuda else "cpu").eval(), tokenizer
        s = self._session()
        if folder.is_dir():
            from .store import load_weights

            load_weights(s.model, folder)
        elif t != 0 or cfg.name_or_path == "toy" or cfg.lora_r > 0:
            raise RunDirError(f"{folder}: no weights of pi_{t} (was the run kept with keep_weights='last'?)")
        return s.model.eval(), s.tokenizer


def pick_policies(available: list[int], policies: str, where: str) -> list[int]:
    """``all``, ``last`` or a comma list of policy numbers (``0,3``), checked against ``available``."""
    if not available:
        raise RunDirError(f"{where}: no saved policy weights (weights/policy_NNN); nothing to score")
    if policies == "all":
        return list(available)
    if policies == "last":
        return [available[-1]]
    try:
        asked = [int(p) for p in str(policies).split(",") if p.strip()]
    except ValueError:
        raise HarnessError(f"--policies {policies!r}: expected all, last or policy numbers like 0,3") from None
    missing = [p for p in asked if p not in available]
    if missing or not asked:
        raise RunDirError(
            f"{where}: no weights of pi_{', pi_'.join(map(str, missing or asked))}; "
            f"saved: {', '.join(f'pi_{p}' for p in available)}"
        )
    return asked


def evaluate_run(
    run_dir: str | Path,
    tasks: str | list[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    policies: str = "all",
    batch_size: int = 8,
    echo=None,
) -> pd.DataFrame:
    """Score the run's saved policies (``all``, ``last`` or numbers) on ``tasks``; every policy's rows go to
    ``harness.parquet`` as soon as it is scored. Returns the new rows."""
    store = RunStore(run_dir)
    if not store.root.is_dir():
        raise RunDirError(f"{store.root}: no such run directory")
    if not store.exists():
        raise RunDirError(f"{store.root}: not a run directory (no manifest.json)")
    tasks = parse_tasks(tasks)
    tm = task_manager(tasks, include_path)  # unknown tasks fail before any model loads
    loader = PolicyLoader(store.root)
    frames = []
    for t in pick_policies(loader.policies, policies, str(store.root)):
        t0 = time.perf_counter()
        model, tokenizer = loader.load(t)
        res = evaluate_model(model, tokenizer, tasks, limit=limit, batch_size=batch_size, tasks_index=tm)
        frame = results_frame(res, t, tasks=tasks, limit=limit, seconds=time.perf_counter() - t0)
        record_scores(store.root, frame)
        frames.append(frame)
        if echo is not None:
            echo(f"pi_{t}: {_summary(frame)}")
    return pd.concat(frames, ignore_index=True)


def shown(harness: pd.DataFrame) -> pd.DataFrame:
    """The rows figures and tables show: the tasks asked for by name when any of them reported a score (not
    the subtasks of a group), else every row (a tag names no aggregate of its own)."""
    if "requested" in harness and harness["requested"].astype(bool).any():
        return harness[harness["requested"].astype(bool)]
    return harness


def harness_table(harness: pd.DataFrame) -> pd.DataFrame:
    """Policies (rows ``pi_t``) x ``task metric`` (columns) of a harness table, filter ``none`` named only when
    a task has several filters."""
    if harness is None or len(harness) == 0:
        return pd.DataFrame()
    h = shown(harness).copy()
    many = h.groupby(["task", "metric"])["filter"].transform("nunique") > 1
    h["column"] = h["task"] + " " + h["metric"] + np.where(many, "/" + h["filter"].astype(str), "")
    out = h.pivot_table(index="policy", columns="column", values="value", aggfunc="last")
    out.index = [f"pi_{int(p)}" for p in out.index]
    out.columns.name = None
    return out


__all__ = [
    "HARNESS_FILE",
    "HarnessError",
    "PolicyLoader",
    "evaluate_model",
    "evaluate_run",
    "record_scores",
    "harness_table",
    "results_frame",
    "saved_policies",
    "score_session",
    "session_frame",
    "shown",
    "task_manager",
]
