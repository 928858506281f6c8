"""tspin_kit.training: every method trains a real tiny Llama in the right direction; optimisers, gradient
accumulation, the warmup schedule, and SPIN's log 2 at the start of an iteration."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from tspin_kit import training as T
from tspin_kit.config import MethodConfig, TrainConfig
from tspin_kit.data import DataError
from tspin_kit.generation import score_responses
from tspin_kit.training import Examples, build_examples, lr_lambda, train_iteration

N = 16


@pytest.fixture(scope="module")
def triplets(pi0, toy_world) -> Examples:
    """16 toy prompts with y (the right sum), wrong answers of the same shape as y' and y0 (the sums of the
    next and next-but-one problems), and pi_0's log-probs of all three.

    Wrong answers shaped like right ones keep the current advantage u near 0 under the weak pi_0, so the
    direction of training is visible (with pi_0's own random samples u starts so large that the current
    term has no gradient left and only the historical term moves anything).
    """
    model, tok = pi0
    rows = toy_world[0][:N]
    ex = build_examples(tok, [r["prompt"] for r in rows], [r["response"] for r in rows])
    ex.synthetic_ids = ex.annotated_ids[1:] + ex.annotated_ids[:1]
    ex.proto_ids = ex.annotated_ids[2:] + ex.annotated_ids[:2]
    assert all(s != a for s, a in zip(ex.synthetic_ids, ex.annotated_ids))
    ex.ref_annotated, ex.ref_synthetic, ex.ref_proto = (
        logps(model, ex, role) for role in ("annotated", "synthetic", "proto")
    )
    return ex


def logps(model, ex: Examples, role: str) -> torch.Tensor:
    ids = getattr(ex, f"{role}_ids")
    scored = score_responses(model, ex.prompt_ids, ids, pad_id=0, batch_size=len(ids))
    return torch.tensor([s["logp"] for s in scored], dtype=torch.float32)


def train(model, ex, method: str, *, iteration=1, **train_kw):
    kw = {"optimizer": "adamw", "lr": 1e-3, "epochs": 3, "batch_size": N, "warmup_ratio": 0.0}
    kw.update(train_kw)
    return train_iteration(
        model,
        ex,
        method=MethodConfig(name=method),
        train=TrainConfig(**kw),
        iteration=iteration,
        seed=0,
        cpu=True,
    )


@pytest.mark.parametrize("method", ["sft", "spin", "tspin", "tspin_no_history", "tspin_ref"])
def test_each_method_raises_annotated_over_synthetic(pi0, triplets, method):
    model, _ = pi0
    model = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.named_parameters()}
    u_before = (triplets.ref_annotated - triplets.ref_synthetic).mean()
    res = train(model, triplets, method)
    assert res.steps == 3 and len(res.step_losses) == 3 and all(math.isfinite(x) for x in res.step_losses)
    u_after = (logps(model, triplets, "annotated") - logps(model, triplets, "synthetic")).mean()
    # u rises for every method (measured with the shipped-pi_0 era fixture: SFT +0.23 in 3 steps, which raises
    # y only, the pair/triplet losses +2 to +3.4)
    assert u_after > u_before + (0.15 if method == "sft" else 0.3), (method, float(u_before), float(u_after))
    if method == "sft":
        assert logps(model, triplets, "annotated").mean() > triplets.ref_annotated.mean()
    # TRL-style smoke test: every parameter tensor moved
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged
    assert not model.training  # handed back in eval mode


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_optimizers(pi0, triplets, optimizer):
    model = copy.deepcopy(pi0[0])
    u_before = (triplets.ref_annotated - triplets.ref_synthetic).mean()
    res = train(model, triplets, "tspin", optimizer=optimizer, lr=1e-4 if optimizer == "rmsprop" else 1e-3)
    u_after = (logps(model, triplets, "annotated") - logps(model, triplets, "synthetic")).mean()
    assert u_after > u_before
    assert res.step_losses[-1] < res.step_losses[0]


@pytest.mark.parametrize("method", ["tspin", "spin"])
def test_grad_accum_gives_the_same_update(pi0, triplets, method):
    """Same global batch of 16: one micro-batch of 16 or two of 8 accumulate the same gradient and loss.

    The gradient the optimiser steps with is read by a hook that fires after each accumulation into .grad;
    its last value per parameter is what opt.step() used. (Comparing AdamW steps instead would compare
    lr * sign(g), which flips on float noise wherever g ~ 0.)
    """
    grads = []
    for k in (1, 2):
        model = copy.deepcopy(pi0[0])
        last = {}
        hooks = [
            p.register_post_accumulate_grad_hook(
                lambda p, name=name, last=last: last.__setitem__(name, p.grad.detach().clone())
            )
            for name, p in model.named_parameters()
        ]
        res = train(model, triplets, method, grad_accum=k, epochs=1, max_grad_norm=None)
        for h in hooks:
            h.remove()
        grads.append((res.step_losses, last))
    (loss1, g1), (loss2, g2) = grads
    assert loss1 == pytest.approx(loss2, abs=1e-5)
    assert g1.keys() == g2.keys() and len(g1) == len(list(pi0[0].parameters()))
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], atol=1e-6, rtol=1e-4, msg=name)
    assert sum(float(g.abs().sum()) for g in g1.values()) > 0


def test_warmup_and_schedule_values():
    # 10 steps, 20% warmup -> 2 warmup steps at 1/3 and 2/3 of the peak, then linear decay to 1/8
    f = lr_lambda(10, TrainConfig(warmup_ratio=0.2, schedule="linear"))
    assert [f(s) for s in range(10)] == pytest.approx(
        [1 / 3, 2 / 3, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    )
    g = lr_lambda(10, TrainConfig(warmup_ratio=0.1, schedule="constant"))  # ceil(1.0) = 1 warmup step
    assert [g(s) for s in range(4)] == pytest.approx([0.5, 1, 1, 1])
    h = lr_lambda(5, TrainConfig(warmup_ratio=0.0, schedule="constant"))
    assert [h(s) for s in range(5)] == [1.0] * 5


@pytest.mark.parametrize("schedule, warmup", [("constant", 0.0), ("constant", 0.3), ("linear", 0.0), ("linear", 0.2)])
def test_each_step_takes_the_schedules_learning_rate(pi0, triplets, monkeypatch, schedule, warmup):
    """The learning rate every optimiser step uses is lr * lr_lambda(step), whether train_iteration steps the
    scheduler after every step or, once a constant schedule's warm-up is over, no longer (nothing left to set)."""
    seen = []
    real = T.make_optimizer

    def recording(*a, **k):
        opt = real(*a, **k)
        opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(T, "make_optimizer", recording)
    res = train(
        copy.deepcopy(pi0[0]), triplets, "tspin", epochs=5, batch_size=4, warmup_ratio=warmup, schedule=schedule
    )
    f = lr_lambda(res.steps, TrainConfig(warmup_ratio=warmup, schedule=schedule))
    assert res.steps == 20 and seen == pytest.approx([1e-3 * f(s) for s in range(res.steps)], rel=1e-12)
    assert len(set(seen)) > 1 or (schedule, warmup) == ("constant", 0.0)


