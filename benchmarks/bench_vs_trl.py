"""One SPIN iteration's training: tspin_kit vs TRL's DPOTrainer in its best configuration, doing the same work.

Headline (the target): data with **no repeated rows** (y' != y, as on chat data: nothing can be forwarded
once instead of twice) and TRL with ``precompute_ref_log_probs=True`` (the reference scored once before
training, as tspin_kit does), its precompute timed. Second row, for context: the toy data, where y' == y
for ~65% of prompts and tspin_kit forwards such repeated rows once (TRL forwards both).

Same work on both sides:
- model: the toy Llama (``tiny``: hidden 128 / intermediate 256, and ``wide``: hidden 512 / intermediate 1024,
  4x wider), a fresh copy of the same initial weights for every run, fp32, no gradient checkpointing;
- data: N toy-addition prompts (default 1000); chosen = annotated y, rejected = synthetic y'
  (benchmarks/_common.toy_world, ``repeats=False`` for the headline). TRL gets a ``datasets.Dataset`` with
  prompt / chosen / rejected text; the toy prompt template is the raw prompt text and TRL appends EOS, so TRL
  tokenises exactly the same ids as tspin_kit (checked at start-up, reported as ``tokenisation_identical``);
- loss: SPIN = sigmoid DPO, lam = beta = 1.0; reference = the starting policy. TRL: no ``ref_model`` and
  ``precompute_ref_log_probs=True``: TRL scores the reference once inside the trainer's construction
  (``_precompute_ref_logps``, timed and added to TRL's time; the datasets cache is off so no run reuses
  another's precompute). tspin_kit: the reference log-probs of y and y' from one ``score_responses`` call
  (timed, included);
- optimisation: AdamW, lr 2e-5, weight decay 0, constant schedule, no warmup, grad-norm clip 1.0,
  batch 64, E epochs (default 2, the session default), same number of steps (TRL's ``adamw_torch``;
  tspin_kit uses torch's fused AdamW where torch offers it: that is one of the things compared);
- TRL: no evaluation, no logging (``logging_strategy='no'``, ``report_to=[]``), no saving, ``use_cpu``.

Timed: TRL ``trainer.train()`` + its reference precompute (tokenisation excluded); tspin_kit: the reference
``score_responses`` call + ``train_iteration`` (Examples built beforehand). ratio = TRL seconds / tspin_kit
seconds per repeat, the two runs back to back, order alternating. Target: ratio >= 1.3 on both sizes on the
data with no repeated rows (median). ``--trl-live`` adds TRL with its default live reference model.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time

import _common as C

SIZES = {"tiny": dict(hidden_size=128, intermediate_size=256), "wide": dict(hidden_size=512, intermediate_size=1024)}


def main() -> None:
    ap = C.parse_quick()
    ap.add_argument("--num", type=int, default=None, help="training examples (default 1000; --quick 128)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default 2; --quick 1)")
    ap.add_argument("--sizes", default="tiny,wide")
    ap.add_argument("--data", default="distinct,toy", help="distinct (no repeated rows, the headline), toy, or both")
    ap.add_argument("--trl-live", action="store_true", help="also time TRL with a live reference model")
    args = ap.parse_args()
    C.apply_threads(args)
    repeats = args.repeats or (1 if args.quick else 5)
    num = args.num or (128 if args.quick else 1000)
    epochs = args.epochs or (1 if args.quick else 2)
    sizes, datas = args.sizes.split(","), args.data.split(",")
    lr, lam, bs = 2e-5, 1.0, 64

    import datasets
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from tspin_kit import toy
    from tspin_kit.config import MethodConfig, TrainConfig
    from tspin_kit.generation import score_responses
    from tspin_kit.training import train_iteration

    datasets.disable_caching()  # a cached precompute (keyed by data and weights) would skip TRL's reference pass
    precompute_s = []
    orig_precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):
        t0 = time.perf_counter()
        out = orig_precompute(self, *a, **k)
        precompute_s.append(time.perf_counter() - t0)
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute

    tok = toy.build_tokenizer()
    worlds = {}
    for d in datas:
        ex, (prompts, ann, syn, _pro) = C.toy_examples(tok, num, repeats=(d != "distinct"))
        worlds[d] = (ex, Dataset.from_dict({"prompt": prompts, "chosen": ann, "rejected": syn}))
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")

    def trl_args(precompute: bool):
        return DPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=bs,
            num_train_epochs=epochs,
            learning_rate=lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            beta=lam,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=precompute,
            max_length=None,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )

    train_cfg = TrainConfig(
        optimizer="adamw",
        lr=lr,
        epochs=epochs,
        batch_size=bs,
        warmup_ratio=0.0,
        schedule="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
    )
    method = MethodConfig(name="spin", lam=lam)

    def trl_trainer(base, ds, precompute: bool):
        model = copy.deepcopy(base)
        ref = None if precompute else copy.deepcopy(base).eval()
        tr = DPOTrainer(model=model, ref_model=ref, args=trl_args(precompute), train_dataset=ds, processing_class=tok)
        # with disable_tqdm the Trainer prints its final metrics dict on stdout: keep stdout for our JSON
        tr.remove_callback(PrinterCallback)
        return tr

    def run_trl(base, ds, precompute: bool):
        n0 = len(precompute_s)
        tr = trl_trainer(base, ds, precompute)
        pre = sum(precompute_s[n0:])
        t0 = time.perf_counter()
        out = tr.train()
        return time.perf_counter() - t0 + pre, out.global_step, float(out.training_loss), pre

    def run_kit(base, ex):
        model = copy.deepcopy(base)
        n = len(ex)
        t0 = time.perf_counter()
        # y and y' in one call, as the session scores them: each distinct row once, each prompt once
        sc = score_responses(
            model, ex.prompt_ids * 2, ex.annotated_ids + ex.synthetic_ids, pad_id=tok.pad_token_id, batch_size=250
        )
        ex.ref_annotated = torch.tensor([s["logp"] for s in sc[:n]], dtype=torch.float32)
        ex.ref_synthetic = torch.tensor([s["logp"] for s in sc[n:]], dtype=torch.float32)
        t1 = time.perf_counter()
        res = train_iteration(model, ex, method=method, train=train_cfg, iteration=1, seed=0, cpu=True)
        t2 = time.perf_counter()
        return t2 - t0, res.steps, sum(res.step_losses) / len(res.step_losses), t1 - t0

    # the tokenisation TRL uses must be tspin_kit's
    identical = True
    for _d, (ex, ds) in worlds.items():
        td = trl_trainer(toy.build_model(tok), ds, False).train_dataset
        identical &= all(
            list(td[i]["prompt_ids"]) == ex.prompt_ids[i]
            and list(td[i]["chosen_ids"]) == ex.annotated_ids[i]
            and list(td[i]["rejected_ids"]) == ex.synthetic_ids[i]
            for i in range(len(td))
        )

    result = {
        "benchmark": "vs_trl",
        "quick": args.quick,
        "machine": C.machine_info(),
        "settings": {
            "examples": num,
            "epochs": epochs,
            "batch_size": bs,
            "lr": lr,
            "lam_beta": lam,
            "repeats": repeats,
            "optimizer": "AdamW wd 0, constant lr, clip 1.0",
            "trl_reference": "precompute_ref_log_probs=True, no ref_model; precompute timed and added",
            "kit_reference": "score_responses once on [y; y'] (timed)",
            "data": {d: C.repeated_share(worlds[d][0]) for d in datas},
            "tokenisation_identical": identical,
            "trl_version": __import__("trl").__version__,
        },
        "sizes": {},
        "targets": [],
    }
    rows = []
    for s in sizes:
        base = toy.build_model(tok, toy.ToyModelSize(**SIZES[s]))
        result["sizes"][s] = {"n_params": sum(p.numel() for p in base.parameters())}
        for d in datas:
            ex, ds = worlds[d]
            run_trl(base, ds, True)  # warm-up (excluded)
            run_kit(base, ex)
            trl_t, kit_t, ratios, ref_t, pre_t, live_t, trl_loss, kit_loss = [], [], [], [], [], [], [], []
            for r in range(repeats):
                if r % 2 == 0:
                    a = run_trl(base, ds, True)
                    b = run_kit(base, ex)
                else:
                    b = run_kit(base, ex)
                    a = run_trl(base, ds, True)
                if args.trl_live:
                    live_t.append(run_trl(base, ds, False)[0])
                trl_t.append(a[0])
                pre_t.append(a[3])
                kit_t.append(b[0])
                ref_t.append(b[3])
                ratios.append(a[0] / b[0])
                trl_steps, kit_steps = a[1], b[1]
                trl_loss.append(a[2])
                kit_loss.append(b[2])
            st = C.stats(ratios)
            dd = {
                "trl_seconds": C.stats(trl_t),
                "trl_precompute_seconds": C.stats(pre_t),
                "kit_seconds": C.stats(kit_t),
                "kit_reference_seconds": C.stats(ref_t),
                "ratio": st,
                "steps": {"trl": trl_steps, "kit": kit_steps},
                "mean_train_loss": {"trl": C.stats(trl_loss), "kit": C.stats(kit_loss)},
            }
            if live_t:
                dd["trl_live_reference_seconds"] = C.stats(live_t)
            if d == "distinct":
                tgt = C.target(
                    f"{s}, no repeated rows: TRL (precomputed reference) / tspin_kit time (median)",
                    st["median"],
                    ">=",
                    1.3,
                    "x",
                )
                dd.update(tgt)
                result["targets"].append(tgt)
            result["sizes"][s][d] = dd
            rows.append(
                [
                    s,
                    d,
                    f"{trl_steps}/{kit_steps}",
                    dd["trl_seconds"]["median"],
                    dd["trl_precompute_seconds"]["median"],
                    dd["kit_seconds"]["median"],
                    dd["kit_reference_seconds"]["median"],
                    f"{st['median']:.2f}x [{st['min']:.2f}, {st['max']:.2f}]",
                    f"{dd['mean_train_loss']['trl']['median']:.4f}/{dd['mean_train_loss']['kit']['median']:.4f}",
                    dd["met"] if "met" in dd else "(context)",
                ]
            )
    shutil.rmtree(out_dir, ignore_errors=True)
    result["met"] = all(t["met"] for t in result["targets"])
    table = C.fmt_table(
        [
            "size",
            "data",
            "steps trl/kit",
            "TRL s",
            "TRL precompute s",
            "kit s",
            "kit ref s",
            "TRL/kit median [min,max]",
            "loss trl/kit",
            ">=1.3x",
        ],
        rows,
    )
    table += (
        f"\n{num} examples x {epochs} epochs, batch {bs}, {repeats} repeats; data 'distinct' = no repeated rows "
        "(the headline), 'toy' = y' == y for "
        f"{100 * result['settings']['data'].get('toy', {}).get('synthetic_equals_annotated', float('nan')):.0f}% "
        f"of prompts; TRL tokenisation identical to tspin_kit: {identical}"
    )
    C.emit(result, table)


if __name__ == "__main__":
    main()
