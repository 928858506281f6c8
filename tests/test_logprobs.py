"""tspin_kit.logprobs: the one summed-log-prob function (next-token shift) and the [y; y'; y0] layout."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from tspin_kit import logprobs as LP
from tspin_kit import toy
from tspin_kit.logprobs import collate, collate_pairs, collate_triplets, model_logps, sequence_logps


def naive_summed(logits, ids, loss_mask):
    """The expression sequence_logps must equal: gather(log_softmax) at the next token, masked, summed."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (lp * loss_mask[:, 1:]).sum(-1), lp


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequence_logps_equals_naive_gather(dtype):
    g = torch.Generator().manual_seed(0)
    n, t, v = 5, 9, 13
    logits = (torch.randn(n, t, v, generator=g) * 3).to(dtype)
    ids = torch.randint(0, v, (n, t), generator=g)
    loss_mask = (torch.rand(n, t, generator=g) > 0.4).long()
    loss_mask[0] = 0  # a row with no response token sums to 0
    out = sequence_logps(logits, ids, loss_mask)
    expected, per_token = naive_summed(logits, ids, loss_mask)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.summed.double(), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(out.token_logps.double(), per_token * loss_mask[:, 1:], atol=tol, rtol=tol)
    assert out.summed[0] == 0
    assert out.mask.shape == (n, t - 1) and out.mask.dtype == torch.bool
    assert torch.equal(out.mask, loss_mask[:, 1:].bool())
    assert out.summed.dtype == dtype  # float64 stays float64 (no silent downcast)


def test_half_precision_logits_are_upcast():
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    ids, mask = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4)
    out = sequence_logps(logits, ids, mask)
    assert out.summed.dtype == torch.float32
    torch.testing.assert_close(out.summed.double(), naive_summed(logits.float(), ids, mask)[0], atol=1e-5, rtol=1e-5)


def test_shift_on_a_hand_made_row():
    """One row, vocab {0, 1}, ids [0, 1, 1]; the response is the last two tokens.

    Position 0's logits [0, ln 3] predict token 1 (at position 1): p = 3/4.
    Position 1's logits [ln 4, 0] predict token 1 (at position 2): p = 1/5.
    Position 2's logits predict a token after the sequence: dropped (set to a huge value to prove it).
    So log pi(response) = ln(3/4) + ln(1/5).
    """
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(4), 0.0], [1e4, -1e4]]], dtype=torch.float64)
    ids = torch.tensor([[0, 1, 1]])
    loss_mask = torch.tensor([[0, 1, 1]])
    out = sequence_logps(logits, ids, loss_mask)
    assert out.summed.item() == pytest.approx(math.log(3 / 4) + math.log(1 / 5), abs=1e-6)
    assert out.token_logps[0].tolist() == pytest.approx([math.log(3 / 4), math.log(1 / 5)], abs=1e-6)
    # the prompt token is never scored: masking position 1 keeps only the last token's log-prob
    only_last = sequence_logps(logits, ids, torch.tensor([[0, 0, 1]]))
    assert only_last.summed.item() == pytest.approx(math.log(1 / 5), abs=1e-6)


def test_entropy_matches_direct_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (3, 6), generator=g)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
    out = sequence_logps(logits, ids, loss_mask, with_entropy=True)
    p = torch.softmax(logits[:, :-1], -1)
    h = -(p * torch.log(p)).sum(-1)  # (3, 5) entropy of each next-token distribution
    m = loss_mask[:, 1:].double()
    expected = (h * m).sum(-1) / m.sum(-1)
    torch.testing.assert_close(out.entropy.double(), expected, atol=1e-5, rtol=1e-5)
    # uniform logits: entropy is log V exactly
    uni = sequence_logps(
        torch.zeros(1, 3, 7),
        torch.zeros(1, 3, dtype=torch.long),
        torch.ones(1, 3),
        with_entropy=True,
    )
    assert uni.entropy.item() == pytest.approx(math.log(7), abs=1e-6)


def test_collate_triplets_literal_layout():
    pad = 0
    prompts = [[5, 6], [7]]  # x_0, x_1
    annotated = [[10, 2], [11, 12, 2]]  # y (each ends with EOS = 2)
    synthetic = [[20, 2], [2]]  # y'
    proto = [[30, 31, 32, 2], [33, 2]]  # y0
    b = collate_triplets(prompts, annotated, synthetic, proto, pad)
    assert b.input_ids.tolist() == [
        [5, 6, 10, 2, 0, 0],  # row 0: x_0 + y_0, right-padded
        [7, 11, 12, 2, 0, 0],  # row 1: x_1 + y_1
        [5, 6, 20, 2, 0, 0],  # row 2: x_0 + y'_0
        [7, 2, 0, 0, 0, 0],  # row 3: x_1 + y'_1 (an empty response is just EOS)
        [5, 6, 30, 31, 32, 2],  # row 4: x_0 + y0_0, the longest row sets the width
        [7, 33, 2, 0, 0, 0],  # row 5: x_1 + y0_1
    ]
    assert b.attention_mask.tolist() == [
        [1, 1, 1, 1, 0, 0],  # real tokens only
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0],
    ]
    assert b.loss_mask.tolist() == [
        [0, 0, 1, 1, 0, 0],  # loss on y_0 and its EOS, never on the prompt or the padding
        [0, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 1, 1, 0, 0, 0],
    ]
    # .chunk(3) recovers (annotated, synthetic, proto) in that order
    a, s, p = b.input_ids.chunk(3)
    assert a[1, :4].tolist() == [7, 11, 12, 2] and s[0, :4].tolist() == [5, 6, 20, 2] and p[0, 2] == 30


