"""GPU throughput of the engine: tokens/s and model-FLOPs utilisation (MFU) of a T-SPIN training step, and
generation tokens/s, on a randomly initialised Llama-shaped model built in code (no hub, no download).

Model (default): hidden 2048, 16 layers, 16 heads, 8 KV heads, intermediate 5632, vocabulary 32000 (886M
parameters, 755M of them in the blocks), sdpa attention, in bf16 on CUDA (the parameters themselves in bf16, as the
engine holds a ``model.dtype: bfloat16`` policy; AdamW is torch's fused kernel). ``--tiny`` (and ``--quick``, which
also picks the CPU): hidden 64, 2 layers, vocabulary 1024, in fp32, so the script itself runs in CI in seconds.
Without a GPU the default run falls back to the tiny model on CPU; ``--device cpu`` alone forces the large one.

Training: the engine's real step, ``tspin_kit.training.train_iteration`` with ``MethodConfig(name="tspin")`` at
iteration 1 (beta > 0: the historical term is live) on an ``Examples`` batch of B triplets with distinct random
tokens: prompt P tokens, y, y', y0 R tokens each (default B 8, P 256, R 256). One epoch over the B examples is one
optimiser step (packed rows x + y + y' + y0 under a 4D mask, one forward, the chunked log-prob head, the T-SPIN
loss, backward, clip 1.0, AdamW). Step times come from train_iteration's progress callback, which fires after
each step's loss has been read back (a device sync); the first step of every call (fresh optimiser state) and a
whole warm-up call are left out.

FLOPs per step (forward + backward) = 6 * (N_body * T + N_head * T_head), where N_body = parameters of the
transformer blocks and final norm (the input embedding is a lookup: no matmul), T = tokens forwarded (non-pad
tokens of the packed rows: P + 3R per example), N_head = parameters of the output projection, T_head = positions
it is applied to (the response tokens, 3R per example: the engine projects nothing else). The attention term
(QK^T and AV, about 12 * layers * hidden * context FLOPs per token) is LEFT OUT, as is the head's recompute in
the backward (activation checkpointing; MFU counts model FLOPs, not hardware FLOPs). MFU = FLOPs per step /
step seconds / (peak x processes). Peak (bf16 dense, TFLOP/s): ``--peak-tflops`` or a table (H100 SXM 989,
H200 989) matched on ``torch.cuda.get_device_name()``; any other device: "peak unknown" and MFU null.
Target: MFU >= 40% on an H100/H200 in bf16 with the 1B model; null (not evaluated) elsewhere, on CPU "no GPU".

Generation: ``tspin_kit.generation.sample_responses`` (backend ``hf``: transformers ``generate`` with KV cache)
on the same model, G prompts of P tokens in one batch, temperature 1, up to N new tokens (default G 32, N 256);
tokens/s = response tokens kept (EOS and pads cut, as the engine keeps them) / seconds. ``vllm``: the engine's
vLLM backend is not built (``tspin_kit.config._check_vllm`` refuses ``sampling.backend: vllm``), so nothing is
measured; the JSON says whether vllm is installed at all.

Several processes (DDP, FSDP2, DeepSpeed ZeRO-3): only when the script is started by ``accelerate launch``
(``--launch`` prints the exact lines); the accelerate state then decides, as for the engine
(``tspin_kit.sharding``). ``--batch-size`` is the global batch; tokens/s counts all processes; MFU divides by
processes x peak. Only the main process prints.
"""

from __future__ import annotations

import time

import _common as C

SIZES = {
    "1b": dict(hidden=2048, layers=16, heads=16, kv_heads=8, intermediate=5632, vocab=32000),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024),
}
# bf16 dense tensor-core peak, TFLOP/s (NVIDIA datasheets; the "with sparsity" figures are twice these).
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H200": 989.0}
MFU_TARGET = 0.40
PAD, BOS, EOS = 0, 1, 2


def peak_for(device_name: str) -> tuple[str | None, float | None]:
    """(table key, bf16 dense TFLOP/s) for a CUDA device name, or (None, None) where the table has no entry."""
    n = device_name.upper()
    if "H200" in n and not any(x in n for x in ("NVL", "GH200")):  # H200 NVL, GH200: other parts, not in the table
        return "H200", PEAK_BF16_TFLOPS["H200"]
    if "H100" in n and not any(x in n for x in ("PCIE", "NVL")):  # "NVIDIA H100 80GB HBM3" is the SXM part
        return "H100 SXM", PEAK_BF16_TFLOPS["H100 SXM"]
    return None, None


