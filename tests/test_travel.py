"""Runs that travel (issue 12, item 2): a run opens from its folder, a zip (`tspin export`) or an fsspec URL
(`memory://` here; `s3://`, `hf://` go through the same code where their filesystem is installed), in
`load_run` and in the widgets. Saved policies carry their tokenizer, so a harness can take the folder."""

from __future__ import annotations

import zipfile

import fsspec
import pandas as pd
import pytest
from conftest import normalise_records

from tspin_kit.cli import main
from tspin_kit.store import RunDirError, export_run, load_run


def same_records(a, b) -> None:
    pd.testing.assert_frame_equal(normalise_records(a.examples), normalise_records(b.examples))
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    pd.testing.assert_frame_equal(a.heldout, b.heldout)
    assert a.manifest == b.manifest and a.initial == b.initial


@pytest.fixture(scope="module")
def exported(stepped_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run.zip"
    assert main(["-q", "export", str(stepped_run.run_dir), str(out)]) == 0
    return out


def test_zip_opens_with_the_same_records(stepped_run, exported):
    names = zipfile.ZipFile(exported).namelist()
    assert "run/manifest.json" in names and "run/iterations/iter_001/examples.parquet" in names
    assert not any(n.startswith("run/weights/") for n in names)  # weights only with --weights
    rec = load_run(exported)
    same_records(rec, load_run(stepped_run.run_dir))
    assert rec.run_dir is None and len(rec.metrics) == 2


def test_export_with_weights(stepped_run, tmp_path):
    path = export_run(stepped_run.run_dir, tmp_path / "full.zip", weights=True)
    assert "run/weights/policy_002/model.safetensors" in zipfile.ZipFile(path).namelist()
    with pytest.raises(RunDirError, match="ending in .zip"):
        export_run(stepped_run.run_dir, tmp_path / "full.tar")
    with pytest.raises(RunDirError, match="no manifest.json"):
        export_run(tmp_path, tmp_path / "x.zip")


def test_memory_filesystem_folder_and_zip(stepped_run, exported):
    fs = fsspec.filesystem("memory")
    fs.put(str(stepped_run.run_dir), "/travel/run", recursive=True)
    same_records(load_run("memory://travel/run"), load_run(stepped_run.run_dir))
    fs.pipe("/travel/run.zip", exported.read_bytes())
    same_records(load_run("memory://travel/run.zip"), load_run(stepped_run.run_dir))
    with pytest.raises(RunDirError, match="memory://travel/nothing: no such run directory"):
        load_run("memory://travel/nothing")


def test_unknown_protocol_names_what_to_install():
    with pytest.raises(RunDirError, match="cannot open this URL"):
        load_run("nosuchproto://bucket/run")


def test_a_zip_that_is_not_a_run(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(RunDirError, match="a zip without manifest.json"):
        load_run(path)


def test_widgets_open_a_zipped_run(exported):
    pytest.importorskip("ipywidgets")
    from widgets.dashboard import Dashboard
    from widgets.triplets import TripletBrowser

    dash = Dashboard(str(exported))
    assert dash is not None
    tb = TripletBrowser(str(exported))
    assert tb is not None


def test_saved_policy_loads_as_a_checkpoint_with_its_tokenizer(stepped_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = stepped_run.run_dir / "weights" / "policy_002"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok("12+34=", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "12+34=" and model(ids).logits.shape[-1] == len(tok)