def test_collate_pairs_and_length_check():
    b = collate_pairs([[1]], [[4, 2]], [[5, 5, 2]], pad_id=9)
    assert b.input_ids.tolist() == [[1, 4, 2, 9], [1, 5, 5, 2]]  # [y; y']
    assert b.loss_mask.tolist() == [[0, 1, 1, 0], [0, 1, 1, 1]]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        collate([[1], [2]], [[3]], 0)


def test_right_padding_does_not_change_a_rows_logps(pi0):
    """The same (x, y) scored alone and next to a longer row: right padding leaves its log-prob unchanged."""
    model, tok = pi0
    x, y, long_y = [tok.bos_token_id, 20, 21], [22, 2], [23] * 9 + [2]
    alone = model_logps(model, collate([x], [y], tok.pad_token_id), with_entropy=True)
    padded = model_logps(model, collate([x, x], [y, long_y], tok.pad_token_id), with_entropy=True)
    torch.testing.assert_close(alone.summed[0], padded.summed[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.entropy[0], padded.entropy[0], atol=1e-5, rtol=0)


def test_rows_logps_forwards_each_distinct_row_once_with_the_same_values_and_gradients():
    """[y; y'; y0] with y' == y and y0 == y in some examples: deduplicated rows give the full batch's
    log-probs and, through autograd, the full batch's gradient (the copies' gradients add up)."""
    from tspin_kit import toy
    from tspin_kit.logprobs import rows_logps

    tok = toy.build_tokenizer()
    model = toy.build_model(
        tok, toy.ToyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2), seed=3
    ).double()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc("12+34="), enc("50+50=")]
    ann = [enc("46") + [tok.eos_token_id], enc("100") + [tok.eos_token_id]]
    syn = [ann[0], enc("10") + [tok.eos_token_id]]  # example 0: y' == y
    pro = [ann[0], ann[1]]  # both: y0 == y
    rows_p, rows_r = prompts * 3, ann + syn + pro  # 6 rows, 3 distinct
    pad = tok.pad_token_id
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25], dtype=torch.float64)

    full = model_logps(model, collate(rows_p, rows_r, pad)).summed
    (full * weights).sum().backward()
    grads_full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    dedup = rows_logps(model, rows_p, rows_r, pad)
    (dedup * weights).sum().backward()

    torch.testing.assert_close(dedup, full)
    assert dedup[0] == dedup[2] == dedup[4] and dedup[1] == dedup[5]
    for g_full, p in zip(grads_full, model.parameters()):
        # Llama's RMSNorm computes in float32 even in a float64 model, and the padded widths differ
        # (3 rows vs 6), so sums reassociate: equal to float32 precision, not bitwise.
        torch.testing.assert_close(p.grad, g_full, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- lean log-probs on a real model
# The model's log-probs are computed without its full (rows x length x vocab) logits: the head projects the
# response positions' hidden states in chunks (checkpointed under autograd). Each path is tested against the
# naive expression on the model's own full logits, in values and in gradients, with chunks small enough that
# every path takes several of them.

TOK = toy.build_tokenizer()
PAD = TOK.pad_token_id
PROMPTS = [[TOK.bos_token_id, 20, 21], [TOK.bos_token_id, 22], [TOK.bos_token_id, 20, 21]]
RESPONSES = [[22, 23, 24, 2], [25, 2], [30] * 7 + [2]]  # rows 0 and 2 share their prompt (a packed pair)


def tiny_llama(seed: int = 5, dtype=torch.float32):
    size = toy.ToyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return toy.build_model(TOK, size, seed=seed).to(dtype)


def naive_model_logps(model, batch):
    """gather(log_softmax(full logits)) at the next token, masked, per token (N, T-1) and summed (N,)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    lp = lp * batch.loss_mask[:, 1:]
    return lp.sum(-1), lp, logits


def param_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_values_and_grads(model, lean_fn, weights, tol=1e-5):
    """lean_fn(model) -> SequenceLogps of the rows of collate(PROMPTS, RESPONSES): equal to the naive gather."""
    batch = collate(PROMPTS, RESPONSES, PAD)
    model.zero_grad()
    want, want_tok, _ = naive_model_logps(model, batch)
    (want * weights).sum().backward()
    want_grads = param_grads(model)
    model.zero_grad()
    got = lean_fn(model)
    (got.summed.double() * weights).sum().backward()
    torch.testing.assert_close(got.summed.double(), want, atol=tol, rtol=tol)
    for i in range(len(RESPONSES)):
        torch.testing.assert_close(
            got.token_logps[i][got.mask[i]].double(), want_tok[i][batch.loss_mask[i, 1:].bool()], atol=tol, rtol=tol
        )
    got_grads = param_grads(model)
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=tol, rtol=tol, msg=name)
    return got


@pytest.mark.parametrize("chunk", [None, 7, 1])  # one chunk; several (checkpointed); one position per chunk
def test_model_logps_lean_equals_naive_gather_values_and_grads(monkeypatch, chunk):
    model = tiny_llama()
    vocab = model.config.vocab_size
    monkeypatch.setattr(LP, "CHUNK_ELEMENTS", chunk * vocab if chunk else LP.CHUNK_ELEMENTS)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    got = check_values_and_grads(model, lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD)), weights)
    assert got.mask.shape == (3, max(len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES)) - 1)


@pytest.mark.parametrize("chunk", [None, 3])
def test_packed_rows_lean_equal_naive_gather_values_and_grads(monkeypatch, chunk):
    model = tiny_llama()
    monkeypatch.setattr(LP, "CHUNK_ELEMENTS", chunk * model.config.vocab_size if chunk else LP.CHUNK_ELEMENTS)
    weights = torch.tensor([0.3, 1.0, -1.5], dtype=torch.float64)
    packed = LP.pack_rows(PROMPTS, RESPONSES, PAD)
    assert packed.input_ids.shape[0] == 2  # rows 0 and 2 share one packed sequence
    check_values_and_grads(model, lambda m: LP.packed_logps(m, packed), weights)


def test_packed_examples_lean_equal_naive_gather(monkeypatch):
    model = tiny_llama()
    monkeypatch.setattr(LP, "CHUNK_ELEMENTS", 2 * model.config.vocab_size)
    prompts = [[TOK.bos_token_id, 20, 21], [TOK.bos_token_id, 22]]
    roles = [[[22, 23, 2], [25, 2]], [[22, 23, 2], [26, 27, 2]], [[30, 2], [25, 2]]]  # y, y', y0; repeats share
    packed = LP.PackedExamples(prompts, roles, PAD)
    got = packed.logps(model, [0, 1])  # (2, 3)
    weights = torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.25, -3.0]], dtype=torch.float64)
    (got.double() * weights).sum().backward()
    got_grads = param_grads(model)
    model.zero_grad()
    flat_p = [prompts[i] for _ in roles for i in range(2)]
    flat_r = [r[i] for r in roles for i in range(2)]
    want, _, _ = naive_model_logps(model, collate(flat_p, flat_r, PAD))
    (want.view(3, 2).T * weights).sum().backward()
    torch.testing.assert_close(got.double(), want.view(3, 2).T, atol=1e-5, rtol=1e-5)
    for name, g in param_grads(model).items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_lean_entropy_and_no_grad_scoring_equal_full_logits(monkeypatch):
    model = tiny_llama()
    monkeypatch.setattr(LP, "CHUNK_ELEMENTS", 2 * model.config.vocab_size)
    batch = collate(PROMPTS, RESPONSES, PAD)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        full = sequence_logps(logits, batch.input_ids, batch.loss_mask, with_entropy=True, chunk_elements=10**9)
        lean = model_logps(model, batch, with_entropy=True)
    torch.testing.assert_close(lean.summed, full.summed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean.entropy, full.entropy, atol=1e-5, rtol=1e-5)


def test_lean_path_never_builds_full_logits():
    """The model's head is asked for one position per row; the rest goes through it in response-sized chunks."""
    model = tiny_llama()
    shapes = []
    handle = model.lm_head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    batch = collate(PROMPTS, RESPONSES, PAD)
    model_logps(model, batch)
    handle.remove()
    n_response = int(batch.loss_mask[:, 1:].sum())
    vocab = model.config.vocab_size
    assert shapes[0] == (3, 1, vocab)  # inside the model's forward: the last position only
    assert sum(s[0] for s in shapes[1:] if len(s) == 2) == n_response  # response positions only, once each
    assert all(len(s) != 3 or s[1] == 1 for s in shapes)


class _Around(torch.nn.Module):
    """A model around ``inner`` (its config and its head); subclasses say what their forward does with it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_output_embeddings(self):
        return self.inner.lm_head


def _scaled(inner):
    """``inner`` with its logits rescaled after the head (as logit soft-capping does): not a plain projection."""

    class Scaled(_Around):
        def forward(self, **kw):
            out = self.inner(**kw)
            out.logits = out.logits * 0.5 + 1.0
            return out

    return Scaled(inner)


def test_a_head_that_is_not_a_plain_projection_falls_back_to_the_models_logits():
    """A model that rescales its logits after the head (as logit soft-capping does) fails the run-time check
    and is scored from its own logits: still equal to the naive gather, values and gradients."""

    model = _scaled(tiny_llama())
    weights = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    check_values_and_grads(model, lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD)), weights)
    assert model in LP._NOT_PLAIN_HEAD


@pytest.mark.parametrize("chunk", [None, 7])
def test_lean_head_block_hooks_the_head_once_with_the_same_values_and_gradients(monkeypatch, chunk):
    """Inside `lean_head` the head carries one hook for the whole block (none is added or removed per call), the
    log-probs and gradients equal the naive gather, a call of the head outside the model's forward is left alone
    (the lean path applies the head to (M, H) states itself), and the hook is gone after the block. The model
    carries a hook of its own, as a DDP/FSDP2/accelerate-wrapped one would: it takes the head-tap path at every call
    (a plain model runs as its base model after its first call: test_a_plain_model_runs_as_its_base_model...)."""
    model = tiny_llama()
    model.register_forward_pre_hook(lambda module, args: None)
    monkeypatch.setattr(LP, "CHUNK_ELEMENTS", chunk * model.config.vocab_size if chunk else LP.CHUNK_ELEMENTS)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    head = model.lm_head
    added = []
    real_register = torch.nn.Module.register_forward_pre_hook
    monkeypatch.setattr(
        torch.nn.Module,
        "register_forward_pre_hook",
        lambda self, *a, **k: added.append(self) or real_register(self, *a, **k),
    )
    with LP.lean_head(model):
        assert len(head._forward_pre_hooks) == 1 and added == [head]
        for _ in range(2):  # two calls, as two training steps: still the block's one hook
            check_values_and_grads(model, lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD)), weights)
        states = torch.randn(5, model.config.hidden_size)
        assert head(states).shape == (5, model.config.vocab_size)  # a direct call: not cut to its last position
        with LP.lean_head(model):  # nested: no second hook
            assert len(head._forward_pre_hooks) == 1
        assert len(head._forward_pre_hooks) == 1
    assert added == [head] and len(head._forward_pre_hooks) == 0
    # after the block: one hook per call again, removed after it
    check_values_and_grads(model, lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD)), weights)
    assert added == [head, head] and len(head._forward_pre_hooks) == 0


def test_lean_head_block_removes_its_hook_when_the_block_raises():
    model = tiny_llama()
    with pytest.raises(RuntimeError, match="boom"), LP.lean_head(model):
        model_logps(model, collate(PROMPTS, RESPONSES, PAD))
        raise RuntimeError("boom")
    assert len(model.lm_head._forward_pre_hooks) == 0 and model not in LP._TAPPED


def test_a_forward_that_raises_after_the_head_leaves_the_blocks_hook_off_and_empty():
    """A forward that fails after its head ran (caught inside the block): the block's hook neither keeps that
    activation nor stays on (a later direct call of the head is not cut to its last position)."""

    class Failing(_Around):
        def forward(self, **kw):
            self.inner(**kw)
            raise RuntimeError("after the head")

    model = Failing(tiny_llama())
    with LP.lean_head(model):
        with pytest.raises(RuntimeError, match="after the head"):
            model_logps(model, collate(PROMPTS, RESPONSES, PAD))
        tap = LP._TAPPED[model][2]
        assert tap.hidden is None and not tap.on
        assert model.inner.lm_head(torch.randn(2, 5, model.config.hidden_size)).shape[1] == 5


def test_lean_head_block_with_a_head_that_is_not_a_plain_projection():
    """The run-time check still runs inside the block: a model that rescales its logits after the head falls back
    to its own logits (values and gradients as the naive gather), and its forwards are not cut afterwards."""
    model = _scaled(tiny_llama(seed=6))
    weights = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    with LP.lean_head(model):
        for _ in range(2):
            check_values_and_grads(model, lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD)), weights)
        assert model in LP._NOT_PLAIN_HEAD
        batch = collate(PROMPTS, RESPONSES, PAD)
        assert model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.shape[1] > 1


def _base_calls(model):
    """The keyword arguments of every call of ``model``'s base model (a hook on the base model, not on ``model``)."""
    calls = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    return calls


@pytest.mark.parametrize("chunk", [None, 7])
def test_a_plain_model_runs_as_its_base_model_after_its_first_call(monkeypatch, chunk):
    """After a first call that shows the model's forward is head(base_model(inputs)), the next calls run the base model
    alone (no head call inside a forward, no (N, 1, V) logits): values and gradients still equal the naive gather,
    for padded rows, packed rows and packed examples, with and without a `lean_head` block. No KV cache is asked
    for in any of these forwards."""
    model = tiny_llama()
    monkeypatch.setattr(LP, "CHUNK_ELEMENTS", chunk * model.config.vocab_size if chunk else LP.CHUNK_ELEMENTS)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    calls = _base_calls(model)
    padded = lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD))  # noqa: E731

    def cut():  # the head inside the model's forward, at the last position only
        return any(len(s) == 3 and s[1] == 1 for s in shapes)

    packed = LP.pack_rows(PROMPTS, RESPONSES, PAD)
    packed_fn = lambda m: LP.packed_logps(m, packed)  # noqa: E731
    for fn in (padded, packed_fn):  # the first call with each set of input names: the full forward, watched
        shapes.clear()
        check_values_and_grads(model, fn, weights)
        assert cut()
    assert len(LP.base_model_path(model)) == 2  # padded rows (no position_ids) and packed rows
    for fn in (padded, packed_fn):
        for block in (contextlib.nullcontext, LP.lean_head):
            shapes.clear()
            with block(model):
                check_values_and_grads(model, fn, weights)  # (the naive gather's full forward, then the lean path)
            assert not cut() and any(len(s) == 2 for s in shapes)  # no forward's head: the (M, V) chunks
    # the lean path's six forwards asked for no cache (the naive gather's, the model's own call, left it unset)
    assert [kwargs.get("use_cache") for kwargs in calls] == [None, False] * 6
    # packed examples (the names of packed rows: direct from the first call), values and gradients as the naive gather
    prompts = [[TOK.bos_token_id, 20, 21], [TOK.bos_token_id, 22]]
    roles = [[[22, 23, 2], [25, 2]], [[22, 23, 2], [26, 27, 2]], [[30, 2], [25, 2]]]
    examples = LP.PackedExamples(prompts, roles, PAD)
    flat_p = [prompts[i] for _ in roles for i in range(2)]
    flat_r = [r[i] for r in roles for i in range(2)]
    w = torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.25, -3.0]], dtype=torch.float64)
    model.zero_grad()
    want, _, _ = naive_model_logps(model, collate(flat_p, flat_r, PAD))
    (want.view(3, 2).T * w).sum().backward()
    want_grads = param_grads(model)
    for _ in range(2):
        model.zero_grad()
        shapes.clear()
        got = examples.logps(model, [0, 1])
        (got.double() * w).sum().backward()
        torch.testing.assert_close(got.double(), want.view(3, 2).T, atol=1e-5, rtol=1e-5)
        for name, g in param_grads(model).items():
            torch.testing.assert_close(g, want_grads[name], atol=1e-5, rtol=1e-5, msg=name)
        assert shapes and all(len(s) == 2 for s in shapes)  # the first packed call too: its names were seen