def test_lr_schedule_per_iteration(pi0, triplets):
    cfg = {"lr_schedule": [1e-3, 5e-4]}
    res = [train(copy.deepcopy(pi0[0]), triplets, "tspin", iteration=t, epochs=1, **cfg).lr for t in (0, 1, 5)]
    assert res == [1e-3, 5e-4, 5e-4]


def test_spin_first_step_is_log2(pi0, triplets):
    """Policy == reference at the start of an iteration: every reward is 0, the loss is log 2 (invariant 5)."""
    model = copy.deepcopy(pi0[0])
    res = train(model, triplets, "spin", epochs=2, batch_size=8)
    assert res.step_losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert res.step_losses[-1] < math.log(2)


def test_progress_callback_and_shuffle_is_seeded(pi0, triplets):
    calls = []
    m1, m2 = copy.deepcopy(pi0[0]), copy.deepcopy(pi0[0])
    r1 = train_iteration(
        m1,
        triplets,
        method=MethodConfig(name="tspin"),
        train=TrainConfig(lr=1e-3, epochs=2, batch_size=5),
        iteration=1,
        seed=0,
        cpu=True,
        progress=lambda d, t, name: calls.append((d, t)),
    )
    assert calls == [(i, 8) for i in range(1, 9)]  # ceil(16/5) = 4 batches x 2 epochs
    r2 = train_iteration(
        m2,
        triplets,
        method=MethodConfig(name="tspin"),
        train=TrainConfig(lr=1e-3, epochs=2, batch_size=5),
        iteration=1,
        seed=0,
        cpu=True,
    )
    assert r1.step_losses == r2.step_losses
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_build_examples_rejects_prompt_longer_than_max_length(pi0):
    _, tok = pi0
    with pytest.raises(DataError, match=r"row 1 \(prompt .123456\+7=.\): prompt is 9 tokens.*model.max_length"):
        build_examples(tok, ["1+1=", "123456+7="], ["2", "x"], max_length=8)


