"""Batched sampling vs one prompt at a time, and KV cache on vs off.

``tspin_kit.generation.sample_responses`` over N toy-addition prompts (default 200) with
batch_size=250 (one generate call) vs batch_size=1 (N calls). Sampling settings are the session
defaults (temperature 1, top_p 1, top_k 0, max_new_tokens 16).

The model is the toy world's pi_0 (``toy.initial_policy``: SFT of the tiny Llama on 1000 addition pairs,
cached under $TSPIN_CACHE, default benchmarks/.cache), so responses stop at EOS after 3-4 tokens as in
a real run, when pi_0 is already cached (``--model pi0`` builds it); otherwise (``--model auto``) the
random-init tiny model is used (a random model rarely emits EOS, so every row runs to max_new_tokens;
the ratio is still batched vs unbatched work).

KV cache: ``model.generate`` on the same left-padded batch with use_cache=True vs False (sample_responses
always uses the cache, so this calls generate directly with the same arguments).

The speedup is per response: (one-at-a-time seconds / its prompts) / (batched seconds / its prompts);
by default both run over all N prompts, ``--quick`` samples only 12 prompts one at a time.

Target: batched >= 20x faster than one at a time (median of per-repeat ratios).
"""

from __future__ import annotations

import time

import _common as C


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--model", choices=["auto", "pi0", "random"], default="auto")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument(
        "--single-prompts",
        type=int,
        default=None,
        help="prompts sampled one at a time (default: all; --quick: 12); the ratio is per response",
    )
    args = ap.parse_args()
    C.apply_threads(args)
    repeats = args.repeats or (2 if args.quick else 5)
    n = args.prompts or (60 if args.quick else 200)
    n1 = min(n, args.single_prompts or (12 if args.quick else n))

    import torch

    from tspin_kit import toy
    from tspin_kit.generation import sample_responses
    from tspin_kit.templates import encode_prompt

    tok = toy.build_tokenizer()
    world, _ = toy.make_world("addition", 1000, 500, 0)
    which = args.model
    if which == "auto":
        which = "pi0"
        if not any((toy.cache_dir() / "pi0").glob("addition-1000-*/config.json")):
            which = "random"
    t0 = time.perf_counter()
    if which == "pi0":
        model, tok = toy.initial_policy("addition", world)
    else:
        model = toy.build_model(tok)
    model_seconds = time.perf_counter() - t0
    model.eval()
    _, held = toy.make_world("addition", 1000, 500, 0)
    prompt_ids = [encode_prompt(tok, r["prompt"]) for r in held[:n]]
    kw = dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens, seed=0)

    def batched():
        t = time.perf_counter()
        out = sample_responses(model, tok, prompt_ids, batch_size=250, **kw)
        return time.perf_counter() - t, out

    def single(k=None):
        t = time.perf_counter()
        out = sample_responses(model, tok, prompt_ids[: k or n1], batch_size=1, **kw)
        return time.perf_counter() - t, out

    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(prompt_ids):
        ids[i, width - len(r) :] = torch.tensor(r)
        attn[i, width - len(r) :] = 1

    @torch.no_grad()
    def gen(use_cache):
        torch.manual_seed(0)
        t = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=attn,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            use_cache=use_cache,
        )
        return time.perf_counter() - t, out.shape[1] - width

    # warm-up (excluded)
    batched()
    single(5)
    gen(True)
    gen(False)

    tb, ts, tc, tn, speedup, cache_speedup = [], [], [], [], [], []
    steps_cached = steps_nocache = None
    lengths = None
    for r in range(repeats):
        if r % 2 == 0:
            a, out = batched()
            b, _ = single()
        else:
            b, _ = single()
            a, out = batched()
        lengths = [len(x) for x in out]
        tb.append(a)
        ts.append(b)
        speedup.append((b / n1) / (a / n))  # seconds per response, one at a time / batched
        if r % 2 == 0:
            c, steps_cached = gen(True)
            d, steps_nocache = gen(False)
        else:
            d, steps_nocache = gen(False)
            c, steps_cached = gen(True)
        tc.append(c)
        tn.append(d)
        cache_speedup.append(d / c)

    sp = C.stats(speedup)
    tgt = C.target("batched (250) vs one-at-a-time speedup (median)", sp["median"], ">=", 20.0, "x")
    result = {
        "benchmark": "generation",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {
            "prompts": n,
            "prompts_one_at_a_time": n1,
            "repeats": repeats,
            "model": which,
            "model_load_seconds": model_seconds,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "mean_response_tokens": sum(lengths) / len(lengths),
        },
        "batched_seconds": C.stats(tb),
        "one_at_a_time_seconds": C.stats(ts),
        "batched_responses_per_s": C.stats([n / t for t in tb]),
        "one_at_a_time_responses_per_s": C.stats([n1 / t for t in ts]),
        "speedup": sp,
        "kv_cache": {
            "with_cache_seconds": C.stats(tc),
            "without_cache_seconds": C.stats(tn),
            "speedup": C.stats(cache_speedup),
            "generated_steps_cached": steps_cached,
            "generated_steps_uncached": steps_nocache,
        },
        "targets": [tgt],
        **tgt,
    }
    rows = [
        [
            "sample_responses batch 250",
            n,
            result["batched_seconds"]["median"],
            result["batched_responses_per_s"]["median"],
            "",
        ],
        [
            "sample_responses batch 1",
            n1,
            result["one_at_a_time_seconds"]["median"],
            result["one_at_a_time_responses_per_s"]["median"],
            f"{sp['median']:.1f}x [{sp['min']:.1f}, {sp['max']:.1f}]",
        ],
        [
            "generate batch, KV cache",
            n,
            result["kv_cache"]["with_cache_seconds"]["median"],
            n / result["kv_cache"]["with_cache_seconds"]["median"],
            "",
        ],
        [
            "generate batch, no cache",
            n,
            result["kv_cache"]["without_cache_seconds"]["median"],
            n / result["kv_cache"]["without_cache_seconds"]["median"],
            f"cache {result['kv_cache']['speedup']['median']:.1f}x faster",
        ],
    ]
    table = C.fmt_table(["variant", "prompts", "median s", "responses/s", "ratio"], rows)
    table += (
        f"\nmodel {which}, mean response {result['settings']['mean_response_tokens']:.1f} tokens; "
        f"target >= 20x: {'met' if tgt['met'] else 'NOT met'} ({sp['median']:.1f}x); {repeats} repeats"
    )
    C.emit(result, table)


if __name__ == "__main__":
    main()
