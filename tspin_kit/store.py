"""The run directory: manifest, per-iteration records, weights; atomic writes; `load_run`.

Layout (docs/architecture.md):

    manifest.json  state.json  proto.parquet  weights/policy_NNN/  iterations/iter_NNN/{generated,examples}.parquet
    iterations/iter_NNN/metrics.json  harness.parquet (lm-evaluation-harness scores, when any were run)

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
import zipfile
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


def save_weights(model, folder: Path, tokenizer=None) -> None:
    """safetensors via save_pretrained (adapter only for a peft model), swapped in atomically.

    With ``tokenizer`` its files go into the same folder, so a saved policy loads with
    ``AutoModelForCausalLM.from_pretrained`` + ``AutoTokenizer.from_pretrained`` as it is (an evaluation
    harness takes the folder directly).
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
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
        raise RunDirError(
            f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


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

    def check_usable(self) -> None:
        """A new run may only go into a missing folder, an empty one, or a run directory of tspin_kit:
        never into an unrelated folder that already holds files."""
        if not self.root.exists() or self.exists():
            return
        if not self.root.is_dir():
            raise RunDirError(f"{self.root}: exists and is not a folder; choose a new run_dir")
        found = sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))
        if found:
            raise RunDirError(
                f"{self.root}: not empty ({', '.join(found[:3])}{' ...' if len(found) > 3 else ''}) and not a "
                f"tspin run directory (no manifest.json); choose a new or empty run_dir"
            )

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
    # lm-evaluation-harness scores (``harness.parquet``, tspin_kit.harness): iteration (-1 = pi_0, t = after
    # iteration t), policy (t + 1), task, metric, filter, value, stderr, ...; empty when none were run
    harness: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def method(self) -> str:
        return self.manifest["config"]["method"]["name"]

    @property
    def label(self) -> str:
        return self.manifest.get("label") or self.method

    def iteration(self, t: int) -> pd.DataFrame:
        return self.examples[self.examples["iteration"] == t]


class _RunFiles:
    """Read-only access to the files of one run, wherever it lies: a folder, a zip, or an fsspec URL.

    ``rel`` paths use ``/`` (``iterations/iter_000/metrics.json``). A zip may hold the run at its root or
    in one top-level folder (what ``export_run`` writes).
    """

    def __init__(self, source: str | Path):
        self.source = str(source)
        self.local: Path | None = None
        self._zip = self._fs = None
        self._prefix = ""
        if "://" in self.source and not self.source.startswith("file://"):
            self._open_url(self.source)
        else:
            path = Path(self.source.removeprefix("file://")).expanduser()
            if path.is_dir():
                self.local = path
            elif path.is_file() and zipfile.is_zipfile(path):
                self._open_zip(zipfile.ZipFile(path))
            elif path.is_file():
                raise RunDirError(f"{path}: not a run directory, nor a zip of one")
            else:
                raise RunDirError(f"{path}: no such run directory")

    def _open_url(self, url: str) -> None:
        try:
            import fsspec
        except ImportError:  # pragma: no cover - a dependency of datasets
            raise RunDirError(f"{url}: reading a URL needs fsspec (pip install fsspec)") from None
        try:
            fs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:  # e.g. s3:// without s3fs installed
            raise RunDirError(f"{url}: cannot open this URL ({e}); install the fsspec filesystem for it") from None
        if fs.isfile(path) and path.endswith(".zip"):
            with fs.open(path, "rb") as f:
                self._open_zip(zipfile.ZipFile(io.BytesIO(f.read())))
            return
        if not fs.isdir(path):
            raise RunDirError(f"{url}: no such run directory")
        self._fs, self._prefix = fs, path.rstrip("/") + "/"

    def _open_zip(self, zf: zipfile.ZipFile) -> None:
        names = [n for n in zf.namelist() if n == "manifest.json" or n.endswith("/manifest.json")]
        if not names:
            raise RunDirError(f"{self.source}: a zip without manifest.json (not an exported run)")
        self._zip, self._prefix = zf, min(names, key=len)[: -len("manifest.json")]

    def describe(self, rel: str) -> str:
        return f"{self.source}/{rel}" if self.local is None else str(self.local / rel)

    def exists(self, rel: str) -> bool:
        if self.local is not None:
            return (self.local / rel).is_file()
        if self._zip is not None:
            try:
                self._zip.getinfo(self._prefix + rel)
                return True
            except KeyError:
                return False
        return self._fs.isfile(self._prefix + rel)

    def read_bytes(self, rel: str) -> bytes:
        if not self.exists(rel):
            raise RunDirError(f"{self.describe(rel)}: missing (expected a file written by tspin_kit)")
        if self.local is not None:
            return (self.local / rel).read_bytes()
        if self._zip is not None:
            return self._zip.read(self._prefix + rel)
        return self._fs.cat_file(self._prefix + rel)

    def json(self, rel: str):
        if self.local is not None:
            return read_json(self.local / rel)
        try:
            return json.loads(self.read_bytes(rel))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.describe(rel)}: corrupt JSON ({e})") from None

    def parquet(self, rel: str) -> pd.DataFrame:
        if self.local is not None:
            return read_parquet(self.local / rel)
        try:
            return pd.read_parquet(io.BytesIO(self.read_bytes(rel)))
        except RunDirError:
            raise
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise RunDirError(f"{self.describe(rel)}: unreadable Parquet ({type(e).__name__}: {e})") from None