def test_a_deep_copy_of_a_seen_model_takes_the_shortcut_through_its_own_modules():
    """What the first call saw is kept on the model: a deep copy (same class, same state) runs as its own base model
    from its first call, its own head applied; its values and gradients are its own (weights changed after the copy),
    and the original model gets no gradient from it."""
    import copy

    model = tiny_llama(seed=9)
    padded = lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD))  # noqa: E731
    padded(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    (paths,) = LP.base_model_path(twin).values()
    assert paths[0] is twin.model and paths[1] is twin.lm_head
    shapes = []
    twin.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    model.zero_grad()
    check_values_and_grads(twin, padded, torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64))
    assert not any(len(s) == 3 and s[1] == 1 for s in shapes)  # no forward's head call at all: the shortcut
    assert all(p.grad is None for p in model.parameters())


def _tiny(arch: str):
    """A 2-layer causal LM of another architecture, built in code (vocabulary 100, hidden 32)."""
    import transformers as tf

    torch.manual_seed(11)
    small = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, pad_token_id=0)
    configs = {
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(small, intermediate_size=64, num_key_value_heads=2)),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(small, intermediate_size=64, num_key_value_heads=2)),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(small, intermediate_size=64, num_key_value_heads=2)),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, dict(small, intermediate_size=64, num_key_value_heads=2)),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(vocab_size=100, n_embd=32, n_layer=2, n_head=2)),
        "opt": (tf.OPTConfig, tf.OPTForCausalLM, dict(small, ffn_dim=64, word_embed_proj_dim=32, eos_token_id=2)),
    }
    config, cls, kw = configs[arch]
    kw.setdefault("bos_token_id", 1)
    kw.setdefault("eos_token_id", 2)
    return cls(config(**kw)).eval()  # (GPT-2 and OPT have dropout)


