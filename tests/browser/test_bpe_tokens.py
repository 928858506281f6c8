"""Per-token shading on a BPE tokenizer (issue 12, item 4), in a real chromium.

A real 1-iteration run on a GPT-2-style model with a byte-level BPE tokenizer built in code records the
text of every token (`{role}_tokens`); the triplet browser built on that run directory renders its detail
pane, which chromium then lays out. Before, BPE runs fell back to words or unlabelled positions."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    from helpers.bpe_world import save_gpt2_world, user_pairs, write_jsonl

    from tspin_kit.config import RunConfig
    from tspin_kit.session import SelfPlaySession

    root = tmp_path_factory.mktemp("bpe")
    model = save_gpt2_world(root / "model", n_positions=64)
    data = write_jsonl(root / "user.jsonl", user_pairs(18))
    cfg = RunConfig.from_dict(
        {
            "model": {"name_or_path": str(model)},
            "data": {"source": str(data), "num_examples": 12, "eval_size": 6},
            "train": {"batch_size": 4, "epochs": 1},
            "sampling": {"batch_size": 8, "max_new_tokens": 8},
            "iterations": 1,
            "cpu": True,
            "run_dir": str(root / "run"),
        }
    )
    SelfPlaySession(cfg).run()
    return root / "run"


def test_triplet_view_shades_bpe_tokens(page, bpe_run):
    from playwright.sync_api import expect

    from tspin_kit import analysis as A
    from tspin_kit.store import load_run
    from widgets.triplets import TripletBrowser

    rec = load_run(bpe_run)
    tb = TripletBrowser(str(bpe_run))
    html = tb.detail_html.value
    assert "tspin-token" in html
    page.set_content(f"<html><body><div id='pane'>{html}</div></body></html>")
    spans = page.locator("#pane .tspin-token")
    # the pane shows the first triplet of the last iteration: its tokens, with the tokenizer's own segmentation
    shown = A.token_shading(rec.examples, int(rec.examples["iteration"].max()), int(tb_example(tb)))
    assert set(shown["segmentation"]) == {"tokens"}
    expect(spans).to_have_count(len(shown))
    texts = [spans.nth(i).text_content() for i in range(spans.count())]
    annotated = shown[shown.role == "annotated"]["token"].tolist()
    assert texts[: len(annotated)] == annotated  # y comes first (y' of a random model may hold control bytes)
    assert " word" in annotated and annotated[-1] == "<eos>"  # BPE pieces, spaces kept, not characters or words
    assert all(spans.nth(i).get_attribute("title") for i in range(3))  # hover shows the log-prob


def tb_example(tb) -> int:
    """The example the browser's detail pane shows."""
    for name in ("example", "example_id", "selected"):
        w = getattr(tb, name, None)
        if w is not None and hasattr(w, "value"):
            return int(w.value)
    raise AssertionError("cannot find the selected example of the triplet browser")
