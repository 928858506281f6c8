"""Dataclass configs: one per concern, validated at construction, mapped 1:1 from YAML.

A bad value fails in ``__post_init__`` with a :class:`ConfigError` naming the field and the allowed
range, so the CLI, notebooks and widgets all get the same message.

Per-iteration schedules (beta = 0 at iteration 0, a learning-rate list) live in one config, not in
copies of it (style.md item 6).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .data import DataConfig, DataError

OPTIMIZERS = ("adamw", "rmsprop")
SCHEDULES = ("constant", "linear")
TRACKERS = ("trackio", "tensorboard", "wandb")
SAMPLING_BACKENDS = ("hf", "vllm")


class ConfigError(ValueError):
    """A config value is outside what the field allows."""


def _check(cond: bool, section: str, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name} = {value!r}: expected {expected}")


def _check_vllm() -> None:
    """``sampling.backend: vllm`` is refused here, before anything loads: without the extra, with the install
    hint; with it, because the vLLM generation path is not built yet (issue 11, item 4): a run that asked for
    vLLM must not quietly sample with transformers."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "sampling.backend = 'vllm': vllm is not installed; install the extra with "
            "`pip install 'tspin-kit[vllm]'` (GPU machines only) or use sampling.backend: hf"
        )
    raise ConfigError(
        "sampling.backend = 'vllm': vllm is installed, but tspin-kit's vLLM generation path is not "
        "built yet; use sampling.backend: hf"
    )


@dataclass
class ModelConfig:
    name_or_path: str = field(
        default="toy", metadata={"help": "'toy' (the embedded tiny Llama), a hub id or a local folder"}
    )
    prompt_template: str = field(
        default="auto",
        metadata={"help": "'auto' (chat template if the tokenizer has one, else plain), 'chat' or 'plain'"},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run model code shipped with a hub repo; off unless asked"}
    )
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 means full fine-tuning"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on LoRA inputs"})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "peft target_modules (comma list or 'all-linear')"}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "longest prompt in tokens after the template (longer is an error); default: the model's own limit"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": (
                "recompute each transformer block's activations in the backward instead of keeping them "
                "(less memory, about a third more compute); same numbers"
            )
        },
    )
    toy_sft_examples: int = field(
        default=1000,
        metadata={"help": "toy only: annotated pairs pi_0 is SFT-ed on (fixed, so a 4x-data run shares pi_0)"},
    )
    toy_sft_epochs: int = field(default=40, metadata={"help": "toy only: epochs of the SFT that makes pi_0"})
    toy_pi0_seed: int = field(
        default=0,
        metadata={
            "help": (
                "toy only: seed of pi_0's init and SFT; every run seed starts from this one pi_0 "
                "(the default world's ships with the package)"
            )
        },
    )

    def __post_init__(self):
        s = "model"
        _check(bool(self.name_or_path), s, "name_or_path", "a non-empty string", self.name_or_path)
        _check(
            self.prompt_template in ("auto", "chat", "plain"),
            s,
            "prompt_template",
            "'auto', 'chat' or 'plain'",
            self.prompt_template,
        )
        _check(self.dtype in ("float32", "bfloat16", "float16"), s, "dtype", "float32, bfloat16 or float16", self.dtype)
        _check(isinstance(self.lora_r, int) and self.lora_r >= 0, s, "lora_r", "an integer >= 0", self.lora_r)
        _check(0.0 <= self.lora_dropout < 1.0, s, "lora_dropout", "0 <= value < 1", self.lora_dropout)
        _check(
            self.max_length is None or self.max_length >= 2, s, "max_length", "None or an integer >= 2", self.max_length
        )
        _check(
            isinstance(self.gradient_checkpointing, bool),
            s,
            "gradient_checkpointing",
            "true or false",
            self.gradient_checkpointing,
        )
        _check(self.toy_sft_examples >= 1, s, "toy_sft_examples", "an integer >= 1", self.toy_sft_examples)
        _check(self.toy_sft_epochs >= 1, s, "toy_sft_epochs", "an integer >= 1", self.toy_sft_epochs)