@pytest.mark.parametrize(
    ("arch", "shortcut"),
    [("qwen2", True), ("mistral", True), ("phi3", True), ("gemma2", False), ("gpt2", False), ("opt", False)],
)
def test_other_architectures_take_the_shortcut_only_where_their_forward_allows_it(arch, shortcut):
    """Across architectures the first call decides, and every call equals the naive gather of the model's own logits
    (values and gradients): Qwen2, Mistral and Phi-3 pass their inputs through to their base model and feed its
    output to the head (the shortcut); Gemma-2 soft-caps its logits (its config says so: its own logits); GPT-2 and
    OPT hand their base model the inputs in another form (positional, or with other arguments): their full forward,
    at every call."""
    model = _tiny(arch)
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    padded = lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD))  # noqa: E731
    for _ in range(2):
        check_values_and_grads(model, padded, weights)
    assert bool(LP.base_model_path(model)) is shortcut
    assert (LP._lean_head(model) is None) is (arch == "gemma2")  # its config says the logits are post-processed


class _Between(type(tiny_llama())):
    """A causal LM whose forward does more than head(base_model(inputs)), by ``change``: "hidden" rescales the hidden
    states between the base model and the head (the head is still a plain projection of its input); "inplace"
    rescales them in place; "detach" detaches them (a frozen backbone); "train_only" rescales them in training mode
    only (as a dropout there would); "inputs" hands the base model a new input_ids tensor of the same values."""

    change = "hidden"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if self.change == "inputs":
            input_ids = input_ids.clone()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        hidden = out.last_hidden_state
        if self.change == "hidden" or (self.change == "train_only" and self.training):
            hidden = hidden * 0.5
        elif self.change == "inplace":
            hidden.mul_(0.5)
        elif self.change == "detach":
            hidden = hidden.detach()
        return SimpleNamespace(logits=self.lm_head(hidden))


