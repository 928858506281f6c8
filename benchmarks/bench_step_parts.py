"""Where a training step's framework overhead goes: step-level interleaved variants, each adding one layer of the kit.

bench_train_step.py measures the kit's `train_iteration` against a bare loop (whole runs, setup included); its
medians move by about +-2 points from run to run on a shared 2-core machine, more than the 2% target. This script
times single optimiser steps instead, the variants interleaved step by step (the order rotates every round, so
drift in the machine's speed lands on every variant alike), and splits the overhead into layers:

- ``bare``: the hand-written loop of bench_train_step.py on the same packed distinct rows (one shared prompt per
  example, the pack and its mask made once): forward (no KV cache, as the kit's and TRL's) with the model's own
  logits at every position, gather,
  the loss function from tspin_kit.losses, backward, clip, AdamW.
- ``lean_bare``: the same with the output layer applied to the response positions only (what the kit does so
  that a 150k vocabulary never materialises (tokens, vocab) logits); no kit code.
- ``kit_tokens``: the kit's token path (``logprobs._model_token_logps``: the head hook of ``final_hidden`` and the
  lean head) on the same precomputed tensors: the lean design as the kit runs it, without per-step cutting.
- ``kit_logps``: ``PackedExamples.logps`` on a shuffled batch of the iteration's pack (adds the per-step cutting:
  the step's mask, ids and token indices taken from the iteration's arrays), then the loss function directly.
- ``kit_step``: ``training.compute_loss`` plus what `train_iteration`'s loop does around it per step (the steps'
  inputs, masks included, made ``training.CUT_AHEAD`` steps at a time by ``training.window_inputs``, the step's recorded
  terms, the LR schedule while it changes, the head hooked once for the run as ``logprobs.lean_head`` does for an
  iteration; the records converted to floats once per window, the loop once per iteration): a copy of the loop body,
  not the loop itself (the per-call setup is bench_train_step.py's business).

Per variant: the median step time, the median over rounds of (variant / bare - 1) with its interquartile range,
and minor page faults per step (the process's, measured around the step). Context only: no target here (the
target lives in bench_train_step.py).
"""

from __future__ import annotations

import contextlib
import copy
import resource
import time

import _common as C

