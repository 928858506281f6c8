"""GPU only: where a T-SPIN training step's time goes, what the log-prob chunk size does to it, and whether its
gradients repeat bit for bit (issue 11; the outputs of its one run on an H200 are in results/gpu.txt, sections 3-4).

1. Chunk sweep: the 886M random-init Llama of ``bench_gpu.py`` in bf16, B triplets x (256 + 3 x 256) tokens, 2 warm-up
   and 8 measured optimiser steps of ``train_iteration`` per value of ``tspin_kit.logprobs.CHUNK_ELEMENTS_GPU``;
   median step, MFU counted as ``bench_gpu.py`` counts it, peak memory.
2. ``torch.profiler`` over one 3-step ``train_iteration`` at the default chunk: the top kernels by GPU and CPU time.
3. Determinism: ``PackedExamples.logps`` of a 2-layer Llama on the GPU (a repeated response included), summed,
   backward, 4 times, in fp32 and bf16: are the gradients bitwise identical?

    python benchmarks/gpu_profile_step.py [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401 - puts the repository on sys.path, as for every benchmark
import bench_gpu as BG


def chunk_sweep_and_profile(batch_size: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import tspin_kit.logprobs as LP
    from tspin_kit.config import MethodConfig

    dev = torch.device("cuda", 0)
    size = BG.SIZES["1b"]
    model = BG.build_model(size, dev, torch.bfloat16)
    ex = BG.random_examples(batch_size, 256, 256, size["vocab"])
    method = MethodConfig(name="tspin")

    def call(n: int) -> list[float]:  # the step seconds after the first, sorted
        return sorted(BG.step_seconds(model, ex, method, n, batch_size))

    counts = BG.param_counts(model)
    t_head = batch_size * 3 * 256
    flops = 6 * (counts["body"] * (t_head + batch_size * 256) + counts["head"] * t_head)
    default = LP.CHUNK_ELEMENTS_GPU
    for chunk in (2**23, 2**26, 2**28, 2**31):
        LP.CHUNK_ELEMENTS_GPU = chunk
        torch.cuda.reset_peak_memory_stats()
        call(2)
        med = call(8)[3]
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"chunk {chunk} step s {med:.4f} MFU {flops / med / 989e12:.3f} peak GiB {peak:.1f}", flush=True)
    LP.CHUNK_ELEMENTS_GPU = default
    call(2)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        call(3)
        wall = time.perf_counter() - t0
    ka = prof.key_averages()
    print(f"profiled call (3 steps) wall {wall:.3f} s, chunk {default}")
    print(ka.table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60))
    print(ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def determinism() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tspin_kit.logprobs import PackedExamples

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=1000,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(config).to("cuda", dtype)
        prompts = [torch.randint(3, 1000, (40,), generator=g).tolist() for _ in range(16)]
        roles = [[torch.randint(3, 1000, (30,), generator=g).tolist() for _ in range(16)] for _ in range(3)]
        roles[1][0] = roles[0][0]  # a repeated response shares its positions
        packed = PackedExamples(prompts, roles, 0)
        grads = []
        for _ in range(4):
            model.zero_grad(set_to_none=True)
            packed.logps(model, list(range(16))).sum().backward()
            grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters()]))
        same = all(torch.equal(grads[0], x) for x in grads[1:])
        worst = max(float((grads[0] - x).abs().max()) for x in grads[1:])
        print(dtype, "bitwise identical gradients over 4 runs:", same, "max diff", worst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile_step.py needs a CUDA GPU")
    torch.cuda.set_device(0)
    determinism()
    chunk_sweep_and_profile(args.batch_size)


if __name__ == "__main__":
    main()