BETWEEN = ("hidden", "inplace", "detach", "train_only", "inputs")


@pytest.mark.filterwarnings("ignore:For backward hooks to be called")  # (torch: a ModelOutput is no tensor)
@pytest.mark.parametrize("change", [*BETWEEN, "hook", "hooked_later", "global_hook", "backward_hook"])
def test_models_that_do_more_than_head_of_base_model_keep_their_full_forward(change):
    """The base-model shortcut only for a model seen to be head(base_model(inputs)) in the call's training and grad
    mode, and still unwrapped: a model that changes the hidden states between its base model and its head (out of
    place, in place, detached, or in training mode only, after a first call in eval mode without gradients), hands its
    base model other tensors, or carries a hook of its own (from the start, or added after a first call, as FSDP2's
    ``fully_shard`` would) runs its own forward at every call, and its values and gradients equal the naive gather of
    its own logits."""
    seeded = tiny_llama(seed=8)
    model = seeded
    if change in BETWEEN:
        model = _Between(seeded.config)
        model.load_state_dict(seeded.state_dict())
        model.change = change
    model.train()
    forwards = []
    if change == "hook":
        model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    if change == "backward_hook":  # runs on the gradients of the model's own outputs: only if its forward ran
        model.register_full_backward_hook(lambda module, grad_in, grad_out: forwards.append(1))
    handle = None
    if change == "global_hook":  # a hook on every module's forward, the model's own included
        handle = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: forwards.append(1) if module is model else None
        )
    try:
        weights = torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64)
        padded = lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD))  # noqa: E731
        if change == "train_only":  # seen in eval mode without gradients, where the forward is head(base_model(...))
            model.eval()
            with torch.no_grad():
                padded(model)
            assert [key[1:] for key in LP.base_model_path(model)] == [(False, False)]
            model.train()
        check_values_and_grads(model, padded, weights)
        training_key = [key for key in LP.base_model_path(model) if key[1:] == (True, True)]
        if change == "hooked_later":
            assert training_key  # seen to be head(base_model(...)); now hooked, as fully_shard does
            model.register_forward_pre_hook(lambda module, args: forwards.append(1))
        else:
            assert not training_key
        shapes = []
        model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
        forwards.clear()
        for _ in range(2):
            check_values_and_grads(model, padded, weights)
    finally:
        if handle is not None:
            handle.remove()
    assert any(len(s) == 3 and s[1] == 1 for s in shapes) or change in BETWEEN
    if change in ("hook", "hooked_later", "global_hook"):
        assert len(forwards) == 4  # the model's own forward (its hook with it) at every call: naive, then lean, twice
    if change in BETWEEN:  # the head saw its input from the model's own forward: the lean path, through the forward
        assert model in LP._PLAIN_HEAD and any(len(s) == 2 for s in shapes)
        assert not [key for key in LP.base_model_path(model) if key[1:] == (True, True)]


