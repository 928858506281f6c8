"""The embedded tiny world: everything a laptop needs to watch self-play, built in code.

- a character-level tokenizer (printable ASCII + newline, `<pad> <bos> <eos> <unk>`) wrapped in
  ``PreTrainedTokenizerFast``, with a one-line chat template so the "one template" path is exercised;
- a tiny Llama (hidden 128, 2 layers, ~330k parameters, tied embeddings) with random init;
- verifiable tasks with exact-match scoring: ``addition`` (``49+97=`` -> ``146``) and ``scratchpad``
  (``49+97=`` -> ``9+7+0=16,4+9+1=14;146``, a GSM8K-like worked answer scored on its final number);
- the initial policy pi_0: a short SFT on the annotated pairs; the default worlds' pi_0 ship with the
  package (checked by SHA-256), others are cached on disk by their settings and the machine.

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
            f"data.num_examples + data.eval_size = {num_train + eval_size}: "
            f"the {task} world has only {len(pairs)} problems"
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
    """The short SFT that makes pi_0 'weak, not hopeless' on the toy tasks.

    Chosen for robustness, measured by benchmarks/pi0_robustness.py (output committed in
    benchmarks/results/): nudging every initial weight by a rounding-sized 1e-6 (what another CPU's
    float arithmetic does) moved the old recipe (constant lr 1e-3) by up to 18 points on addition, as two
    machines saw; lr 1e-3 decayed linearly to 0 moved 2.8 points; lr 3e-4 decayed linearly did not move
    at all (0.488 on all four copies). The default worlds' pi_0 ship with the package anyway
    (`shipped_policy`), so every machine starts from the same weights; the recipe matters when a user
    retrains one.
    """

    epochs: int = 40
    lr: float = 3e-4
    batch_size: int = 64
    seed: int = 0
    schedule: str = "linear"
    warmup_ratio: float = 0.05


def cache_dir() -> Path:
    return Path(os.environ.get("TSPIN_CACHE", Path.home() / ".cache" / "tspin_kit"))


def machine_info() -> dict:
    """What makes float results differ between machines: CPU, threads, library versions."""
    import platform

    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "system": platform.system(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def train_initial_policy(
    task: str,
    train: list[dict],
    settings: InitialPolicySettings | None = None,
    size: ToyModelSize | None = None,
    *,
    cpu: bool = True,
    perturb: float = 0.0,
    perturb_seed: int = 0,
    template: str = "auto",
):
    """pi_0 from scratch: SFT of a random tiny Llama on `train` (no cache). Returns (model, tokenizer).

    `perturb` multiplies every initial weight by (1 + perturb * N(0, 1)): a rounding-sized nudge (1e-6)
    stands in for another machine's float arithmetic when measuring how chaotic a recipe is.
    """
    from .config import MethodConfig, TrainConfig
    from .training import build_examples, train_iteration

    settings = settings or InitialPolicySettings()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, size or ToyModelSize(), seed=settings.seed)
    if perturb:
        gen = torch.Generator().manual_seed(perturb_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=gen))
    examples = build_examples(tokenizer, [r["prompt"] for r in train], [r["response"] for r in train], template)
    train_iteration(
        model,
        examples,
        method=MethodConfig(name="sft"),
        train=TrainConfig(
            optimizer="adamw",
            lr=settings.lr,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            warmup_ratio=settings.warmup_ratio,
            schedule=settings.schedule,
        ),
        iteration=0,
        seed=settings.seed,
        cpu=cpu,
        local=True,
        desc="pi_0 SFT",
    )
    return model, tokenizer


def heldout_correct(
    model, tokenizer, task: str, rows: list[dict], *, max_new_tokens: int | None = None, batch_size: int = 250
) -> list[bool]:
    """Greedy answers to `rows`, each marked right or wrong (the toy task score, per problem)."""
    from .generation import sample_responses
    from .templates import encode_prompt

    prompts = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    new = max_new_tokens or (8 if task == "addition" else 32)
    out = sample_responses(
        model,
        tokenizer,
        prompts,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new,
        batch_size=batch_size,
        seed=0,
        desc="evaluate",
    )
    texts = [tokenizer.decode(x, skip_special_tokens=True) for x in out]
    return [is_correct(task, t, r["answer"]) for t, r in zip(texts, rows)]


# The default worlds' pi_0, shipped inside the package (made by `tspin pi0 --task TASK --ship`).
SHIPPED_DIR = Path(__file__).parent / "assets" / "pi0"


class ShippedPolicyError(RuntimeError):
    """The shipped pi_0 file is missing or does not match its recorded checksum."""


def _rows_digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps([(r["prompt"], r["response"]) for r in rows]).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_info(task: str) -> dict | None:
    """The record that ships beside a task's pi_0 (checksum, recipe, score, machine), or None."""
    meta = SHIPPED_DIR / f"{task}.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def shipped_policy(task: str, train: list[dict], settings: InitialPolicySettings, size: ToyModelSize):
    """The shipped pi_0 when (task, annotated rows, recipe, size) are exactly what it was made from, else None.

    The weights file is checked against its recorded SHA-256 before use: a damaged or edited file is an
    error, not a silently different starting point.
    """
    info = shipped_info(task)
    if info is None:
        return None
    if (
        info["rows_sha256"] != _rows_digest(train)
        or info["settings"] != asdict(settings)
        or info["size"] != asdict(size)
    ):
        return None
    path = SHIPPED_DIR / info["file"]
    if not path.is_file():
        raise ShippedPolicyError(f"{path}: the shipped pi_0 for {task!r} is missing; reinstall tspin-kit")
    digest = _file_sha256(path)
    if digest != info["sha256"]:
        raise ShippedPolicyError(
            f"{path}: SHA-256 {digest[:16]}... does not match the recorded {info['sha256'][:16]}...; the file was "
            f"damaged or edited: reinstall tspin-kit, or remake it with `tspin pi0 --task {task} --ship`"
        )
    from safetensors.torch import load_file

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, size, seed=settings.seed)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ShippedPolicyError(
            f"{path}: weights do not fit the toy model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    return model, tokenizer


def default_world_rows(task: str) -> tuple[list[dict], list[dict]]:
    """The annotated rows pi_0 is made from and the held-out problems, as a default RunConfig sets them
    (1000 annotated pairs, 500 held out, data seed 0)."""
    return make_world(task, 1000, 500, seed=0)


def ship_policy(task: str, model, score: float, *, command: str, folder: Path | None = None) -> Path:
    """Write pi_0 as safetensors plus its record (checksum, recipe, score, machine) for shipping."""
    from datetime import datetime, timezone

    from safetensors.torch import save_file

    folder = Path(folder or SHIPPED_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    # tied embeddings: lm_head.weight is embed_tokens.weight; store it once
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    path = folder / f"{task}.safetensors"
    save_file(state, str(path))
    train, _ = default_world_rows(task)
    info = {
        "task": task,
        "file": path.name,
        "sha256": _file_sha256(path),
        "score": score,
        "score_name": "accuracy",
        "eval_size": 500,
        "rows_sha256": _rows_digest(train),
        "num_examples": len(train),
        "settings": asdict(InitialPolicySettings()),
        "size": asdict(ToyModelSize()),
        "made": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "command": command,
            "machine": machine_info(),
        },
    }
    (folder / f"{task}.json").write_text(json.dumps(info, indent=1) + "\n")
    return path


def _cache_key(
    task: str, train: list[dict], settings: InitialPolicySettings, size: ToyModelSize, template: str = "auto"
) -> str:
    # Everything that shapes the weights, including what makes float results differ between machines:
    # a pi_0 trained elsewhere, or under another torch/transformers, is not reused as if it were the same.
    m = machine_info()
    src = json.dumps(
        {
            "task": task,
            "rows": _rows_digest(train),
            "settings": asdict(settings),
            "size": asdict(size),
            "template": template,
            "machine": {k: m[k] for k in ("cpu", "machine", "system", "threads", "torch", "transformers")},
            "v": 3,
        },
        sort_keys=True,
    )
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def initial_policy(
    task: str,
    train: list[dict],
    settings: InitialPolicySettings | None = None,
    size: ToyModelSize | None = None,
    *,
    cpu: bool = True,
    info: dict | None = None,
    template: str = "auto",
):
    """pi_0 for a toy world: the shipped one for the default worlds, else SFT from random init, cached.

    `info`, when given, is filled with where pi_0 came from (``source``: shipped/cache/trained, the file or
    folder, its checksum and the shipped score).
    """
    from transformers import AutoModelForCausalLM

    settings = settings or InitialPolicySettings()
    size = size or ToyModelSize()
    info = info if info is not None else {}
    shipped = shipped_policy(task, train, settings, size) if template == "auto" else None
    if shipped is not None:
        meta = shipped_info(task)
        info.update(
            {
                "source": "shipped",
                "file": meta["file"],
                "sha256": meta["sha256"],
                "shipped_score": meta["score"],
                "made_on": meta["made"]["machine"],
            }
        )
        logger.info("pi_0: the shipped initial policy for %s (sha256 %s...)", task, meta["sha256"][:12])
        return shipped
    folder = cache_dir() / "pi0" / f"{task}-{len(train)}-{_cache_key(task, train, settings, size, template)}"
    info.update({"source": "cache", "folder": str(folder)})
    if (folder / "config.json").is_file():
        logger.info("pi_0: loading cached initial policy from %s", folder)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), build_tokenizer()

    logger.info(
        "pi_0: SFT of a random tiny Llama on %d pairs, %d epochs (cached afterwards)", len(train), settings.epochs
    )
    info["source"] = "trained"
    model, tokenizer = train_initial_policy(task, train, settings, size, cpu=cpu, template=template)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    try:
        tmp.replace(folder)
    except OSError:  # another process cached the same pi_0 first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


__all__ = [
    "TASKS",
    "build_tokenizer",
    "build_model",
    "make_world",
    "make_problem",
    "is_correct",
    "extract_answer",
    "initial_policy",
    "train_initial_policy",
    "default_world_rows",
    "ship_policy",
    "heldout_correct",
    "shipped_policy",
    "shipped_info",
    "machine_info",
    "InitialPolicySettings",
    "ToyModelSize",
    "ShippedPolicyError",
    "SHIPPED_DIR",
]
