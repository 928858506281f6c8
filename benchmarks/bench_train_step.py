"""Training throughput on one fixed batch: tspin_kit's `train_iteration` vs a bare PyTorch loop on the same rows.

For each method (T-SPIN, SPIN, SFT) both variants run S optimiser steps on the same 64 toy-addition
examples with the same tiny Llama (fresh copy of the same initial weights each run). Default data: no
repeated rows (``--data distinct``: y', y0 always differ from y and from each other), so the comparison
measures framework overhead, not deduplication. ``--data toy`` uses the toy shares (y' == y for ~65%).

- tspin_kit: ``train_iteration(model, ex, epochs=S, batch_size=64)`` -- one epoch is one step over the
  same 64 examples (row order reshuffled each epoch, same padded width). Timed around the whole call,
  so its per-iteration setup (Accelerator, optimiser, scheduler, tqdm) is amortised over S steps.
  ``loop`` is the time train_iteration reports for its step loop alone.
- bare: the same distinct rows tspin_kit forwards (the rows of the examples whose gradient is not exactly
  zero, each distinct row once, each prompt's rows packed into one sequence: ``logprobs.pack_rows``),
  packed and masked once before the clock starts; then S x (one forward, gather of the response
  log-probs (logit - logsumexp), the same loss function from tspin_kit.losses, mean, backward,
  clip_grad_norm_(1.0), the same AdamW step (fused where torch offers it), zero_grad), with the model's logits at
  every position as a hand-written loop would have them. Every variant's forward passes ``use_cache=False``, as the
  kit's and TRL's do. The difference is the framework (per-step packing,
  batching, bookkeeping) plus the kit's memory-lean log-prob arithmetic (see "lean bare").
- lean bare (context, no target): the bare loop with the kit's log-prob arithmetic, the output layer applied to
  the response positions' hidden states only (what `logprobs.final_hidden` does to save memory at real
  vocabularies); "vs lean bare" is the framework alone, "lean/bare" what that arithmetic costs at this vocabulary.
- padded (context, no target): the textbook loop over right-padded rows [y; y'; y0] / [y; y'] / [y] with
  every row forwarded; kit / padded shows what sharing the prompt (and, on toy data, skipping) saves.

The model the runs copy is scored by tspin_kit once before them (the reference log-probs, in eval mode without
gradients), as a session scores its policy before training it. What the kit decides on a model's first call in a mode
is kept on the model (`logprobs.base_model_path`), and a deep copy keeps it; training is another mode, so each run's
first step is watched (its full forward), as a session's first training step is.

Python-level calls (context, no target; the same on every machine with the same versions): each variant once more
under `sys.setprofile` (`_common.PythonCalls`) at S, 16 and 32 steps: per step (the 16-step difference: whole
windows of step inputs) and per call besides its steps (setup, first step, records). The C++ under them (kernels,
autograd) is not counted, and the count is of events, not time: a generator's resumption or a `len` counts as much
as a forward's Python layers (the 128 resumptions a step that 1ab2803 removed were ~16 us of a 10-step call, hot;
one ad-hoc timeit).

framework overhead = tspin_kit time / bare time - 1, computed per repeat (variants interleaved) and
reported as the median with a distribution-free 95% interval (also: the ratio of process CPU times, and of the
fastest runs, which are the least disturbed by other jobs on a shared machine). Target: <= 2% for every method
(median wall ratio); T-SPIN step / SPIN step <= 1.2 (tspin_kit, median of per-repeat ratios).
"""

from __future__ import annotations

import contextlib
import copy
import time

import _common as C