def test_unwrapped_refuses_every_way_a_models_own_call_can_do_more():
    """`_unwrapped` (checked at every call of the shortcut) is false for a compiled model, under a global backward
    hook, with accelerate's hook attribute, with an instance forward, and for a module that is no transformers model."""
    model = tiny_llama()
    assert LP._unwrapped(model)
    model.compile(backend="eager")  # (compiled lazily: nothing is traced here)
    assert not LP._unwrapped(model)
    for make in (
        lambda m: torch.nn.modules.module.register_module_full_backward_hook(lambda *a: None),
        lambda m: setattr(m, "_hf_hook", object()),
        lambda m: setattr(m, "forward", m.forward),
    ):
        other = tiny_llama()
        handle = make(other)
        try:
            assert not LP._unwrapped(other)
        finally:
            if handle is not None:
                handle.remove()
        assert LP._unwrapped(tiny_llama())  # (the global hook is gone)
    assert not LP._unwrapped(torch.nn.Linear(2, 2))


def test_no_kv_cache_argument_for_a_forward_that_does_not_take_it():
    """A model whose config says ``use_cache`` but whose forward takes no such argument (remote code can be written
    so) is called with its inputs unchanged, and scored as the naive gather."""

    class NoCacheArgument(_Around):
        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    model = NoCacheArgument(tiny_llama(seed=13))
    assert model.config.use_cache
    weights = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    check_values_and_grads(model, lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD)), weights)


