"""One SPIN iteration's training: tspin_kit vs TRL's DPOTrainer doing the same work.

Same work on both sides:
- model: the toy Llama (``tiny``: hidden 128 / intermediate 256, and ``wide``: hidden 512 / intermediate 1024,
  4x wider), a fresh copy of the same initial weights for every run, fp32, no gradient checkpointing;
- data: N toy-addition prompts (default 1000); chosen = annotated y, rejected = synthetic y'
  (benchmarks/_common.toy_world). TRL gets a ``datasets.Dataset`` with prompt / chosen / rejected text;
  the toy prompt template is the raw prompt text and TRL appends EOS, so TRL tokenises exactly the same
  ids as tspin_kit (checked at start-up, reported as ``tokenisation_identical``);
- loss: SPIN = sigmoid DPO, lam = beta = 1.0; reference = the frozen starting policy. TRL: a frozen
  deep copy passed as ``ref_model`` (what TRL builds itself from a hub id; a model built in code has no id),
  run on every step, ``precompute_ref_log_probs=False`` (TRL's default). tspin_kit: reference log-probs
  computed once by ``generation.score_responses`` on y and y' -- included in tspin_kit's time;
- optimisation: AdamW, lr 2e-5, weight decay 0, constant schedule, no warmup, grad-norm clip 1.0,
  batch 64, E epochs (default 2, the session default), same number of steps;
- TRL: no evaluation, no logging (``logging_strategy='no'``, ``report_to=[]``), no saving, ``use_cpu``.

Timed: TRL ``trainer.train()`` (construction, tokenisation and the reference copy excluded);
tspin_kit: the two ``score_responses`` calls + ``train_iteration`` (Examples built beforehand).
ratio = TRL seconds / tspin_kit seconds, per repeat (the two runs back to back, order alternating).
Target: ratio >= 1.5 on both sizes (median).
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
    args = ap.parse_args()
    C.apply_threads(args)
    repeats = args.repeats or (1 if args.quick else 5)
    num = args.num or (128 if args.quick else 1000)
    epochs = args.epochs or (1 if args.quick else 2)
    sizes = args.sizes.split(",")
    lr, lam, bs = 2e-5, 1.0, 64

    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    from tspin_kit import toy
    from tspin_kit.config import MethodConfig, TrainConfig
    from tspin_kit.generation import score_responses
    from tspin_kit.training import train_iteration

    tok = toy.build_tokenizer()
    ex, (prompts, ann, syn, _pro) = C.toy_examples(tok, num)
    ds = Dataset.from_dict({"prompt": prompts, "chosen": ann, "rejected": syn})
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    trl_args = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=bs, num_train_epochs=epochs, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        beta=lam, loss_type=["sigmoid"], precompute_ref_log_probs=False, max_length=None,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0,
    )
    train_cfg = TrainConfig(optimizer="adamw", lr=lr, epochs=epochs, batch_size=bs, warmup_ratio=0.0,
                            schedule="constant", weight_decay=0.0, max_grad_norm=1.0)
    method = MethodConfig(name="spin", lam=lam)

    def trl_trainer(base):
        model = copy.deepcopy(base)
        ref = copy.deepcopy(base).eval()
        tr = DPOTrainer(model=model, ref_model=ref, args=trl_args, train_dataset=ds, processing_class=tok)
        # with disable_tqdm the Trainer prints its final metrics dict on stdout: keep stdout for our JSON
        tr.remove_callback(PrinterCallback)
        return tr

    def run_trl(base):
        tr = trl_trainer(base)
        t0 = time.perf_counter()
        out = tr.train()
        return time.perf_counter() - t0, out.global_step, float(out.training_loss)

    def run_kit(base):
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        for attr, ids in (("ref_annotated", ex.annotated_ids), ("ref_synthetic", ex.synthetic_ids)):
            sc = score_responses(model, ex.prompt_ids, ids, pad_id=tok.pad_token_id, batch_size=250)
            setattr(ex, attr, torch.tensor([s["logp"] for s in sc], dtype=torch.float32))
        t1 = time.perf_counter()
        res = train_iteration(model, ex, method=method, train=train_cfg, iteration=1, seed=0, cpu=True)
        t2 = time.perf_counter()
        return t2 - t0, res.steps, sum(res.step_losses) / len(res.step_losses), t1 - t0

    # the tokenisation TRL uses must be tspin_kit's
    probe = trl_trainer(toy.build_model(tok))
    td = probe.train_dataset
    identical = all(
        list(td[i]["prompt_ids"]) == ex.prompt_ids[i] and list(td[i]["chosen_ids"]) == ex.annotated_ids[i]
        and list(td[i]["rejected_ids"]) == ex.synthetic_ids[i] for i in range(len(td)))
    del probe

    result = {"benchmark": "vs_trl", "quick": args.quick, "machine": C.machine_info(),
              "settings": {"examples": num, "epochs": epochs, "batch_size": bs, "lr": lr, "lam_beta": lam,
                           "repeats": repeats, "optimizer": "AdamW wd 0, constant lr, clip 1.0",
                           "trl_reference": "frozen deep copy, forward every step (precompute_ref_log_probs=False)",
                           "kit_reference": "score_responses once on y and y' (timed)",
                           "tokenisation_identical": identical, "trl_version": __import__("trl").__version__},
              "sizes": {}, "targets": []}
    rows = []
    for s in sizes:
        base = toy.build_model(tok, toy.ToyModelSize(**SIZES[s]))
        run_trl(base)  # warm-up (excluded)
        run_kit(base)
        trl_t, kit_t, ratios, ref_t, trl_steps, kit_steps, trl_loss, kit_loss = [], [], [], [], [], [], [], []
        for r in range(repeats):
            if r % 2 == 0:
                a = run_trl(base)
                b = run_kit(base)
            else:
                b = run_kit(base)
                a = run_trl(base)
            trl_t.append(a[0])
            kit_t.append(b[0])
            ref_t.append(b[3])
            ratios.append(a[0] / b[0])
            trl_steps, kit_steps = a[1], b[1]
            trl_loss.append(a[2])
            kit_loss.append(b[2])
        st = C.stats(ratios)
        tgt = C.target(f"{s}: TRL DPOTrainer time / tspin_kit time (median)", st["median"], ">=", 1.5, "x")
        d = {"n_params": sum(p.numel() for p in base.parameters()), "trl_seconds": C.stats(trl_t),
             "kit_seconds": C.stats(kit_t), "kit_reference_precompute_seconds": C.stats(ref_t), "ratio": st,
             "steps": {"trl": trl_steps, "kit": kit_steps},
             "mean_train_loss": {"trl": C.stats(trl_loss), "kit": C.stats(kit_loss)}, **tgt}
        result["sizes"][s] = d
        result["targets"].append(tgt)
        rows.append([s, d["n_params"], f"{trl_steps}/{kit_steps}", st and d["trl_seconds"]["median"],
                     d["kit_seconds"]["median"], d["kit_reference_precompute_seconds"]["median"],
                     f"{st['median']:.2f}x [{st['min']:.2f}, {st['max']:.2f}]",
                     f"{d['mean_train_loss']['trl']['median']:.4f}/{d['mean_train_loss']['kit']['median']:.4f}", tgt["met"]])
    shutil.rmtree(out_dir, ignore_errors=True)
    result["met"] = all(t["met"] for t in result["targets"])
    table = C.fmt_table(["size", "params", "steps trl/kit", "TRL s", "kit s", "kit ref s", "TRL/kit median [min,max]",
                         "loss trl/kit", ">=1.5x"], rows)
    table += (f"\n{num} examples x {epochs} epochs, batch {bs}, {repeats} repeats; "
              f"TRL tokenisation identical to tspin_kit: {identical}")
    C.emit(result, table)


if __name__ == "__main__":
    main()
