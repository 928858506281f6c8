"""A new user's own world, built in code: a byte-level BPE tokenizer trained with `tokenizers` on a small
corpus and a GPT-2-style model with *learned* position embeddings (`GPT2Config`, `n_positions` small), so
that an over-long sequence really indexes past the position table. Saved as a hub-style folder."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "green", "quick", "north", "light", "table", "music"]


def user_pairs(n: int = 24) -> list[dict]:
    return [
        {"prompt": f"Name the word after {WORDS[i % 10]} please.", "response": f"The word is {WORDS[(i + 1) % 10]}."}
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_bpe_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tspin_kit.templates import PLAIN_TEMPLATE

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [r["prompt"] + " " + r["response"] for r in user_pairs(40)] + [PLAIN_TEMPLATE] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def save_gpt2_world(folder: Path, *, n_positions: int = 64, seed: int = 0) -> Path:
    """A tiny random GPT-2 (1 layer, learned positions) + the BPE tokenizer, saved like a hub checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_bpe_tokenizer()
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