def test_a_new_head_or_a_resized_vocabulary_is_used_from_the_next_call():
    """The shortcut remembers the head it was seen with: after ``resize_token_embeddings`` (an untied model gets a new
    head) or a replaced head, the next call goes through the model's forward again and uses the new head (values and
    gradients as the naive gather), and the shortcut is then taken with it."""
    model = tiny_llama(seed=12)
    model.config.tie_word_embeddings = False
    weights = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    padded = lambda m: model_logps(m, collate(PROMPTS, RESPONSES, PAD))  # noqa: E731
    check_values_and_grads(model, padded, weights)
    ((base, head, vocab),) = LP.base_model_path(model).values()
    model.lm_head = torch.nn.Linear(model.config.hidden_size, vocab, bias=False)
    check_values_and_grads(model, padded, weights)
    ((_, new_head, _),) = LP.base_model_path(model).values()
    assert new_head is model.lm_head and new_head is not head
    model.resize_token_embeddings(vocab + 8)
    check_values_and_grads(model, padded, weights)
    ((_, resized, new_vocab),) = LP.base_model_path(model).values()
    assert resized is model.get_output_embeddings() and new_vocab == vocab + 8


def test_no_kv_cache_is_asked_for_where_the_config_has_none():
    """``use_cache=False`` is added only where the model's config would build a cache: a model whose config already
    turns it off (gradient checkpointing does) gets its inputs unchanged."""
    model = tiny_llama()
    model.config.use_cache = False
    calls = _base_calls(model)
    model_logps(model, collate(PROMPTS, RESPONSES, PAD))
    assert calls and all("use_cache" not in kwargs or kwargs["use_cache"] is None for kwargs in calls)


def test_sequence_logps_chunks_keep_the_logits_dtype():
    """Given bf16 logits, only one chunk at a time is upcast: the result equals the float32 computation."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 6, 50, generator=g).to(torch.bfloat16)
    ids = torch.randint(0, 50, (3, 6), generator=g)
    mask = torch.ones(3, 6)
    got = sequence_logps(logits, ids, mask, chunk_elements=100)  # 2 positions per chunk
    torch.testing.assert_close(got.summed.double(), naive_summed(logits.float(), ids, mask)[0], atol=1e-5, rtol=1e-5)
    assert logits.dtype == torch.bfloat16 and got.summed.dtype == torch.float32


# ----------------------------------------------------------------------------- sliding-window attention


def _tiny_mistral(window: int):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=window,
        pad_token_id=0,
    )
    cfg._attn_implementation = "eager"
    return MistralForCausalLM(cfg).eval()


def test_sliding_window_models_pack_only_rows_that_fit_the_window():
    """A custom 4D mask replaces the model's own, window included: rows longer than the window must not be packed
    (the model then applies its window itself), and the default path equals one forward per row."""
    from tspin_kit.logprobs import collate, model_logps, rows_logps, supports_packing

    prompts = [[5, 6, 7, 8, 9]] * 3 + [[10, 11]]
    responses = [[12, 13, 14], [12, 13, 15, 16], [17], [18, 19]]
    naive = lambda m: torch.cat([model_logps(m, collate([p], [r], 0)).summed for p, r in zip(prompts, responses)])  # noqa: E731
    narrow = _tiny_mistral(window=4)  # rows are up to 9 tokens: the window hides keys
    assert not supports_packing(narrow, 9) and supports_packing(narrow, 4) and not supports_packing(narrow)
    with torch.no_grad():
        want = naive(narrow)
        torch.testing.assert_close(rows_logps(narrow, prompts, responses, 0), want, rtol=0, atol=1e-5)
        forced = rows_logps(narrow, prompts, responses, 0, share_prompt=True)
    assert (forced - want).abs().max() > 1e-3  # packing anyway would have changed the numbers
    wide = _tiny_mistral(window=32)  # every row fits: packing is on and exact
    assert supports_packing(wide, 9)
    with torch.no_grad():
        torch.testing.assert_close(rows_logps(wide, prompts, responses, 0), naive(wide), rtol=0, atol=1e-5)


def test_supports_packing_measures_the_rows_only_under_a_window():
    """``longest`` may be a function: called for a model with a sliding window, never for one without."""
    from tspin_kit.logprobs import supports_packing

    def unmeasured():
        raise AssertionError("measured the rows of a model without a window")

    assert supports_packing(toy.build_model(toy.build_tokenizer()), unmeasured)
    narrow = _tiny_mistral(window=4)
    assert not supports_packing(narrow, lambda: 9) and supports_packing(narrow, lambda: 4)


def test_training_pack_follows_the_sliding_window_rule():
    """`training.training_pack` packs an iteration's examples only where every row (prompt + any role) fits the
    model's window; a model without a window packs whatever the rows' length."""
    from tspin_kit.config import MethodConfig
    from tspin_kit.logprobs import PackedExamples
    from tspin_kit.training import Examples, training_pack

    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    ex = Examples(
        prompt_ids=prompts,
        annotated_ids=[[12, 13], [14]],
        synthetic_ids=[[15], [16, 17]],
        proto_ids=[[18, 19, 20, 21], [22]],  # the longest row: 5 + 4 = 9 tokens, in the third role only
    )
    tspin, spin = MethodConfig(name="tspin"), MethodConfig(name="spin")
    assert training_pack(_tiny_mistral(window=8), ex, tspin) is None  # y0's row passes the window
    assert isinstance(training_pack(_tiny_mistral(window=8), ex, spin), PackedExamples)  # y, y' rows: 7 tokens
    assert isinstance(training_pack(_tiny_mistral(window=9), ex, tspin), PackedExamples)
    assert isinstance(training_pack(toy.build_model(toy.build_tokenizer()), ex, tspin), PackedExamples)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_each_steps_mask_survives_a_second_forward_before_the_backward(impl):
    """The CPU mask must not be shared between forwards: with gradient checkpointing the backward recomputes each
    layer's forward with the mask its graph holds (a reused buffer gave silently wrong gradients here)."""
    import numpy as np

    from tspin_kit.logprobs import PackedExamples, _additive, _allowed

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 6
    prompts = [list(rng.integers(3, 20, size=rng.integers(2, 6))) for _ in range(n)]
    roles = [[list(rng.integers(3, 20, size=rng.integers(1, 5))) for _ in range(n)] for _ in range(3)]
    roles[1][0] = roles[0][0]  # a repeated response shares its positions
    packed = PackedExamples(prompts, roles, 0)
    for cache in (LP.MASK_CACHE_ELEMENTS, 0):  # every example's mask kept / built per step in the scratch arrays
        for dtype in (
            torch.float32,
            torch.bfloat16,
            torch.float64,
        ):  # (bf16: numpy has none, the cache must not need it)
            for idx in ([0, 1, 2], [3, 4], [5, 0], [0, 1, 2, 3, 4, 5]):  # both equal the plain construction
                t = np.asarray(idx)
                seg = packed._segments[t, : int(packed._lengths[t].max())]
                plain = _additive(torch.from_numpy(~_allowed(seg, np.tri(seg.shape[1], dtype=bool))), dtype)
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(LP, "MASK_CACHE_ELEMENTS", cache)
                    got = packed._cpu_mask(t, seg.shape[1], dtype)
                assert torch.equal(got, plain) and got.is_contiguous() and got.dtype == dtype

    model = toy.build_model(toy.build_tokenizer())
    model.config._attn_implementation = impl
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    def grads(*batches):
        model.zero_grad(set_to_none=True)
        first = [packed.logps(model, b).sum() for b in batches][0]
        first.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    for cache in (LP.MASK_CACHE_ELEMENTS, 0):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(LP, "MASK_CACHE_ELEMENTS", cache)
            alone = grads([0, 1, 2])
            assert torch.equal(grads([0, 1, 2], [3, 4, 5]), alone)  # another step's forward in between: no change


