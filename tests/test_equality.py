"""Shortcuts that must not change a number: each is tested equal to the full computation.

- the shared prompt: the rows of one prompt packed into one sequence (`logprobs.pack_rows`) give the
  log-probs, entropies and gradients of the separate right-padded rows;
- repeated rows forwarded once (y' == y, y0 == y), in training and in scoring;
- examples whose gradient is exactly zero skipped (`training.zero_gradient`) while they still count in the
  batch mean: losses and gradients of `compute_loss`, and whole `train_iteration`s (a step with every example
  skipped included), equal a loop that forwards every row;
- SFT runs without y'/y0 records (`RunConfig.sft_records`) do the same training.

Real tiny Llamas built in code; losses and gradients to 1e-5, recorded numbers to 1e-6.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import small_config

from tspin_kit import losses as L
from tspin_kit import toy
from tspin_kit.config import MethodConfig, TrainConfig
from tspin_kit.generation import derive_seed, score_responses
from tspin_kit.logprobs import collate, model_logps, pack_rows, packed_logps, rows_logps
from tspin_kit.methods import get as method_spec
from tspin_kit.methods import zero_gradient
from tspin_kit.training import (
    Examples,
    compute_loss,
    lr_lambda,
    make_optimizer,
    train_iteration,
    training_pack,
)

TOK = toy.build_tokenizer()
EOS = TOK.eos_token_id
PAD = TOK.pad_token_id


def enc(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def tiny_model(seed: int = 3):
    size = toy.ToyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return toy.build_model(TOK, size, seed=seed)


def grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def assert_grads_close(got, want, tol=1e-5):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


# Eight examples that cover every case of the skip rule (y, y', y0 as answers to the prompt):
#   0: all distinct          1: y' == y            2: y' == y == y0 (all equal)   3: y0 == y only
#   4: y' == y0 != y         5: all distinct       6: y' == y (y0 differs)       7: all equal
PROMPTS = ["12+34=", "5+50=", "7+8=", "99+1=", "40+2=", "3+3=", "61+9=", "8+80="]
ANSWERS = ["46", "55", "15", "100", "42", "6", "70", "88"]
SYNTH = ["47", "55", "15", "10", "41", "7", "70", "88"]
PROTO = ["45", "56", "15", "100", "41", "16", "71", "88"]


def examples(with_ref_from=None) -> Examples:
    ex = Examples([enc(p) for p in PROMPTS], [enc(a) + [EOS] for a in ANSWERS])
    ex.synthetic_ids = [enc(s) + [EOS] for s in SYNTH]
    ex.proto_ids = [enc(p) + [EOS] for p in PROTO]
    if with_ref_from is not None:
        with torch.no_grad():
            for role in ("annotated", "synthetic", "proto"):
                lp = model_logps(with_ref_from, collate(ex.prompt_ids, getattr(ex, f"{role}_ids"), PAD)).summed
                # a small offset per example, so that the reference terms are not all zero
                setattr(ex, f"ref_{role}", lp - 0.1 * torch.arange(len(ex), dtype=torch.float32))
    return ex


def full_loss(model, ex: Examples, idx, method: MethodConfig, *, beta: float, lam: float):
    """The textbook computation: every row [y; y'; y0] right-padded and forwarded, then the loss function."""
    P = [ex.prompt_ids[i] for i in idx]
    A, S = [ex.annotated_ids[i] for i in idx], [ex.synthetic_ids[i] for i in idx] if ex.synthetic_ids else None
    t = torch.tensor(idx)
    if method.name == "sft":
        lp = model_logps(model, collate(P, A, PAD))
        return L.sft_loss(lp.summed, lp.mask.sum(-1).float())
    if method.name == "spin":
        a, s = model_logps(model, collate(P * 2, A + S, PAD)).summed.chunk(2)
        return L.spin_loss(a, s, ex.ref_annotated[t], ex.ref_synthetic[t], lam=lam)
    Y0 = [ex.proto_ids[i] for i in idx]
    a, s, p = model_logps(model, collate(P * 3, A + S + Y0, PAD)).summed.chunk(3)
    mask = ex.historical_mask[t] if ex.historical_mask is not None else None
    if method.name == "tspin_ref":
        return L.tspin_ref_loss(
            a, s, p, ex.ref_annotated[t], ex.ref_synthetic[t], ex.ref_proto[t], lam=lam, beta=beta, historical_mask=mask
        )
    return L.tspin_loss(a, s, p, alpha=method.alpha, beta=beta, historical_mask=mask)


# ----------------------------------------------------------------------------- packing


def test_pack_rows_literal_layout():
    """Two prompts; the first has responses [1, 2] (twice: one branch) and [3]; the second [4]."""
    x1, x2 = [10, 11], [12]
    packed = pack_rows([x1, x1, x1, x2], [[1, 2], [1, 2], [3], [4]], pad_id=0)
    # pack 0: x1 | branch 1: 1 2 | branch 2: 3       pack 1: x2 | branch 1: 4 | padding
    assert packed.input_ids.tolist() == [[10, 11, 1, 2, 3], [12, 4, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]  # each branch restarts at len(x)
    assert packed.segments.tolist() == [[0, 0, 1, 1, 2], [0, 1, -1, -1, -1]]
    assert packed.inverse.tolist() == [0, 0, 1, 2]  # the repeated row maps to the same branch
    assert packed.row_pack.tolist() == [0, 0, 1]
    # token t of a branch is predicted at the previous position: the prompt's last token for t = 0
    assert packed.src.tolist() == [[1, 2], [1, 0], [0, 0]]
    assert packed.targets.tolist() == [[1, 2], [3, 0], [4, 0]]
    assert packed.mask.tolist() == [[True, True], [True, False], [True, False]]
    allowed = packed.attention_mask(torch.float32)[0, 0] == 0
    # token 3 (branch 2) sees the prompt and itself, not branch 1
    assert allowed.tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, False, False, True],
    ]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_equal_separate_padded_rows_in_values_and_gradients(attn):
    model = tiny_model()
    model.config._attn_implementation = attn
    ex = examples()
    P, R = ex.prompt_ids * 3, ex.annotated_ids + ex.synthetic_ids + ex.proto_ids  # 24 rows, 16 distinct
    weights = torch.linspace(-2.0, 3.0, len(R))

    full = model_logps(model, collate(P, R, PAD), with_entropy=True)
    (full.summed * weights).sum().backward()
    want = grads(model)
    model.zero_grad()
    packed = pack_rows(P, R, PAD)
    assert packed.num_distinct == 16 and packed.input_ids.shape[0] == 8  # 8 prompts forwarded once each
    got = packed_logps(model, packed, with_entropy=True)
    (got.summed * weights).sum().backward()

    torch.testing.assert_close(got.summed, full.summed, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.entropy, full.entropy, rtol=1e-6, atol=1e-6)
    for i in range(len(R)):
        torch.testing.assert_close(
            got.token_logps[i][got.mask[i]], full.token_logps[i][full.mask[i]], rtol=1e-6, atol=1e-6
        )
    assert_grads_close(grads(model), want)


