"""The run directory: manifest, per-iteration records, weights; atomic writes; `load_run`.

Layout (docs/architecture.md):

    manifest.json  state.json  proto.parquet  weights/policy_NNN/  iterations/iter_NNN/{generated,examples}.parquet
    iterations/iter_NNN/metrics.json

Every file goes to a temporary name in its own folder and is renamed into place (``os.replace`` is atomic
on POSIX), and ``state.json`` is written last, so a run killed at any instant leaves either the old or the
new version of each file, never half of one, and `resume` restarts the first phase that state.json does
not list as done.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

PHASES = ("prepare", "generate", "train", "evaluate")


class RunDirError(RuntimeError):
    """A run directory is missing, corrupt, or belongs to a different config."""


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    _atomic_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path):
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: missing (expected a file written by tspin_kit)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: corrupt JSON ({e}); the run directory was damaged outside tspin_kit") from None


def write_parquet(path: Path, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    _atomic_bytes(Path(path), buf.getvalue())


def read_parquet(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: missing (expected a Parquet file written by tspin_kit)")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise RunDirError(f"{path}: unreadable Parquet ({type(e).__name__}: {e})") from None


def save_weights(model, folder: Path) -> None:
    """safetensors via save_pretrained (adapter only for a peft model), swapped in atomically."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_weights(model, folder: Path) -> None:
    """Load weights saved by :func:`save_weights` into an already built model (keeps tied weights tied)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RunDirError(f"{folder}: no .safetensors weights found")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as e:
            raise RunDirError(f"{f}: unreadable weights ({e})") from None
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and "lm_head" not in k]
    if missing or unexpected:
        raise RunDirError(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


class RunStore:
    """Paths and reads/writes of one run directory. Only the main process writes."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    # paths
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def iter_dir(self, t: int) -> Path:
        return self.root / "iterations" / f"iter_{t:03d}"

    def policy_dir(self, t: int) -> Path:
        return self.root / "weights" / f"policy_{t:03d}"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # state
    def read_state(self) -> dict:
        if not self.state_path.exists():
            return {"done": []}
        state = read_json(self.state_path)
        if not isinstance(state, dict) or not isinstance(state.get("done"), list):
            raise RunDirError(f"{self.state_path}: corrupt (expected {{'done': [...]}})")
        return state

    def mark_done(self, phase: str, iteration: int | None = None, **extra) -> None:
        state = self.read_state()
        state["done"].append(phase if iteration is None else f"{phase}:{iteration}")
        state.update(extra)
        write_json(self.state_path, state)

    def is_done(self, phase: str, iteration: int | None = None) -> bool:
        return (phase if iteration is None else f"{phase}:{iteration}") in self.read_state()["done"]


@dataclass
class RunRecords:
    """What a run recorded, as tables; no model is loaded."""

    run_dir: Path | None
    manifest: dict
    examples: pd.DataFrame
    metrics: pd.DataFrame
    initial: dict = field(default_factory=dict)
    # per-problem task score of every policy: iteration (-1 = pi_0, t = after iteration t), problem_id, value
    heldout: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def method(self) -> str:
        return self.manifest["config"]["method"]["name"]

    @property
    def label(self) -> str:
        return self.manifest.get("label") or self.method

    def iteration(self, t: int) -> pd.DataFrame:
        return self.examples[self.examples["iteration"] == t]


def load_run(run_dir: str | Path) -> RunRecords:
    """Read a run directory's manifest, per-example records and per-iteration metrics."""
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such run directory")
    store = RunStore(root)
    manifest = read_json(store.manifest_path)
    if "config" not in manifest:
        raise RunDirError(f"{store.manifest_path}: corrupt (no 'config' key)")
    frames, rows = [], []
    held = [read_parquet(root / "heldout.parquet")] if (root / "heldout.parquet").is_file() else []
    t = 0
    while (store.iter_dir(t) / "metrics.json").is_file():
        frames.append(read_parquet(store.iter_dir(t) / "examples.parquet"))
        rows.append(read_json(store.iter_dir(t) / "metrics.json"))
        if (store.iter_dir(t) / "heldout.parquet").is_file():  # runs made before 0.2 have none
            held.append(read_parquet(store.iter_dir(t) / "heldout.parquet"))
        t += 1
    examples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    metrics = pd.DataFrame(rows)
    initial = read_json(root / "initial.json") if (root / "initial.json").is_file() else {}
    heldout = pd.concat(held, ignore_index=True) if held else pd.DataFrame()
    return RunRecords(root, manifest, examples, metrics, initial, heldout)


def write_text(path: str | Path, text: str) -> None:
    """A text file (report, table), written atomically like every other output."""
    _atomic_bytes(Path(path), text.encode())
