"""`tspin run/resume/report`, and bad inputs: exit code 2, a message naming the field or file, and nothing
already written is damaged.

Most calls go through `tspin_kit.cli.main` in this process (a fresh interpreter costs seconds on these
cores); one test runs the installed `tspin` script, and test_resume.py drives `python -m tspin_kit.cli`.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import small_config_dict, subprocess_env, write_yaml

from tspin_kit.cli import main


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def cli(*args: str) -> int:
    return main(["-q", *args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, stepped_run) -> Path:
    """A finished 1-iteration run made by `tspin run` (the toy pi_0 is cached by stepped_run)."""
    root = tmp_path_factory.mktemp("cli")
    cfg = write_yaml(root / "one.yaml", small_config_dict(root / "run", iterations=1))
    assert main(["-q", "run", "--config", str(cfg)]) == 0
    return root / "run"


def test_run_resume_report(finished, capsys, tmp_path):
    assert (finished / "iterations" / "iter_000" / "metrics.json").is_file()
    assert json.loads((finished / "state.json").read_text())["done"][-1] == "evaluate:0"
    # resume of a finished run does nothing and prints its table
    before = snapshot(finished)
    assert cli("resume", str(finished)) == 0
    assert "score_after" in capsys.readouterr().out
    assert snapshot(finished) == before
    out = tmp_path / "report.html"
    assert cli("report", str(finished), "--out", str(out), "--title", "my runs") == 0
    html = out.read_text()
    assert "plotly" in html and "my runs" in html and len(html) > 100_000  # plotly.js is inlined
    assert cli("report", str(finished)) == 0
    assert (finished / "report.html").is_file()


def test_run_dir_option_and_default(tmp_path, monkeypatch, stepped_run):
    cfg = write_yaml(tmp_path / "c.yaml", small_config_dict(None, iterations=1))
    assert cli("run", "--config", str(cfg), "--run-dir", str(tmp_path / "elsewhere")) == 0
    assert (tmp_path / "elsewhere" / "manifest.json").is_file()
    monkeypatch.chdir(tmp_path)
    assert cli("run", "--config", str(cfg)) == 0
    assert (tmp_path / "runs" / "c" / "manifest.json").is_file()  # runs/<config stem>


BAD_CONFIGS = [
    ({"method": {"alpha": 0}}, "method.alpha = 0: expected a number > 0"),
    ({"method": {"alpha": -1.5}}, "method.alpha = -1.5"),
    ({"method": {"beta": -0.1}}, "method.beta = -0.1: expected a number >= 0"),
    ({"iterations": 0}, "run.iterations = 0: expected an integer >= 1"),
    ({"method": {"name": "dpo"}}, "method.name = 'dpo': expected one of sft, spin, tspin"),
    ({"method": {"gamma": 1}}, "method: unknown field(s) gamma"),
    ({"colour": "red"}, "run: unknown field(s) colour"),
    ({"train": {"lr": "fast"}}, "train"),
    ({"sampling": {"top_p": 0}}, "sampling.top_p = 0"),
]


@pytest.mark.parametrize("override,message", BAD_CONFIGS, ids=[m.split(":")[0].split(" =")[0] for _, m in BAD_CONFIGS])
def test_bad_config_values(finished, tmp_path, caplog, override, message):
    before = snapshot(finished)
    path = write_yaml(tmp_path / "bad.yaml", small_config_dict(finished, **override))
    with caplog.at_level(logging.ERROR, logger="tspin_kit.cli"):
        assert cli("run", "--config", str(path)) == 2
    assert message in caplog.text and "bad.yaml" in caplog.text
    assert snapshot(finished) == before


def test_missing_config_file(caplog):
    assert cli("run", "--config", "/no/such/config.yaml") == 2
    assert "config file not found: /no/such/config.yaml" in caplog.text


def test_invalid_yaml(tmp_path, caplog):
    (tmp_path / "broken.yaml").write_text("method: {name: tspin\n")
    assert cli("run", "--config", str(tmp_path / "broken.yaml")) == 2
    assert "broken.yaml: not valid YAML" in caplog.text


def test_different_config_on_the_same_run_dir(finished, tmp_path, caplog):
    before = snapshot(finished)
    path = write_yaml(tmp_path / "other.yaml", small_config_dict(finished, iterations=1, method={"beta": 0.5}))
    assert cli("run", "--config", str(path)) == 2
    assert "different config (method.beta: 0.1 != 0.5)" in caplog.text and str(finished) in caplog.text
    assert snapshot(finished) == before


def test_missing_data_path(finished, tmp_path, caplog):
    before = snapshot(finished)
    path = write_yaml(
        tmp_path / "d.yaml",
        small_config_dict(finished, data={"source": str(tmp_path / "none.jsonl")}),
    )
    assert cli("run", "--config", str(path)) == 2
    assert f"data source not found: no file or folder at '{tmp_path / 'none.jsonl'}'" in caplog.text
    assert snapshot(finished) == before


def test_empty_response_in_jsonl_names_the_row(tmp_path, caplog):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(8)]
    rows[5]["response"] = "  "
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_yaml(
        tmp_path / "e.yaml",
        small_config_dict(tmp_path / "run", data={"source": str(data), "eval_size": 2, "num_examples": None}),
    )
    assert cli("run", "--config", str(path)) == 2
    assert "pairs.jsonl" in caplog.text and "row 5, column 'response'" in caplog.text and "empty" in caplog.text
    assert not (tmp_path / "run").exists()


def test_prompt_longer_than_max_length_names_the_row(tmp_path, caplog, stepped_run):
    path = write_yaml(tmp_path / "m.yaml", small_config_dict(tmp_path / "run", model={"max_length": 5}))
    assert cli("run", "--config", str(path)) == 2
    assert (
        "model.max_length" in caplog.text
        and "prompt is 6 tokens" in caplog.text
        and "data.source 'toy:addition', row 0, field 'prompt'" in caplog.text
    )


def test_tokenizer_without_pad_token(tmp_path, caplog, tiny_model_dirs, text_jsonl):
    path = write_yaml(
        tmp_path / "p.yaml",
        small_config_dict(
            tmp_path / "run",
            model={"name_or_path": str(tiny_model_dirs["no_pad"])},
            data={"source": str(text_jsonl), "eval_size": 4, "num_examples": None},
        ),
    )
    assert cli("run", "--config", str(path)) == 2
    assert f"{tiny_model_dirs['no_pad']}: the tokenizer has no pad token" in caplog.text


def test_missing_model_folder(tmp_path, caplog, text_jsonl):
    path = write_yaml(
        tmp_path / "f.yaml",
        small_config_dict(
            tmp_path / "run",
            model={"name_or_path": str(tmp_path / "nomodel")},
            data={"source": str(text_jsonl), "eval_size": 4, "num_examples": None},
        ),
    )
    assert cli("run", "--config", str(path)) == 2
    assert f"model.name_or_path: {tmp_path / 'nomodel'} does not exist" in caplog.text


def test_chat_template_mode_without_a_template(tmp_path, caplog, tiny_model_dirs, text_jsonl):
    path = write_yaml(
        tmp_path / "t.yaml",
        small_config_dict(
            tmp_path / "run",
            model={"name_or_path": str(tiny_model_dirs["plain"]), "prompt_template": "chat"},
            data={"source": str(text_jsonl), "eval_size": 4, "num_examples": None},
        ),
    )
    assert cli("run", "--config", str(path)) == 2
    assert "model.prompt_template = 'chat' but the tokenizer has no chat_template" in caplog.text


def test_corrupt_run_dir(finished, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "report.html").unlink(missing_ok=True)
    (run / "manifest.json").write_text("{")
    assert cli("resume", str(run)) == 2
    assert f"{run / 'manifest.json'}: corrupt JSON" in caplog.text
    assert cli("report", str(run)) == 2
    caplog.clear()
    shutil.copy(finished / "manifest.json", run / "manifest.json")
    (run / "iterations" / "iter_000" / "examples.parquet").write_text("not parquet")
    before = snapshot(run)
    assert cli("report", str(run)) == 2
    assert "examples.parquet: unreadable Parquet" in caplog.text
    assert snapshot(run) == before and not (run / "report.html").exists()


def test_resume_missing_run_dir(caplog):
    assert cli("resume", "/no/such/run") == 2
    assert "/no/such/run: no such run directory" in caplog.text


def test_installed_script_exit_code(tmp_path):
    """The `tspin` console script end to end: a bad value exits 2 with one clear line on stderr."""
    import sys

    # the console script of the environment running the tests (make test installs the package there)
    tspin = Path(sys.executable).with_name("tspin")
    assert tspin.exists() or shutil.which("tspin"), "the tspin console script is not installed"
    tspin = tspin if tspin.exists() else Path(shutil.which("tspin"))
    path = write_yaml(tmp_path / "bad.yaml", small_config_dict(tmp_path / "run", method={"alpha": 0}))
    out = subprocess.run(
        [str(tspin), "run", "--config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert out.returncode == 2
    assert "method.alpha = 0: expected a number > 0" in out.stderr and "Traceback" not in out.stderr


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err