def test_examples_concat():
    a = Examples([[1]], [[2]], [[3]], [[4]], ref_annotated=torch.tensor([0.5]))
    b = Examples([[5]], [[6]], [[7]], [[8]], ref_annotated=torch.tensor([1.5]))
    c = a.concat(b)
    assert len(c) == 2 and c.synthetic_ids == [[3], [7]] and c.ref_annotated.tolist() == [0.5, 1.5]
    assert c.ref_synthetic is None


def test_tiny_trailing_batch_is_folded_into_the_previous_one(pi0, triplets):
    """16 examples in batches of 14 would leave a trailing batch of 2: it joins the previous batch."""
    calls = []
    res = train_iteration(
        copy.deepcopy(pi0[0]),
        triplets,
        method=MethodConfig(name="tspin"),
        train=TrainConfig(lr=1e-3, epochs=2, batch_size=14),
        iteration=1,
        seed=0,
        cpu=True,
        progress=lambda d, t, name: calls.append((d, t)),
    )
    assert res.steps == 2 and len(res.step_losses) == 2
    assert calls == [(1, 2), (2, 2)]


@pytest.mark.parametrize("name", ["tspin", "spin"])
def test_a_window_of_steps_gets_the_inputs_each_step_would_get_alone(pi0, triplets, name):
    """`window_inputs` (one cut and one gather for several steps) hands every step what a window of that step alone
    gives: steps of different sizes, examples with a zero gradient (not forwarded; a step of only such examples has
    no cut), the masks made with the cut. Each step's inputs are its own: tensors equal, masks in distinct storage."""
    from tspin_kit import logprobs as LP
    from tspin_kit import training as T

    ex = copy.deepcopy(triplets)
    for i in (1, 4, 5):  # zero gradient: y' == y (SPIN), and y0 == y' == y (T-SPIN)
        ex.synthetic_ids[i] = ex.proto_ids[i] = list(ex.annotated_ids[i])
    ex.historical_mask = torch.tensor([i % 3 != 0 for i in range(N)])
    method = MethodConfig(name=name, alpha=1.0, beta=0.1, lam=1.0)
    skip = T.skipped_examples(ex, method, 0.1)
    assert [i for i in range(N) if skip[i]] == [1, 4, 5]
    packed = T.training_pack(pi0[0], ex, method)
    device, dtype = LP.model_placement(pi0[0])
    steps = [[3, 1, 0, 7], [4, 5], [9, 2, 15, 11, 8, 6, 12], [10], [5, 13, 14, 1]]
    window = T.window_inputs(ex, steps, method, skip, device, packed=packed, mask_dtype=dtype)
    assert [w.idx for w in window] == steps and all(w.idx is idx for w, idx in zip(window, steps))
    assert window[1].cut is None and window[1].live == []
    for got, idx in zip(window, steps):
        alone = T.window_inputs(ex, [idx], method, skip, device, packed=packed, mask_dtype=dtype)[0]
        assert got.live == alone.live == [k for k, i in enumerate(idx) if not skip[i]]
        for a, b in (
            (got.live_at, alone.live_at),
            *((got.per_example[n], alone.per_example[n]) for n in got.per_example),
        ):
            assert (a is None) == (b is None) and (a is None or (a.dtype == b.dtype and torch.equal(a, b)))
        assert set(got.per_example) == set(alone.per_example)
        if alone.cut is None:
            assert got.cut is None
            continue
        np.testing.assert_array_equal(got.cut.t, alone.cut.t)
        assert got.cut.width == alone.cut.width
        for f in ("rows", "src", "targets", "flat", "input_ids", "position_ids", "token_mask", "mask"):
            a, b = getattr(got.cut, f), getattr(alone.cut, f)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f
        assert got.cut.input_ids.is_contiguous() and got.cut.mask.is_contiguous()
    masks = [w.cut.mask for w in window if w.cut is not None]
    assert len({m.untyped_storage().data_ptr() for m in masks}) == len(masks) == 4


