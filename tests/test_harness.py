"""lm-evaluation-harness scores of a run's policies (tspin_kit.harness, `tspin eval`, `eval_harness`).

Everything offline: two tasks defined in local YAML files over a JSONL file of held-out toy problems written
here (`dataset_path: json`), scored on the tiny toy model: a `generate_until` task with exact match and a
`multiple_choice` task with accuracy.
"""

from __future__ import annotations

import json
import random
import shutil

import pandas as pd
import pytest
from conftest import SMALL, small_config

from tspin_kit.config import ConfigError, HarnessConfig, RunConfig, config_diff

pytest.importorskip("lm_eval")

TASKS = ["toy_add_em", "toy_add_mc"]
LIMIT = 12


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """Nothing may try the hub: datasets reads its offline switch at import, so patch the module too."""
    import datasets
    import huggingface_hub

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Two lm-eval tasks in a folder of YAMLs, over held-out addition problems in a local JSONL file."""
    from tspin_kit import toy

    root = tmp_path_factory.mktemp("harness")
    _, held_out = toy.make_world("addition", SMALL["model"]["toy_sft_examples"], SMALL["data"]["eval_size"])
    rng = random.Random(0)
    rows = []
    for r in held_out[:20]:
        wrong = str(int(r["answer"]) + rng.choice([-10, -1, 1, 10]))
        choices = [r["answer"], wrong]
        rng.shuffle(choices)
        rows.append(
            {"prompt": r["prompt"], "answer": r["answer"], "choices": choices, "label": choices.index(r["answer"])}
        )
    data = root / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir()
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'doc_to_text: "{{prompt}}"\n'
    )
    (tasks / "toy_add_em.yaml").write_text(
        "task: toy_add_em\n" + common + 'output_type: generate_until\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (tasks / "toy_add_mc.yaml").write_text(
        "task: toy_add_mc\n" + common + 'output_type: multiple_choice\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'
    )
    return tasks


def _direct(model, tokenizer, task_dir, limit=LIMIT):
    """What lm-eval itself returns for one model object, called as its docs show."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=tm, limit=limit, log_samples=False)["results"]


def _value(harness: pd.DataFrame, policy: int, task: str, metric: str) -> float:
    row = harness[(harness["policy"] == policy) & (harness["task"] == task) & (harness["metric"] == metric)]
    assert len(row) == 1, harness
    return float(row["value"].iloc[0])


# ----------------------------------------------------------------------------- config (no model)


def test_eval_harness_config_round_trip_and_checks():
    cfg = RunConfig.from_dict({"eval_harness": {"tasks": "toy_add_em, toy_add_mc", "limit": 5}})
    assert cfg.eval_harness == HarnessConfig(tasks=TASKS, limit=5)
    again = RunConfig.from_dict(cfg.to_dict())  # what resume reads from the manifest
    assert again.eval_harness == cfg.eval_harness
    assert RunConfig().eval_harness is None
    # a manifest written before the field existed resumes: no difference where the field is unset
    old = {k: v for k, v in RunConfig().to_dict().items() if k != "eval_harness"}
    assert config_diff(old, RunConfig().to_dict()) == []
    assert config_diff(RunConfig().to_dict(), cfg.to_dict())[0].startswith("eval_harness:")
    for bad, field in (
        ({"tasks": []}, "eval_harness.tasks"),
        ({"tasks": ["a"], "limit": 0}, "eval_harness.limit"),
        ({"task": ["a"]}, "unknown field"),
    ):
        with pytest.raises(ConfigError, match=field):
            RunConfig.from_dict({"eval_harness": bad})