@dataclass
class DataSettings(DataConfig):
    """The run's data section: `tspin_kit.data.DataConfig` plus the held-out size, defaulting to the toy world."""

    source: str | None = field(
        default="toy:addition",
        metadata={"help": "'toy:addition', 'toy:scratchpad', a hub dataset id, or a local file/folder"},
    )
    num_examples: int | None = field(default=1000, metadata={"help": "annotated examples to use (count)"})
    eval_size: int = field(
        default=500, metadata={"help": "held-out prompts for the task score (taken out before subsampling)"}
    )

    def __post_init__(self):
        super().__post_init__()
        _check(bool(self.source), "data", "source", "a non-empty string", self.source)
        if isinstance(self.source, str) and self.source.startswith("toy:"):
            from .toy import TASKS

            _check(
                self.source[4:] in TASKS,
                "data",
                "source",
                " or ".join(f"'toy:{t}'" for t in TASKS) + " (or a file, folder or hub id)",
                self.source,
            )
        _check(
            isinstance(self.eval_size, int) and self.eval_size >= 1,
            "data",
            "eval_size",
            "an integer >= 1",
            self.eval_size,
        )

    def load(self):
        """(train, held_out) ``datasets.Dataset``s with a ``row`` column (the row of the source), as the
        session uses them. Too few rows is reported in this config's own terms."""
        from .data import DataCountError, load_annotated, split_train_eval, subsample

        try:
            ds = load_annotated(self.loader_config(), row_ids=True)
        except DataCountError as e:
            room = e.available - self.eval_size
            hint = (
                f"set data.num_examples to at most {room} (or null: every row not held out)"
                if room >= 1
                else f"lower data.eval_size below {e.available}"
            )
            raise ConfigError(
                f"{e.origin} has {e.available} rows, fewer than data.num_examples ({self.num_examples}) + "
                f"data.eval_size ({self.eval_size}) = {e.requested}; {hint}"
            ) from None
        if self.eval_size >= len(ds):
            from .data import describe_source

            raise ConfigError(
                f"{describe_source(self.source)} has {len(ds)} rows: data.eval_size ({self.eval_size}) "
                f"leaves none to train on; lower data.eval_size below {len(ds)}"
            )
        train, held_out = split_train_eval(ds, self.eval_size, seed=self.seed)
        return subsample(train, num_examples=self.num_examples, fraction=self.fraction, seed=self.seed), held_out

    def loader_config(self) -> DataConfig:
        """What `tspin_kit.data.load_annotated` needs. With a count, read only num_examples + eval_size rows
        (a 200k-row hub set is not validated whole); the held-out split is taken from those."""
        d = {f.name: getattr(self, f.name) for f in fields(DataConfig)}
        n = None if self.num_examples is None else self.num_examples + self.eval_size
        return DataConfig(**{**d, "num_examples": n, "fraction": None})


