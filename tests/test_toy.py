"""tspin_kit.toy: tokenizer, tasks and scoring, world splits, the cached pi_0."""

from __future__ import annotations

import dataclasses
import logging
import string

import pytest
import torch

from tspin_kit import toy


def test_tokenizer_round_trip_is_character_level():
    tok = toy.build_tokenizer()
    text = "49+97=146\n" + string.ascii_letters + " ~!{}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.decode(ids + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text
    # outside printable ASCII -> <unk>
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_scratchpad_format_and_scoring():
    p = toy.make_problem("scratchpad", 49, 97)
    assert p == {"prompt": "49+97=", "response": "9+7+0=16,4+9+1=14;146", "answer": "146"}
    assert toy.make_problem("addition", 49, 97)["response"] == "146"
    assert toy.make_problem("scratchpad", 10, 10)["response"] == "0+0+0=0,1+1+0=2;20"
    # scored on the final number only
    assert toy.is_correct("scratchpad", "wrong steps;146", "146")
    assert toy.is_correct("scratchpad", "9+7+0=16,4+9+1=14;146 ", "146")
    assert not toy.is_correct("scratchpad", "9+7+0=16,4+9+1=14;145", "146")
    assert toy.is_correct("addition", " 146", "146")
    assert not toy.is_correct("addition", "1460", "146")
    assert toy.extract_answer("scratchpad", "no separator") == "no separator"


def test_make_world_disjoint_and_nested():
    train, held = toy.make_world("addition", 100, 30, seed=0)
    assert len(train) == 100 and len(held) == 30
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert len({r["prompt"] for r in train}) == 100
    bigger, held2 = toy.make_world("addition", 400, 30, seed=0)
    assert bigger[:100] == train  # "4x the data" is a superset of the scarce set
    assert held2 == held
    other, _ = toy.make_world("addition", 100, 30, seed=1)
    assert other != train
    assert all(toy.is_correct("addition", r["response"], r["answer"]) for r in train)


def test_make_world_errors():
    with pytest.raises(ValueError, match="unknown toy task 'subtraction'"):
        toy.make_world("subtraction", 10, 10)
    with pytest.raises(ValueError, match="only 8100 problems"):
        toy.make_world("addition", 8000, 200)


