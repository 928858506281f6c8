"""Annotated data (x, y): load it from anywhere, validate it, return one fixed shape.

SPIN and T-SPIN only need the annotated set: prompts x and their human responses y. The
synthetic y' and proto-synthetic y0 are generated later by the policy. This module turns any of
these sources into a ``datasets.Dataset`` with exactly the string columns ``prompt`` and
``response`` (plus ``answer``, kept as is when the source has one, for worlds with a scorer):

- a Python list of dicts (``records=``), either ``{"prompt", "response"}`` rows or chat rows
  ``{"messages": [{"role", "content"}, ...]}``; an in-memory ``datasets.Dataset`` also works;
- a local file chosen by extension: ``.json`` / ``.jsonl`` (``datasets`` "json" builder, a JSON
  array or JSON lines), ``.parquet``, ``.csv``;
- a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``);
- a Hugging Face hub dataset id, via ``datasets.load_dataset(id, split=...)``;
- ``load_ultrachat`` for ``HuggingFaceH4/ultrachat_200k``, the dataset of the SPIN paper.

Toy worlds (sources ``"toy:..."``) are built in code by ``tspin_kit.toy``, not here.

Conventions:

- Columns: when both ``prompt_column`` and ``response_column`` exist they are used. Otherwise
  ``messages_column`` is read as a chat and only its first exchange is kept: prompt = the first
  ``user`` turn, response = the next ``assistant`` turn after it. System turns and later turns
  are dropped (the one prompt template lives in ``templates.py``).
- Texts are kept verbatim (no stripping), but an empty or whitespace-only prompt or response is
  an error, as is a non-string value: a bad row is never silently dropped.
- Subsampling (``num_examples`` or ``fraction``) happens before validation, so a 200k-row hub
  set is only checked on the rows kept. Chosen rows are a seeded random subset (numpy
  ``default_rng(seed).permutation``) returned in source order; a fraction keeps
  ``max(1, round(fraction * n))`` rows.
- Errors are ``DataError`` (a ``ValueError``) and name the source, the 0-based row index in the
  source and the column. A local path that does not exist raises ``FileNotFoundError``.
- A source that exists on disk is read from disk, even if it also reads as a hub id; one that
  does not exist but looks like a path (a data-file extension, a leading ``/`` ``.`` ``~``, or
  more than one ``/``) raises ``FileNotFoundError`` instead of going to the hub.
- Offline use: with ``HF_HUB_OFFLINE=1`` a hub id loads only from the local ``datasets`` cache;
  otherwise it fails fast with a ``DataError`` naming the id.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FILE_BUILDERS",
    "ULTRACHAT_ID",
    "ULTRACHAT_SPLITS",
    "DataConfig",
    "DataCountError",
    "DataError",
    "describe_source",
    "load_annotated",
    "load_ultrachat",
    "split_train_eval",
    "subsample",
]

# File extension -> `datasets` packaged builder name.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# Extensions that show the caller meant a local file (so a missing one is FileNotFoundError
# and an existing one gets "unsupported extension", never a hub lookup).
_FILE_LOOKING_SUFFIXES = set(FILE_BUILDERS) | {
    ".txt",
    ".tsv",
    ".xlsx",
    ".xls",
    ".arrow",
    ".pkl",
    ".pickle",
    ".gz",
    ".zip",
    ".bz2",
    ".xz",
    ".zst",
    ".yaml",
    ".yml",
    ".md",
}
# "name" or "org/name", as the hub spells dataset ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

ULTRACHAT_ID = "HuggingFaceH4/ultrachat_200k"
ULTRACHAT_SPLITS = ("train_sft", "test_sft", "train_gen", "test_gen")

_KEPT_EXTRA_COLUMN = "answer"
_BATCH_SIZE = 1000


class DataError(ValueError):
    """Annotated data that cannot be used: bad config, source, columns or rows."""


@dataclass
class DataConfig:
    """Where the annotated (x, y) pairs come from and how many to keep."""

    source: str | None = field(
        default=None,
        metadata={
            "help": "A hub dataset id, a local .json/.jsonl/.parquet/.csv file, or a folder "
            "written by Dataset.save_to_disk. 'toy:...' sources belong to tspin_kit.toy."
        },
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "Split of a hub dataset or a saved DatasetDict, e.g. 'train_sft' for "
            "HuggingFaceH4/ultrachat_200k. None takes the only split there is."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding x."})
    response_column: str = field(default="response", metadata={"help": "Column holding y."})
    messages_column: str = field(
        default="messages",
        metadata={
            "help": "Chat column used when the prompt/response columns are absent: the first "
            "user turn is x, the next assistant turn is y."
        },
    )
    num_examples: int | None = field(default=None, metadata={"help": "Keep this many rows, chosen at random (>= 1)."})
    fraction: float | None = field(
        default=None,
        metadata={"help": "Keep this fraction of rows, chosen at random, in (0, 1]."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the subsample."})

    def __post_init__(self) -> None:
        if self.source is not None and not isinstance(self.source, str):
            if isinstance(self.source, os.PathLike):
                self.source = os.fspath(self.source)
            else:
                raise DataError(f"source must be a string or None, got {self.source!r}")
        for name in ("prompt_column", "response_column", "messages_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise DataError(f"{name} must be a non-empty string, got {value!r}")
        _check_sample_size(self.num_examples, self.fraction)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"seed must be an int, got {self.seed!r}")


class DataCountError(DataError):
    """The source has fewer rows than asked for (raised after its rows were validated)."""

    def __init__(self, message: str, *, origin: str, requested: int, available: int):
        super().__init__(message)
        self.origin, self.requested, self.available = origin, requested, available


def load_annotated(
    config_or_source: DataConfig | str | os.PathLike | None = None,
    *,
    records: Sequence[Mapping[str, Any]] | datasets.Dataset | None = None,
    row_ids: bool = False,
) -> datasets.Dataset:
    """Load, subsample and validate annotated pairs; return columns ``prompt``, ``response``.

    ``config_or_source`` is a ``DataConfig`` or just its ``source``. Pass ``records`` (a list of
    dicts or a ``datasets.Dataset``) instead of a source to use in-memory data; a
    ``DataConfig`` with ``source=None`` then still sets columns and subsampling.

    >>> ds = load_annotated(records=[{"prompt": "2+2=", "response": "4"}])
    >>> ds.column_names, ds[0]
    (['prompt', 'response'], {'prompt': '2+2=', 'response': '4'})
    """
    if isinstance(config_or_source, DataConfig):
        config = config_or_source
    elif config_or_source is None or isinstance(config_or_source, (str, os.PathLike)):
        config = DataConfig(source=config_or_source)
    else:
        raise DataError(
            f"load_annotated takes a DataConfig, a source string or None, got {type(config_or_source).__name__}"
        )
    return _load(config, records, force_messages=False, row_ids=row_ids)


def describe_source(source: str | os.PathLike | None) -> str:
    """How errors name a source: ``file '/abs/x.jsonl'``, ``folder '...'`` or ``hub dataset 'id'``."""
    if source is None:
        return "records"
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        return f"folder '{path}'"
    if path.exists() or _looks_like_path(os.fspath(source)):
        return f"file '{path}'"
    return f"hub dataset '{source}'"


def load_ultrachat(
    split: str = "train_sft",
    *,
    data_files: str | os.PathLike | None = None,
    num_examples: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """First-turn (x, y) pairs of ``HuggingFaceH4/ultrachat_200k``, as in the SPIN paper.

    Its rows have ``prompt`` (str), ``prompt_id`` (str) and ``messages`` (a list of
    ``{"content", "role"}``); x is the first user message and y the assistant reply after it.
    Later turns are dropped. ``data_files`` (a local parquet/json file of the same schema, e.g.
    a downloaded ``data/train_sft-*.parquet``) replaces the hub download; ``split`` then only
    has to be one of the four UltraChat split names.
    """
    if split not in ULTRACHAT_SPLITS:
        raise DataError(f"split must be one of {list(ULTRACHAT_SPLITS)}, got {split!r}")
    source = os.fspath(data_files) if data_files is not None else ULTRACHAT_ID
    config = DataConfig(
        source=source,
        split=None if data_files is not None else split,
        num_examples=num_examples,
        seed=seed,
    )
    # The `prompt` column equals the first user turn, but read both sides from `messages`
    # so x and y always come from the same conversation turn.
    return _load(config, None, force_messages=True)


def subsample(
    dataset: datasets.Dataset,
    *,
    num_examples: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """A seeded random subset of rows, kept in their original order (see module conventions)."""
    _check_sample_size(num_examples, fraction)
    indices = _sample_indices(len(dataset), num_examples, fraction, seed, "dataset")
    return dataset if indices is None else dataset.select(indices)


def split_train_eval(
    dataset: datasets.Dataset, eval_size: float, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split rows into disjoint (train, eval) sets, each kept in original order.

    ``eval_size`` is a row count (int >= 1) or a fraction in (0, 1); train keeps at least one row.

    >>> ds = datasets.Dataset.from_dict({"prompt": list("abcd"), "response": list("wxyz")})
    >>> [len(part) for part in split_train_eval(ds, 0.25, seed=0)]
    [3, 1]
    """
    n = len(dataset)
    if isinstance(eval_size, bool) or not isinstance(eval_size, (int, float)):
        raise DataError(f"eval_size must be an int >= 1 or a float in (0, 1), got {eval_size!r}")
    if isinstance(eval_size, float):
        if not 0.0 < eval_size < 1.0:
            raise DataError(f"eval_size as a fraction must be in (0, 1), got {eval_size}")
        n_eval = max(1, round(eval_size * n))
    else:
        if eval_size < 1:
            raise DataError(f"eval_size as a count must be >= 1, got {eval_size}")
        n_eval = eval_size
    if n_eval >= n:
        raise DataError(f"eval_size={eval_size} leaves no training rows: the dataset has {n} rows")
    order = np.random.default_rng(seed).permutation(n)
    eval_indices = sorted(order[:n_eval].tolist())
    train_indices = sorted(order[n_eval:].tolist())
    return dataset.select(train_indices), dataset.select(eval_indices)