@dataclass
class MethodConfig:
    name: str = field(
        default="tspin",
        metadata={
            "help": (
                "a method of the table of methods (`tspin methods`): sft, spin, tspin, tspin_no_history, tspin_ref, ..."
            )
        },
    )
    alpha: float = field(default=1.0, metadata={"help": "T-SPIN entropy coefficient = reward scale (paper: 1.0)"})
    beta: float = field(default=0.1, metadata={"help": "T-SPIN weight of the historical advantage (paper: 0.1)"})
    beta_schedule: list[float] | None = field(
        default=None, metadata={"help": "beta per iteration; default: 0 at iteration 0, then beta"}
    )
    lam: float = field(default=1.0, metadata={"help": "SPIN reward scale (paper 0.1; see docs/departures.md)"})
    lam_schedule: list[float] | None = field(
        default=None, metadata={"help": "lam per iteration (SPIN raised it to 5 at its last)"}
    )
    mask_proto_equal_annotated: bool = field(default=False, metadata={"help": "drop the historical term where y0 == y"})
    mix_previous: bool = field(
        default=False, metadata={"help": "SPIN option: also train on the previous iteration's synthetic data"}
    )
    params: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": (
                "values of the method's other knobs (e.g. {anchor: 0.1} for tspin_nll); "
                "unset ones take their declared defaults"
            )
        },
    )

    def __post_init__(self):
        from . import methods as M

        s = "method"
        try:
            self.name = M.resolve(self.name)  # an alias (tspin_without_history) is recorded under its name
        except ValueError:
            _check(False, s, "name", f"one of {', '.join(M.names())}", self.name)
        _check(self.alpha > 0, s, "alpha", "a number > 0", self.alpha)
        _check(self.beta >= 0, s, "beta", "a number >= 0", self.beta)
        _check(self.lam > 0, s, "lam", "a number > 0", self.lam)
        for name in ("beta_schedule", "lam_schedule"):
            sched = getattr(self, name)
            if sched is not None:
                _check(len(sched) >= 1, s, name, "a non-empty list", sched)
                lo_ok = all(v >= 0 for v in sched) if name == "beta_schedule" else all(v > 0 for v in sched)
                _check(lo_ok, s, name, "values >= 0" if name == "beta_schedule" else "values > 0", sched)
        _check(isinstance(self.params, dict), s, "params", "a mapping of knob name to number", self.params)
        own = [k for k in M.get(self.name).knobs if k not in _CONFIG_KNOBS]
        for k, v in self.params.items():
            _check(k in own, s, f"params.{k}", f"a knob of {self.name} ({', '.join(own) or 'it has none here'})", v)
            try:
                self.params[k] = M.KNOBS[k].check(v)
            except ValueError as e:
                _check(False, s, f"params.{k}", str(e).split(" must be ", 1)[-1], v)

    @property
    def spec(self):
        """This method's row of the table of methods (`tspin_kit.methods.Method`)."""
        from . import methods as M

        return M.get(self.name)

    def beta_at(self, iteration: int) -> float:
        """beta for iteration t: 0 for methods without a historical term and at t = 0 (y' and y0 both come
        from pi_0)."""
        if not self.spec.history:  # nothing for beta to weigh
            return 0.0
        if self.beta_schedule is not None:
            return float(self.beta_schedule[min(iteration, len(self.beta_schedule) - 1)])
        return 0.0 if iteration == 0 else float(self.beta)

    def lam_at(self, iteration: int) -> float:
        if self.lam_schedule is not None:
            return float(self.lam_schedule[min(iteration, len(self.lam_schedule) - 1)])
        return float(self.lam)

    def knobs_at(self, iteration: int) -> dict[str, float]:
        """Every knob value the method's loss reads at iteration t (schedules applied)."""
        from . import methods as M

        values = {"alpha": float(self.alpha), "beta": self.beta_at(iteration), "lam": self.lam_at(iteration)}
        return {k: values[k] if k in values else float(self.params.get(k, M.KNOBS[k].default)) for k in self.spec.knobs}

    @property
    def uses_reference(self) -> bool:
        return self.spec.reference


_CONFIG_KNOBS = ("alpha", "beta", "lam")  # knobs with their own MethodConfig fields (and schedules)


