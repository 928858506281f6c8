"""The embedded tiny world: everything a laptop needs to watch self-play, built in code.

- a character-level tokenizer (printable ASCII + newline, `<pad> <bos> <eos> <unk>`) wrapped in
  ``PreTrainedTokenizerFast``, with a one-line chat template so the "one template" path is exercised;
- a tiny Llama (hidden 128, 2 layers, ~330k parameters, tied embeddings) with random init;
- verifiable tasks with exact-match scoring: ``addition`` (``49+97=`` -> ``146``) and ``scratchpad``
  (``49+97=`` -> ``9+7+0=16,4+9+1=14;146``, a GSM8K-like worked answer scored on its final number);
- the initial policy pi_0: a short SFT on the annotated pairs, cached on disk by its settings.

Any ASCII text works with the tokenizer, so the same tiny model can be pointed at a user's own
(prompt, response) data; characters outside printable ASCII become ``<unk>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

TASKS = ("addition", "scratchpad")
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # printable ASCII + space + newline
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}{% endif %}{% endfor %}"
)


def build_tokenizer():
    """Character-level tokenizer; every character is one token, decoding concatenates."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=256,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@dataclass
class ToyModelSize:
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 256


def build_model(tokenizer, size: ToyModelSize | None = None, seed: int = 0):
    """A randomly initialised tiny Llama sized for 2 CPU cores."""
    from transformers import LlamaConfig, LlamaForCausalLM

    size = size or ToyModelSize()
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# ----------------------------------------------------------------------------- tasks


def _scratchpad(a: int, b: int) -> str:
    """Column addition written out digit by digit, least significant first: '9+7+0=16,4+9+1=14;146'."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return ",".join(steps) + f";{a + b}"


def make_problem(task: str, a: int, b: int) -> dict:
    answer = str(a + b)
    response = answer if task == "addition" else _scratchpad(a, b)
    return {"prompt": f"{a}+{b}=", "response": response, "answer": answer}


def make_world(task: str, num_train: int, eval_size: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint annotated and held-out problems. The annotated pool is nested: the first n of a larger
    request are the same n problems, so "4x the data" is a superset of the scarce set."""
    if task not in TASKS:
        raise ValueError(f"unknown toy task {task!r}: expected one of {', '.join(TASKS)}")
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    if num_train + eval_size > len(pairs):
        raise ValueError(
            f"data.num_examples + data.eval_size = {num_train + eval_size}: the {task} world has only {len(pairs)} problems"
        )
    held_out = [make_problem(task, a, b) for a, b in pairs[:eval_size]]
    train = [make_problem(task, a, b) for a, b in pairs[eval_size : eval_size + num_train]]
    return train, held_out


def extract_answer(task: str, response: str) -> str:
    return response.split(";")[-1].strip() if task == "scratchpad" else response.strip()


def is_correct(task: str, response: str, answer: str) -> bool:
    return extract_answer(task, response) == answer


# ----------------------------------------------------------------------------- pi_0


@dataclass
class InitialPolicySettings:
    """The short SFT that makes pi_0 'weak, not hopeless' (about 0.65 on addition with 1000 pairs)."""

    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    # constant after warmup, as in the prototype behind toy-world.md: pi_0 ends where a high learning rate
    # leaves it, not annealed into a sharp minimum that any further step would only disturb
    schedule: str = "constant"


def cache_dir() -> Path:
    return Path(os.environ.get("TSPIN_CACHE", Path.home() / ".cache" / "tspin_kit"))


def initial_policy(task: str, train: list[dict], settings: InitialPolicySettings | None = None,
                   size: ToyModelSize | None = None, *, cpu: bool = True):
    """pi_0 for a toy world: SFT from random init, cached by a hash of everything that shapes it."""
    from transformers import AutoModelForCausalLM

    from .config import MethodConfig, TrainConfig
    from .training import build_examples, train_iteration

    settings = settings or InitialPolicySettings()
    size = size or ToyModelSize()
    tokenizer = build_tokenizer()
    key_src = json.dumps(
        {"task": task, "train": [(r["prompt"], r["response"]) for r in train], "settings": asdict(settings),
         "size": asdict(size), "torch": torch.__version__, "v": 2},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    folder = cache_dir() / "pi0" / f"{task}-{len(train)}-{key}"
    if (folder / "config.json").is_file():
        logger.info("pi_0: loading cached initial policy from %s", folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return model, tokenizer

    logger.info("pi_0: SFT of a random tiny Llama on %d pairs, %d epochs (cached afterwards)", len(train), settings.epochs)
    model = build_model(tokenizer, size, seed=settings.seed)
    examples = build_examples(tokenizer, [r["prompt"] for r in train], [r["response"] for r in train])
    train_iteration(
        model,
        examples,
        method=MethodConfig(name="sft"),
        train=TrainConfig(optimizer="adamw", lr=settings.lr, epochs=settings.epochs, batch_size=settings.batch_size,
                          warmup_ratio=0.05, schedule=settings.schedule),
        iteration=0,
        seed=settings.seed,
        cpu=cpu,
        local=True,
        desc="pi_0 SFT",
    )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    try:
        tmp.replace(folder)
    except OSError:  # another process cached the same pi_0 first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


__all__ = [
    "TASKS", "build_tokenizer", "build_model", "make_world", "make_problem", "is_correct", "extract_answer",
    "initial_policy", "InitialPolicySettings", "ToyModelSize",
]
