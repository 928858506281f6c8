"""Shared fixtures of the engine tests: an isolated cache, a tiny RunConfig factory, tiny model folders,
and one stepped-through toy run that many tests read instead of training their own.

Everything is real: tiny Llamas built in code, real `datasets` objects, real run directories. Sizes are
chosen so that one toy iteration takes about a second on two busy CPU cores:
64 annotated problems, 50 held-out ones, a pi_0 SFT of 3 epochs (cached once per test session).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

# No network here: make the hub libraries fail fast instead of retrying. Set before anything imports
# huggingface_hub, which reads it once at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# One thread per process: the machine has two shared cores, and a fixed thread count keeps CPU float
# reductions in the same order in every process, so runs in different processes compare bitwise.
torch.set_num_threads(1)

SMALL = {
    "model": {"toy_sft_examples": 64, "toy_sft_epochs": 3},
    "data": {"source": "toy:addition", "num_examples": 64, "eval_size": 50},
    "method": {"name": "tspin"},
    "train": {"batch_size": 16, "epochs": 1, "lr": 1e-4},
    "sampling": {"batch_size": 32, "max_new_tokens": 8},
    "iterations": 2,
    "seed": 0,
    "cpu": True,
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def small_config_dict(run_dir: str | Path | None = None, **overrides) -> dict:
    """The tiny toy config as a plain dict; `overrides` are merged section by section,
    e.g. ``small_config_dict(d, method={"name": "spin"}, iterations=1)``."""
    d = _merge(SMALL, overrides)
    if run_dir is not None:
        d["run_dir"] = str(run_dir)
    return d


def small_config(run_dir: str | Path | None = None, **overrides):
    from tspin_kit.config import RunConfig

    return RunConfig.from_dict(small_config_dict(run_dir, **overrides))


def write_yaml(path: Path, d: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """pi_0 cache, datasets cache and hub settings for this test session only (inherited by subprocesses)."""
    import datasets

    root = tmp_path_factory.mktemp("env")
    mp = pytest.MonkeyPatch()
    mp.setenv("TSPIN_CACHE", str(root / "tspin_cache"))
    mp.setenv("TSPIN_PROGRESS", "0")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_CACHE", str(root / "hf_datasets"))
    mp.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", root / "hf_datasets")
    yield root
    mp.undo()


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def state_dict_copy(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no safetensors in {folder}"
    return out


def normalise_records(df):
    """Parquet returns list columns as numpy arrays; make them lists so frames compare with `equals`."""
    import numpy as np

    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object and len(out) and isinstance(out[c].iloc[0], (list, np.ndarray)):
            out[c] = [list(x) if len(x) and isinstance(x[0], str) else list(map(float, x)) for x in out[c]]
    return out


# ----------------------------------------------------------------------------- tiny pretrained folders


def save_tiny_llama(folder: Path, *, chat_template: bool, pad_token: bool = True, seed: int = 1) -> Path:
    """A randomly initialised tiny Llama + the toy character tokenizer, saved like a hub checkpoint."""
    from tspin_kit import toy

    tok = toy.build_tokenizer()
    model = toy.build_model(
        tok,
        toy.ToyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        seed=seed,
    )
    if not chat_template:
        tok.chat_template = None
    if not pad_token:
        tok.pad_token = None
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if not chat_template:
        assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())
        assert not (folder / "chat_template.jinja").exists()
    return folder


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "plain": save_tiny_llama(root / "plain", chat_template=False),
        "chat": save_tiny_llama(root / "chat", chat_template=True),
        "no_pad": save_tiny_llama(root / "no_pad", chat_template=False, pad_token=False),
    }


TEXT_PAIRS = [{"prompt": f"Say the word number {i}.", "response": f"word {i}"} for i in range(24)]


@pytest.fixture(scope="session")
def text_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TEXT_PAIRS))
    return path


# ----------------------------------------------------------------------------- pi_0 and the shared run

# Fixtures that train: the toy pi_0 (a few seconds on first use, then cached for the session) and the
# stepped run. Every test that uses one, directly or through another fixture, is marked `slow` below, so
# `make test-fast` (-m "not slow ...") trains nothing; tests that train in their own body carry the mark.
TRAINING_FIXTURES = ("pi0", "stepped_run")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the marks
def pytest_collection_modifyitems(items):
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in TRAINING_FIXTURES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def toy_world():
    from tspin_kit import toy

    train, held_out = toy.make_world("addition", SMALL["model"]["toy_sft_examples"], SMALL["data"]["eval_size"])
    return train, held_out


@pytest.fixture(scope="session")
def pi0(toy_world):
    """The cached toy pi_0 of the small config (the same one every toy session below loads)."""
    from tspin_kit import toy

    train, _ = toy_world
    model, tok = toy.initial_policy(
        "addition",
        train,
        toy.InitialPolicySettings(epochs=SMALL["model"]["toy_sft_epochs"], seed=SMALL["seed"]),
    )
    return model, tok


@dataclass
class SteppedRun:
    """A 2-iteration T-SPIN toy run, driven phase by phase, with what each phase returned."""

    session: object
    run_dir: Path
    errors: dict[str, Exception] = field(default_factory=dict)
    progress: list[tuple[int, int, str]] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)  # next_phase seen before each call
    generated: list = field(default_factory=list)  # generate() frames
    weights: dict[int, dict] = field(default_factory=dict)  # pi_t state dicts
    train_infos: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    records_after_first: object = None
    proto_bytes: bytes = b""  # proto.parquet right after prepare


def _capture(fn) -> Exception | None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the tests assert on the type and message
        return e
    return None


@pytest.fixture(scope="session")
def stepped_run(tmp_path_factory) -> SteppedRun:
    from tspin_kit.session import SelfPlaySession

    run_dir = tmp_path_factory.mktemp("stepped") / "run"
    s = SelfPlaySession(small_config(run_dir))
    r = SteppedRun(session=s, run_dir=run_dir)

    def cb(done, total, phase):
        r.progress.append((done, total, phase))

    r.phases.append(s.next_phase)
    r.errors["train_before_prepare"] = _capture(s.train)
    s.prepare(progress=cb)
    r.proto_bytes = (run_dir / "proto.parquet").read_bytes()
    r.weights[0] = state_dict_copy(s.model)
    r.phases.append(s.next_phase)
    r.errors["train_before_generate"] = _capture(s.train)
    r.errors["evaluate_before_generate"] = _capture(s.evaluate)
    r.errors["prepare_twice"] = _capture(s.prepare)
    r.generated.append(s.generate(progress=cb))
    r.phases.append(s.next_phase)
    r.errors["generate_twice"] = _capture(s.generate)
    r.errors["evaluate_before_train"] = _capture(s.evaluate)
    r.train_infos.append(s.train(progress=cb))
    r.weights[1] = state_dict_copy(s.model)
    r.phases.append(s.next_phase)
    r.metrics.append(s.evaluate(progress=cb))
    r.records_after_first = s.records()
    r.phases.append(s.next_phase)
    # iteration 1 through step(); keep its generate frame via the session's own attribute
    s.generate()
    r.generated.append(s._generated.copy())
    r.metrics.append(s.step())
    r.train_infos.append(s._train_info)
    r.weights[2] = state_dict_copy(s.model)
    r.phases.append(s.next_phase)
    r.errors["generate_when_done"] = _capture(s.generate)
    return r