@dataclass
class TrainConfig:
    optimizer: str = field(
        default="adamw", metadata={"help": "adamw or rmsprop (T-SPIN paper: RMSprop, no weight decay)"}
    )
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate"})
    lr_schedule: list[float] | None = field(
        default=None, metadata={"help": "peak lr per iteration (SPIN: 5e-7, 5e-7, then 1e-7)"}
    )
    schedule: str = field(default="constant", metadata={"help": "after warmup: constant or linear decay to 0"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of each iteration's steps spent warming up"})
    epochs: int = field(default=2, metadata={"help": "epochs over the triplets per iteration"})
    batch_size: int = field(default=64, metadata={"help": "global batch, in examples (a triplet counts once)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled weight decay (AdamW) / L2 (RMSprop)"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip the gradient norm; None disables"})
    checkpoint_every: int = field(
        default=0,
        metadata={
            "help": "save the train state every N optimiser steps so `tspin resume` continues mid-phase; 0 disables"
        },
    )

    def __post_init__(self):
        s = "train"
        _check(self.optimizer in OPTIMIZERS, s, "optimizer", f"one of {', '.join(OPTIMIZERS)}", self.optimizer)
        _check(self.lr > 0, s, "lr", "a number > 0", self.lr)
        if self.lr_schedule is not None:
            _check(
                len(self.lr_schedule) >= 1 and all(v > 0 for v in self.lr_schedule),
                s,
                "lr_schedule",
                "a non-empty list of numbers > 0",
                self.lr_schedule,
            )
        _check(self.schedule in SCHEDULES, s, "schedule", f"one of {', '.join(SCHEDULES)}", self.schedule)
        _check(0 <= self.warmup_ratio < 1, s, "warmup_ratio", "0 <= value < 1", self.warmup_ratio)
        _check(isinstance(self.epochs, int) and self.epochs >= 1, s, "epochs", "an integer >= 1", self.epochs)
        _check(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            s,
            "batch_size",
            "an integer >= 1",
            self.batch_size,
        )
        _check(
            isinstance(self.grad_accum, int) and 1 <= self.grad_accum <= self.batch_size,
            s,
            "grad_accum",
            "an integer in [1, batch_size]",
            self.grad_accum,
        )
        _check(self.weight_decay >= 0, s, "weight_decay", "a number >= 0", self.weight_decay)
        _check(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            s,
            "max_grad_norm",
            "None or a number > 0",
            self.max_grad_norm,
        )
        _check(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
            s,
            "checkpoint_every",
            "an integer >= 0 (0 disables)",
            self.checkpoint_every,
        )

    def lr_at(self, iteration: int) -> float:
        if self.lr_schedule is not None:
            return float(self.lr_schedule[min(iteration, len(self.lr_schedule) - 1)])
        return float(self.lr)


@dataclass
class SamplingConfig:
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature for y' and y0; 0 means greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    top_k: int = field(default=0, metadata={"help": "0 disables top-k"})
    max_new_tokens: int = field(default=16, metadata={"help": "longest sampled response"})
    batch_size: int = field(default=250, metadata={"help": "prompts per generate() call (also the seeding chunk)"})
    backend: str = field(
        default="hf", metadata={"help": "'hf' (transformers generate) or 'vllm' (needs the vllm extra; not built yet)"}
    )

    def __post_init__(self):
        s = "sampling"
        _check(self.backend in SAMPLING_BACKENDS, s, "backend", " or ".join(map(repr, SAMPLING_BACKENDS)), self.backend)
        if self.backend == "vllm":
            _check_vllm()
        _check(self.temperature >= 0, s, "temperature", "a number >= 0", self.temperature)
        _check(0 < self.top_p <= 1, s, "top_p", "0 < top_p <= 1", self.top_p)
        _check(self.top_k >= 0, s, "top_k", "an integer >= 0", self.top_k)
        _check(self.max_new_tokens >= 1, s, "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        _check(self.batch_size >= 1, s, "batch_size", "an integer >= 1", self.batch_size)


@dataclass
class HarnessConfig:
    """``eval_harness``: score pi_0 and every pi_{t+1} with lm-evaluation-harness (``tspin_kit.harness``)."""

    tasks: list[str] = field(
        default_factory=list, metadata={"help": "lm-eval task, group or tag names (comma list or YAML list)"}
    )
    include_path: str | None = field(default=None, metadata={"help": "a folder of your own lm-eval task YAMLs"})
    limit: int | None = field(
        default=None, metadata={"help": "at most this many documents per task (a smoke check; None: all)"}
    )
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size"})

    def __post_init__(self):
        s = "eval_harness"
        if isinstance(self.tasks, str):  # `tasks: arc_easy,hellaswag` or `eval_harness.tasks=a,b`
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        _check(
            isinstance(self.tasks, list) and len(self.tasks) >= 1 and all(isinstance(t, str) and t for t in self.tasks),
            s,
            "tasks",
            "a non-empty list of lm-eval task names (or leave eval_harness unset)",
            self.tasks,
        )
        _check(
            self.include_path is None or (isinstance(self.include_path, str) and bool(self.include_path)),
            s,
            "include_path",
            "None or a folder",
            self.include_path,
        )
        _check(
            self.limit is None
            or (isinstance(self.limit, int) and not isinstance(self.limit, bool) and self.limit >= 1),
            s,
            "limit",
            "None or an integer >= 1",
            self.limit,
        )
        _check(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            s,
            "batch_size",
            "an integer >= 1",
            self.batch_size,
        )
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise ConfigError(
                "eval_harness: lm-evaluation-harness is not installed; install the extra with "
                "`pip install 'tspin-kit[eval]'` or leave eval_harness unset"
            )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSettings = field(default_factory=DataSettings)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    iterations: int = field(default=5, metadata={"help": "self-play iterations (Iter0 .. Iter{n-1})"})
    seed: int = field(default=0, metadata={"help": "seed for generation, shuffling and initialisation"})
    run_dir: str | None = field(
        default=None, metadata={"help": "where records and weights go; None keeps the run in memory"}
    )
    keep_weights: str = field(default="all", metadata={"help": "'all' saves every pi_t, 'last' only the latest"})
    cpu: bool = field(default=False, metadata={"help": "force the CPU even when a GPU is present"})
    sft_records: bool = field(
        default=True,
        metadata={
            "help": (
                "SFT runs: also sample y' and y0 and score them every iteration, for records only "
                "(the control's u, v, degenerate shares); off skips that work"
            )
        },
    )
    report_to: list[str] | None = field(
        default=None,
        metadata={
            "help": (
                "experiment trackers to log to: any of trackio, tensorboard, wandb (optional extras); "
                "None logs only to run_dir"
            )
        },
    )
    eval_harness: HarnessConfig | None = field(
        default=None,
        metadata={
            "help": (
                "lm-evaluation-harness on pi_0 and after every iteration, "
                "e.g. {tasks: [arc_easy], include_path: my_tasks, limit: 100} (needs the eval extra); None: off"
            )
        },
    )

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, name))
            elif not isinstance(value, cls):  # e.g. `method: tspin` in YAML instead of `method: {name: tspin}`
                raise ConfigError(
                    f"{name}: expected a mapping of {cls.__name__} fields, got {type(value).__name__} {value!r}"
                )
        _check(
            isinstance(self.iterations, int) and self.iterations >= 1,
            "run",
            "iterations",
            "an integer >= 1",
            self.iterations,
        )
        _check(self.keep_weights in ("all", "last"), "run", "keep_weights", "'all' or 'last'", self.keep_weights)
        if isinstance(self.report_to, str):  # `report_to: tensorboard` or `report_to=trackio,tensorboard`
            self.report_to = [t.strip() for t in self.report_to.split(",") if t.strip()]
        _check(
            self.report_to is None or (isinstance(self.report_to, list) and all(t in TRACKERS for t in self.report_to)),
            "run",
            "report_to",
            f"None or a list of {', '.join(TRACKERS)}",
            self.report_to,
        )
        if isinstance(self.eval_harness, dict):
            self.eval_harness = _from_dict(HarnessConfig, self.eval_harness, "eval_harness")
        elif self.eval_harness is not None and not isinstance(self.eval_harness, HarnessConfig):
            raise ConfigError(
                f"eval_harness: expected None or a mapping of HarnessConfig fields, got "
                f"{type(self.eval_harness).__name__} {self.eval_harness!r}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
        try:
            return _from_dict(cls, d, "run")
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """Read a YAML file, then apply dotted ``KEY=VALUE`` overrides (``method.beta=0.2``).

        Local paths in ``data.source`` and ``model.name_or_path`` are made absolute: those written in the
        file against the file's folder, those given as overrides against the working directory, so a
        run resumed from elsewhere finds the same files (the manifest records the absolute path).
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(d).__name__}")
        _resolve_paths(d, path.resolve().parent)
        source = str(path)
        if overrides:
            over = parse_overrides(overrides)
            _resolve_paths(over, Path.cwd())
            d = merge_dicts(d, over)
            source = f"{path} with overrides {' '.join(overrides)}"
        return cls.from_dict(d, source=source)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS = {
    "model": ModelConfig,
    "data": DataSettings,
    "method": MethodConfig,
    "train": TrainConfig,
    "sampling": SamplingConfig,
}


def _from_dict(cls, d: dict, section: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{section}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"{section}: unknown field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
        )
    kwargs = {}
    types = {f.name: str(f.type) for f in fields(cls)}
    for k, v in d.items():
        sub = _SECTIONS.get(k) if cls is RunConfig else None
        if sub is not None and isinstance(v, dict):
            v = _from_dict(sub, v, k)
        elif isinstance(v, str) and types[k].startswith("float"):
            # PyYAML reads `2e-5` (no dot) as a string; accept it as the number it spells.
            v = _as_float(v, f"{section}.{k}")
        elif isinstance(v, list) and types[k].startswith("list[float]"):
            v = [_as_float(x, f"{section}.{k}[{i}]") if isinstance(x, str) else x for i, x in enumerate(v)]
            bad = next((i for i, x in enumerate(v) if isinstance(x, bool) or not isinstance(x, (int, float))), None)
            if bad is not None:
                raise ConfigError(f"{section}.{k}[{bad}] = {v[bad]!r}: expected a number")
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except DataError as e:  # data.DataConfig's own checks name the field but not the section
        raise ConfigError(f"{section}: {e}") from None
    except TypeError as e:  # wrong types that dataclass comparisons trip on
        raise ConfigError(f"{section}: {e}") from None


def parse_overrides(items) -> dict:
    """``["method.beta=0.2", "train.lr=1e-5"]`` -> ``{"method": {"beta": 0.2}, "train": {"lr": 1e-5}}``.

    Each value is read as YAML (``0.2``, ``true``, ``null``, ``[1.0e-5, 5.0e-6]``, text), so an override
    means what the same line would mean in the file; validation happens once, on the merged config.
    """
    import yaml

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. method.beta=0.2")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p} was already given a value")
            node = nxt
        node[parts[-1]] = value
    return out


def merge_dicts(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, section by section."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_paths(d: dict, base: Path) -> None:
    """Make relative local paths in data.source / model.name_or_path / eval_harness.include_path absolute against
    ``base`` (in place)."""
    for section, key in (("data", "source"), ("model", "name_or_path"), ("eval_harness", "include_path")):
        sec = d.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get(key), str):
            continue
        value = sec[key]
        if value == "toy" or value.startswith("toy:") or Path(value).expanduser().is_absolute():
            continue
        for root in (base, Path.cwd()):  # the file's folder first; a path that exists only from cwd still works
            if (root / value).exists():
                sec[key] = str((root / value).resolve())
                break


def defaults_yaml() -> str:
    """Every config field with its default and help, as YAML that loads back into ``RunConfig()``."""
    import yaml

    def line(indent: str, f, value) -> str:
        text = yaml.safe_dump({f.name: value}, default_flow_style=True, width=10**6).strip()[1:-1]
        return f"{indent}{text:<40} # {f.metadata.get('help', '')}".rstrip()

    cfg = RunConfig()
    out = []
    for f in fields(RunConfig):
        value = getattr(cfg, f.name)
        if f.name in _SECTIONS:
            out.append(f"{f.name}:")
            out += [line("  ", g, getattr(value, g.name)) for g in fields(value)]
        else:
            out.append(line("", f, value))
    return "\n".join(out) + "\n"


def _as_float(v: str, key: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise ConfigError(f"{key} = {v!r}: expected a number") from None


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        key = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, key + ".")
        elif va != vb:
            out.append(f"{key}: {va!r} != {vb!r}")
    return out