VARIANTS = ("bare", "lean_bare", "kit_tokens", "kit_logps", "kit_step")


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (one step of every variant each)")
    ap.add_argument("--method", default="tspin", choices=["tspin", "spin", "sft"])
    args = ap.parse_args()
    C.apply_threads(args)
    rounds = args.rounds or (10 if args.quick else 200)

    import numpy as np
    import torch

    from tspin_kit import losses as L
    from tspin_kit import toy
    from tspin_kit import training as T
    from tspin_kit.config import MethodConfig
    from tspin_kit.logprobs import _model_token_logps, lean_head, model_placement, pack_rows

    bs = 64
    tok = toy.build_tokenizer()
    base = toy.build_model(tok)
    ex, _ = C.toy_examples(tok, bs, repeats=False)
    C.fill_reference(base, tok, ex)
    method = {
        "tspin": MethodConfig(name="tspin", alpha=1.0, beta=0.1),
        "spin": MethodConfig(name="spin", lam=1.0),
        "sft": MethodConfig(name="sft"),
    }[args.method]
    beta, lam = method.beta_at(1), method.lam_at(1)
    cfg = C.steps_config(2e-5, 1, bs)
    roles = [ex.role_ids(r) for r in method.spec.roles]
    pk = pack_rows(
        [p for _ in roles for p in ex.prompt_ids], [r[i] for r in roles for i in range(bs)], tok.pad_token_id
    )
    mask4d = pk.attention_mask(torch.float32)
    rows_idx = pk.row_pack[:, None].expand_as(pk.src)
    sel = pk.mask.bool()
    r_sel, s_sel, t_sel = rows_idx[sel], pk.src[sel], pk.targets[sel]
    flat_sel = r_sel * pk.input_ids.shape[1] + s_sel
    # no KV cache, as the kit's forwards (transformers builds one by default, in training too; nothing reads it)
    inputs = {"input_ids": pk.input_ids, "attention_mask": mask4d, "position_ids": pk.position_ids, "use_cache": False}
    ntok = torch.tensor([len(a) for a in ex.annotated_ids], dtype=torch.float32)

    def loss_of(parts, idx=None):  # idx: the examples' order in ``parts`` (None: the data's order)
        at = (lambda x: x) if idx is None else (lambda x: x[idx])
        if args.method == "sft":
            return L.sft_loss(parts[0], at(ntok))
        if args.method == "spin":
            return L.spin_loss(parts[0], parts[1], at(ex.ref_annotated), at(ex.ref_synthetic), lam=lam)
        return L.tspin_loss(*parts, alpha=1.0, beta=beta)

    hold = contextlib.ExitStack()

    def make(variant):
        model = copy.deepcopy(base)
        model.train()
        if variant == "kit_step":
            # its head hooked for the whole run, as the loop hooks it for an iteration (logprobs.lean_head); the
            # other kit variants add and remove the hook at each call, as a one-off log-prob call does
            hold.enter_context(lean_head(model))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = T.make_optimizer(params, cfg, cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(10**6, cfg))
        steady = T.lr_steady_from(10**6, cfg)  # the loop steps the schedule only while it changes
        step_no = [0]
        packed = T.training_pack(model, ex, method)
        skip = T.skipped_examples(ex, method, beta)
        knobs = {**method.knobs_at(1), "beta": beta, "lam": lam}
        place = model_placement(model)
        rng = np.random.default_rng(0)
        records = []

        def finish(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def from_tokens(tok_lp):  # per-token log-probs at the pack's response positions -> per-role sums
            dense = tok_lp.new_zeros(sel.shape).masked_scatter(sel, tok_lp)
            return dense.sum(-1)[pk.inverse].chunk(len(roles))

        def bare():
            logits = model(**inputs).logits.float()
            lse = torch.logsumexp(logits, -1)
            tok_lp = (logits[rows_idx, pk.src, pk.targets] - lse[rows_idx, pk.src]) * pk.mask
            finish(loss_of(tok_lp.sum(-1)[pk.inverse].chunk(len(roles))).losses.sum() / bs)

        def lean_bare():
            hidden = model.model(**inputs).last_hidden_state
            logits = model.lm_head(hidden[r_sel, s_sel]).float()
            tok_lp = logits.gather(-1, t_sel[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
            finish(loss_of(from_tokens(tok_lp)).losses.sum() / bs)

        def kit_tokens():
            tok_lp, _ = _model_token_logps(model, r_sel, s_sel, t_sel, with_entropy=False, flat=flat_sel, **inputs)
            finish(loss_of(from_tokens(tok_lp)).losses.sum() / bs)

        def kit_logps():
            idx = rng.permutation(bs).tolist()
            finish(loss_of(packed.logps(model, idx, placement=place).unbind(-1), idx).losses.sum() / bs)

        ahead = []  # the next steps' `training.StepInputs`, made T.CUT_AHEAD at a time as the loop does

        mask_dtype = T.ahead_mask_dtype(packed, place, bs)
        names = list(T.STEP_TERMS) if args.method != "sft" else []  # the terms the loop records (SFT: none)

        def kit_step():
            if not ahead:
                if records:  # the loop converts its records once per iteration (one process); here every window
                    totals = [T.step_totals(r, names, 1, place[0]) for r in records]
                    torch.stack([t[0] for t in totals]).tolist()
                    if names:
                        torch.stack([t[1] for t in totals]).tolist()
                    records.clear()
                window = [rng.permutation(bs).tolist() for _ in range(T.CUT_AHEAD)]
                ahead.extend(T.window_inputs(ex, window, method, skip, place[0], packed=packed, mask_dtype=mask_dtype))
            inputs = ahead.pop(0)
            idx = inputs.idx
            out = T.compute_loss(
                model,
                ex,
                idx,
                method,
                beta=beta,
                lam=lam,
                packed=packed,
                skip=skip,
                knobs=knobs,
                placement=place,
                inputs=inputs,
            )
            loss = out.losses.sum() / len(idx)
            finish(loss)
            if step_no[0] < steady:
                sched.step()
            step_no[0] += 1
            records.append([(loss.detach(), tuple(getattr(out, n) for n in names), len(idx))])

        return locals()[variant]

    steps = {v: make(v) for v in VARIANTS}
    for v in VARIANTS:  # warm-up (excluded)
        for _ in range(3):
            steps[v]()
    times = {v: [] for v in VARIANTS}
    faults = {v: [] for v in VARIANTS}
    for r in range(rounds):
        k = r % len(VARIANTS)
        order = VARIANTS[k:] + VARIANTS[:k]
        if r % 2:
            order = order[::-1]
        for v in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t0)
            faults[v].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    hold.close()  # kit_step's head hook

    def quartiles(xs):
        xs = sorted(xs)
        n = len(xs)
        return xs[n // 4], xs[n // 2], xs[(3 * n) // 4]

    result = {
        "benchmark": "step_parts",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {"method": args.method, "batch_size": bs, "rounds": rounds, "data": "distinct", "steps": "single"},
        "variants": {},
    }
    rows = []
    for v in VARIANTS:
        rel = [a / b - 1 for a, b in zip(times[v], times["bare"])]
        q1, med, q3 = quartiles(rel)
        result["variants"][v] = {
            "seconds_per_step": C.stats(times[v]),
            "over_bare": C.stats(rel),
            "over_bare_iqr": [q1, q3],
            "minor_faults_per_step": C.stats(faults[v]),
        }
        rows.append(
            [
                v,
                f"{C.stats(times[v])['median'] * 1e3:.2f}",
                f"{med * 100:+.2f}% [{q1 * 100:+.1f}, {q3 * 100:+.1f}]",
                f"{C.stats(faults[v])['median']:.0f}",
            ]
        )
    table = C.fmt_table(["variant", "ms/step", "vs bare: median [IQR]", "minor faults/step"], rows)
    table += f"\n{rounds} rounds, {args.method}, batch {bs}, distinct rows"
    C.emit(result, table)


if __name__ == "__main__":
    main()