# --- loading ------------------------------------------------------------------------------


def _load(
    config: DataConfig,
    records: Sequence[Mapping[str, Any]] | datasets.Dataset | None,
    *,
    force_messages: bool,
    row_ids: bool = False,
) -> datasets.Dataset:
    if records is not None and config.source is not None:
        raise DataError(f"give either records or a source, not both (source={config.source!r})")
    if records is None and config.source is None:
        raise DataError("no data: give a source (DataConfig.source) or records=[...]")

    if records is None:
        raw, origin = _read_source(config.source, config.split)
    elif isinstance(records, datasets.Dataset):
        raw, origin = records, "records (Dataset)"
    elif isinstance(records, Sequence) and not isinstance(records, (str, bytes)):
        raw, origin = records, "records"
    else:
        raise DataError(f"records must be a list of dicts or a datasets.Dataset, got {type(records).__name__}")

    n = len(raw)
    if n == 0:
        raise DataError(f"{origin}: the dataset is empty (0 rows)")
    columns = _column_names(raw, origin)
    mode = _pick_mode(columns, config, origin, force_messages)

    too_few = config.num_examples is not None and config.num_examples > n
    # Too few rows for the count asked: check every row first, so a bad row in a small file is what the
    # user hears about, then report the count.
    indices = None if too_few else _sample_indices(n, config.num_examples, config.fraction, config.seed, origin)
    source_rows = range(n) if indices is None else indices

    prompts: list[str] = []
    responses: list[str] = []
    answers: list[Any] = []
    keep_answer = _KEPT_EXTRA_COLUMN in columns
    needed = ([config.messages_column] if mode == "messages" else [config.prompt_column, config.response_column]) + (
        [_KEPT_EXTRA_COLUMN] if keep_answer else []
    )
    for row_id, row in zip(source_rows, _iter_rows(raw, indices, needed), strict=True):
        if mode == "messages":
            prompt, response = _first_exchange(row.get(config.messages_column), config, origin, row_id)
        else:
            prompt = _check_text(row.get(config.prompt_column), origin, row_id, config.prompt_column)
            response = _check_text(row.get(config.response_column), origin, row_id, config.response_column)
        prompts.append(prompt)
        responses.append(response)
        if keep_answer:
            answers.append(row.get(_KEPT_EXTRA_COLUMN))

    if too_few:
        raise DataCountError(
            f"{origin}: num_examples={config.num_examples} but the data has only {n} rows",
            origin=origin,
            requested=int(config.num_examples),
            available=n,
        )
    # Python str lists always become plain `string` columns (the CSV/JSON readers would give
    # `large_string`); `answer` keeps whatever type the source had.
    data: dict[str, list[Any]] = {"prompt": prompts, "response": responses}
    if keep_answer:
        data[_KEPT_EXTRA_COLUMN] = answers
    if row_ids:  # 0-based row of the source, so later checks (prompt length) can name it
        data["row"] = list(source_rows)
    return datasets.Dataset.from_dict(data)


