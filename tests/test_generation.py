"""tspin_kit.generation: left padding, EOS and pad handling, chunk seeding, scoring.

Multi-process sharding (same samples with 1 and 2 processes) is tested in test_multiproc.py.
"""

from __future__ import annotations

import pytest
import torch

from tspin_kit import toy
from tspin_kit.generation import derive_seed, sample_responses, score_responses
from tspin_kit.logprobs import collate, model_logps
from tspin_kit.templates import encode_prompt, encode_response

PROMPTS = ["12+34=", "The sum of 99 and 10 is 99+10=", "5+5=", "71+28="]  # different lengths


def _ids(tok, prompts=PROMPTS):
    return [encode_prompt(tok, p) for p in prompts]


def _sample(model, tok, ids, **kw):
    args = {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 8,
        "batch_size": len(ids),
        "seed": 0,
    }
    args.update(kw)
    return sample_responses(model, tok, ids, **args)


def test_greedy_batched_equals_one_prompt_at_a_time(pi0):
    """Left padding + attention mask: a batch of prompts of different lengths decodes exactly like each
    prompt alone (positions are taken from the attention mask, so padding shifts nothing)."""
    model, tok = pi0
    ids = _ids(tok)
    assert len({len(x) for x in ids}) > 1
    batched = _sample(model, tok, ids, temperature=0.0, batch_size=4)
    alone = [_sample(model, tok, [x], temperature=0.0, batch_size=1)[0] for x in ids]
    assert batched == alone
    # and equals HF generate on the unpadded prompt
    for x, got in zip(ids, alone):
        out = model.generate(
            input_ids=torch.tensor([x]),
            do_sample=False,
            max_new_tokens=8,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[0, len(x) :].tolist()
        if tok.eos_token_id in out:
            out = out[: out.index(tok.eos_token_id)]
        assert got == [t for t in out if t != tok.pad_token_id]


def scripted_model(tok):
    """A real LlamaForCausalLM whose weights make greedy decoding emit <pad>, then 'a', then <eos>.

    Attention and MLP outputs are zeroed, so the last hidden state is the (normalised) embedding of the
    current token; each token's embedding points along one axis and lm_head maps that axis to the next token:
    any ordinary token -> <pad> -> 'a' -> <eos>.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    a = tok.convert_tokens_to_ids("a")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 10.0
        emb[tok.pad_token_id] = 0.0
        emb[tok.pad_token_id, 1] = 10.0
        emb[a] = 0.0
        emb[a, 2] = 10.0
        head = model.lm_head.weight
        head.zero_()
        head[tok.pad_token_id, 0] = 5.0  # after an ordinary token: <pad>
        head[a, 1] = 5.0  # after <pad>: 'a'
        head[tok.eos_token_id, 2] = 5.0  # after 'a': <eos>
    return model


def test_stops_at_eos_and_strips_pads():
    tok = toy.build_tokenizer()
    model = scripted_model(tok)
    ids = _ids(tok)
    raw = model.generate(
        input_ids=torch.tensor([ids[0]]),
        do_sample=False,
        max_new_tokens=6,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )[0, len(ids[0]) :].tolist()
    a = tok.convert_tokens_to_ids("a")
    assert raw[:3] == [
        tok.pad_token_id,
        a,
        tok.eos_token_id,
    ]  # the model really emits a pad, then stops
    out = _sample(model, tok, ids, temperature=0.0, max_new_tokens=6)
    assert out == [[a]] * len(ids)  # pad stripped, cut at EOS, nothing after it
    # cut at the first EOS even with room left, and the max_new_tokens cap holds when EOS never comes
    assert _sample(model, tok, ids, temperature=0.0, max_new_tokens=2) == [[a]] * len(ids)
    assert _sample(model, tok, ids, temperature=0.0, max_new_tokens=1) == [[]] * len(ids)


def test_sampled_responses_hold_no_special_tokens(pi0):
    model, tok = pi0
    out = _sample(model, tok, _ids(tok) * 4, max_new_tokens=12)
    assert all(tok.pad_token_id not in r and tok.eos_token_id not in r and len(r) <= 12 for r in out)


def test_same_seed_same_samples_other_seed_other_samples(pi0):
    model, tok = pi0
    ids = _ids(tok) * 2
    a = _sample(model, tok, ids, seed=7)
    assert a == _sample(model, tok, ids, seed=7)
    assert a != _sample(model, tok, ids, seed=8)
    # sampling never leaves the global torch RNG moved or the model in eval mode
    model.train()
    state = torch.random.get_rng_state()
    _sample(model, tok, ids, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())
    assert model.training
    model.eval()


def test_chunks_are_seeded_independently(pi0):
    """Chunk k is sampled under seed (seed, k): its samples depend on its own prompts only. The chunk size is
    part of the design (a different batch_size re-chunks, so it may change samples), hence a setting."""
    model, tok = pi0
    ids = _ids(tok) * 2  # 8 prompts, chunks of 4
    full = _sample(model, tok, ids, batch_size=4, seed=3)
    assert full[:4] == _sample(model, tok, ids[:4], batch_size=4, seed=3)  # chunk 0 alone
    other_tail = ids[:4] + _ids(tok, ["10+10="] * 4)
    assert _sample(model, tok, other_tail, batch_size=4, seed=3)[:4] == full[:4]  # chunk 1 changed, chunk 0 not
    # chunk 1 uses its own seed, not chunk 0's: the same prompts sampled as chunk 0 differ
    assert full[4:] != full[:4]


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "proto") == derive_seed(0, "proto")
    seeds = {
        derive_seed(0, "proto"),
        derive_seed(1, "proto"),
        derive_seed(0, 0, "synthetic"),
        derive_seed(0, 1, "synthetic"),
    }
    assert len(seeds) == 4 and all(0 <= s < 2**31 for s in seeds)


def test_score_responses_matches_one_at_a_time(pi0):
    model, tok = pi0
    ids = _ids(tok)
    responses = [encode_response(tok, r) for r in ["46", "109", "", "99 or so"]]
    calls = []
    scored = score_responses(
        model,
        ids,
        responses,
        pad_id=tok.pad_token_id,
        batch_size=3,
        progress=lambda d, t, name: calls.append((d, t, name)),
    )
    assert calls[-1] == (4, 4, "score") and len(calls) == 2
    for x, y, s in zip(ids, responses, scored):
        with torch.no_grad():
            lp = model_logps(model, collate([x], [y], tok.pad_token_id), with_entropy=True)
        assert s["logp"] == pytest.approx(lp.summed.item(), abs=1e-4)
        assert len(s["token_logps"]) == len(y)  # one per response token, EOS included
        assert sum(s["token_logps"]) == pytest.approx(s["logp"], abs=1e-4)
        assert s["entropy"] == pytest.approx(lp.entropy.item(), abs=1e-4)
