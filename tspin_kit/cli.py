"""`tspin`: a thin command line over the same dataclass configs the Python API uses.

    tspin run --config FILE.yaml       run (or continue) one method
    tspin resume RUN_DIR               continue a killed run from its last completed phase
    tspin report RUN_DIR [RUN_DIR...]  write a self-contained HTML report
    tspin demo [--seeds 2] [--iterations 10]   the main job on the embedded toy world
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


def cmd_run(args) -> int:
    from .config import RunConfig
    from .session import SelfPlaySession

    cfg = RunConfig.from_yaml(args.config)
    if args.run_dir:
        cfg.run_dir = args.run_dir
    if not cfg.run_dir:
        cfg.run_dir = str(Path("runs") / Path(args.config).stem)
    rec = SelfPlaySession(cfg).run()
    _out(rec.metrics[["iteration", "score_before", "score_after", "current_advantage_after_mean",
                      "historical_advantage_after_mean"]].to_string(index=False))
    _out(f"run directory: {cfg.run_dir}")
    return 0


def cmd_resume(args) -> int:
    from .session import SelfPlaySession

    s = SelfPlaySession.resume(args.run_dir)
    rec = s.run()
    _out(rec.metrics[["iteration", "score_before", "score_after"]].to_string(index=False))
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .store import load_run

    runs = {}
    for d in args.run_dirs:
        r = load_run(d)
        runs[f"{r.label} ({Path(d).name})" if r.label in runs else r.label] = r
    out = Path(args.out or Path(args.run_dirs[0]) / "report.html")
    write_report(out, runs, title=args.title or "tspin-kit report")
    _out(f"report: {out}")
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
    cc = C.ComparisonConfig(base=base, seeds=tuple(range(args.seeds)), out_dir=args.out)
    t0 = time.perf_counter()
    records = C.run_comparison(cc, fresh=args.fresh)
    seconds = time.perf_counter() - t0
    table = C.score_table(records)
    lines = C.verdict(records)
    _out(f"\naccuracy on {base.data.eval_size} held-out {args.task} problems (mean over seeds {list(cc.seeds)}), "
         f"score after each iteration:")
    _out(C.format_table(table))
    _out("")
    for line in lines:
        _out("- " + line)
    runs = {f"{C.LABELS[m]} s{seed}" if len(cc.seeds) > 1 else C.LABELS[m]: r for (m, seed), r in records.items()}
    path = write_report(Path(args.out) / "report.html", runs, title="tspin-kit demo: SFT vs SPIN vs T-SPIN",
                        summary=lines, tables={"accuracy per iteration": table})
    table.to_csv(Path(args.out) / "scores.csv")
    _out(f"\nreport: {path}\nwall time: {seconds:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tspin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one method from a YAML config")
    r.add_argument("--config", required=True, help="YAML file with sections model/data/method/train/sampling")
    r.add_argument("--run-dir", help="override the config's run_dir")
    r.set_defaults(fn=cmd_run)
    r = sub.add_parser("resume", help="continue a run directory from its last completed phase")
    r.add_argument("run_dir")
    r.set_defaults(fn=cmd_resume)
    r = sub.add_parser("report", help="write an HTML report of one or more run directories")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", help="HTML path (default: RUN_DIR/report.html)")
    r.add_argument("--title")
    r.set_defaults(fn=cmd_report)
    r = sub.add_parser("demo", help="SFT control vs SPIN vs T-SPIN vs SFT on 4x data, on the toy world")
    r.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    r.add_argument("--iterations", type=int, default=5)
    r.add_argument("--task", choices=["addition", "scratchpad"], default="addition")
    r.add_argument("--out", default="demo_output")
    r.add_argument("--fresh", action="store_true", help="delete earlier runs in --out first (else they are resumed)")
    r.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():  # bars in a CI log are noise; TSPIN_PROGRESS=1 brings them back
        os.environ.setdefault("TSPIN_PROGRESS", "0")
    if os.environ.get("TSPIN_PROGRESS") == "0":  # transformers' own bars (saving/loading weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .config import ConfigError
    from .data import DataError
    from .models import ModelError
    from .store import RunDirError

    try:
        return args.fn(args)
    except (ConfigError, DataError, ModelError, RunDirError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
