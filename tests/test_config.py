"""tspin_kit.config: shipped YAMLs build, YAML round trip, defaults, every bad value names its field."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from conftest import REPO

from tspin_kit.config import (
    ConfigError,
    DataSettings,
    MethodConfig,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
    config_diff,
)

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert len(SHIPPED) >= 3, "configs/ should hold the example YAMLs the docs refer to"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_builds(path):
    cfg = RunConfig.from_yaml(path)
    assert isinstance(cfg.method, MethodConfig) and isinstance(cfg.train, TrainConfig)
    # and survives a round trip
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_defaults_are_valid_and_match_the_paper():
    cfg = RunConfig()
    assert cfg.method.name == "tspin" and cfg.method.alpha == 1.0 and cfg.method.beta == 0.1
    assert cfg.data.source == "toy:addition" and cfg.model.name_or_path == "toy"
    assert RunConfig.from_dict({}) == cfg


def test_every_field_has_help():
    for cls in (ModelConfig, DataSettings, MethodConfig, TrainConfig, SamplingConfig, RunConfig):
        for f in dataclasses.fields(cls):
            if cls is RunConfig and f.name in ("model", "data", "method", "train", "sampling"):
                continue
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help string"


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig.from_dict(
        {
            "model": {"lora_r": 8, "max_length": 512},
            "data": {"source": "some/file.jsonl", "num_examples": 10, "eval_size": 3},
            "method": {
                "name": "spin",
                "lam": 0.1,
                "lam_schedule": [0.1, 0.1, 5.0],
                "mix_previous": True,
            },
            "train": {"optimizer": "rmsprop", "lr_schedule": [5e-7, 5e-7, 1e-7], "grad_accum": 4},
            "sampling": {"temperature": 0.7, "top_k": 20},
            "iterations": 3,
            "seed": 7,
            "run_dir": "runs/x",
            "keep_weights": "last",
        }
    )
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    back = RunConfig.from_yaml(path)
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert back.method.lam_at(2) == 5.0 and back.train.lr_at(9) == 1e-7
    assert yaml.safe_load(path.read_text())["method"]["name"] == "spin"  # sections as plain mappings


def test_dict_sections_are_accepted_in_the_constructor():
    cfg = RunConfig(method={"name": "sft"}, iterations=1)
    assert isinstance(cfg.method, MethodConfig) and cfg.method.name == "sft"


@pytest.mark.parametrize(
    "d,message",
    [
        ({"method": {"alpha": 0}}, "method.alpha = 0: expected a number > 0"),
        ({"method": {"beta": -1}}, "method.beta = -1: expected a number >= 0"),
        ({"method": {"lam": 0}}, "method.lam = 0"),
        ({"method": {"name": "dpo"}}, "method.name = 'dpo'"),
        ({"method": {"beta_schedule": []}}, "method.beta_schedule = []: expected a non-empty list"),
        ({"method": {"beta_schedule": [0.1, -0.2]}}, "method.beta_schedule"),
        (
            {"train": {"optimizer": "sgd"}},
            "train.optimizer = 'sgd': expected one of adamw, rmsprop",
        ),
        ({"train": {"lr": 0}}, "train.lr = 0"),
        ({"train": {"warmup_ratio": 1.0}}, "train.warmup_ratio = 1.0"),
        (
            {"train": {"grad_accum": 128, "batch_size": 64}},
            "train.grad_accum = 128: expected an integer in [1, batch_size]",
        ),
        ({"train": {"epochs": 1.5}}, "train.epochs = 1.5"),
        ({"train": {"schedule": "cosine"}}, "train.schedule = 'cosine'"),
        ({"sampling": {"temperature": -1}}, "sampling.temperature = -1"),
        ({"sampling": {"top_p": 1.5}}, "sampling.top_p = 1.5"),
        ({"sampling": {"max_new_tokens": 0}}, "sampling.max_new_tokens = 0"),
        ({"model": {"dtype": "int8"}}, "model.dtype = 'int8'"),
        ({"model": {"prompt_template": "alpaca"}}, "model.prompt_template = 'alpaca'"),
        ({"model": {"lora_r": -1}}, "model.lora_r = -1"),
        ({"model": {"max_length": 1}}, "model.max_length = 1"),
        ({"data": {"eval_size": 0}}, "data.eval_size = 0"),
        ({"data": {"num_examples": 0}}, "data: num_examples must be an int >= 1"),
        (
            {"data": {"num_examples": 5, "fraction": 0.5}},
            "data: set num_examples or fraction, not both",
        ),
        ({"iterations": 0}, "run.iterations = 0: expected an integer >= 1"),
        ({"keep_weights": "some"}, "run.keep_weights = 'some'"),
        ({"method": {"gamma": 1}}, "method: unknown field(s) gamma; expected some of"),
        ({"method": "tspin"}, "method: expected a mapping of MethodConfig fields, got str 'tspin'"),
        ({"sampling": None}, "sampling: expected a mapping of SamplingConfig fields, got NoneType"),
        ({"train": {"lr": "fast"}}, "train.lr = 'fast'"),
    ],
)
def test_bad_values_name_the_field(d, message):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(d, source="my.yaml")
    assert str(e.value).startswith("my.yaml: ") and message in str(e.value)


def test_from_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        RunConfig.from_yaml(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        RunConfig.from_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert RunConfig.from_yaml(tmp_path / "empty.yaml") == RunConfig()


def test_schedules():
    m = MethodConfig(beta=0.3)
    assert [m.beta_at(t) for t in range(3)] == [0.0, 0.3, 0.3]  # beta = 0 at iteration 0
    assert [MethodConfig(name="tspin_no_history", beta=0.3).beta_at(t) for t in range(3)] == [
        0.0,
        0.0,
        0.0,
    ]
    assert [MethodConfig(beta_schedule=[0.2, 0.5]).beta_at(t) for t in range(4)] == [
        0.2,
        0.5,
        0.5,
        0.5,
    ]
    assert [MethodConfig(lam=0.1, lam_schedule=None).lam_at(t) for t in range(2)] == [0.1, 0.1]
    assert MethodConfig(name="spin").uses_reference and MethodConfig(name="tspin_ref").uses_reference
    assert not MethodConfig(name="tspin").uses_reference
    assert [TrainConfig(lr=1e-5).lr_at(t) for t in (0, 4)] == [1e-5, 1e-5]


def test_config_diff_lists_dotted_keys():
    a = RunConfig().to_dict()
    b = RunConfig(method={"beta": 0.2}, train={"lr": 1e-4}).to_dict()
    assert config_diff(a, b) == ["method.beta: 0.1 != 0.2", "train.lr: 2e-05 != 0.0001"]
    assert config_diff(a, a) == []
    assert config_diff({"x": 1}, {}) == ["x: 1 != None"]


# --------------------------------------------------------------------------- issue 12: overrides, rough edges


def test_overrides_are_dotted_yaml_values(tmp_path):
    from tspin_kit.config import parse_overrides

    assert parse_overrides(
        [
            "method.beta=0.2",
            "train.lr=1e-5",
            "train.lr_schedule=[5e-7, 1e-7]",
            "cpu=true",
            "run_dir=null",
            "method.name=spin",
        ]
    ) == {
        "method": {"beta": 0.2, "name": "spin"},
        "train": {"lr": "1e-5", "lr_schedule": ["5e-7", "1e-7"]},  # YAML's reading
        "cpu": True,
        "run_dir": None,
    }
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: tspin, beta: 0.1}\ntrain: {lr: 2.0e-5}\n")
    cfg = RunConfig.from_yaml(path, ["method.beta=0.2", "train.lr=1e-5"])
    assert cfg.method.beta == 0.2 and cfg.train.lr == 1e-5 and cfg.method.name == "tspin"


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.betta=0.2", "with overrides method.betta=0.2: method: unknown field(s) betta; expected some of alpha"),
        ("method.beta=-1", "method.beta = -1: expected a number >= 0"),
        ("train.lr=fast", "train.lr = 'fast': expected a number"),
        ("trian.lr=1e-5", "run: unknown field(s) trian"),
        ("method.beta", "override 'method.beta': expected KEY=VALUE"),
        ("method..beta=1", "expected KEY=VALUE with a dotted key"),
    ],
)
def test_override_errors_match_the_yaml_messages(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text("iterations: 1\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig.from_yaml(path, [override])


def test_lr_schedule_without_a_dot_is_read_as_numbers(tmp_path):
    # PyYAML reads 5e-7 as the string '5e-7'; scalars already accepted it, lists failed with
    # "train: '>' not supported between instances of 'str' and 'int'".
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 5e-7, lr_schedule: [5e-7, 1e-7]}\nmethod: {beta_schedule: [0, 1e-1]}\n")
    cfg = RunConfig.from_yaml(path)
    assert cfg.train.lr_schedule == [5e-7, 1e-7] and cfg.method.beta_schedule == [0, 0.1]
    path.write_text("train: {lr_schedule: [5e-7, fast]}\n")
    with pytest.raises(ConfigError, match=re.escape("train.lr_schedule[1] = 'fast': expected a number")):
        RunConfig.from_yaml(path)


def test_unknown_toy_world_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"data": {"source": "toy:foo"}}, source="f.yaml")
    assert str(err.value) == (
        "f.yaml: data.source = 'toy:foo': expected 'toy:addition' or 'toy:scratchpad' (or a file, folder or hub id)"
    )


def test_spin_and_sft_have_no_beta():
    assert MethodConfig(name="spin").beta_at(3) == 0.0 and MethodConfig(name="sft").beta_at(3) == 0.0
    assert MethodConfig(name="tspin").beta_at(3) == 0.1


def test_defaults_listing_loads_back_into_the_defaults():
    from tspin_kit.config import defaults_yaml

    text = defaults_yaml()
    assert RunConfig.from_dict(yaml.safe_load(text)) == RunConfig()
    for f in dataclasses.fields(RunConfig):  # every field is listed with its help
        assert f"{f.name}:" in text
    assert "beta: 0.1" in text and "# T-SPIN weight of the historical advantage" in text


def test_report_to_accepts_known_trackers_only():
    assert RunConfig.from_dict({"report_to": "trackio,tensorboard"}).report_to == ["trackio", "tensorboard"]
    with pytest.raises(ConfigError, match=re.escape("run.report_to = ['mlflow']: expected None or a list of trackio")):
        RunConfig.from_dict({"report_to": ["mlflow"]})


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / "pairs.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    cfg_path = tmp_path / "proj" / "run.yaml"
    cfg_path.write_text("data: {source: data/pairs.jsonl}\n")
    monkeypatch.chdir(tmp_path)  # another folder: the path is still found
    cfg = RunConfig.from_yaml("proj/run.yaml")
    assert cfg.data.source == str((tmp_path / "proj" / "data" / "pairs.jsonl").resolve())
    # an override is relative to where the command runs
    monkeypatch.chdir(tmp_path / "proj" / "data")
    assert RunConfig.from_yaml(cfg_path, ["data.source=pairs.jsonl"]).data.source == cfg.data.source


def test_too_few_rows_names_the_fields_not_their_sum(tmp_path):
    path = tmp_path / "user.jsonl"
    path.write_text("".join(f'{{"prompt": "p{i}", "response": "r{i}"}}\n' for i in range(1200)))
    with pytest.raises(ConfigError) as err:
        DataSettings(source=str(path)).load()
    assert str(err.value) == (
        f"file '{path}' has 1200 rows, fewer than data.num_examples (1000) + data.eval_size "
        "(500) = 1500; set data.num_examples to at most 700 (or null: every row not held out)"
    )
    train, held = DataSettings(source=str(path), num_examples=None).load()
    assert (
        len(train) == 700 and len(held) == 500 and sorted(list(train["row"]) + list(held["row"])) == list(range(1200))
    )


# ----------------------------------------------------------------------------- sampling.backend


def test_sampling_backend_defaults_to_hf_and_rejects_unknown_names():
    assert RunConfig().sampling.backend == "hf"
    assert RunConfig.from_dict({"sampling": {"backend": "hf"}}).sampling.backend == "hf"
    with pytest.raises(ConfigError, match=r"sampling.backend = 'tgi': expected 'hf' or 'vllm'"):
        RunConfig.from_dict({"sampling": {"backend": "tgi"}})


def test_sampling_backend_vllm_without_the_extra_fails_at_config_time_with_the_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"sampling": {"backend": "vllm"}})
    assert "sampling.backend = 'vllm'" in str(err.value)
    assert "pip install 'tspin-kit[vllm]'" in str(err.value)


def test_sampling_backend_vllm_with_vllm_installed_is_refused_until_the_path_is_built(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(ConfigError, match="not built yet"):
        RunConfig.from_dict({"sampling": {"backend": "vllm"}})


def test_pyproject_has_the_vllm_extra():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(req.startswith("vllm") for req in extras["vllm"])
    assert "vllm" not in " ".join(extras["dev"])  # never pulled in by dev (it pins its own torch)