def test_results_rows_groups_and_second_axis(tmp_path):
    """lm-eval's result dict -> rows; a group's subtasks are kept but only the named group is drawn; an lm-eval
    score beside a log-likelihood score goes on a second axis."""
    from tspin_kit import figures as F
    from tspin_kit.harness import harness_table, record_scores, results_frame, shown

    res = {
        "results": {
            "grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": 0.1},
            "sub_a": {"alias": " - sub_a", "acc,none": 0.4, "acc_stderr,none": "N/A"},
            "sub_b": {
                "alias": " - sub_b",
                "acc,none": 0.6,
                "acc_stderr,none": 0.2,
                "exact_match,strict": 0.3,
                "exact_match_stderr,strict": 0.05,
            },
        },
        "n-samples": {"sub_a": {"original": 10, "effective": 5}},
        "n-shot": {"sub_a": 0},
        "higher_is_better": {"sub_a": {"acc": True}},
        "lm_eval_version": "0.4.x",
    }
    rows = results_frame(res, 2, tasks=["grp"], limit=5)
    assert len(rows) == 4 and (rows["iteration"] == 1).all() and (rows["policy"] == 2).all()
    assert rows.set_index("task")["requested"].to_dict() == {"grp": True, "sub_a": False, "sub_b": False}
    sub_a = rows[rows["task"] == "sub_a"].iloc[0]
    assert sub_a["stderr"] != sub_a["stderr"] and sub_a["n_samples"] == 5  # "N/A" -> NaN
    assert list(shown(rows)["task"]) == ["grp"]
    assert list(harness_table(rows).columns) == ["grp acc"] and list(harness_table(rows).index) == ["pi_2"]
    # scoring the same policy on a task again replaces its rows, other policies stay
    record_scores(tmp_path, rows)
    record_scores(tmp_path, results_frame(res, 1, tasks=["grp"]))
    table = record_scores(tmp_path, results_frame({"results": {"grp": {"acc,none": 0.9}}}, 2, tasks=["grp"]))
    assert table.query("policy == 2 and task == 'grp'")["value"].tolist() == [0.9]
    assert len(table) == 4 + 4 and len(table.query("policy == 1")) == 4

    scores = pd.DataFrame({"policy": [0, 1, 2], "score": [-2.0, -1.5, -1.2]})
    fig = F.scores({"T-SPIN": (scores, "tspin")}, score_name="heldout_token_logp", harness={"T-SPIN": table})
    dashed = [t for t in fig.data if t.line.dash]
    assert [t.name for t in dashed] == ["T-SPIN · grp acc"] and dashed[0].yaxis == "y2"
    assert list(dashed[0].x) == [1, 2] and list(dashed[0].y) == [0.5, 0.9]
    assert "lm-eval" in fig.layout.yaxis2.title.text
    assert [t.yaxis for t in fig.data if not t.line.dash] == [None]  # the built-in score stays on the left axis


def test_eval_of_a_missing_run_dir_is_a_clear_error(tmp_path, caplog):
    from tspin_kit.cli import main

    missing = tmp_path / "no_such_run"
    assert main(["eval", str(missing), "--tasks", "toy_add_em"]) == 2
    assert f"{missing}: no such run directory" in caplog.text
    (tmp_path / "plain").mkdir()
    assert main(["eval", str(tmp_path / "plain"), "--tasks", "toy_add_em"]) == 2
    assert "not a run directory (no manifest.json)" in caplog.text


# ----------------------------------------------------------------------------- `tspin eval` on a finished run


@pytest.fixture(scope="module")
def evaluated(stepped_run, task_dir, tmp_path_factory):
    """A copy of the shared 2-iteration toy run (full fine-tuning), scored by `tspin eval` on both tasks."""
    import contextlib
    import io

    from tspin_kit.cli import main

    run = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(stepped_run.run_dir, run)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            ["eval", str(run), "--tasks", ",".join(TASKS), "--include-path", str(task_dir), "--limit", str(LIMIT)]
        )
    return run, rc, out.getvalue()


@pytest.mark.slow
def test_tspin_eval_scores_every_policy_into_the_records(evaluated):
    from tspin_kit.store import load_run

    run, rc, out = evaluated
    assert rc == 0, out
    assert "pi_0" in out and "pi_2" in out and "toy_add_mc acc" in out and str(run / "harness.parquet") in out
    h = load_run(run).harness
    assert sorted(h["policy"].unique()) == [0, 1, 2]
    assert (h["iteration"] == h["policy"] - 1).all()  # -1 = pi_0, t = after iteration t, as heldout
    assert set(zip(h["task"], h["metric"])) == {("toy_add_em", "exact_match"), ("toy_add_mc", "acc")}
    assert len(h) == 3 * 2 and (h["filter"] == "none").all()
    assert h["value"].between(0, 1).all() and h["stderr"].notna().all()
    assert (h["n_samples"] == LIMIT).all() and (h["limit"] == LIMIT).all() and (h["num_fewshot"] == 0).all()


@pytest.mark.slow
def test_recorded_scores_equal_simple_evaluate_of_that_policy(evaluated, task_dir):
    from tspin_kit.presets import load_policy
    from tspin_kit.store import load_run

    run, rc, _ = evaluated
    assert rc == 0
    rec = load_run(run)
    for t in (0, 2):
        model, tok = load_policy(rec, t)  # the toy rebuild of presets, independent of harness.PolicyLoader
        direct = _direct(model, tok, task_dir)
        assert _value(rec.harness, t, "toy_add_em", "exact_match") == direct["toy_add_em"]["exact_match,none"]
        assert _value(rec.harness, t, "toy_add_mc", "acc") == direct["toy_add_mc"]["acc,none"]