def _read_source(source: str, split: str | None) -> tuple[datasets.Dataset, str]:
    """Open a local file, a save_to_disk folder or a hub id; return (dataset, origin label)."""
    if source.startswith("toy:"):
        raise DataError(
            f"source {source!r} is a toy world: build it with tspin_kit.toy, not tspin_kit.data.load_annotated"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_saved_folder(path, split), f"folder '{path}'"
    if path.exists():
        return _read_file(path), f"file '{path}'"
    if _looks_like_path(source):
        raise FileNotFoundError(f"data source not found: no file or folder at '{path}'")
    return _read_hub(source, split), f"hub dataset '{source}'" + (f" (split '{split}')" if split else "")


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or Path(source).suffix.lower() in _FILE_LOOKING_SUFFIXES
        or not _HUB_ID.match(source)
    )


def _read_file(path: Path) -> datasets.Dataset:
    suffix = path.suffix.lower()
    builder = FILE_BUILDERS.get(suffix)
    if builder is None:
        raise DataError(
            f"file '{path}': unsupported extension {suffix or '(none)'!r}; supported: "
            f"{sorted(FILE_BUILDERS)} or a folder written by Dataset.save_to_disk"
        )
    if path.stat().st_size == 0:
        raise DataError(f"file '{path}': the dataset is empty (0 bytes)")
    # The parquet builder fails with a confusing ArrowInvalid on a file with 0 rows.
    if builder == "parquet" and _parquet_num_rows(path) == 0:
        raise DataError(f"file '{path}': the dataset is empty (0 rows)")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    # The packaged builders fail in many ways on malformed files (an empty JSON file even
    # raises StopIteration); report them all as this file being unreadable.
    except (OSError, ValueError, StopIteration, pa.ArrowException, datasets.exceptions.DatasetGenerationError) as err:
        if builder in ("json", "csv"):  # find the line at fault (only on failure: the check reads the file)
            _check_text_file(path, builder)
        raise DataError(f"file '{path}': could not read it as {builder}: {err}") from err


