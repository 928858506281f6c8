"""`tspin`: a thin command line over the same dataclass configs the Python API uses.

tspin run --config FILE.yaml [KEY=VALUE ...] [--print-config]   run (or continue) one method
tspin config [--show-defaults | --config FILE.yaml KEY=VALUE ...]  fields and defaults, or a merged config
tspin export RUN_DIR run.zip [--weights]   pack a run so it travels
tspin resume RUN_DIR               continue a killed run from its last completed phase
tspin report RUN_DIR [RUN_DIR...]  write a self-contained HTML report
tspin eval RUN_DIR --tasks T1,T2 [--include-path DIR] [--limit N] [--policies all|last]   lm-eval scores
tspin demo [--seeds 2] [--iterations 10]   the main job on the embedded toy world
tspin reproduce [--seeds 3] [--iterations 10] [--quick]   the papers' claims, with intervals and verdicts
tspin pi0 --task addition [--ship]  retrain the toy world's pi_0 and compare it with the shipped one
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger("tspin_kit.cli")


def _out(text: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun/accelerate only the main process reports
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _load_config(args):
    """The config file with the command line's dotted overrides (and --run-dir / --report-to) applied."""
    from .config import RunConfig

    overrides = list(args.overrides or [])
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={args.run_dir}")
    if getattr(args, "report_to", None):
        overrides.append(f"report_to={args.report_to}")
    return RunConfig.from_yaml(args.config, overrides)


def cmd_run(args) -> int:
    from .session import SelfPlaySession

    cfg = _load_config(args)
    if not cfg.run_dir:
        cfg.run_dir = str(Path("runs") / Path(args.config).stem)
    if args.print_config:
        _out(cfg.to_yaml().rstrip())
        return 0
    rec = SelfPlaySession(cfg).run()
    _out(
        rec.metrics[
            [
                "iteration",
                "score_before",
                "score_after",
                "current_advantage_after_mean",
                "historical_advantage_after_mean",
            ]
        ].to_string(index=False)
    )
    _out(f"run directory: {cfg.run_dir}")
    return 0


def cmd_config(args) -> int:
    """Print every field with its default and help, or a config file with overrides merged."""
    from .config import RunConfig, defaults_yaml

    if args.config:
        _out(_load_config(args).to_yaml().rstrip())
    elif args.overrides:
        from .config import parse_overrides

        _out(RunConfig.from_dict(parse_overrides(args.overrides), source="overrides").to_yaml().rstrip())
    else:
        _out(defaults_yaml().rstrip())
    return 0


