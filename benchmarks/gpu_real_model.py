"""The real-model path end to end, as a user runs it on a GPU, without the hub (issue 11, item 6).

A Llama-shaped model with random weights (hidden 512, 8 layers, 8 heads, 4 KV heads, intermediate 1408; the toy
character tokenizer and its chat template) is saved with ``save_pretrained`` into a folder, beside an
UltraChat-shaped Parquet file (``prompt``, ``prompt_id``, ``messages``), exactly what notebook 05's smoke mode builds
at toy size. Then ``SelfPlaySession`` (prepare, 2 iterations of generate / train / evaluate) runs T-SPIN on it twice:
with LoRA (r 16, bf16 base) and with full fine-tuning (bf16 policy), on whatever device accelerate picks (the GPU
where there is one). After each run the run directory is read back with ``load_run`` and checked: 2 finished
iterations, every (y, y', y0) log-prob finite, the weights of pi_1 and pi_2 on disk (an adapter under LoRA, the whole
model otherwise), and the device the model trained on. The model is random, so the scores mean nothing; what is
checked is that the GPU path runs and writes what the CPU path writes.

    python benchmarks/gpu_real_model.py [--json out.json] [--examples 64] [--new-tokens 64]

Prints one line of JSON first, then a table; exits 1 if a run failed or a check did not hold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _common as C  # noqa: E402


def build_inputs(work: Path, n: int, tiny: bool = False):
    """A random-init Llama saved like a checkpoint, and an UltraChat-shaped Parquet file of n rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tspin_kit import toy

    torch.manual_seed(0)
    tok = toy.build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64 if tiny else 512,
        intermediate_size=128 if tiny else 1408,
        num_hidden_layers=2 if tiny else 8,
        num_attention_heads=4 if tiny else 8,
        num_key_value_heads=2 if tiny else 4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model_dir = work / "random-llama"
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    topics = ["bees", "rain", "tea", "maps", "owls", "salt", "kites", "moss"]
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        prompt = f"Say one thing about {topic} ({i})."
        reply = f"{topic.capitalize()} are {'nice' if i % 3 else 'old'} number {i}."
        rows.append(
            {
                "prompt": prompt,
                "prompt_id": f"{i:064x}",
                "messages": [{"content": prompt, "role": "user"}, {"content": reply, "role": "assistant"}],
            }
        )
    data = work / "ultrachat_like.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    return model_dir, data, sum(p.numel() for p in model.parameters())


def run_one(name: str, lora_r: int, model_dir: Path, data: Path, work: Path, args) -> dict:
    import numpy as np

    import tspin_kit as tk
    from tspin_kit.config import DataSettings, MethodConfig, ModelConfig, RunConfig, SamplingConfig, TrainConfig

    run_dir = work / f"run-{name}"
    config = RunConfig(
        model=ModelConfig(name_or_path=str(model_dir), lora_r=lora_r, lora_alpha=32, dtype="bfloat16"),
        data=DataSettings(source=str(data), num_examples=args.examples, eval_size=16),
        method=MethodConfig(name="tspin", alpha=1.0, beta=0.1),
        train=TrainConfig(optimizer="adamw", lr=1e-4, batch_size=16, epochs=1),
        sampling=SamplingConfig(max_new_tokens=args.new_tokens, batch_size=64),
        iterations=2,
        run_dir=str(run_dir),
    )
    out: dict = {"run": name, "lora_r": lora_r, "ok": False}
    t0 = time.perf_counter()
    try:
        session = tk.SelfPlaySession(config, label=f"T-SPIN ({name})")
        session.prepare()
        out["prepare_s"] = round(time.perf_counter() - t0, 2)
        session.run()
        out["total_s"] = round(time.perf_counter() - t0, 2)
        param = next(session.world.model.parameters())
        out["device"], out["dtype"] = str(param.device), str(param.dtype)
        records = tk.load_run(run_dir)
        m = records.metrics
        ex = records.examples
        out["iterations"] = sorted(int(i) for i in m["iteration"].unique())
        out["examples_per_iteration"] = int((ex["iteration"] == ex["iteration"].max()).sum())
        cols = [f"{r}_logp_{s}" for r in ("annotated", "synthetic", "proto") for s in ("before", "after")]
        out["logp_columns"] = cols
        out["logps_finite"] = bool(cols) and bool(np.isfinite(ex[cols].to_numpy(dtype=float)).all())
        for col in ("seconds_generate", "seconds_train", "seconds_evaluate"):
            if col in m:
                out[col] = [round(float(v), 2) for v in m[col]]
        weights = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.safetensors"))
        out["weights"] = weights
        want = "adapter_model.safetensors" if lora_r else "model.safetensors"
        out["weights_ok"] = sum(w.endswith(want) for w in weights) >= 2
        out["ok"] = bool(out["iterations"] == [0, 1] and out["logps_finite"] and out["weights_ok"])
    except Exception as e:  # noqa: BLE001 - report every failure, then exit 1
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-3000:]
        out["total_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers (a CPU check of the script itself)")
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args(argv)
    import torch

    result = {"benchmark": "gpu_real_model", "machine": C.machine_info(), "runs": []}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, data, n_params = build_inputs(work, args.examples + 16, args.tiny)
        result["model_parameters"] = int(n_params)
        for name, r in (("lora", 16), ("full", 0)):
            result["runs"].append(run_one(name, r, model_dir, data, work, args))
    result["ok"] = all(r["ok"] for r in result["runs"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"} | {"runs": result["runs"]}))
    rows = [
        [
            r["run"],
            r.get("device", "-"),
            r.get("dtype", "-"),
            r.get("prepare_s", "-"),
            r.get("total_s", "-"),
            r.get("iterations", "-"),
            r.get("logps_finite", "-"),
            r.get("weights_ok", "-"),
            "ok" if r["ok"] else r.get("error", "check failed")[:80],
        ]
        for r in result["runs"]
    ]
    print(
        C.fmt_table(
            ["run", "device", "dtype", "prepare s", "total s", "iterations", "log-probs finite", "weights", "result"],
            rows,
        )
    )
    print(f"model: random-init Llama, {n_params / 1e6:.1f}M parameters; {result.get('gpu', 'no GPU')}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
