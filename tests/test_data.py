"""Tests for tspin_kit.data: every source type on real files, subsampling, and every bad input.

All files are written into tmp_path by the builders below; the `datasets` cache is redirected to
tmp_path too, so nothing here reads or writes ~/.cache or touches the network.
"""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tspin_kit.data
from tspin_kit.data import (
    ULTRACHAT_ID,
    DataConfig,
    DataError,
    load_annotated,
    load_ultrachat,
    split_train_eval,
    subsample,
)

PAIRS = [
    {"prompt": "What is 2+3?", "response": "2+3 = 5."},
    {"prompt": "Name a prime.", "response": "  7 is prime.\n"},  # kept verbatim, not stripped
    {"prompt": "Say hi.", "response": "hi"},
]


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets` caches (arrow files of loaded json/csv/parquet) inside tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode. `datasets` reads the env vars at import time, so patch its config too."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- fixture builders ------------------------------------------------------------------------

# The schema of HuggingFaceH4/ultrachat_200k (all four splits).
ULTRACHAT_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("prompt_id", pa.string()),
        (
            "messages",
            pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])),
        ),
    ]
)


def write_ultrachat_parquet(path: Path) -> list[dict[str, str]]:
    """Write a 4-row UltraChat-shaped parquet; return the expected first-turn pairs."""
    conversations = [
        # Multi-turn: only the first user turn and the reply right after it count.
        [
            "How do bees make honey?",
            "They evaporate nectar.",
            "Why evaporate?",
            "To lower water content.",
            "Thanks!",
            "You're welcome.",
        ],
        ["Write a haiku about rain.", "Soft rain on tin\nin the dark room\nsleep comes"],
        ["Translate 'cat' to French.", "chat", "And 'dog'?", "chien"],
        ["Is 91 prime?", "No: 91 = 7 * 13."],
    ]
    rows = []
    for i, texts in enumerate(conversations):
        messages = [{"content": text, "role": "user" if k % 2 == 0 else "assistant"} for k, text in enumerate(texts)]
        rows.append({"prompt": texts[0], "prompt_id": f"{i:064x}", "messages": messages})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ULTRACHAT_SCHEMA), path)
    return [{"prompt": texts[0], "response": texts[1]} for texts in conversations]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def numbered_pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(n)]


def assert_pairs(ds: datasets.Dataset, expected: list[dict]) -> None:
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == list(expected[0])
    assert ds.features["prompt"] == datasets.Value("string")
    assert ds.features["response"] == datasets.Value("string")
    assert ds.to_list() == expected


# --- DataConfig ------------------------------------------------------------------------------


def test_config_defaults():
    config = DataConfig()
    assert (config.prompt_column, config.response_column, config.messages_column) == ("prompt", "response", "messages")
    assert config.num_examples is None and config.fraction is None and config.seed == 0


@pytest.mark.parametrize("value", [0, -3, 1.5, True])
def test_config_rejects_bad_num_examples(value):
    with pytest.raises(DataError, match=r"num_examples must be an int >= 1"):
        DataConfig(num_examples=value)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.01, 2])
def test_config_rejects_bad_fraction(value):
    with pytest.raises(DataError, match=r"fraction must be in \(0, 1\]"):
        DataConfig(fraction=value)


def test_config_rejects_count_and_fraction_together():
    with pytest.raises(DataError, match="num_examples or fraction, not both"):
        DataConfig(num_examples=2, fraction=0.5)


def test_config_rejects_empty_column_name():
    with pytest.raises(DataError, match="prompt_column must be a non-empty string"):
        DataConfig(prompt_column="")


def test_config_fields_have_help():
    import dataclasses

    for f in dataclasses.fields(DataConfig):
        assert f.metadata.get("help"), f.name


# --- each source type ------------------------------------------------------------------------


def test_records_list_of_pairs():
    assert_pairs(load_annotated(records=PAIRS), PAIRS)


def test_records_with_config_sets_subsample():
    ds = load_annotated(DataConfig(num_examples=2, seed=1), records=numbered_pairs(10))
    assert len(ds) == 2


def test_records_chat_messages_take_first_exchange():
    records = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},  # system turns are dropped
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And Italy?"},
                {"role": "assistant", "content": "Rome."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]
        },
    ]
    assert_pairs(
        load_annotated(records=records),
        [
            {"prompt": "Capital of France?", "response": "Paris."},
            {"prompt": "Hi", "response": "Hello!"},
        ],
    )


def test_records_as_dataset_object():
    assert_pairs(load_annotated(records=datasets.Dataset.from_list(PAIRS)), PAIRS)


def test_answer_column_is_kept_and_others_dropped():
    records = [
        {"prompt": "1+1=", "response": "2", "answer": "2", "extra": 0},
        {"prompt": "2+2=", "response": "4", "answer": "4", "extra": 1},
    ]
    ds = load_annotated(records=records)
    assert ds.column_names == ["prompt", "response", "answer"]
    assert ds["answer"] == ["2", "4"]


def test_custom_column_names_are_renamed(tmp_path):
    rows = [{"question": p["prompt"], "gold": p["response"]} for p in PAIRS]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    config = DataConfig(source=str(path), prompt_column="question", response_column="gold")
    assert_pairs(load_annotated(config), PAIRS)


def test_json_array_file(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(PAIRS))
    assert_pairs(load_annotated(str(path)), PAIRS)


def test_jsonl_file_and_path_object(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert_pairs(load_annotated(str(path)), PAIRS)
    assert_pairs(load_annotated(path), PAIRS)  # a pathlib.Path works too


def test_parquet_file(tmp_path):
    path = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(PAIRS).to_parquet(str(path))
    assert_pairs(load_annotated(str(path)), PAIRS)


def test_csv_file(tmp_path):
    path = tmp_path / "pairs.csv"
    datasets.Dataset.from_list(PAIRS).to_csv(str(path), index=False)
    assert_pairs(load_annotated(str(path)), PAIRS)


def test_jsonl_chat_messages_file(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["response"]}]}
        for p in PAIRS
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    assert_pairs(load_annotated(str(path)), PAIRS)


def test_save_to_disk_folder(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(folder))
    assert_pairs(load_annotated(str(folder)), PAIRS)


def test_save_to_disk_dataset_dict_picks_split(tmp_path):
    folder = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(PAIRS),
            "test": datasets.Dataset.from_list(PAIRS[:1]),
        }
    ).save_to_disk(str(folder))
    assert_pairs(load_annotated(DataConfig(source=str(folder), split="test")), PAIRS[:1])
    with pytest.raises(DataError, match=r"has splits \['train', 'test'\]: set DataConfig.split"):
        load_annotated(str(folder))
    with pytest.raises(DataError, match=r"has no split 'dev'; splits found: \['train', 'test'\]"):
        load_annotated(DataConfig(source=str(folder), split="dev"))


# --- UltraChat -------------------------------------------------------------------------------


def test_ultrachat_fixture_has_the_hub_schema(tmp_path):
    path = tmp_path / "data" / "train_sft-00000-of-00001.parquet"
    write_ultrachat_parquet(path)
    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert loaded.features == datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "prompt_id": datasets.Value("string"),
            "messages": datasets.List({"content": datasets.Value("string"), "role": datasets.Value("string")}),
        }
    )


def test_ultrachat_takes_first_turn_only(tmp_path):
    path = tmp_path / "data" / "train_sft-00000-of-00001.parquet"
    expected = write_ultrachat_parquet(path)
    ds = load_ultrachat("train_sft", data_files=path)
    assert_pairs(ds, expected)
    assert "Why evaporate?" not in ds["prompt"] and "chien" not in ds["response"]


def test_ultrachat_shape_through_load_annotated(tmp_path):
    # `prompt` exists but `response` does not, so the messages column is used.
    path = tmp_path / "uc.parquet"
    expected = write_ultrachat_parquet(path)
    assert_pairs(load_annotated(str(path)), expected)


def test_ultrachat_subsample(tmp_path):
    path = tmp_path / "uc.parquet"
    expected = write_ultrachat_parquet(path)
    ds = load_ultrachat(data_files=path, num_examples=2, seed=3)
    assert len(ds) == 2
    assert all(row in expected for row in ds.to_list())
    assert ds.to_list() == load_ultrachat(data_files=path, num_examples=2, seed=3).to_list()


def test_ultrachat_rejects_unknown_split(tmp_path):
    with pytest.raises(DataError, match=r"split must be one of \['train_sft', 'test_sft'"):
        load_ultrachat("train")


def test_ultrachat_needs_messages_column(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    with pytest.raises(
        DataError,
        match=r"expected a 'messages' column of chat turns; found "
        r"columns \['prompt', 'response'\]",
    ):
        load_ultrachat(data_files=path)


# --- hub -------------------------------------------------------------------------------------


def test_unreachable_hub_id_names_the_id(offline):
    with pytest.raises(
        DataError,
        match=r"hub dataset 'no-such-org/no-such-dataset' \(split "
        r"'train'\) could not be loaded",
    ):
        load_annotated(DataConfig(source="no-such-org/no-such-dataset", split="train"))


def test_unreachable_ultrachat_names_the_id(offline):
    with pytest.raises(DataError, match=re.escape(f"hub dataset '{ULTRACHAT_ID}'")):
        load_ultrachat("test_sft")


# --- subsampling -----------------------------------------------------------------------------


def test_subsample_by_count_is_deterministic_and_seeded():
    records = numbered_pairs(50)

    def rows(seed):
        return load_annotated(DataConfig(num_examples=10, seed=seed), records=records).to_list()

    assert rows(0) == rows(0)
    assert rows(0) != rows(1)
    kept = [int(row["prompt"].split()[-1]) for row in rows(0)]
    assert len(set(kept)) == 10 and kept == sorted(kept)  # distinct rows, in source order


def test_subsample_by_fraction_rounds_to_nearest():
    records = numbered_pairs(10)
    assert len(load_annotated(DataConfig(fraction=0.34), records=records)) == 3
    assert len(load_annotated(DataConfig(fraction=0.01), records=records)) == 1  # at least one
    assert load_annotated(DataConfig(fraction=1.0), records=records).to_list() == records


def test_subsample_same_rows_from_file_and_records(tmp_path):
    records = numbered_pairs(30)
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    from_file = load_annotated(DataConfig(source=str(path), num_examples=7, seed=5))
    from_records = load_annotated(DataConfig(num_examples=7, seed=5), records=records)
    assert from_file.to_list() == from_records.to_list()


def test_subsample_larger_than_data_raises(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    with pytest.raises(DataError, match=re.escape(f"file '{path}': num_examples=5 but the data has only 3 rows")):
        load_annotated(DataConfig(source=str(path), num_examples=5))


def test_subsample_helper_on_a_dataset():
    ds = datasets.Dataset.from_list(numbered_pairs(20))
    assert subsample(ds, num_examples=4, seed=2)["prompt"] == subsample(ds, num_examples=4, seed=2)["prompt"]
    assert len(subsample(ds, fraction=0.5)) == 10
    assert subsample(ds) is ds
    with pytest.raises(DataError, match="num_examples=21 but the data has only 20 rows"):
        subsample(ds, num_examples=21)


def test_validation_checks_kept_rows_and_names_the_source_row():
    clean = numbered_pairs(20)
    bad = [dict(row) for row in clean]
    bad[7]["prompt"] = "   "
    outcomes = set()
    for seed in range(20):
        config = DataConfig(num_examples=5, seed=seed)
        kept = load_annotated(config, records=clean)["prompt"]
        if "question 7" in kept:
            # The error names row 7 of the source, not its position in the subset.
            with pytest.raises(DataError, match=r"records, row 7, column 'prompt'"):
                load_annotated(config, records=bad)
        else:
            assert load_annotated(config, records=bad)["prompt"] == kept
        outcomes.add("question 7" in kept)
    assert outcomes == {True, False}


def test_split_train_eval_is_disjoint_and_seeded():
    ds = datasets.Dataset.from_list(numbered_pairs(10))
    train, evaluation = split_train_eval(ds, 3, seed=0)
    assert (len(train), len(evaluation)) == (7, 3)
    assert set(train["prompt"]).isdisjoint(evaluation["prompt"])
    assert sorted([*train["prompt"], *evaluation["prompt"]]) == sorted(ds["prompt"])
    assert split_train_eval(ds, 3, seed=0)[1]["prompt"] == evaluation["prompt"]
    assert split_train_eval(ds, 3, seed=1)[1]["prompt"] != evaluation["prompt"]
    assert len(split_train_eval(ds, 0.2, seed=0)[1]) == 2


@pytest.mark.parametrize(
    ("eval_size", "message"),
    [
        (0, "eval_size as a count must be >= 1"),
        (1.0, r"eval_size as a fraction must be in \(0, 1\)"),
        (10, "eval_size=10 leaves no training rows: the dataset has 10 rows"),
        ("3", "eval_size must be an int >= 1 or a float"),
    ],
)
def test_split_train_eval_rejects_bad_sizes(eval_size, message):
    ds = datasets.Dataset.from_list(numbered_pairs(10))
    with pytest.raises(DataError, match=message):
        split_train_eval(ds, eval_size, seed=0)


# --- bad inputs ------------------------------------------------------------------------------


def test_missing_columns_lists_found_and_expected(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    pattern = re.escape(
        f"file '{path}': expected columns 'prompt' and 'response', or a "
        "'messages' column of chat turns; found columns ['question', 'answer']"
    )
    with pytest.raises(DataError, match=pattern):
        load_annotated(str(path))


def test_only_prompt_column_is_missing_columns():
    with pytest.raises(DataError, match=r"found columns \['prompt'\]"):
        load_annotated(records=[{"prompt": "x"}])


def test_empty_prompt_names_file_row_and_column(tmp_path):
    rows = [dict(PAIRS[0]), {"prompt": "", "response": "r"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    pattern = re.escape(f"file '{path}', row 1, column 'prompt': the text is empty or whitespace-only")
    with pytest.raises(DataError, match=pattern):
        load_annotated(str(path))


def test_whitespace_response_names_file_row_and_column(tmp_path):
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(PAIRS + [{"prompt": "p", "response": " \n\t"}]).to_parquet(str(path))
    pattern = re.escape(f"file '{path}', row 3, column 'response': the text is empty or whitespace-only")
    with pytest.raises(DataError, match=pattern):
        load_annotated(str(path))


def test_empty_csv_cell_is_reported_as_missing(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,response\nhello,world\nagain,\n")
    pattern = re.escape(f"file '{path}', row 1, column 'response': value is missing (null)")
    with pytest.raises(DataError, match=pattern):
        load_annotated(str(path))


def test_missing_key_in_a_record_is_reported():
    with pytest.raises(DataError, match=r"records, row 1, column 'response': value is missing"):
        load_annotated(records=[PAIRS[0], {"prompt": "no response"}])


def test_non_string_value_in_records():
    with pytest.raises(
        DataError,
        match=r"records, row 0, column 'prompt': expected a string, "
        r"got int 42",
    ):
        load_annotated(records=[{"prompt": 42, "response": "r"}])


def test_non_string_column_in_file(tmp_path):
    path = write_jsonl(tmp_path / "numbers.jsonl", [{"prompt": "p", "response": 1}, {"prompt": "q", "response": 2}])
    pattern = re.escape(f"file '{path}', row 0, column 'response': expected a string, got int")
    with pytest.raises(DataError, match=pattern):
        load_annotated(str(path))


def test_messages_without_user_turn():
    records = [{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(
        DataError,
        match=r"records, row 0, column 'messages': no user turn "
        r"\(roles found: \['system', 'assistant'\]\)",
    ):
        load_annotated(records=records)


def test_messages_without_assistant_reply_after_user(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    pattern = re.escape(
        f"file '{path}', row 1, column 'messages': no assistant reply after the "
        "first user turn (turn 1; roles found: ['assistant', 'user'])"
    )
    with pytest.raises(DataError, match=pattern):
        load_annotated(str(path))


def test_messages_with_empty_content():
    records = [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "  "}]}]
    with pytest.raises(
        DataError,
        match=r"row 0, column 'messages\[1\].content': the text is "
        r"empty",
    ):
        load_annotated(records=records)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("just a string", "expected a list of {'role', 'content'} turns, got str"),
        (None, "expected a list of {'role', 'content'} turns, got NoneType"),
        ([{"role": "user"}], "turn 0 is not a {'role', 'content'} dict"),
    ],
)
def test_messages_of_the_wrong_shape(messages, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_annotated(records=[{"messages": messages}])


def test_missing_absolute_path(tmp_path):
    path = tmp_path / "nowhere" / "pairs.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_annotated(str(path))


def test_missing_relative_file_is_not_sent_to_the_hub():
    with pytest.raises(FileNotFoundError, match=re.escape("data/does_not_exist.parquet")):
        load_annotated("data/does_not_exist.parquet")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("prompt\tresponse\n")
    with pytest.raises(
        DataError, match=re.escape(f"file '{path}': unsupported extension '.txt'; supported: ['.csv', '.json'")
    ):
        load_annotated(str(path))


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    folder = tmp_path / "plain_folder"
    folder.mkdir()
    with pytest.raises(
        DataError, match=re.escape(f"folder '{folder}' is not a dataset written by Dataset.save_to_disk")
    ):
        load_annotated(str(folder))


def test_malformed_json_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"prompt": "p", "response": ')
    with pytest.raises(DataError, match=re.escape(f"file '{path}', line 1: not valid JSON")):
        load_annotated(str(path))


# Issue 12, item 5: malformed files name their line; binary files say so (were: "An error occurred while
# generating the dataset" with no line, and "The document is empty").
def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) for i in range(9)]
    lines[6] = '{"prompt": "p6", "response": r6}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_annotated(str(path))
    assert str(err.value) == f"file '{path}', line 7: not valid JSON (Expecting value, column 30)"


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.json", "pairs.csv"])
def test_binary_file_is_named_as_binary(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(DataError, match=re.escape(f"file '{path}', line 1: not UTF-8 text (byte 0x89 at offset 0)")):
        load_annotated(str(path))


def test_too_few_rows_reports_the_bad_row_first(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(6)]
    rows[4]["response"] = "  "
    path = write_jsonl(tmp_path / "small.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"file '{path}', row 4, column 'response': the text is empty")):
        load_annotated(DataConfig(source=str(path), num_examples=50))


def test_row_ids_name_the_source_row(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(10)])
    ds = load_annotated(DataConfig(source=str(path), num_examples=4, seed=3), row_ids=True)
    assert [int(r[1:]) for r in ds["prompt"]] == ds["row"]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=re.escape(f"file '{path}': the dataset is empty")):
        load_annotated(str(path))


def test_empty_records():
    with pytest.raises(DataError, match=r"records: the dataset is empty \(0 rows\)"):
        load_annotated(records=[])


def test_empty_parquet_with_columns(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "response": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match=re.escape(f"file '{path}': the dataset is empty (0 rows)")):
        load_annotated(str(path))


def test_toy_source_is_redirected_to_toy_module():
    with pytest.raises(
        ValueError,
        match=r"'toy:addition' is a toy world: build it with "
        r"tspin_kit.toy",
    ):
        load_annotated("toy:addition")


def test_records_and_source_together():
    with pytest.raises(DataError, match="give either records or a source, not both"):
        load_annotated("pairs.jsonl", records=PAIRS)


def test_no_source_and_no_records():
    with pytest.raises(DataError, match=r"no data: give a source"):
        load_annotated()


def test_records_of_the_wrong_type():
    with pytest.raises(DataError, match="records must be a list of dicts"):
        load_annotated(records="prompt,response")
    with pytest.raises(DataError, match="records, row 1: expected a dict, got str"):
        load_annotated(records=[PAIRS[0], "oops"])


def test_doctests():
    result = doctest.testmod(tspin_kit.data)
    assert result.attempted >= 2 and result.failed == 0
