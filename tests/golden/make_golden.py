"""Writes the golden records of issue 9's refactor: a 2-iteration run of every built-in method on the tiny test
config, made once from the commit before the method registry (the commit is recorded in golden.json).
`tests/test_registry.py` reruns the same configs and compares every response and flag exactly, every recorded
number to 16 float32 ulps of the largest log-prob (~8e-5): the records were made on an Intel Xeon, and another CPU
rounds float32 in another order (an AMD EPYC: within 1.2e-5).

    .venv/bin/python tests/golden/make_golden.py     # only to re-baseline on purpose
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TSPIN_PROGRESS", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

torch.set_num_threads(1)

from conftest import small_config  # noqa: E402

# name -> method section overrides; every built-in method, plus the y0 == y mask and SPIN's mix_previous
CASES = {
    "sft": {"name": "sft"},
    "spin": {"name": "spin", "mix_previous": True},
    "tspin": {"name": "tspin", "mask_proto_equal_annotated": True},
    "tspin_no_history": {"name": "tspin_no_history"},
    "tspin_ref": {"name": "tspin_ref", "lam": 0.5},
}


def config_for(case: str, run_dir):
    extra = {"sft_records": True} if case == "sft" else {}
    return small_config(run_dir, method=CASES[case], **extra)


def main() -> None:
    from tspin_kit.session import SelfPlaySession
    from tspin_kit.store import RunStore

    os.environ.setdefault("TSPIN_CACHE", tempfile.mkdtemp(prefix="golden_cache_"))
    meta = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=HERE).stdout.strip(), "cases": CASES}
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            rec = SelfPlaySession(config_for(case, Path(d) / "run")).run()
            rec.examples.to_parquet(HERE / f"{case}_examples.parquet")
            rec.metrics.to_parquet(HERE / f"{case}_metrics.parquet")
            store = RunStore(Path(d) / "run")
            steps = [json.loads((store.iter_dir(t) / "train.json").read_text())["step_losses"] for t in range(2)]
            meta.setdefault("step_losses", {})[case] = steps
        print(case, "written", flush=True)
    (HERE / "golden.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