def load_run(run_dir: str | Path) -> RunRecords:
    """Read a run's manifest, per-example records and per-iteration metrics.

    ``run_dir`` is a run folder, a ``.zip`` of one (``tspin export``), or an fsspec URL of either
    (``memory://runs/a``, ``s3://bucket/run.zip``, ``hf://datasets/me/runs/a`` where that filesystem is
    installed). ``RunRecords.run_dir`` is the folder for a local run and None otherwise (no weights to load).
    """
    files = _RunFiles(run_dir)
    manifest = files.json("manifest.json")
    if not isinstance(manifest, dict) or "config" not in manifest:
        raise RunDirError(f"{files.describe('manifest.json')}: corrupt (no 'config' key)")
    frames, rows = [], []
    held = [files.parquet("heldout.parquet")] if files.exists("heldout.parquet") else []
    t = 0
    while files.exists(f"iterations/iter_{t:03d}/metrics.json"):
        it = f"iterations/iter_{t:03d}/"
        frames.append(files.parquet(it + "examples.parquet"))
        rows.append(files.json(it + "metrics.json"))
        if files.exists(it + "heldout.parquet"):  # runs made before 0.2 have none
            held.append(files.parquet(it + "heldout.parquet"))
        t += 1
    examples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    metrics = pd.DataFrame(rows)
    initial = files.json("initial.json") if files.exists("initial.json") else {}
    heldout = pd.concat(held, ignore_index=True) if held else pd.DataFrame()
    harness = files.parquet("harness.parquet") if files.exists("harness.parquet") else pd.DataFrame()
    return RunRecords(files.local, manifest, examples, metrics, initial, heldout, harness)


def export_run(run_dir: str | Path, out: str | Path, *, weights: bool = False) -> Path:
    """Pack a run into one zip: manifest, state, records, per-iteration files and any report (``*.html``);
    ``weights/`` only when asked. The zip holds one top-level folder named after the run and opens with
    :func:`load_run` (and so in every widget)."""
    root = Path(run_dir)
    if not RunStore(root).exists():
        raise RunDirError(f"{root}: not a run directory (no manifest.json)")
    out = Path(out)
    if out.suffix != ".zip":
        raise RunDirError(f"{out}: the export is a zip; give a name ending in .zip")
    name = root.resolve().name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")  # streamed to disk (weights can be large), then renamed
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if not p.is_file() or any(part.startswith(".") for part in rel.parts):  # temporaries of atomic writes
                continue
            if rel.parts[0] == "weights" and not weights:
                continue
            zf.write(p, f"{name}/{rel.as_posix()}")
    os.replace(tmp, out)
    return out


def write_bytes(path: str | Path, data: bytes) -> None:
    """A binary file, written atomically (temporary name in the same folder, then ``os.replace``)."""
    _atomic_bytes(Path(path), data)


def write_text(path: str | Path, text: str) -> None:
    """A text file (report, table), written atomically like every other output."""
    _atomic_bytes(Path(path), text.encode())