def _check_text_file(path: Path, builder: str) -> None:
    """Name the line of the first problem in a JSON/JSONL/CSV file (the `datasets` builders do not)."""
    import json

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"file '{path}', line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            f"is this really a {path.suffix} file?"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"file '{path}', line {line}: a NUL byte; this is a binary file, not {path.suffix} text")
    if builder != "json":
        return
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON document (an array of rows)
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"file '{path}', line {err.lineno}: not valid JSON ({err.msg}, column {err.colno})"
            ) from None
        return
    if stripped.startswith("{") and path.suffix.lower() == ".json":
        try:  # a single JSON object (e.g. {"data": [...]}) is left to the builder
            json.loads(text)
            return
        except json.JSONDecodeError:
            pass  # JSON lines in a .json file
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"file '{path}', line {lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"file '{path}', line {lineno}: expected a JSON object per line, got {type(row).__name__}")


def _parquet_num_rows(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None  # not readable as parquet: let the builder report it


def _read_saved_folder(path: Path, split: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"folder '{path}' is not a dataset written by Dataset.save_to_disk: {err}") from err
    return _one_split(loaded, split, f"folder '{path}'")


def _read_hub(dataset_id: str, split: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_dataset(dataset_id, split=split)
    # ConnectionError (offline or unreachable), DatasetNotFoundError (a FileNotFoundError)
    # and unknown splits (ValueError) all mean "this id cannot be used here".
    except (OSError, ValueError) as err:
        raise DataError(
            f"hub dataset '{dataset_id}' (split {split!r}) could not be loaded: {err}. "
            "Offline, only datasets already in the local cache load; otherwise save it with "
            "Dataset.save_to_disk or to a .parquet/.jsonl file and pass that path."
        ) from err
    return _one_split(loaded, split, f"hub dataset '{dataset_id}'")


def _one_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str | None, origin: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    names = list(loaded.keys())
    if split is None:
        if len(names) == 1:
            return loaded[names[0]]
        raise DataError(f"{origin} has splits {names}: set DataConfig.split to one of them")
    if split not in loaded:
        raise DataError(f"{origin} has no split {split!r}; splits found: {names}")
    return loaded[split]


# --- columns and rows ---------------------------------------------------------------------


def _column_names(raw: Sequence[Mapping[str, Any]] | datasets.Dataset, origin: str) -> list[str]:
    if isinstance(raw, datasets.Dataset):
        return list(raw.column_names)
    names: dict[str, None] = {}  # ordered union of keys over all rows
    for row_id, row in enumerate(raw):
        if not isinstance(row, Mapping):
            raise DataError(f"{origin}, row {row_id}: expected a dict, got {type(row).__name__}")
        names.update(dict.fromkeys(row))
    return list(names)


def _pick_mode(columns: list[str], config: DataConfig, origin: str, force_messages: bool) -> str:
    has_pair = config.prompt_column in columns and config.response_column in columns
    if has_pair and not force_messages:
        return "pair"
    if config.messages_column in columns:
        return "messages"
    if force_messages:
        expected = f"a {config.messages_column!r} column of chat turns"
    else:
        expected = (
            f"columns {config.prompt_column!r} and {config.response_column!r}, or a "
            f"{config.messages_column!r} column of chat turns"
        )
    raise DataError(f"{origin}: expected {expected}; found columns {columns}")


def _iter_rows(
    raw: Sequence[Mapping[str, Any]] | datasets.Dataset,
    indices: list[int] | None,
    columns: list[str],
) -> Iterator[Mapping[str, Any]]:
    """Rows (all of them, or those at `indices`), as dicts; a Dataset is read in batches."""
    if not isinstance(raw, datasets.Dataset):
        yield from (raw if indices is None else (raw[i] for i in indices))
        return
    # Decode only the columns used (UltraChat's `prompt_id`, for one, is never read).
    table = raw.select_columns(list(dict.fromkeys(columns)))
    table = table if indices is None else table.select(indices)
    for batch in table.iter(batch_size=_BATCH_SIZE):
        names = list(batch)
        for values in zip(*(batch[name] for name in names), strict=True):
            yield dict(zip(names, values, strict=True))


def _check_text(value: Any, origin: str, row_id: int, column: str) -> str:
    where = f"{origin}, row {row_id}, column {column!r}"
    if value is None:
        raise DataError(f"{where}: value is missing (null); expected a non-empty string")
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string, got {type(value).__name__} {value!r:.80}")
    if not value.strip():
        raise DataError(f"{where}: the text is empty or whitespace-only ({value!r})")
    return value


def _first_exchange(messages: Any, config: DataConfig, origin: str, row_id: int) -> tuple[str, str]:
    """(first user turn, next assistant turn after it) of one chat."""
    column = config.messages_column
    where = f"{origin}, row {row_id}, column {column!r}"
    if messages is None or isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise DataError(f"{where}: expected a list of {{'role', 'content'}} turns, got {type(messages).__name__}")
    roles = []
    for k, turn in enumerate(messages):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise DataError(f"{where}: turn {k} is not a {{'role', 'content'}} dict: {turn!r:.80}")
        roles.append(turn["role"])
    user = next((k for k, role in enumerate(roles) if role == "user"), None)
    if user is None:
        raise DataError(f"{where}: no user turn (roles found: {roles})")
    reply = next((k for k in range(user + 1, len(roles)) if roles[k] == "assistant"), None)
    if reply is None:
        raise DataError(f"{where}: no assistant reply after the first user turn (turn {user}; roles found: {roles})")
    prompt = _check_text(messages[user]["content"], origin, row_id, f"{column}[{user}].content")
    response = _check_text(messages[reply]["content"], origin, row_id, f"{column}[{reply}].content")
    return prompt, response


# --- subsampling --------------------------------------------------------------------------


def _check_sample_size(num_examples: int | None, fraction: float | None) -> None:
    if num_examples is not None and fraction is not None:
        raise DataError(f"set num_examples or fraction, not both (num_examples={num_examples}, fraction={fraction})")
    if num_examples is not None and (
        isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral) or num_examples < 1
    ):
        raise DataError(f"num_examples must be an int >= 1, got {num_examples!r}")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < fraction <= 1.0
    ):
        raise DataError(f"fraction must be in (0, 1], got {fraction!r}")


def _sample_indices(
    n: int, num_examples: int | None, fraction: float | None, seed: int, origin: str
) -> list[int] | None:
    """Sorted row indices of the seeded subset, or None to keep every row."""
    if num_examples is None and fraction is None:
        return None
    if num_examples is not None:
        if num_examples > n:
            raise DataError(f"{origin}: num_examples={num_examples} but the data has only {n} rows")
        k = int(num_examples)
    else:
        k = max(1, round(fraction * n))
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())