# Every variant's forward builds no KV cache, as the kit's and TRL's do: transformers builds one by default, in
# training mode too, and nothing reads it (~7% of the toy model's forward, one ad-hoc measurement).
NO_CACHE = {"use_cache": False}


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--task", default="addition", choices=["addition", "scratchpad"])
    ap.add_argument(
        "--data",
        default="distinct",
        choices=["distinct", "toy"],
        help="distinct: no repeated rows (default); toy: the toy task's shares of y' == y, y0 == y",
    )
    args = ap.parse_args()
    C.apply_threads(args)
    repeats = args.repeats or (2 if args.quick else 15)
    steps = args.steps or (4 if args.quick else 10)
    bs = args.batch_size

    import torch

    from tspin_kit import losses as L
    from tspin_kit import toy
    from tspin_kit.config import MethodConfig
    from tspin_kit.logprobs import collate, pack_rows
    from tspin_kit.methods import zero_gradient
    from tspin_kit.training import CUT_AHEAD, make_optimizer, train_iteration

    tok = toy.build_tokenizer()
    base = toy.build_model(tok)
    ex, _ = C.toy_examples(tok, bs, task=args.task, repeats=args.data == "toy")
    C.fill_reference(base, tok, ex)
    pad = tok.pad_token_id
    train_cfg = C.steps_config(2e-5, steps, bs)
    methods = {
        "tspin": MethodConfig(name="tspin", alpha=1.0, beta=0.1),
        "spin": MethodConfig(name="spin", lam=1.0),
        "sft": MethodConfig(name="sft"),
    }

    def rows(name):
        P, A, S, Y0 = ex.prompt_ids, ex.annotated_ids, ex.synthetic_ids, ex.proto_ids
        if name == "sft":
            return collate(P, A, pad)
        if name == "spin":
            return collate(P * 2, A + S, pad)
        return collate(P * 3, A + S + Y0, pad)

    beta = {m: cfg.beta_at(1) for m, cfg in methods.items()}

    def live(name):  # the examples tspin_kit forwards (not those with an exactly zero gradient)
        return [
            i
            for i in range(bs)
            if not zero_gradient(
                methods[name].spec,
                beta[name],
                ex.annotated_ids[i],
                ex.synthetic_ids[i],
                ex.proto_ids[i] if name != "spin" else None,
            )
        ]

    def packed(name):
        keep = live(name)
        roles = {"sft": [ex.annotated_ids], "spin": [ex.annotated_ids, ex.synthetic_ids]}.get(
            name, [ex.annotated_ids, ex.synthetic_ids, ex.proto_ids]
        )
        pk = pack_rows([ex.prompt_ids[i] for i in keep] * len(roles), [r[i] for r in roles for i in keep], pad)
        return keep, len(roles), pk, pk.attention_mask(torch.float32)

    batches = {m: rows(m) for m in methods}
    packs = {m: packed(m) for m in methods}
    token_counts = {m: (int((packs[m][2].segments >= 0).sum()), int(packs[m][2].input_ids.numel())) for m in methods}
    padded_tokens = {m: int(b.attention_mask.sum()) for m, b in batches.items()}

    def run_kit(name, n=steps, counter=None):
        """``n`` steps of the kit; ``counter`` (a `_common.PythonCalls`) counts the Python-level calls of the timed
        call."""
        model = copy.deepcopy(base)
        cfg = train_cfg if n == steps else C.steps_config(2e-5, n, bs)
        with counter or contextlib.nullcontext():
            t0 = time.perf_counter()
            res = train_iteration(model, ex, method=methods[name], train=cfg, iteration=1, seed=0, cpu=True)
            total = time.perf_counter() - t0
        assert res.steps == n
        return total, res.seconds

    def run_bare(name, lean=False, n=steps, counter=None):
        """The kit's rows without the kit: packed distinct rows made once, then the step loop (``n`` steps). ``lean``:
        the output layer applied to the response positions' hidden states only, as the kit does
        (`logprobs.final_hidden`); else the model's logits at every position, as a hand-written loop would.
        ``counter``: counts the Python-level calls of the timed loop."""
        model = copy.deepcopy(base)
        model.train()
        keep, n_roles, pk, mask4d = packs[name]
        keep_t = torch.tensor(keep, dtype=torch.long)
        rows_idx = pk.row_pack[:, None].expand_as(pk.src)
        sel = pk.mask.bool()
        r_sel, s_sel, t_sel = rows_idx[sel], pk.src[sel], pk.targets[sel]
        ntok = torch.tensor([len(a) for a in ex.annotated_ids], dtype=torch.float32)
        ra, rs = ex.ref_annotated, ex.ref_synthetic
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params, train_cfg, 2e-5)
        with counter or contextlib.nullcontext():
            t0 = time.perf_counter()
            for _ in range(n):
                inputs = {
                    "input_ids": pk.input_ids,
                    "attention_mask": mask4d,
                    "position_ids": pk.position_ids,
                    **NO_CACHE,
                }
                if lean:
                    hidden = model.model(**inputs).last_hidden_state
                    logits = model.lm_head(hidden[r_sel, s_sel]).float()  # (response tokens, V)
                    tok = logits.gather(-1, t_sel[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
                    tok_lp = tok.new_zeros(sel.shape).masked_scatter(sel, tok)
                else:
                    logits = model(**inputs).logits.float()
                    lse = torch.logsumexp(logits, -1)
                    tok_lp = (logits[rows_idx, pk.src, pk.targets] - lse[rows_idx, pk.src]) * pk.mask
                lp = tok_lp.sum(-1)[pk.inverse]  # (rows of the live examples,)
                parts = [lp.new_zeros(bs).index_copy(0, keep_t, part) for part in lp.chunk(n_roles)]
                if name == "sft":
                    out = L.sft_loss(parts[0], ntok)
                elif name == "spin":
                    out = L.spin_loss(parts[0], parts[1], ra, rs, lam=1.0)
                else:
                    out = L.tspin_loss(*parts, alpha=1.0, beta=0.1)
                loss = out.losses.sum() / bs
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

    def run_padded(name):
        """The textbook loop: every row [y; y'; y0] right-padded and forwarded (context only)."""
        model = copy.deepcopy(base)
        model.train()
        b = batches[name]
        ids, attn, lmask = b.input_ids, b.attention_mask, b.loss_mask[:, 1:].bool()
        targets = ids[:, 1:].unsqueeze(-1)
        ntok = lmask.sum(-1).float()
        ra, rs = ex.ref_annotated, ex.ref_synthetic
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
        t0 = time.perf_counter()
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=attn, **NO_CACHE).logits[:, :-1, :].float()
            lp = ((torch.gather(logits, -1, targets).squeeze(-1) - torch.logsumexp(logits, -1)) * lmask).sum(-1)
            if name == "sft":
                out = L.sft_loss(lp, ntok)
            elif name == "spin":
                a, s = lp.chunk(2)
                out = L.spin_loss(a, s, ra, rs, lam=1.0)
            else:
                a, s, p = lp.chunk(3)
                out = L.tspin_loss(a, s, p, alpha=1.0, beta=0.1)
            loss = out.losses.sum() / bs
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    variants = [(m, v) for m in methods for v in ("bare", "kit", "padded", "lean")]
    runners = {"bare": run_bare, "padded": run_padded, "lean": lambda name: run_bare(name, lean=True)}
    # warm-up (excluded): one run of every variant
    for m, v in variants:
        run_kit(m) if v == "kit" else runners[v](m)
    names = list(methods)

    times = {(m, v): [] for m, v in variants}
    loop_times = {m: [] for m in methods}
    ratios = {m: [] for m in methods}
    padded_ratios = {m: [] for m in methods}
    cpu_ratios = {m: [] for m in methods}
    loop_ratios = {m: [] for m in methods}
    lean_ratios = {m: [] for m in methods}  # kit vs the bare loop with the kit's lean output layer
    for r in range(repeats):
        # the two variants of one method run back to back (their ratio sees the same machine load);
        # methods rotate and the bare/kit order alternates between repeats
        ms = names[r % len(names) :] + names[: r % len(names)]
        vs = ("bare", "kit", "lean", "padded") if r % 2 == 0 else ("padded", "lean", "kit", "bare")
        order = [(m, v) for m in ms for v in vs]
        got, cpu = {}, {}
        for m, v in order:
            c0 = time.process_time()
            if v == "kit":
                got[(m, v)], loop = run_kit(m)
                loop_times[m].append(loop)
            else:
                got[(m, v)] = runners[v](m)
            cpu[(m, v)] = time.process_time() - c0
        for m in methods:
            times[(m, "bare")].append(got[(m, "bare")])
            times[(m, "kit")].append(got[(m, "kit")])
            times[(m, "padded")].append(got[(m, "padded")])
            times[(m, "lean")].append(got[(m, "lean")])
            lean_ratios[m].append(got[(m, "kit")] / got[(m, "lean")] - 1)
            padded_ratios[m].append(got[(m, "kit")] / got[(m, "padded")])
            ratios[m].append(got[(m, "kit")] / got[(m, "bare")] - 1)
            cpu_ratios[m].append(cpu[(m, "kit")] / cpu[(m, "bare")] - 1)
            loop_ratios[m].append(loop_times[m][-1] / got[(m, "bare")] - 1)

    # Python-level calls (`_common.PythonCalls`), one call of each variant per length: a count of the interpreter's
    # work that does not move with the machine's state, unlike the wall-clock ratios above. Per step: the difference
    # between CUT_AHEAD and 2 x CUT_AHEAD steps over CUT_AHEAD (whole windows of step inputs, so a long iteration's
    # per-step cost); per call: the count at ``steps`` steps less ``steps`` x per step (setup, first step, records).
    calls = {}
    for m in methods:
        for v, run in (("kit", run_kit), ("bare", run_bare)):
            counted = {}
            for n in sorted({steps, CUT_AHEAD, 2 * CUT_AHEAD}):
                counter = C.PythonCalls()
                run(m, n=n, counter=counter)
                counted[n] = counter.calls
            per_step = (counted[2 * CUT_AHEAD] - counted[CUT_AHEAD]) / CUT_AHEAD
            calls[(m, v)] = {
                "per_step": per_step,
                "per_call_besides_steps": counted[steps] - steps * per_step,
                "counted": counted,
            }

    result = {
        "benchmark": "train_step",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {
            "batch_size": bs,
            "steps_per_run": steps,
            "repeats": repeats,
            "task": args.task,
            "model": "toy tiny Llama (hidden 128, 2 layers)",
            "optimizer": "AdamW lr 2e-5",
            "max_grad_norm": 1.0,
            "tspin": "alpha 1, beta 0.1 (iteration 1)",
            "spin": "lam 1",
            "data": args.data,
            "repeated_rows": C.repeated_share(ex),
        },
        "methods": {},
        "targets": [],
    }
    table_rows = []
    for m in methods:
        real, padded = token_counts[m]
        kit_step = [t / steps for t in times[(m, "kit")]]
        bare_step = [t / steps for t in times[(m, "bare")]]
        ov = C.stats(ratios[m])
        ci = C.median_ci(ratios[m])
        d = {
            "rows_per_step": batches[m].input_ids.shape[0],
            "distinct_rows_per_step": packs[m][2].num_distinct,
            "packed_sequences_per_step": int(packs[m][2].input_ids.shape[0]),
            "tokens_per_step": real,
            "packed_tokens_incl_padding_per_step": padded,
            "textbook_padded_row_tokens_per_step": padded_tokens[m],
            "kit_over_textbook_padded_time": C.stats(padded_ratios[m]),
            "kit_seconds_per_step": C.stats(kit_step),
            "bare_seconds_per_step": C.stats(bare_step),
            "kit_loop_seconds_per_step": C.stats([t / steps for t in loop_times[m]]),
            "kit_steps_per_s": C.stats([1 / t for t in kit_step]),
            "bare_steps_per_s": C.stats([1 / t for t in bare_step]),
            "kit_tokens_per_s": C.stats([real / t for t in kit_step]),
            "bare_tokens_per_s": C.stats([real / t for t in bare_step]),
            "overhead": ov,
            # distribution-free 95% interval of the median overhead (order statistics): with ~+-10% per repeat on a
            # shared machine, 30 repeats pin the median to a few points only
            "overhead_median_ci95": ci,
            "overhead_loop_only": C.stats(loop_ratios[m]),
            # robust companions on a shared machine: CPU time of the process (deepcopy of the 1.3 MB model
            # included on both sides), and the ratio of the fastest runs (least disturbed by other jobs)
            "overhead_cpu_time": C.stats(cpu_ratios[m]),
            "overhead_of_min_times": min(times[(m, "kit")]) / min(times[(m, "bare")]) - 1,
            # the framework alone: against the bare loop doing the kit's own log-prob arithmetic (the output layer on
            # the response positions only); the gap between the two bare loops is that arithmetic's cost at this
            # vocabulary (it saves memory at real vocabularies, issue 11)
            "overhead_vs_lean_bare": C.stats(lean_ratios[m]),
            "lean_bare_over_bare": C.stats([a / b for a, b in zip(times[(m, "lean")], times[(m, "bare")])]),
            "python_calls": {"kit": calls[(m, "kit")], "bare": calls[(m, "bare")]},
        }
        tgt = C.target(
            f"{m} framework overhead vs a bare loop on the same rows (kit/bare - 1, median)", ov["median"], "<=", 0.02
        )
        d.update(tgt)
        result["methods"][m] = d
        result["targets"].append(tgt)
        table_rows.append(
            [
                m,
                d["rows_per_step"],
                real,
                d["bare_steps_per_s"]["median"],
                d["kit_steps_per_s"]["median"],
                d["kit_tokens_per_s"]["median"],
                f"{100 * ov['median']:+.1f}% [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
                if ci
                else f"{100 * ov['median']:+.1f}%",
                f"{100 * d['overhead_loop_only']['median']:+.1f}%",
                f"{100 * d['overhead_cpu_time']['median']:+.1f}%",
                f"{100 * d['overhead_of_min_times']:+.1f}%",
                f"{100 * d['overhead_vs_lean_bare']['median']:+.1f}%",
                f"{d['lean_bare_over_bare']['median']:.3f}x",
                f"{d['kit_over_textbook_padded_time']['median']:.2f}x",
                tgt["met"],
            ]
        )
    # T-SPIN vs SPIN step cost (same framework, same run)
    tv = [a / b for a, b in zip(times[("tspin", "kit")], times[("spin", "kit")])]
    result["tspin_over_spin_step_time"] = C.stats(tv)
    tgt = C.target(
        "T-SPIN step / SPIN step (tspin_kit, median)", result["tspin_over_spin_step_time"]["median"], "<=", 1.2, "x"
    )
    result["targets"].append(tgt)
    # context for that target: the same ratio for the bare loop (the arithmetic alone) and the tokens' ratio
    result["bare_tspin_over_spin_step_time"] = C.stats(
        [a / b for a, b in zip(times[("tspin", "bare")], times[("spin", "bare")])]
    )
    result["tspin_over_spin_tokens"] = token_counts["tspin"][0] / token_counts["spin"][0]
    result["met"] = all(t["met"] for t in result["targets"])
    table = C.fmt_table(
        [
            "method",
            "rows",
            "tokens",
            "bare steps/s",
            "kit steps/s",
            "kit tok/s",
            "overhead median [95% CI]",
            "loop-only",
            "cpu-time",
            "min/min",
            "vs lean bare",
            "lean/bare",
            "kit/padded",
            "<=2%",
        ],
        table_rows,
    )
    table += (
        f"\nT-SPIN step / SPIN step time: tspin_kit median {result['tspin_over_spin_step_time']['median']:.2f}x, "
        f"bare loop {result['bare_tspin_over_spin_step_time']['median']:.2f}x; tokens per step "
        f"{result['tspin_over_spin_tokens']:.2f}x"
    )
    table += "\n<=2% reads the median; the interval says whether the data could tell: " + "; ".join(
        f"{m} " + ("below 2%" if ci and ci[1] <= 0.02 else "above 2%" if ci and ci[0] > 0.02 else "inconclusive")
        for m, ci in ((m, result["methods"][m]["overhead_median_ci95"]) for m in methods)
    )
    table += (
        "\nPython-level calls (sys.setprofile; C++ kernels not counted; the same on any machine with these versions): "
        + "; ".join(
            f"{m} per step kit {calls[(m, 'kit')]['per_step']:,.0f} / bare {calls[(m, 'bare')]['per_step']:,.0f}, "
            f"per {steps}-step call besides its steps kit {calls[(m, 'kit')]['per_call_besides_steps']:,.0f} / bare "
            f"{calls[(m, 'bare')]['per_call_besides_steps']:,.0f}"
            for m in methods
        )
    )
    table += (
        f"\n{repeats} repeats x {steps} steps, batch {bs}, data {args.data} (y' == y share "
        f"{result['settings']['repeated_rows']['synthetic_equals_annotated']:.2f}), torch threads "
        f"{result['machine']['torch_num_threads']}"
    )
    C.emit(result, table)


if __name__ == "__main__":
    main()