@pytest.mark.slow  # trains a pi_0
def test_initial_policy_is_cached(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TSPIN_CACHE", str(tmp_path / "cache"))
    train, _ = toy.make_world("addition", 8, 4)
    settings = toy.InitialPolicySettings(epochs=1, batch_size=8)
    size = toy.ToyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    with caplog.at_level(logging.INFO, logger="tspin_kit.toy"):
        first, tok = toy.initial_policy("addition", train, settings, size)
        assert "SFT of a random tiny Llama" in caplog.text
        caplog.clear()
        second, _ = toy.initial_policy("addition", train, settings, size)
        assert "loading cached initial policy" in caplog.text
    folders = list((tmp_path / "cache" / "pi0").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("addition-8-")
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the SFT moved the weights away from the random init
    init = toy.build_model(tok, size, seed=settings.seed).state_dict()
    assert not torch.equal(init["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    # different settings -> a different cache entry
    toy.initial_policy("addition", train[:4], settings, size)
    assert len(list((tmp_path / "cache" / "pi0").iterdir())) == 2


def test_build_model_is_seeded_and_tied():
    tok = toy.build_tokenizer()
    m1, m2 = toy.build_model(tok, seed=3), toy.build_model(tok, seed=3)
    assert torch.equal(m1.model.embed_tokens.weight, m2.model.embed_tokens.weight)
    assert m1.lm_head.weight.data_ptr() == m1.model.embed_tokens.weight.data_ptr()
    assert m1.config.vocab_size == len(tok)
    assert 200_000 < sum(p.numel() for p in m1.parameters()) < 500_000


# ----------------------------------------------------------------------------- the shipped pi_0


def test_shipped_pi0_matches_its_record_and_loads_for_the_default_world():
    for task in toy.TASKS:
        info = toy.shipped_info(task)
        assert info is not None, f"no shipped pi_0 for {task}"
        path = toy.SHIPPED_DIR / info["file"]
        assert path.stat().st_size < 3_000_000  # a few MB at most
        assert toy._file_sha256(path) == info["sha256"]
        assert info["settings"] == dataclasses.asdict(toy.InitialPolicySettings())
        assert info["made"]["command"] == f"tspin pi0 --task {task} --ship"
    train, _ = toy.default_world_rows("addition")
    got = {}
    model, tok = toy.initial_policy("addition", train, info=got)
    assert got["source"] == "shipped" and got["sha256"] == toy.shipped_info("addition")["sha256"]
    # tied embeddings survive the round trip (lm_head is not stored separately)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_shipped_pi0_scores_what_its_record_says():
    """The shipped score is what the weights give here too, so `make demo` prints it on every machine."""
    train, held = toy.default_world_rows("addition")
    model, tok = toy.initial_policy("addition", train)
    score = sum(toy.heldout_correct(model, tok, "addition", held)) / len(held)
    assert score == pytest.approx(toy.shipped_info("addition")["score"], abs=1e-9)


def test_shipped_pi0_is_not_used_for_another_world_or_recipe():
    train, _ = toy.default_world_rows("addition")
    settings, size = toy.InitialPolicySettings(), toy.ToyModelSize()
    assert toy.shipped_policy("addition", train[:999], settings, size) is None
    assert toy.shipped_policy("addition", train, dataclasses.replace(settings, epochs=39), size) is None
    assert toy.shipped_policy("addition", train, settings, dataclasses.replace(size, hidden_size=64)) is None


def test_damaged_shipped_pi0_is_an_error_naming_the_file(tmp_path, monkeypatch):
    import shutil

    for name in ("addition.json", "addition.safetensors"):
        shutil.copy(toy.SHIPPED_DIR / name, tmp_path / name)
    with open(tmp_path / "addition.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(toy, "SHIPPED_DIR", tmp_path)
    train, _ = toy.default_world_rows("addition")
    with pytest.raises(toy.ShippedPolicyError, match=r"addition\.safetensors: SHA-256 .* does not match"):
        toy.initial_policy("addition", train)


def test_cache_key_includes_versions_and_platform(monkeypatch):
    train, _ = toy.make_world("addition", 8, 4)
    s, z = toy.InitialPolicySettings(epochs=1), toy.ToyModelSize()
    base = toy._cache_key("addition", train, s, z)
    real = toy.machine_info()
    for field, value in (("transformers", "0.0.1"), ("torch", "0.0.1"), ("cpu", "another CPU"), ("machine", "arm64")):
        monkeypatch.setattr(toy, "machine_info", lambda f=field, v=value: {**real, f: v})
        assert toy._cache_key("addition", train, s, z) != base, field
    monkeypatch.setattr(toy, "machine_info", lambda: real)
    assert toy._cache_key("addition", train, s, z) == base


@pytest.mark.slow  # trains a pi_0
def test_nudge_changes_the_init_by_a_rounding_sized_amount():
    tok = toy.build_tokenizer()
    train, _ = toy.make_world("addition", 8, 4)
    size = toy.ToyModelSize(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    s = toy.InitialPolicySettings(epochs=1, batch_size=8)
    a, _ = toy.train_initial_policy("addition", train, s, size)
    b, _ = toy.train_initial_policy("addition", train, s, size, perturb=1e-6, perturb_seed=1)
    wa, wb = a.model.embed_tokens.weight, b.model.embed_tokens.weight
    assert not torch.equal(wa, wb)
    assert torch.allclose(wa, wb, rtol=1e-3, atol=1e-4)
    del tok


@pytest.mark.slow
def test_retraining_pi0_here_lands_within_a_few_points_of_the_shipped_one():
    """The recipe is robust: `tspin pi0` on this machine (whatever it is) retrains the shipped pi_0's
    recipe from scratch and lands within 3 points of the shipped score."""
    import re
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tspin_kit.cli", "-q", "pi0", "--task", "addition"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "TSPIN_PROGRESS": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"this retraining is ([+-][0-9.]+) points away", proc.stdout)
    assert m, proc.stdout
    assert abs(float(m.group(1))) <= 3.0, proc.stdout
