"""`SelfPlaySession`: SPIN / T-SPIN iterations you can step through, and resume after a kill.

    s = SelfPlaySession(RunConfig(...)); s.prepare()      # data, pi_0, its score, y0 sampled once
    s.generate(); s.train(); s.evaluate()                 # one iteration, phase by phase
    s.step(); s.run()                                     # ... or whole iterations

Every phase writes its outputs atomically before marking itself done in state.json, so `resume` continues
from the first phase not done and, on CPU with fixed seeds, ends identical to an uninterrupted run: each
phase draws its randomness from a seed derived from (run seed, iteration, phase), never from a stream that
a kill would interrupt.

Task score: exact-match accuracy (greedy decoding) when the data come from a toy task; otherwise the mean
per-token log-likelihood of held-out annotated responses (higher is better), stated as `score_name`.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import toy
from .config import RunConfig, config_diff
from .generation import derive_seed, sample_responses, score_responses
from .records import method_columns
from .scoring import score_roles, task_score
from .store import RunDirError, RunRecords, RunStore, load_run, read_json, read_parquet, write_json, write_parquet
from .templates import token_strings
from .training import Examples, train_iteration
from .triplets import assemble
from .world import World, load_world

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None] | None
ROLES = ("annotated", "synthetic", "proto")


def _versions() -> dict:
    import accelerate
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        pass
    from ._version import __version__

    out["tspin_kit"] = __version__
    return out


def _heldout_frame(iteration: int, per_problem: list[float]) -> pd.DataFrame:
    """Per-problem task score of one policy (iteration -1 is pi_0, t is pi_{t+1})."""
    return pd.DataFrame(
        {
            "iteration": iteration,
            "problem_id": np.arange(len(per_problem)),
            "value": np.asarray(per_problem, dtype=float),
        }
    )


def _q(x: np.ndarray, prefix: str) -> dict:
    x = x[~np.isnan(x)] if len(x) else x
    if len(x) == 0:
        return {f"{prefix}_{k}": float("nan") for k in ("mean", "q10", "q50", "q90")}
    return {
        f"{prefix}_mean": float(x.mean()),
        f"{prefix}_q10": float(np.quantile(x, 0.1)),
        f"{prefix}_q50": float(np.quantile(x, 0.5)),
        f"{prefix}_q90": float(np.quantile(x, 0.9)),
    }


class SelfPlaySession:
    """One run of one method. See the module docstring for the phase order."""

    def __init__(self, config: RunConfig, *, label: str | None = None):
        if not isinstance(config, RunConfig):
            raise TypeError(f"SelfPlaySession expects a RunConfig, got {type(config).__name__}")
        self.config = config
        self.label = label or config.method.name
        self.store = RunStore(config.run_dir) if config.run_dir else None
        self.iteration = 0
        self.initial: dict = {}
        self._done: set[str] = set()
        self._frames: list[pd.DataFrame] = []
        self._metrics: list[dict] = []
        self._generated: pd.DataFrame | None = None
        self._train_info: dict | None = None
        self._heldout: list[pd.DataFrame] = []
        self.world: World | None = None  # model, tokenizer, rows and token ids (world.py), loaded by prepare()
        self.proto_ids: list[list[int]] | None = None  # y0 of every example, sampled once from pi_0
        self._prev_generated: pd.DataFrame | None = None  # the last iteration's y' (mix_previous without a store)
        self._gen_seconds = float("nan")
        self._trackers: list | None = None  # report_to's trackers, made on first use
        self._steps_logged: int | None = None
        self._token_text: dict[int, str] = {}  # token id -> its text (templates.token_strings)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def next_phase(self) -> str:
        if "prepare" not in self._done:
            return "prepare"
        if self.iteration >= self.config.iterations:
            return "done"
        for phase in ("generate", "train", "evaluate"):
            if f"{phase}:{self.iteration}" not in self._done:
                return phase
        return "done"  # pragma: no cover

    def _expect(self, phase: str) -> None:
        nxt = self.next_phase
        if nxt != phase:
            raise RuntimeError(f"cannot {phase} now: the next phase of iteration {self.iteration} is {nxt!r}")

    def _mark(self, phase: str, iteration: int | None = None) -> None:
        key = phase if iteration is None else f"{phase}:{iteration}"
        self._done.add(key)
        if self.store and self._main:
            self.store.mark_done(phase, iteration)
        self._barrier()

    @property
    def _self_play_records(self) -> bool:
        """Whether this run samples y' and y0. SFT's loss reads neither: an SFT run makes them only for its
        records (the control's u, v and degenerate shares), when `RunConfig.sft_records` asks."""
        return self.config.method.spec.self_play or self.config.sft_records

    @property
    def _main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def _barrier(self) -> None:
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ prepare
    def prepare(self, progress: Progress = None) -> SelfPlaySession:
        """Load data and pi_0, score pi_0, sample the proto-synthetic y0 once."""
        self._expect("prepare")
        t0 = time.perf_counter()
        if self.store and self._main:
            self.store.check_usable()  # never write into an unrelated non-empty folder
        self._load_world()
        cfg = self.config
        if self.store and self._main:
            self._write_manifest()
        self._barrier()
        if self.store and self.store.is_done("prepare"):  # resuming
            self._load_prepared()
        else:
            if cfg.eval_harness is not None:  # pi_0 on the lm-eval tasks first: an unknown task stops the run here
                from .harness import score_session

                score_session(self, -1)
            score, per_problem = self._task_score(progress)
            self.initial = {"score": score, "score_name": self.score_name, "pi0": self.pi0_info}
            proto = (
                self._sample(derive_seed(cfg.seed, "proto"), "sample y0", progress) if self._self_play_records else None
            )
            self.proto_ids = proto
            if self.store and self._main:
                if proto is not None:
                    write_parquet(
                        self.store.root / "proto.parquet",
                        pd.DataFrame(
                            {"example_id": range(len(proto)), "proto_ids": proto, "proto": self._decode_all(proto)}
                        ),
                    )
                if self._weights_are_local():
                    self.store.policy_dir(0).parent.mkdir(parents=True, exist_ok=True)
                    from .store import save_weights

                    save_weights(self.model, self.store.policy_dir(0), self.tokenizer)
                self.initial["seconds"] = time.perf_counter() - t0
                write_json(self.store.root / "initial.json", self.initial)
                write_parquet(self.store.root / "heldout.parquet", _heldout_frame(-1, per_problem))
            self._heldout = [_heldout_frame(-1, per_problem)]
            self._mark("prepare")
        self._done.add("prepare")
        logger.info("%s: pi_0 %s = %.4f", self.label, self.score_name, self.initial["score"])
        return self

    def _load_world(self) -> None:
        self.world = load_world(self.config)

    # the world's parts, as the session has always exposed them (widgets and notebooks read these)
    accelerator = property(lambda self: self.world.accelerator if self.world else None)
    model = property(lambda self: self.world.model if self.world else None)
    tokenizer = property(lambda self: self.world.tokenizer if self.world else None)
    task = property(lambda self: self.world.task if self.world else None)
    train_rows = property(lambda self: self.world.train_rows if self.world else None)
    held_out = property(lambda self: self.world.held_out if self.world else None)
    examples = property(lambda self: self.world.examples if self.world else None)
    held_out_prompt_ids = property(lambda self: self.world.held_out_examples if self.world else None)
    template = property(lambda self: self.world.template if self.world else None)
    template_mode = property(lambda self: self.world.template_mode if self.world else None)
    max_length = property(lambda self: self.world.max_length if self.world else None)
    score_name = property(lambda self: self.world.score_name if self.world else None)
    pi0_info = property(lambda self: self.world.pi0_info if self.world else {})

    def _weights_are_local(self) -> bool:
        # A toy pi_0 or a LoRA adapter is small and not re-creatable from a hub id: keep it in the run.
        return self.config.model.name_or_path == "toy" or self.config.model.lora_r > 0

    def _write_manifest(self) -> None:
        cfg = self.config
        new = {
            "config": cfg.to_dict(),
            "label": self.label,
            "versions": _versions(),
            "seeds": {"run": cfg.seed, "data": cfg.data.seed},
            "sampling": cfg.to_dict()["sampling"],
            "phases": ["prepare", "generate", "train", "evaluate"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "score_name": self.score_name,
            "num_examples": len(self.train_rows),
            "eval_size": len(self.held_out),
            "machine": toy.machine_info(),
            "pi0": self.pi0_info,
            "template": self.template,
        }
        if self.store.exists() and self.store.is_done("prepare"):
            old = read_json(self.store.manifest_path)
            # run_dir is where the run lives, not how it runs: a moved run, or one resumed through a relative
            # path, is the same run.
            # report_to says where to echo the records, not what they are; train.checkpoint_every how often a
            # phase saves its progress, not what it computes (and may be turned on to resume a slow run).
            # a run made before `sft_records` existed made the SFT records: the same as the default, True
            # and one made before the table of methods had no method.params: the same as none set
            was = {"sft_records": True, **old.get("config", {})}
            was["method"] = {"params": {}, **was.get("method", {})}
            diff = [
                d
                for d in config_diff(was, new["config"])
                if not d.startswith(
                    ("run_dir:", "report_to:", "train.checkpoint_every:", "model.gradient_checkpointing:")
                )
            ]  # memory, not numbers
            if diff:
                raise RunDirError(
                    f"{self.store.root}: this run directory was made with a different config ({'; '.join(diff[:5])}); "
                    f"use a new run_dir, or `tspin resume {self.store.root}` to continue it as it was"
                )
            return
        # A run that never finished prepare has no records yet: its manifest is rewritten, so a corrected
        # config can use the same run_dir.
        write_json(self.store.manifest_path, new)

    def _load_prepared(self) -> None:
        st = self.store
        self.initial = read_json(st.root / "initial.json")
        self.proto_ids = None
        if self._self_play_records:
            proto = read_parquet(st.root / "proto.parquet")
            if len(proto) != len(self.train_rows):
                raise RunDirError(f"{st.root / 'proto.parquet'}: {len(proto)} rows, expected {len(self.train_rows)}")
            self.proto_ids = [list(map(int, x)) for x in proto["proto_ids"]]
        state = st.read_state()["done"]
        self._done |= set(state)
        if (st.root / "heldout.parquet").is_file():
            self._heldout.append(read_parquet(st.root / "heldout.parquet"))
        t = 0
        while f"evaluate:{t}" in self._done:
            if (st.iter_dir(t) / "heldout.parquet").is_file():
                self._heldout.append(read_parquet(st.iter_dir(t) / "heldout.parquet"))
            self._frames.append(read_parquet(st.iter_dir(t) / "examples.parquet"))
            self._metrics.append(read_json(st.iter_dir(t) / "metrics.json"))
            t += 1
        self.iteration = t
        # weights of the current policy: pi_{t+1} if this iteration's training finished, else pi_t
        w = t + 1 if f"train:{t}" in self._done else t
        if st.policy_dir(w).exists():
            from .store import load_weights

            load_weights(self.model, st.policy_dir(w))
        elif w > 0 or self._weights_are_local():
            raise RunDirError(f"{st.policy_dir(w)}: missing weights of pi_{w}; the run cannot resume")
        if f"generate:{t}" in self._done:
            self._generated = read_parquet(st.iter_dir(t) / "generated.parquet")
        if f"train:{t}" in self._done:
            self._train_info = read_json(st.iter_dir(t) / "train.json")
        logger.info("%s: resuming at iteration %d, phase %s", self.label, self.iteration, self.next_phase)

    # ------------------------------------------------------------------ helpers
    def _sample(
        self,
        seed: int,
        desc: str,
        progress: Progress,
        greedy: bool = False,
        prompt_ids=None,
        chunk_dir: Path | None = None,
    ) -> list[list[int]]:
        s = self.config.sampling
        ids = prompt_ids if prompt_ids is not None else self.examples.prompt_ids
        return sample_responses(
            self.model,
            self.tokenizer,
            ids,
            temperature=0.0 if greedy else s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            batch_size=s.batch_size,
            seed=seed,
            desc=desc,
            progress=progress,
            chunk_dir=chunk_dir,
        )

    def _decode_all(self, ids: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(x, skip_special_tokens=True) for x in ids]

    def _with_eos(self, ids: list[list[int]]) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        return [list(x) + [eos] for x in ids]

    def _score(self, response_ids, desc, progress, prompt_ids=None) -> list[dict]:
        return score_responses(
            self.model,
            prompt_ids or self.examples.prompt_ids,
            response_ids,
            pad_id=self.tokenizer.pad_token_id,
            batch_size=self.config.sampling.batch_size,
            desc=desc,
            progress=progress,
        )

    def _score_roles(self, ids: dict[str, list[list[int]]], desc: str, progress: Progress) -> dict[str, list[dict]]:
        return score_roles(
            self.model,
            self.examples.prompt_ids,
            ids,
            pad_id=self.tokenizer.pad_token_id,
            batch_size=self.config.sampling.batch_size,
            desc=desc,
            progress=progress,
        )

    def _task_score(self, progress: Progress) -> tuple[float, list[float]]:
        return task_score(self.world, self.config.sampling, progress)

    # ------------------------------------------------------------------ generate
    def generate(self, progress: Progress = None) -> pd.DataFrame:
        """Sample y' from pi_t and score y, y', y0 under pi_t (SPIN's reference)."""
        self._expect("generate")
        t, cfg = self.iteration, self.config
        t0 = time.perf_counter()
        df = pd.DataFrame({"example_id": range(len(self.examples))})
        ids = {"annotated": self.examples.annotated_ids}
        if self._self_play_records:  # else an SFT run without y'/y0 records: only y, which its loss reads
            # finished chunks of y' are kept until generated.parquet exists: a kill mid-sampling resumes at the
            # first unfinished chunk (generation.sample_responses)
            chunks = self.store.iter_dir(t) / "generate_chunks" if self.store else None
            syn = self._sample(derive_seed(cfg.seed, t, "synthetic"), f"generate it{t}", progress, chunk_dir=chunks)
            df["synthetic_ids"] = syn
            ids.update(synthetic=self._with_eos(syn), proto=self._with_eos(self.proto_ids))
        prev = self._frames[-1] if self._frames else None
        # y and y0 do not change, and evaluate(t-1) already scored them under pi_t ("after"); the rest in one call
        scored = self._score_roles(
            {r: x for r, x in ids.items() if prev is None or r == "synthetic"}, f"score it{t}", progress
        )
        for role in ids:
            if role in scored:
                df[f"{role}_logp_before"] = [s["logp"] for s in scored[role]]
                df[f"{role}_token_logps_before"] = [s["token_logps"] for s in scored[role]]
            else:
                df[f"{role}_logp_before"] = prev[f"{role}_logp_after"].to_numpy()
                df[f"{role}_token_logps_before"] = prev[f"{role}_token_logps_after"].to_numpy()
        if "synthetic" in scored:
            df["synthetic_entropy_before"] = [s["entropy"] for s in scored["synthetic"]]
        self._generated = df
        self._gen_seconds = time.perf_counter() - t0
        if self.store and self._main:
            write_parquet(self.store.iter_dir(t) / "generated.parquet", df.assign(seconds=self._gen_seconds))
        self._mark("generate", t)
        if self.store and self._main:
            shutil.rmtree(self.store.iter_dir(t) / "generate_chunks", ignore_errors=True)
        return df

    # ------------------------------------------------------------------ train
    def _triplets(self) -> Examples:
        t, cfg = self.iteration, self.config
        previous = None
        if cfg.method.mix_previous and t > 0:
            previous = (
                read_parquet(self.store.iter_dir(t - 1) / "generated.parquet") if self.store else self._prev_generated
            )
        return assemble(
            self.examples,
            self._generated,
            self.proto_ids,
            cfg.method,
            eos=self.tokenizer.eos_token_id,
            previous=previous,
            score_previous=lambda ids: [s["logp"] for s in self._score(ids, "score previous y'", None)],
        )

    def train(self, progress: Progress = None) -> dict:
        """pi_t -> pi_{t+1} on this iteration's triplets (or pairs, or annotated data for SFT)."""
        self._expect("train")
        t, cfg = self.iteration, self.config
        examples = self._triplets() if cfg.method.spec.self_play else self.examples
        # mid-phase checkpoints (train.checkpoint_every): written by the main process (every process its shard under
        # FSDP2/DeepSpeed), read by every process
        res = train_iteration(
            self.model,
            examples,
            method=cfg.method,
            train=cfg.train,
            iteration=t,
            seed=cfg.seed,
            accelerator=self.accelerator,
            progress=progress,
            checkpoint_dir=self.store.iter_dir(t) / "train_checkpoint"
            if self.store and cfg.train.checkpoint_every > 0
            else None,
        )
        self._prev_generated = self._generated
        info = {
            "step_losses": res.step_losses,
            "step_terms": res.step_terms,
            "seconds": res.seconds,
            "steps": res.steps,
            "lr": res.lr,
            "beta": cfg.method.beta_at(t),
            "lam": cfg.method.lam_at(t),
            "num_train_examples": len(examples),
        }
        self._train_info = info
        if self.store and self._main:
            from .store import save_weights

            save_weights(self.model, self.store.policy_dir(t + 1), self.tokenizer)
            write_json(self.store.iter_dir(t) / "train.json", info)
        self._mark("train", t)
        self._report("steps", t, info["step_losses"], info["step_terms"])
        if self.store and self._main and cfg.keep_weights == "last" and t > 0:
            shutil.rmtree(self.store.policy_dir(t), ignore_errors=True)
        return info

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, progress: Progress = None) -> dict:
        """Score pi_{t+1} on the task and write this iteration's per-example records and metrics."""
        self._expect("evaluate")
        t, cfg, g = self.iteration, self.config, self._generated
        t0 = time.perf_counter()
        score_after, per_problem = self._task_score(progress)
        # an SFT run without y'/y0 records (`sft_records` off) has y only: their columns hold NaN / None
        syn_ids = [list(map(int, x)) for x in g["synthetic_ids"]] if "synthetic_ids" in g else None
        rec = pd.DataFrame(
            {
                "iteration": t,
                "example_id": np.arange(len(self.examples)),
                "prompt": [r["prompt"] for r in self.train_rows],
                "annotated": [r["response"] for r in self.train_rows],
                "synthetic": self._decode_all(syn_ids) if syn_ids is not None else None,
                "proto": self._decode_all(self.proto_ids) if syn_ids is not None else None,
            }
        )
        ids = {"annotated": self.examples.annotated_ids}
        if syn_ids is not None:
            ids.update(synthetic=self._with_eos(syn_ids), proto=self._with_eos(self.proto_ids))
        scored = self._score_roles(ids, f"score after it{t}", progress)
        for role in ROLES:
            if role not in ids:
                for c in ("logp_before", "logp_after", "ntokens", "token_logps_before", "token_logps_after", "tokens"):
                    rec[f"{role}_{c}"] = np.nan
                continue
            rec[f"{role}_logp_before"] = g[f"{role}_logp_before"].to_numpy()
            rec[f"{role}_logp_after"] = [s["logp"] for s in scored[role]]
            rec[f"{role}_ntokens"] = [len(x) for x in ids[role]]
            rec[f"{role}_token_logps_before"] = g[f"{role}_token_logps_before"].to_numpy()
            rec[f"{role}_token_logps_after"] = [s["token_logps"] for s in scored[role]]
            # the text of each token, so per-token shading works on BPE tokenizers too (analysis.token_shading)
            rec[f"{role}_tokens"] = [token_strings(self.tokenizer, x, self._token_text) for x in ids[role]]
        if syn_ids is not None:
            rec["synthetic_token_entropy"] = g["synthetic_entropy_before"].to_numpy()
            rec["synthetic_equals_annotated"] = [s == a for s, a in zip(ids["synthetic"], ids["annotated"])]
            rec["proto_equals_annotated"] = [p == a for p, a in zip(ids["proto"], ids["annotated"])]
            rec["synthetic_equals_proto"] = [s == p for s, p in zip(ids["synthetic"], ids["proto"])]
        else:
            for c in (
                "synthetic_token_entropy",
                "synthetic_equals_annotated",
                "proto_equals_annotated",
                "synthetic_equals_proto",
            ):
                rec[c] = np.nan
        self._add_method_columns(rec, t)
        if self.score_name == "accuracy" and syn_ids is not None:
            answers = [r["answer"] for r in self.train_rows]
            rec["synthetic_correct"] = [toy.is_correct(self.task, s, a) for s, a in zip(rec["synthetic"], answers)]
            rec["proto_correct"] = [toy.is_correct(self.task, s, a) for s, a in zip(rec["proto"], answers)]
        else:
            rec["synthetic_correct"] = np.nan
            rec["proto_correct"] = np.nan
        score_before = self._metrics[-1]["score_after"] if self._metrics else self.initial["score"]
        m = {
            "iteration": t,
            "method": cfg.method.name,
            "label": self.label,
            "score_name": self.score_name,
            "score_before": score_before,
            "score_after": score_after,
        }
        for when in ("before", "after"):
            m.update(_q(rec[f"current_advantage_{when}"].to_numpy(float), f"current_advantage_{when}"))
            m.update(_q(rec[f"historical_advantage_{when}"].to_numpy(float), f"historical_advantage_{when}"))
        m.update(
            {
                "misaligned_share": float(rec["misaligned"].mean()),
                "share_synthetic_equals_annotated": float(rec["synthetic_equals_annotated"].mean()),
                "share_proto_equals_annotated": float(rec["proto_equals_annotated"].mean()),
                "share_synthetic_equals_proto": float(rec["synthetic_equals_proto"].mean()),
                "synthetic_accuracy": float(np.mean(rec["synthetic_correct"]))
                if self.score_name == "accuracy"
                else float("nan"),
                "synthetic_token_entropy": float(rec["synthetic_token_entropy"].mean()),
                "loss_mean": float(np.mean(self._train_info["step_losses"]))
                if self._train_info["step_losses"]
                else float("nan"),
                "beta": self._train_info["beta"],
                "lam": self._train_info["lam"],
                "lr": self._train_info["lr"],
                "seconds_generate": float(g["seconds"].iloc[0]) if "seconds" in g else self._gen_seconds,
                "seconds_train": self._train_info["seconds"],
                "seconds_evaluate": time.perf_counter() - t0,
                "sampling_temperature": cfg.sampling.temperature,
                "sampling_top_p": cfg.sampling.top_p,
                "sampling_top_k": cfg.sampling.top_k,
                "sampling_max_new_tokens": cfg.sampling.max_new_tokens,
            }
        )
        if self.store and self._main:
            write_parquet(self.store.iter_dir(t) / "examples.parquet", rec)
            write_parquet(self.store.iter_dir(t) / "heldout.parquet", _heldout_frame(t, per_problem))
            write_json(self.store.iter_dir(t) / "metrics.json", m)
        self._frames.append(rec)
        self._heldout.append(_heldout_frame(t, per_problem))
        self._metrics.append(m)
        if cfg.eval_harness is not None:  # lm-eval scores of pi_{t+1} (tspin_kit.harness; the main process scores)
            from .harness import score_session

            score_session(self, t)
        self._mark("evaluate", t)
        self._report("iteration", t, m, rec)
        self.iteration += 1
        self._generated = None
        logger.info(
            "%s it%d: %s %.4f -> %.4f (u after %.3f, v after %.3f)",
            self.label,
            t,
            self.score_name,
            score_before,
            score_after,
            m["current_advantage_after_mean"],
            m["historical_advantage_after_mean"],
        )
        return m

    def _add_method_columns(self, rec: pd.DataFrame, t: int) -> None:
        """Advantages, rewards and loss terms of this run's method, from the recorded log-probs (`records.py`)."""
        method = self.config.method
        logps = {when: {r: rec[f"{r}_logp_{when}"].to_numpy(float) for r in ROLES} for when in ("before", "after")}
        # Same rule as training: token ids of y0 and y differ (rec holds proto_equals_annotated from the ids).
        mask = ~rec["proto_equals_annotated"].to_numpy(bool) if method.mask_proto_equal_annotated else None
        cols = method_columns(
            method.spec,
            logps["before"],
            logps["after"],
            knobs=method.knobs_at(t),
            annotated_tokens=rec["annotated_ntokens"].to_numpy(float),
            historical_mask=mask,
        )
        for c, v in cols.items():
            rec[c] = v

    # ------------------------------------------------------------------ whole iterations
    def step(self, progress: Progress = None) -> dict:
        if self.next_phase == "generate":
            self.generate(progress)
        if self.next_phase == "train":
            self.train(progress)
        return self.evaluate(progress)

    def run(self, progress: Progress = None) -> RunRecords:
        if self.next_phase == "prepare":
            self.prepare(progress)
        while self.next_phase != "done":
            self.step(progress)
        self.close_trackers()
        return self.records()

    # ------------------------------------------------------------------ trackers (report_to)
    def _report(self, kind: str, t: int, *payload) -> None:
        """Echo what a phase recorded to the trackers of `report_to` (main process only; see trackers.py)."""
        if not self.config.report_to or not self._main:
            return
        from . import trackers as T

        if self._trackers is None:
            self._trackers = T.make_trackers(
                self.config.report_to, run_dir=self.config.run_dir, label=self.label, config=self.config.to_dict()
            )
            self._steps_logged = None
        if kind == "steps":
            if self._steps_logged is None:  # optimiser steps of earlier iterations (also after a resume)
                self._steps_logged = (
                    sum(len(read_json(self.store.iter_dir(i) / "train.json")["step_losses"]) for i in range(t))
                    if self.store
                    else 0
                )
            for tr in self._trackers:
                tr.log_steps(self._steps_logged, list(payload[0]), dict(payload[1]))
            self._steps_logged += len(payload[0])
        else:
            metrics, rec = payload
            tables = T.triplet_tables(rec)
            numbers = {**T.numeric_metrics(metrics), **T.alarm_metrics(self.records(), t, self.label)}
            for tr in self._trackers:
                tr.log_iteration(t, numbers, tables)

    def close_trackers(self) -> None:
        """Finish the trackers' runs (run() does this at its end; call it after stepping by hand)."""
        for tr in self._trackers or []:
            tr.close()
        self._trackers = None

    def records(self) -> RunRecords:
        manifest = {
            "config": self.config.to_dict(),
            "label": self.label,
            "score_name": self.score_name,
        }
        examples = pd.concat(self._frames, ignore_index=True) if self._frames else pd.DataFrame()
        heldout = pd.concat(self._heldout, ignore_index=True) if self._heldout else pd.DataFrame()
        from .harness import session_frame  # lm-eval scores (eval_harness), empty without

        return RunRecords(
            self.store.root if self.store else None,
            manifest,
            examples,
            pd.DataFrame(self._metrics),
            dict(self.initial),
            heldout,
            session_frame(self),
        )

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir: str | Path) -> SelfPlaySession:
        """Reopen a run directory; the next call continues with the first phase not done."""
        store = RunStore(run_dir)
        if not store.root.is_dir():
            raise RunDirError(f"{store.root}: no such run directory")
        manifest = read_json(store.manifest_path)
        try:
            config = RunConfig.from_dict(manifest["config"], source=str(store.manifest_path))
        except (KeyError, ValueError) as e:
            raise RunDirError(f"{store.manifest_path}: corrupt config ({e})") from None
        config.run_dir = str(store.root)
        s = cls(config, label=manifest.get("label"))
        if store.is_done("prepare"):
            s.prepare()
        return s


def run(config: RunConfig, *, label: str | None = None) -> RunRecords:
    """Run every remaining phase of `config` (resuming if its run_dir holds a compatible run)."""
    s = SelfPlaySession(config, label=label)
    return s.run()


__all__ = ["SelfPlaySession", "run", "load_run"]