def test_rows_logps_padded_fallback_equals_packed():
    model = tiny_model()
    ex = examples()
    P, R = ex.prompt_ids * 2, ex.annotated_ids + ex.synthetic_ids
    torch.testing.assert_close(
        rows_logps(model, P, R, PAD, share_prompt=True),
        rows_logps(model, P, R, PAD, share_prompt=False),
        rtol=1e-6,
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- skipping zero-gradient examples


def test_zero_gradient_rule():
    y, other = [1, 2], [3, 2]
    tspin, spin, sft = method_spec("tspin"), method_spec("spin"), method_spec("sft")
    assert zero_gradient(spin, 0.1, y, y, None) and not zero_gradient(spin, 0.1, y, other, None)
    assert zero_gradient(tspin, 0.1, y, y, y)  # all three equal
    assert not zero_gradient(tspin, 0.1, y, y, other)  # the historical term still moves y' against y0
    assert zero_gradient(tspin, 0.0, y, y, other)  # ... unless beta = 0 (Iter0, the no-history ablation)
    assert zero_gradient(tspin, 0.1, y, y, other, keep_historical=False)  # ... or it is masked
    assert not zero_gradient(tspin, 0.1, y, other, other)  # y' == y0 != y: the current term moves
    assert not zero_gradient(sft, 0.1, y, y, y)


CASES = [
    ("spin", 0.0, False),
    ("tspin", 0.1, False),
    ("tspin", 0.0, False),
    ("tspin", 0.1, True),
    ("tspin_no_history", 0.0, False),
    ("tspin_ref", 0.1, False),
    ("tspin_ref", 0.0, True),
    ("sft", 0.0, False),
]


@pytest.mark.parametrize("per_iteration_pack", [False, True])
@pytest.mark.parametrize("name,beta,masked", CASES)
def test_compute_loss_equals_the_full_computation(name, beta, masked, per_iteration_pack):
    """Skipped examples, repeated rows and shared prompts: the same per-example losses and gradients, with the
    rows packed per step (`rows_logps`) or the examples packed once per iteration (`training_pack`)."""
    model = tiny_model()
    ex = examples(with_ref_from=tiny_model(seed=4))
    if masked:
        ex.historical_mask = torch.tensor([p != a for p, a in zip(ex.proto_ids, ex.annotated_ids)])
    method, lam, idx = MethodConfig(name=name), 0.7, list(range(len(ex)))
    skipped = [
        i
        for i in idx
        if zero_gradient(
            method.spec,
            beta,
            ex.annotated_ids[i],
            ex.synthetic_ids[i],
            ex.proto_ids[i] if name != "spin" else None,
            bool(ex.historical_mask[i]) if masked else True,
        )
    ]
    # y' == y in 1, 2, 6, 7; the triplets among them are constant only with beta = 0 or y0 == y' (2, 7); the mask
    # (y0 == y) adds nothing new here, it only drops terms that 2 and 7 already make constant
    expected_skips = {"spin": [1, 2, 6, 7], "sft": []}.get(name, [1, 2, 6, 7] if beta == 0 else [2, 7])
    assert skipped == expected_skips

    want = full_loss(model, ex, idx, method, beta=beta, lam=lam)
    want.losses.sum().div(len(idx)).backward()
    want_grads = grads(model)
    model.zero_grad()
    packed = training_pack(model, ex, method) if per_iteration_pack else None
    got = compute_loss(model, ex, idx[::-1], method, beta=beta, lam=lam, packed=packed)  # any order of examples
    got.losses.flip(0).sum().div(len(idx)).backward()

    torch.testing.assert_close(got.losses.detach().flip(0), want.losses.detach(), rtol=0, atol=1e-5)
    assert_grads_close(grads(model), want_grads)


def test_a_micro_batch_of_skipped_examples_forwards_nothing_and_keeps_its_loss():
    model = tiny_model()
    ex = examples(with_ref_from=tiny_model(seed=4))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    out = compute_loss(model, ex, [1, 2, 6, 7], MethodConfig(name="spin"), beta=0.0, lam=0.7)
    assert not calls and not out.losses.requires_grad
    want = full_loss(model, ex, [1, 2, 6, 7], MethodConfig(name="spin"), beta=0.0, lam=0.7).losses
    torch.testing.assert_close(out.losses, want.detach(), rtol=0, atol=1e-5)
    out = compute_loss(model, ex, [1, 2, 6, 7], MethodConfig(name="spin"), beta=0.0, lam=0.7, keep_one=True)
    assert calls and out.losses.requires_grad  # under DDP every process takes part in the backward


def reference_iteration(model, ex: Examples, method: MethodConfig, train: TrainConfig, iteration: int, seed: int):
    """train_iteration's loop written out with the full computation (every row forwarded, nothing skipped)."""
    beta, lam = method.beta_at(iteration), method.lam_at(iteration)
    rng = np.random.default_rng(derive_seed(seed, iteration, "shuffle"))
    batches = []
    for _ in range(train.epochs):
        perm = rng.permutation(len(ex)).tolist()
        batches += [perm[i : i + train.batch_size] for i in range(0, len(ex), train.batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, train, train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(len(batches), train))
    model.train()
    step_losses = []
    for idx in batches:
        loss = full_loss(model, ex, idx, method, beta=beta, lam=lam).losses.sum() / len(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_losses.append(float(loss.detach()))
    return step_losses, batches


@pytest.mark.slow  # trains
@pytest.mark.parametrize("name", ["spin", "tspin", "tspin_ref"])
def test_train_iteration_equals_the_full_computation_even_when_a_whole_step_is_skipped(name):
    """16 examples in steps of 4: one step holds only zero-gradient examples, so AdamW must still step on zero
    gradients (its momentum moves the weights) exactly as the full computation does."""
    ex = examples(with_ref_from=tiny_model(seed=4))
    ex = ex.concat(ex)  # 16 examples; ids 8..15 repeat 0..7
    method = MethodConfig(name=name, beta=0.1)
    train = TrainConfig(optimizer="adamw", lr=1e-3, epochs=2, batch_size=4, warmup_ratio=0.0, max_grad_norm=1.0)
    iteration, seed = 1, 0
    dead = {
        i
        for i in range(16)
        if zero_gradient(
            method.spec,
            method.beta_at(iteration),
            ex.annotated_ids[i],
            ex.synthetic_ids[i],
            ex.proto_ids[i] if name != "spin" else None,
        )
    }
    # choose the seed whose shuffle puts four zero-gradient examples into one step after a live one
    for seed in range(500):
        batches = _batches(16, 4, 2, iteration, seed)
        if any(set(b) <= dead for b in batches[1:]):
            break
    else:
        raise AssertionError("no seed in 0..499 gives a fully skipped step")
    # float64: in float32 the full computation's zero gradients come out as +-1e-9 noise, which AdamW's
    # normalisation (g / sqrt(v)) turns into lr-sized steps; the skip gives exact zeros
    base = tiny_model().double()
    ref_model, kit_model = copy.deepcopy(base), copy.deepcopy(base)
    want_losses, _ = reference_iteration(ref_model, ex, method, train, iteration, seed)
    got = train_iteration(kit_model, ex, method=method, train=train, iteration=iteration, seed=seed, cpu=True)
    np.testing.assert_allclose(got.step_losses, want_losses, rtol=0, atol=1e-5)
    for (k, a), b in zip(kit_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=k)
    assert not torch.equal(next(kit_model.parameters()), next(base.parameters()))


def _batches(n, bs, epochs, iteration, seed):
    rng = np.random.default_rng(derive_seed(seed, iteration, "shuffle"))
    out = []
    for _ in range(epochs):
        perm = rng.permutation(n).tolist()
        out += [perm[i : i + bs] for i in range(0, n, bs)]
    return out


def test_adamw_is_fused_where_torch_offers_it():
    opt = make_optimizer(tiny_model().parameters(), TrainConfig(optimizer="adamw"), 1e-3)
    assert opt.defaults.get("fused") is True


# ----------------------------------------------------------------------------- scoring


def test_score_responses_of_all_roles_in_one_call_equals_scoring_each_role_alone():
    """What the session records: y, y', y0 scored in one deduplicated, prompt-sharing call equal the
    per-role right-padded scoring (summed and per-token log-probs, entropy) to 1e-6."""
    model = tiny_model().eval()
    ex = examples()
    roles = [ex.annotated_ids, ex.synthetic_ids, ex.proto_ids]
    calls = []
    hook = model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    together = score_responses(model, ex.prompt_ids * 3, [r for role in roles for r in role], pad_id=PAD, batch_size=5)
    hook.remove()
    assert sum(calls) == 8  # 8 distinct prompts forwarded, in chunks of at most 5 prompts
    for k, ids in enumerate(roles):
        with torch.no_grad():
            alone = model_logps(model, collate(ex.prompt_ids, ids, PAD), with_entropy=True)
        for i in range(len(ids)):
            got = together[k * len(ids) + i]
            assert got["logp"] == pytest.approx(float(alone.summed[i]), rel=1e-6, abs=1e-6)
            assert got["entropy"] == pytest.approx(float(alone.entropy[i]), rel=1e-6, abs=1e-6)
            np.testing.assert_allclose(
                got["token_logps"], alone.token_logps[i][alone.mask[i]].numpy(), rtol=1e-6, atol=1e-6
            )


# ----------------------------------------------------------------------------- sessions


@pytest.mark.slow  # a toy session (trains the toy pi_0 on first use)
def test_session_records_equal_each_role_scored_alone(tmp_path):
    from tspin_kit.session import SelfPlaySession

    s = SelfPlaySession(small_config(tmp_path / "run", iterations=1, data={"num_examples": 24}))
    rec = s.run().examples
    ex = s.examples
    from tspin_kit.store import read_parquet

    syn = [
        list(map(int, x)) + [EOS]
        for x in read_parquet(tmp_path / "run/iterations/iter_000/generated.parquet")["synthetic_ids"]
    ]
    pro = [list(map(int, x)) + [EOS] for x in read_parquet(tmp_path / "run/proto.parquet")["proto_ids"]]
    ids = {"annotated": ex.annotated_ids, "synthetic": syn, "proto": pro}
    s.model.eval()
    for role, rows in ids.items():
        with torch.no_grad():
            alone = model_logps(s.model, collate(ex.prompt_ids, rows, PAD)).summed.numpy()
        np.testing.assert_allclose(rec[f"{role}_logp_after"].to_numpy(float), alone, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # toy sessions (train the toy pi_0 on first use)
def test_sft_records_switch(tmp_path):
    """Off: no y' is sampled and no y0, the y'/y0 columns hold NaN, and training is the same as with it on."""
    from tspin_kit.session import SelfPlaySession
    from tspin_kit.store import load_run

    runs = {}
    for on in (True, False):
        cfg = small_config(tmp_path / f"sft_{on}", iterations=2, method={"name": "sft"}, sft_records=on)
        s = SelfPlaySession(cfg)
        sampled = []
        orig = s._sample
        s._sample = lambda seed, desc, *a, _log=sampled, _orig=orig, **k: (
            _log.append(desc) or _orig(seed, desc, *a, **k)
        )
        s.run()
        runs[on] = (load_run(cfg.run_dir), sampled, s)
    on, off = runs[True], runs[False]
    assert any(d.startswith("generate") for d in on[1]) and "sample y0" in on[1]
    assert not any(d.startswith("generate") or d == "sample y0" for d in off[1])  # only the greedy evaluations
    assert not (off[0].run_dir / "proto.parquet").exists()
    e_on, e_off = on[0].examples, off[0].examples
    assert e_off["synthetic_logp_after"].isna().all() and e_off["proto_logp_before"].isna().all()
    assert e_off["current_advantage_after"].isna().all() and e_on["current_advantage_after"].notna().all()
    for c in ("annotated_logp_before", "annotated_logp_after", "loss"):
        np.testing.assert_allclose(e_off[c].to_numpy(float), e_on[c].to_numpy(float), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(off[0].metrics["score_after"], on[0].metrics["score_after"])
    assert set(e_off.columns) == set(e_on.columns)  # the same schema, readable by the same code
    # resume reads a run without proto.parquet
    again = SelfPlaySession.resume(off[0].run_dir)
    assert again.next_phase == "done" and again.proto_ids is None


@pytest.mark.slow  # prepares a toy session (trains the toy pi_0 on first use)
def test_a_run_made_before_the_switch_resumes(tmp_path):
    """Manifests written before `sft_records` existed lack it: such a run made the records, i.e. True."""
    import json

    from tspin_kit.session import SelfPlaySession

    cfg = small_config(tmp_path / "old", iterations=1, method={"name": "sft"})
    SelfPlaySession(cfg).prepare()
    manifest = tmp_path / "old" / "manifest.json"
    m = json.loads(manifest.read_text())
    del m["config"]["sft_records"]
    manifest.write_text(json.dumps(m))
    s = SelfPlaySession(cfg).prepare()  # no "different config" error
    assert s.proto_ids is not None and s.next_phase == "generate"