def test_packed_examples_equal_the_example_by_example_construction():
    """The vectorised PackedExamples lays out every field as the plain per-example loop does (tests/helpers): repeated
    responses (y' == y, y0 == y, y0 == y'), empty responses and prompts, one role, one example."""
    import numpy as np
    from helpers.packing_reference import reference_pack

    from tspin_kit.logprobs import PackedExamples

    rng = np.random.default_rng(7)
    cases = []
    for n, k in [(1, 1), (1, 3), (5, 2), (40, 3)]:
        prompts = [list(map(int, rng.integers(3, 30, size=rng.integers(0, 7)))) for _ in range(n)]
        roles = [[list(map(int, rng.integers(3, 30, size=rng.integers(0, 6)))) for _ in range(n)] for _ in range(k)]
        for i in range(n):  # repeats of every kind
            if k > 1 and rng.random() < 0.4:
                roles[1][i] = list(roles[0][i])
            if k > 2 and rng.random() < 0.3:
                roles[2][i] = list(roles[int(rng.integers(0, 2))][i])
        cases.append((prompts, roles))
    cases.append(([[1, 2, 3], [4]], [[[5, 6], [7]], [[5, 6], [8, 9]], [[5, 6], [7]]]))  # all three equal, y0 == y
    for prompts, roles in cases:
        got = PackedExamples(prompts, roles, 0)
        want = reference_pack(prompts, roles, 0)
        for name, value in want.items():
            mine = getattr(got, name).numpy()
            assert mine.shape == value.shape and mine.dtype == value.dtype, name
            assert np.array_equal(mine, value), name


def test_packed_examples_edge_cases():
    """No examples at all; responses given as lists, tuples or arrays are one branch when their tokens are equal."""
    import numpy as np

    from tspin_kit.logprobs import PackedExamples

    empty = PackedExamples([], [[], [], []], 0)
    assert empty.input_ids.shape[0] == 0 and empty.mask.shape[:2] == (0, 3) and not empty.mask.any()
    as_lists = PackedExamples([[1, 2]], [[[5, 6]], [[5, 6]], [[7]]], 0)
    mixed = PackedExamples([[1, 2]], [[[5, 6]], [(5, 6)], [np.array([7])]], 0)
    for name in ("input_ids", "position_ids", "segments", "src", "targets", "mask", "token_counts"):
        assert torch.equal(getattr(mixed, name), getattr(as_lists, name)), name
    assert as_lists.input_ids.tolist() == [[1, 2, 5, 6, 7]]  # y' == y shares y's branch