def launch_lines(processes: int, per_process: int) -> dict:
    """The exact command lines for DDP, FSDP2 and DeepSpeed ZeRO-3 over ``processes`` GPUs of one node (global batch
    scaled)."""
    script = "benchmarks/bench_gpu.py"
    return {
        name: f"accelerate launch --config_file configs/accelerate/{name}.yaml --num_processes {processes} "
        f"{script} --batch-size {per_process * processes}"
        for name in ("ddp", "fsdp2", "deepspeed_zero3")
    }


def build_model(size: dict, device, dtype, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):  # initialised where it runs: a 1B model on the CPU takes a while
            model = LlamaForCausalLM(cfg)
    model = model.to(dtype)
    model.config._attn_implementation = "sdpa"  # packing needs sdpa or eager (logprobs.supports_packing)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = BOS
    return model


def random_examples(n: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0):
    """An Examples batch of n triplets with distinct random tokens (no repeated rows); responses end with EOS."""
    import torch

    from tspin_kit.training import Examples

    g = torch.Generator().manual_seed(seed)

    def rows(length, eos):
        body = torch.randint(3, vocab, (n, length - (1 if eos else 0)), generator=g).tolist()
        return [r + [EOS] if eos else r for r in body]

    return Examples(
        prompt_ids=rows(prompt_len, False),
        annotated_ids=rows(response_len, True),
        synthetic_ids=rows(response_len, True),
        proto_ids=rows(response_len, True),
        ref_annotated=torch.zeros(n),
        ref_synthetic=torch.zeros(n),
        ref_proto=torch.zeros(n),
    )


def param_counts(model) -> dict:
    emb = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "input_embedding": emb, "head": head, "body": total - emb - head}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vllm_status() -> dict:
    """Whether vllm imports, and why nothing is measured with it (the engine's vLLM backend is not built)."""
    try:
        import vllm  # noqa: F401
    except ModuleNotFoundError:
        return {"measured": False, "status": "vllm not installed"}
    except Exception as e:  # noqa: BLE001 - installed but broken (CUDA mismatch, ...)
        return {"measured": False, "status": f"vllm import failed: {type(e).__name__}: {e}"}
    from tspin_kit.config import ConfigError, SamplingConfig

    try:
        SamplingConfig(backend="vllm")
        reason = "the engine accepts sampling.backend: vllm, but this script has no vllm path yet"
    except ConfigError as e:
        reason = str(e)
    return {"measured": False, "status": f"vllm installed, not measured: {reason}"}