def test_each_step_is_cut_once_ahead_and_a_stale_cut_is_not_used(pi0, triplets, monkeypatch):
    """`train_iteration` makes every step's inputs (its cut, with the step's CPU mask) once, CUT_AHEAD steps at a
    time, in the steps' order, and the step's forward uses its own (a forward handed a cut of other examples cuts its
    own: counted here)."""
    from tspin_kit import logprobs as LP
    from tspin_kit import training as T

    calls, events, masks = [], [], []
    real_cuts = LP.PackedExamples.cuts

    windows = []  # the steps of each call: a window of steps is cut in one pass

    def counting_cuts(self, steps, device, mask_dtype=None):  # (`cut` of one step calls it too)
        windows.append(len(steps))
        calls.extend(list(idx) for idx in steps)
        events.extend("cut" for _ in steps)
        cuts = real_cuts(self, steps, device, mask_dtype)
        masks.extend(cut.mask for cut in cuts)
        return cuts

    monkeypatch.setattr(LP.PackedExamples, "cuts", counting_cuts)
    monkeypatch.setattr(T, "CUT_AHEAD", 3)
    batches = []
    real_compute = T.compute_loss
    monkeypatch.setattr(
        T,
        "compute_loss",
        lambda model, ex, idx, *a, **kw: (
            batches.append(list(idx)) or events.append("step") or real_compute(model, ex, idx, *a, **kw)
        ),
    )
    res = train(copy.deepcopy(pi0[0]), triplets, "tspin", epochs=2, batch_size=5)  # 4 batches an epoch: 8 steps
    assert res.steps == 8 and calls == batches  # one cut per step, in order, none made again inside a forward
    assert events == ["cut"] * 3 + ["step"] * 3 + ["cut"] * 3 + ["step"] * 3 + ["cut"] * 2 + ["step"] * 2  # ahead
    assert windows == [3, 3, 2]  # one pass per window
    # each step's mask was made with its cut (a small iteration on CPU), a tensor of its own
    assert all(m is not None and m.dtype == torch.float32 for m in masks)
    assert len({m.untyped_storage().data_ptr() for m in masks}) == len(masks)

    # steps whose examples all have a zero gradient (SPIN, y' == y) have no cut and do not restart the window
    skipping = copy.deepcopy(triplets)
    for i in range(0, N, 3):
        skipping.synthetic_ids[i] = list(skipping.annotated_ids[i])
    calls.clear(), events.clear(), batches.clear()
    res = train(copy.deepcopy(pi0[0]), skipping, "spin", epochs=1, batch_size=1)  # 16 steps of one example
    live = [b for b in batches if b[0] % 3]
    assert res.steps == N and calls == live and len(live) == N - len(range(0, N, 3))  # each live step cut once
    assert events.count("cut") == len(live)

    # a cut of other examples is not used: the forward cuts its own, and the log-probs are those of `idx`
    packed = T.training_pack(pi0[0], triplets, MethodConfig(name="tspin"))
    device, dtype = LP.model_placement(pi0[0])
    with torch.no_grad():
        want = packed.logps(pi0[0], [0, 1, 2], placement=(device, dtype))
        got = packed.logps(pi0[0], [0, 1, 2], placement=(device, dtype), cut=packed.cut([3, 4, 5], device))
    torch.testing.assert_close(got, want, atol=0, rtol=0)

    # step inputs made for another list of examples (or another pack, or another keep_one) are not used either:
    # compute_loss makes those of its own `idx` (one cut more, counted); its own are used (no cut more)
    method = MethodConfig(name="tspin", alpha=1.0, beta=0.1)
    skip = T.skipped_examples(triplets, method, 0.1)
    kw = dict(beta=0.1, lam=1.0, packed=packed, skip=skip, placement=(device, dtype))
    idx = [0, 1, 2]

    def made(examples, pack=packed, keep_one=False):
        return T.window_inputs(
            triplets, [examples], method, skip, device, packed=pack, keep_one=keep_one, mask_dtype=dtype
        )[0]

    cases = {
        "other examples": (made([3, 4, 5]), 1),
        "an equal list, not this one": (made([0, 1, 2]), 1),
        "another pack": (made(idx, pack=T.training_pack(pi0[0], triplets, method)), 1),
        "another keep_one": (made(idx, keep_one=True), 1),
        "its own": (made(idx), 0),
    }
    with torch.no_grad():
        want = T.compute_loss(pi0[0], triplets, idx, method, **kw).losses
        for case, (inputs, new_cuts) in cases.items():
            calls.clear()
            got = T.compute_loss(pi0[0], triplets, idx, method, inputs=inputs, **kw).losses
            assert len(calls) == new_cuts, case
            torch.testing.assert_close(got, want, atol=0, rtol=0, msg=case)