def cmd_export(args) -> int:
    from .store import export_run

    path = export_run(args.run_dir, args.out, weights=args.weights)
    _out(f"exported: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_resume(args) -> int:
    from .session import SelfPlaySession

    s = SelfPlaySession.resume(args.run_dir)
    rec = s.run()
    _out(rec.metrics[["iteration", "score_before", "score_after"]].to_string(index=False))
    return 0


def cmd_report(args) -> int:
    from .alarms import find_alarms
    from .report import write_report
    from .store import load_run

    runs = {}
    for d in args.run_dirs:
        r = load_run(d)
        runs[f"{r.label} ({Path(d).name})" if r.label in runs else r.label] = r
    from .narrate import describe_runs

    out = Path(args.out or Path(args.run_dirs[0]) / "report.html")
    write_report(out, runs, title=args.title or "tspin-kit report", summary=describe_runs(runs))
    for label, r in runs.items():  # the instability alarms, also listed in the report
        found = find_alarms(r, label=label)
        _out(f"alarms of {label}: " + (f"{len(found)}" if found else "none"))
        for a in found:
            _out(
                f"  [{a.severity}] {a.message} ({len(a.example_ids)} triplets: {', '.join(map(str, a.example_ids[:8]))}"
                + (" ...)" if len(a.example_ids) > 8 else ")")
            )
    _out(f"report: {out}")
    return 0


def cmd_eval(args) -> int:
    """Score a run's saved policies with lm-evaluation-harness; the scores join the run's records."""
    from .harness import HARNESS_FILE, evaluate_run, harness_table

    frame = evaluate_run(
        args.run_dir,
        args.tasks,
        include_path=args.include_path,
        limit=args.limit,
        policies=args.policies,
        batch_size=args.batch_size,
        echo=_out,
    )
    _out(harness_table(frame).to_string(float_format=lambda v: f"{v:.4f}"))
    _out(f"scores: {Path(args.run_dir) / HARNESS_FILE}")
    return 0


def cmd_demo(args) -> int:
    from . import compare as C
    from .config import RunConfig
    from .report import write_report

    base = RunConfig()
    base.iterations = args.iterations
    base.data.source = f"toy:{args.task}"
    if args.task == "scratchpad":
        base.sampling.max_new_tokens = 32
    cc = C.ComparisonConfig(
        base=base, seeds=tuple(range(args.seeds)), out_dir=args.out, workers=getattr(args, "workers", None)
    )
    t0 = time.perf_counter()
    records = C.run_grid(cc, fresh=args.fresh)
    seconds = time.perf_counter() - t0
    table = C.score_table(records)
    lines = C.verdict(records)
    first = next(iter(records.values()))
    pi0 = first.initial.get("pi0", {})
    if pi0.get("source") == "shipped":
        _out(
            f"pi_0: the shipped initial policy (sha256 {pi0['sha256'][:12]}...), accuracy "
            f"{first.initial['score']:.3f} here, {pi0['shipped_score']:.3f} recorded with the file"
        )
    else:
        _out(
            f"pi_0: {pi0.get('source', 'unknown')} ({pi0.get('folder', '')}), "
            f"accuracy {first.initial.get('score', float('nan')):.3f}"
        )
    _out(
        f"\naccuracy on {base.data.eval_size} held-out {args.task} problems (mean over seeds {list(cc.seeds)}) "
        f"of pi_0 and of the policy after each iteration (pi_{{t+1}}: after Iter t):"
    )
    _out(C.format_table(table))
    _out("")
    for line in lines:
        _out("- " + line)
    runs = {f"{C.label(m)} s{seed}" if len(cc.seeds) > 1 else C.label(m): r for (m, seed), r in records.items()}
    from .narrate import describe_runs

    path = write_report(
        Path(args.out) / "report.html",
        runs,
        title="tspin-kit demo: SFT vs SPIN vs T-SPIN",
        summary=lines + describe_runs(runs),
        tables={"accuracy per iteration": table},
    )
    table.to_csv(Path(args.out) / "scores.csv")
    _out(f"\nreport: {path}\nwall time: {seconds:.1f} s")
    return 0


def cmd_methods(args) -> int:
    """The table of methods (tspin_kit/methods.py): names, what each reads, its knobs, its docs page."""
    from . import methods as M

    if args.markdown:
        _out(M.docs_table())
        return 0
    for name, m in M.table().items():
        knobs = ", ".join(f"{k}={M.KNOBS[k].default:g}" for k in m.knobs) or "no knobs"
        alias = f" (alias {', '.join(m.aliases)})" if m.aliases else ""
        _out(f"{name}{alias}: {m.label}. {m.formula}. Knobs: {knobs}. Docs: {m.doc}")
    return 0


def cmd_pi0(args) -> int:
    import torch

    from . import toy

    if args.threads:
        torch.set_num_threads(args.threads)
    train, held = toy.default_world_rows(args.task)
    settings = toy.InitialPolicySettings()
    t0 = time.perf_counter()
    model, tok = toy.train_initial_policy(args.task, train, settings, perturb=args.nudge, perturb_seed=1)
    seconds = time.perf_counter() - t0
    score = float(sum(toy.heldout_correct(model, tok, args.task, held)) / len(held))
    _out(
        f"pi_0 ({args.task}, {len(train)} pairs, {settings.epochs} epochs, lr {settings.lr:g} {settings.schedule}): "
        f"accuracy {score:.3f} on {len(held)} held-out problems, trained in {seconds:.0f} s"
    )
    shipped = toy.shipped_info(args.task)
    if shipped is not None:
        _out(
            f"shipped pi_0: accuracy {shipped['score']:.3f} (made {shipped['made']['date']} on "
            f"{shipped['made']['machine']['cpu']}); "
            f"this retraining is {100 * (score - shipped['score']):+.1f} points away"
        )
    if args.ship:
        path = toy.ship_policy(args.task, model, score, command=f"tspin pi0 --task {args.task} --ship")
        _out(f"shipped: {path} (sha256 {toy.shipped_info(args.task)['sha256'][:16]}...)")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import ReproduceConfig, command_line, reproduce

    rc = ReproduceConfig(
        seeds=args.seeds,
        iterations=args.iterations,
        task=args.task,
        out_dir=args.out,
        runs_dir=args.runs_dir,
        workers=args.workers,
        bootstrap=args.bootstrap,
        quick=args.quick,
    )
    result = reproduce(rc, command=command_line(args.argv), echo=_out)
    _out("")
    for c in result["claims"]:
        _out(f"({c['id']}) {c['text']}: {c['verdict'].upper()}")
    _out(
        f"\n{Path(args.out) / 'claims.md'}\n{Path(args.out) / 'reproduce.html'}"
        f"\nwall time: {result['wall_seconds']:.0f} s"
    )
    return 0


def cmd_render_results(args) -> int:
    """Rewrite the generated results blocks (README.md, docs/results.md) and claims.md/HTML from the JSON."""
    import json

    from .reproduce import write_outputs
    from .reproduce_render import RESULT_FILES, render_section, replace_section

    path = Path(args.json)
    result = json.loads(path.read_text())
    write_outputs(result, path.parent)
    for name, prefix in RESULT_FILES.items():
        f = Path(args.root) / name
        f.write_text(replace_section(f.read_text(), render_section(result), docs_prefix=prefix))
        _out(f"rendered: {f}")
    return 0


def log_level(quiet: bool) -> int:
    """INFO on the main process; under torchrun/accelerate the other ranks log warnings only, so every
    INFO line appears once, not once per process."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return logging.WARNING if quiet or rank not in ("", "0") else logging.INFO


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tspin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one method from a YAML config")
    r.add_argument("--config", required=True, help="YAML file with sections model/data/method/train/sampling")
    r.add_argument("--run-dir", help="override the config's run_dir")
    r.add_argument("--report-to", help="trackers, comma-separated: trackio, tensorboard, wandb (same as report_to=...)")
    r.add_argument("--print-config", action="store_true", help="print the merged config as YAML and exit")
    r.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. method.beta=0.2 train.lr=1e-5"
    )
    r.set_defaults(fn=cmd_run)
    r = sub.add_parser("config", help="list every config field with its default and help, or print a merged config")
    r.add_argument(
        "--show-defaults", action="store_true", help="every field, its default and help (the default action)"
    )
    r.add_argument("--config", help="a YAML file to merge the overrides into and print")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    r.set_defaults(fn=cmd_config)
    r = sub.add_parser("export", help="pack a run (records, manifest, report; weights with --weights) into a zip")
    r.add_argument("run_dir", help="a run folder, zip or fsspec URL")
    r.add_argument("out", help="the .zip to write")
    r.add_argument("--weights", action="store_true", help="include weights/ (large for full fine-tuning)")
    r.set_defaults(fn=cmd_export)
    r = sub.add_parser("resume", help="continue a run directory from its last completed phase")
    r.add_argument("run_dir")
    r.set_defaults(fn=cmd_resume)
    r = sub.add_parser("report", help="write an HTML report of one or more run directories")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", help="HTML path (default: RUN_DIR/report.html)")
    r.add_argument("--title")
    r.set_defaults(fn=cmd_report)
    r = sub.add_parser("eval", help="score a run's saved policies with lm-evaluation-harness (extra: eval)")
    r.add_argument("run_dir", help="a run folder with weights/policy_NNN")
    r.add_argument("--tasks", required=True, help="lm-eval task, group or tag names, comma-separated")
    r.add_argument("--include-path", help="a folder of your own lm-eval task YAMLs")
    r.add_argument("--limit", type=int, help="at most N documents per task (a smoke check)")
    r.add_argument("--policies", default="all", help="all (default), last, or policy numbers like 0,3")
    r.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size")
    r.set_defaults(fn=cmd_eval)
    r = sub.add_parser("demo", help="SFT control vs SPIN vs T-SPIN vs SFT on 4x data, on the toy world")
    r.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    r.add_argument("--iterations", type=int, default=5)
    r.add_argument("--task", choices=["addition", "scratchpad"], default="addition")
    r.add_argument("--out", default="demo_output")
    r.add_argument("--fresh", action="store_true", help="delete earlier runs in --out first (else they are resumed)")
    r.add_argument(
        "--workers", type=int, help="runs side by side as processes (default: one per CPU core; 1: in this process)"
    )
    r.set_defaults(fn=cmd_demo)
    r = sub.add_parser("reproduce", help="the papers' claims on the toy world: methods x seeds x iterations, verdicts")
    r.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    r.add_argument("--iterations", type=int, default=10)
    r.add_argument("--task", choices=["addition", "scratchpad"], default="addition")
    r.add_argument("--quick", action="store_true", help="2 seeds x 2 iterations, 400 bootstrap draws (a smoke test)")
    r.add_argument("--out", default="reproduce_output", help="where reproduce.json, claims.md, reproduce.html go")
    r.add_argument("--runs-dir", help="where the run folders go (default: OUT/runs); existing runs are resumed")
    r.add_argument("--workers", type=int, help="parallel runs (default: one per CPU core)")
    r.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws for the intervals")
    r.set_defaults(fn=cmd_reproduce)
    r = sub.add_parser("render-results", help="rewrite README.md/docs results blocks from a reproduce.json")
    r.add_argument("--json", default="docs/reproduce/reproduce.json")
    r.add_argument("--root", default=".", help="the repository root")
    r.set_defaults(fn=cmd_render_results)
    r = sub.add_parser("methods", help="list the table of methods (objectives, their knobs and docs pages)")
    r.add_argument("--markdown", action="store_true", help="the docs index's table (docs/index.md)")
    r.set_defaults(fn=cmd_methods)
    r = sub.add_parser(
        "pi0", help="retrain a toy world's pi_0 with the shipped recipe; --ship replaces the shipped one"
    )
    r.add_argument("--task", choices=["addition", "scratchpad"], default="addition")
    r.add_argument("--ship", action="store_true", help="write it into the package (tspin_kit/assets/pi0/)")
    r.add_argument("--threads", type=int, help="torch threads")
    r.add_argument(
        "--nudge",
        type=float,
        default=0.0,
        help="multiply the initial weights by 1 + NUDGE * N(0,1), to see how far another machine could land",
    )
    r.set_defaults(fn=cmd_pi0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if not sys.stderr.isatty():  # bars in a CI log are noise; TSPIN_PROGRESS=1 brings them back
        os.environ.setdefault("TSPIN_PROGRESS", "0")
    if os.environ.get("TSPIN_PROGRESS") == "0":  # transformers' own bars (saving/loading weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    logging.basicConfig(
        level=log_level(args.quiet), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from .config import ConfigError
    from .data import DataError
    from .harness import HarnessError
    from .models import ModelError
    from .store import RunDirError

    try:
        return args.fn(args)
    except (ConfigError, DataError, HarnessError, ModelError, RunDirError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