@pytest.mark.slow
def test_eval_again_replaces_that_policys_rows_and_report_shows_them(evaluated, task_dir, tmp_path):
    import plotly.graph_objects as go

    from tspin_kit import analysis as A
    from tspin_kit import figures as F
    from tspin_kit.cli import main
    from tspin_kit.report import write_report
    from tspin_kit.store import load_run

    run, rc, _ = evaluated
    assert rc == 0
    before = load_run(run).harness
    assert (
        main(
            [
                "eval",
                str(run),
                "--tasks",
                "toy_add_mc",
                "--include-path",
                str(task_dir),
                "--limit",
                "4",
                "--policies",
                "last",
            ]
        )
        == 0
    )
    after = load_run(run).harness
    assert len(after) == len(before)
    mine = after[(after["policy"] == 2) & (after["task"] == "toy_add_mc")]
    assert (mine["limit"] == 4).all() and (mine["n_samples"] == 4).all()
    others = after[~((after["policy"] == 2) & (after["task"] == "toy_add_mc"))].reset_index(drop=True)
    kept = before[~((before["policy"] == 2) & (before["task"] == "toy_add_mc"))].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, kept)

    rec = load_run(run)
    fig = F.report_figures({"T-SPIN": rec})["scores"]
    go.Figure(data=[dict(t._props) for t in fig.data], layout=dict(fig.layout._props))  # valid plotly
    dashed = [t for t in fig.data if t.line.dash]
    assert {t.name for t in dashed} == {"T-SPIN · toy_add_em exact_match", "T-SPIN · toy_add_mc acc"}
    em = next(t for t in dashed if "exact_match" in t.name)
    assert list(em.x) == [0, 1, 2] and em.yaxis == "y"  # both 0-1 shares: one axis
    from widgets import dashboard as Wd

    board = Wd.Dashboard(rec)  # the dashboard's score chart: the same dashed lines beside the built-in score
    names = {t.name for t in board._slots["score"].figure.data}
    assert {n for n in names if "·" in n} == {n.replace("T-SPIN", A.run_label(rec)) for n in {t.name for t in dashed}}
    html = write_report(tmp_path / "report.html", {"T-SPIN": rec}, title="t").read_text()
    assert "lm-eval scores beside the built-in score: T-SPIN" in html and "built-in accuracy" in html
    assert "toy_add_mc acc" in html


@pytest.mark.slow
def test_unknown_task_is_a_clear_error(evaluated, task_dir, caplog):
    from tspin_kit.cli import main

    run, _, _ = evaluated
    assert main(["eval", str(run), "--tasks", "toy_add_em,toy_add_nope", "--include-path", str(task_dir)]) == 2
    assert "unknown lm-eval task 'toy_add_nope'" in caplog.text
    assert "did you mean" in caplog.text  # toy_add_em / toy_add_mc are close
    assert main(["eval", str(run), "--tasks", "toy_add_em", "--include-path", str(task_dir / "missing")]) == 2
    assert "no such folder" in caplog.text


# ----------------------------------------------------------------------------- eval_harness during a run (LoRA)


@pytest.mark.slow
def test_eval_harness_scores_each_iteration_without_changing_the_run(task_dir, tmp_path):
    """A LoRA run with `eval_harness` scores pi_0 at prepare and pi_{t+1} after each iteration, trains exactly
    as the same run without it, and `tspin eval` (adapter loaded into the rebuilt base) gives the same scores."""
    from conftest import read_safetensors

    from tspin_kit.cli import main
    from tspin_kit.session import SelfPlaySession
    from tspin_kit.store import load_run

    lora = {"toy_sft_examples": 64, "toy_sft_epochs": 3, "lora_r": 4}
    harness = {"tasks": TASKS, "include_path": str(task_dir), "limit": 8}
    with_h = SelfPlaySession(small_config(tmp_path / "with", model=lora, iterations=1, eval_harness=harness)).run()
    without = SelfPlaySession(small_config(tmp_path / "without", model=lora, iterations=1)).run()

    h = load_run(tmp_path / "with").harness
    assert sorted(h["policy"].unique()) == [0, 1] and len(h) == 4
    pd.testing.assert_frame_equal(with_h.harness, h)  # the session's records carry them too
    assert len(without.harness) == 0
    # the hook gives the run back its random streams and train mode: the same records and weights
    pd.testing.assert_frame_equal(with_h.examples, without.examples)
    for k in ("score_before", "score_after", "loss_mean"):
        assert with_h.metrics[k].tolist() == without.metrics[k].tolist()
    a, b = (
        read_safetensors(tmp_path / "with/weights/policy_001"),
        read_safetensors(tmp_path / "without/weights/policy_001"),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    # `tspin eval` on the LoRA run: the adapter of each policy on the rebuilt toy pi_0 gives the hook's scores
    before = h.set_index(["policy", "task", "metric"])["value"]
    assert (
        main(
            [
                "eval",
                str(tmp_path / "with"),
                "--tasks",
                ",".join(TASKS),
                "--include-path",
                str(task_dir),
                "--limit",
                "8",
            ]
        )
        == 0
    )
    again = load_run(tmp_path / "with").harness.set_index(["policy", "task", "metric"])["value"]
    pd.testing.assert_series_equal(again.sort_index(), before.sort_index())