def step_seconds(model, ex, method, n_steps: int, batch_size: int, *, cpu: bool = False) -> list[float]:
    """One `train_iteration` of ``n_steps`` optimiser steps (AdamW, lr 1e-6, constant); the seconds of each step after
    the first, in step order (timed by the progress callback, which fires after each step)."""
    from tspin_kit.training import train_iteration

    cfg = C.steps_config(1e-6, n_steps, batch_size)
    stamps = []
    res = train_iteration(
        model,
        ex,
        method=method,
        train=cfg,
        iteration=1,
        seed=0,
        cpu=cpu,
        progress=lambda done, total, label: stamps.append(time.perf_counter()),
    )
    assert res.steps == n_steps, (res.steps, n_steps)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--tiny", action="store_true", help="tiny model (hidden 64, 2 layers); --quick implies it")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default: cuda if available")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch-size", type=int, default=None, help="triplets per optimiser step (global)")
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--response-len", type=int, default=None, help="tokens of each of y, y', y0")
    ap.add_argument("--steps", type=int, default=None, help="measured optimiser steps per repeat")
    ap.add_argument("--gen-prompts", type=int, default=None, help="prompts in the generation batch")
    ap.add_argument("--gen-tokens", type=int, default=None, help="max_new_tokens of generation")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s per device (default: table)")
    ap.add_argument(
        "--launch", action="store_true", help="print the accelerate launch lines (DDP, FSDP2, ZeRO-3) and exit"
    )
    args = ap.parse_args()
    C.apply_threads(args)

    import torch
    from accelerate import PartialState

    want = args.device or ("cpu" if args.quick else "auto")
    # without a GPU the default falls back to the tiny model (the 886M one on 2 CPU cores would take hours);
    # `--device cpu` without --tiny/--quick forces it
    fallback = want == "auto" and not torch.cuda.is_available()
    tiny = args.tiny or args.quick or fallback
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    on_gpu = want == "cuda"
    size_name = "tiny" if tiny else "1b"
    size = SIZES[size_name]
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if on_gpu else "fp32")]
    B = args.batch_size or (4 if tiny else 8)
    P = args.prompt_len or (32 if tiny else 256)
    R = args.response_len or (32 if tiny else 256)
    steps = args.steps or (2 if args.quick else (3 if tiny else 10))
    repeats = args.repeats or (1 if args.quick else 5)
    G = args.gen_prompts or (8 if tiny else 32)
    N = args.gen_tokens or (16 if tiny else 256)
    n_gpus = torch.cuda.device_count() if on_gpu else 0
    launch = launch_lines(n_gpus if n_gpus >= 2 else 8, 8)  # 8 triplets per process

    if args.launch:
        out = {"benchmark": "gpu", "launch": launch, "machine": C.machine_info(), "targets": []}
        table = "\n".join(f"{k}: {v}" for k, v in launch.items())
        table += "\n(run from the repository root with the venv's accelerate; only the main process prints)"
        C.emit(out, table)
        return

    state = PartialState(cpu=not on_gpu)
    world = state.num_processes
    device = state.device if on_gpu else torch.device("cpu")
    if on_gpu:  # one process: accelerate says "cuda" without an index, which set_device refuses (seen on an H200)
        torch.cuda.set_device(device.index if device.index is not None else state.local_process_index)

    from tspin_kit.config import MethodConfig
    from tspin_kit.generation import sample_responses

    model = build_model(size, device, dtype)
    counts = param_counts(model)
    ex = random_examples(B, P, R, size["vocab"])
    method = MethodConfig(name="tspin")  # alpha 1, beta 0.1 from iteration 1 on

    def train_call(n_steps: int) -> list[float]:
        return step_seconds(model, ex, method, n_steps, B, cpu=not on_gpu)

    # tokens of one optimiser step (global batch): packed rows x + y + y' + y0, the head on response tokens
    T_head = sum(len(a) + len(s) + len(y0) for a, s, y0 in zip(ex.annotated_ids, ex.synthetic_ids, ex.proto_ids))
    T = T_head + sum(len(p) for p in ex.prompt_ids)
    flops_step = 6 * (counts["body"] * T + counts["head"] * T_head)

    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    train_call(2)  # warm-up (excluded): kernels, allocator, fused AdamW
    step_medians, all_steps = [], []
    for _ in range(repeats):
        secs = train_call(steps + 1)  # the first step (fresh optimiser state) is not in secs
        step_medians.append(sorted(secs)[len(secs) // 2])
        all_steps += secs
    train_peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None

    # generation: hf backend (the engine's sample_responses)
    g = torch.Generator().manual_seed(7)
    prompts = torch.randint(3, size["vocab"], (G, P), generator=g).tolist()
    tok = type("Tok", (), {"pad_token_id": PAD, "eos_token_id": EOS})()

    def gen(max_new: int, seed: int) -> tuple[float, int]:
        sync(device)
        t0 = time.perf_counter()
        out = sample_responses(
            model, tok, prompts, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new, batch_size=G, seed=seed
        )
        sync(device)
        return time.perf_counter() - t0, sum(len(r) for r in out)

    gen(min(N, 4), 0)  # warm-up (excluded)
    gen_runs = [gen(N, r + 1) for r in range(repeats)]
    gen_tps = [tokens / s for s, tokens in gen_runs]

    if not state.is_main_process:
        return

    # MFU
    device_name = torch.cuda.get_device_name(device) if on_gpu else None
    table_key, table_peak = peak_for(device_name) if on_gpu else (None, None)
    peak = args.peak_tflops if args.peak_tflops else table_peak
    if not on_gpu:
        peak, mfu_note = None, "no GPU"
    elif dtype != torch.bfloat16 and not args.peak_tflops:
        peak, mfu_note = None, f"peak unknown: the table is bf16 dense, this run is {dtype}"
    elif peak is None:
        mfu_note = f"peak unknown for {device_name!r} (pass --peak-tflops)"
    else:
        mfu_note = f"peak {peak:g} TFLOP/s per device ({'--peak-tflops' if args.peak_tflops else table_key})"
    step_s = C.stats(step_medians)
    tps = C.stats([T / s for s in step_medians])
    mfu_values = [flops_step / s / (peak * 1e12 * world) for s in step_medians] if peak else None
    mfu = C.stats(mfu_values) if mfu_values else None
    evaluable = on_gpu and table_key is not None and dtype == torch.bfloat16 and not tiny
    if mfu is None or not evaluable:
        why = mfu_note if mfu is None else "target is for the 1B model in bf16 on an H100/H200"
        mfu_target = {"target": f"train MFU >= {MFU_TARGET} on H100/H200", "value": None, "met": None, "why": why}
    else:
        mfu_target = C.target("train MFU (H100/H200, bf16, 1B)", mfu["median"], ">=", MFU_TARGET)
    from accelerate.utils import DistributedType

    dist = state.distributed_type
    mode = "single process" if world == 1 else ("FSDP2" if dist == DistributedType.FSDP else str(dist.value))
    out = {
        "benchmark": "gpu",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {
            "model": f"random-init Llama ({size_name}): " + ", ".join(f"{k} {v}" for k, v in size.items()),
            "tiny_because": "no GPU (default device)" if fallback and not (args.tiny or args.quick) else None,
            "parameters": counts,
            "dtype": str(dtype).replace("torch.", ""),
            "device": str(device),
            "device_name": device_name,
            "processes": world,
            "parallel": mode,
            "method": "tspin (alpha 1, beta 0.1, iteration 1)",
            "batch_size": B,
            "prompt_len": P,
            "response_len": R,
            "steps_per_repeat": steps,
            "repeats": repeats,
            "tokens_per_step": T,
            "head_positions_per_step": T_head,
            "flops_per_step": flops_step,
            "flops_formula": "6 * (N_body * T + N_head * T_head): N_body = blocks + final norm (input embedding "
            "excluded), T = non-pad packed tokens (P + 3R per triplet), N_head = output projection, T_head = "
            "response positions (3R per triplet); attention QK^T/AV term LEFT OUT; head recompute not counted",
            "generation": {"prompts": G, "prompt_len": P, "max_new_tokens": N, "temperature": 1.0},
        },
        "train": {
            "tokens_per_s": tps,
            "step_seconds": step_s,
            "step_seconds_all": C.stats(all_steps),
            "triplets_per_s": B / step_s["median"],
            "achieved_tflops": flops_step / step_s["median"] / 1e12,
            "peak_tflops_per_device": peak,
            "mfu": mfu,
            "mfu_note": mfu_note,
            "peak_memory_gib": train_peak_mem,
        },
        "generate": {
            "hf": {
                "tokens_per_s": C.stats(gen_tps),
                "seconds": C.stats([s for s, _ in gen_runs]),
                "tokens": [t for _, t in gen_runs],
                "max_tokens": G * N,
            },
            "vllm": vllm_status(),
        },
        "mfu_target": mfu_target,
        "launch": launch,
        "targets": [mfu_target] if mfu_target["met"] is not None else [],
    }
    out["met"] = mfu_target["met"]
    if mfu_target["met"] is None:
        out["skipped"] = f"MFU target not evaluated: {mfu_target['why']}"

    rows = [
        [
            "train step (tspin)",
            tps["median"],
            f"{tps['min']:,.0f}..{tps['max']:,.0f}",
            step_s["median"] * 1e3,
            f"{mfu['median']:.1%}" if mfu else "null",
        ],
        [
            "generate hf",
            out["generate"]["hf"]["tokens_per_s"]["median"],
            f"{min(gen_tps):,.0f}..{max(gen_tps):,.0f}",
            out["generate"]["hf"]["seconds"]["median"] * 1e3,
            "",
        ],
        ["generate vllm", "-", "", "", out["generate"]["vllm"]["status"]],
    ]
    table = C.fmt_table(["what", "tokens/s", "min..max", "ms per step/call", "MFU"], rows)
    table += (
        f"\nmodel {size_name} ({counts['total'] / 1e6:,.1f}M params, {out['settings']['dtype']}) on {device}"
        f"{f' ({device_name})' if device_name else ''}, {mode}, {world} process(es); batch {B} triplets x "
        f"(prompt {P} + 3 x {R}) = {T:,} tokens/step; medians of {repeats} x {steps} steps"
        f"\nMFU: {mfu_note}; FLOPs = {out['settings']['flops_formula']}"
        + (f"\npeak memory (train): {train_peak_mem:.1f} GiB" if train_peak_mem is not None else "")
    )
    verdict = {True: "met", False: "NOT met", None: f"null ({mfu_target.get('why')})"}[mfu_target["met"]]
    table += f"\nMFU target (>= {MFU_TARGET:.0%} on H100/H200): {verdict}"
    table += "\nseveral processes (from the repository root; only the main process prints):\n" + "\n".join(
        f"  {k}: {v}" for k, v in launch.items()
    )
    C.emit(out, table)


if __name__ == "__main__":
    main()
