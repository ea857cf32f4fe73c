"""Texts to compare models on, and the fixed token windows whose positions are the contexts.

``load_texts`` reads a data set spec into a list of texts; ``token_windows`` tokenizes them once, with one
tokenizer, into non-overlapping windows of ``seq_len`` tokens, so that every model sees identical token sequences
(DESIGN.md, section 5). Position t of a window is the context x = tokens[0..t] for the next token; position 0 sees
one token only and is never a context.

Example:
    >>> texts = load_texts("canterbury")  # doctest: +SKIP
    >>> windows = token_windows(texts, tokenizer, seq_len=128, max_contexts=8192)  # doctest: +SKIP
    >>> windows.input_ids.shape, windows.num_contexts  # doctest: +SKIP
    (torch.Size([65, 128]), 8192)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_repsim import assets

logger = logging.getLogger(__name__)

#: Data set names that resolve to bundled offline texts, mapped to the function returning their files.
TEXT_ALIASES: dict[str, Callable[[], list[Path]]] = {"canterbury": assets.canterbury_files}

_ACCEPTED = (
    "a datasets.Dataset with a 'text' column (or a single string column), a local .txt file (one text), a local "
    ".jsonl file (one JSON object with a 'text' string per line), or an alias ({aliases})"
)


def _accepted() -> str:
    return _ACCEPTED.format(aliases=", ".join(repr(a) for a in sorted(TEXT_ALIASES)))


def load_texts(spec: Any) -> list[str]:
    """Read a data set spec into a list of texts.

    A .txt file is one text (the whole file, UTF-8, CRLF line ends turned into LF); each alias file is one text
    the same way; a .jsonl file gives one text per non-blank line; a ``datasets.Dataset`` gives one text per row.

    Args:
        spec: a ``datasets.Dataset``, a path to a .txt or .jsonl file, or an alias of ``TEXT_ALIASES``.

    Returns:
        The texts, in file / row order.

    Raises:
        ValueError: unknown alias, missing file, unsupported suffix, a .jsonl line without a "text" string, or a
            Dataset without a usable string column.
        TypeError: ``spec`` is a DatasetDict, a streaming data set, or neither a Dataset nor a path.

    Example:
        >>> import datasets
        >>> load_texts(datasets.Dataset.from_dict({"text": ["one", "two"]}))
        ['one', 'two']
    """
    import datasets

    if isinstance(spec, datasets.Dataset):
        return _dataset_texts(spec)
    if isinstance(spec, (datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)):
        splits = f" with the splits {list(spec)}" if isinstance(spec, dict) else ""
        raise TypeError(
            f"Expected {_accepted()}; got a {type(spec).__name__}{splits}. Pass one split as a Dataset, e.g. "
            "dataset['train'] (materialise a streaming data set with Dataset.from_generator or .take(n))."
        )
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"Expected {_accepted()}; got an object of type {type(spec).__name__}.")
    text = os.fspath(spec)
    if text in TEXT_ALIASES:
        return [_read_text_file(path) for path in TEXT_ALIASES[text]()]
    path = Path(text).expanduser()
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file or alias"
        raise ValueError(f"Expected {_accepted()}; got {text!r} ({what}, resolved to {path.absolute()}).")
    if path.suffix.lower() == ".txt":
        return [_read_text_file(path)]
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    raise ValueError(
        f"Expected {_accepted()}; got the file {path} with the suffix {path.suffix or '(none)'!r}. Rename a plain "
        "text file to .txt, or write one JSON object per line to a .jsonl file."
    )


def _read_text_file(path: Path) -> str:
    """A whole UTF-8 file as one string with LF line ends."""
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def _read_jsonl(path: Path) -> list[str]:
    """The "text" field of each non-blank line of a JSON-lines file."""
    texts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"Expected one JSON object per line in {path}, got invalid JSON on line {number}: {error}."
                ) from None
            value = record.get("text") if isinstance(record, dict) else None
            if not isinstance(value, str):
                got = f"the keys {sorted(record)}" if isinstance(record, dict) else f"a {type(record).__name__}"
                if isinstance(record, dict) and "text" in record:
                    got = f"a {type(value).__name__} under 'text'"
                raise ValueError(  # noqa: TRY004 - bad data in the file, not an argument of the wrong type
                    f'Expected a JSON object with a "text" string on every line of {path}, got {got} on line '
                    f'{number}. Write each record as {{"text": "..."}}.'
                )
            texts.append(value.replace("\r\n", "\n"))
    return texts


def _dataset_texts(dataset: Any) -> list[str]:
    """The "text" column of a Dataset, or its only string column."""
    import datasets

    features = dataset.features
    strings = [
        name
        for name, feature in features.items()
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
    ]
    if "text" in strings:
        column = "text"
    elif "text" not in features and len(strings) == 1:
        column = strings[0]
    else:
        columns = ", ".join(f"{name}: {feature}" for name, feature in features.items()) or "none"
        raise ValueError(
            f"Expected a Dataset with a string column 'text' or exactly one string column, got the columns "
            f"({columns}). Rename the column to use: dataset.rename_column('<name>', 'text')."
        )
    texts = list(dataset[column])
    missing = [row for row, value in enumerate(texts) if value is None]
    if missing:
        raise ValueError(
            f"Expected a string in every row of the column {column!r}, got None in {len(missing)} rows (first: row "
            f"{missing[0]}). Drop them first: dataset.filter(lambda row: row[{column!r}] is not None)."
        )
    return texts


@dataclass
class ContextWindows:
    """Fixed token windows and which of their positions are contexts.

    Attributes:
        input_ids: (n_windows, seq) token ids, torch.long.
        context_mask: (n_windows, seq) bool, True where a position is a context: every position but the first of a
            window, except the positions past ``max_contexts`` at the end of the last window.
    """

    input_ids: torch.Tensor
    context_mask: torch.Tensor

    @property
    def num_contexts(self) -> int:
        """The number of True values of ``context_mask``."""
        return int(self.context_mask.sum().item())

    @property
    def fingerprint(self) -> str:
        """sha256 hex digest of the shape, the token ids (int64, little-endian) and the context mask: provenance."""
        digest = hashlib.sha256(repr(tuple(self.input_ids.shape)).encode())
        digest.update(self.input_ids.to(torch.int64).contiguous().numpy().astype("<i8").tobytes())
        digest.update(self.context_mask.to(torch.uint8).contiguous().numpy().tobytes())
        return digest.hexdigest()


class CausalLMExamples(torch.utils.data.Dataset):
    """(n_windows, seq) token ids as causal-LM training examples for a Trainer; the model shifts the labels itself."""

    def __init__(self, input_ids: torch.Tensor) -> None:
        self.input_ids = input_ids

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.input_ids[index]}


def token_windows(
    texts: Sequence[str], tokenizer: Any, *, seq_len: int, max_contexts: int | None, seed: int = 0
) -> ContextWindows:
    """Tokenize texts into non-overlapping windows of ``seq_len`` tokens with at most ``max_contexts`` contexts.

    The texts are tokenized without special tokens and joined with the tokenizer's eos token between them (if it
    has one; texts that give no tokens are skipped); the token stream is cut into n = n_tokens // seq_len windows,
    dropping the ragged tail. Each window has seq_len - 1 contexts (every position but the first). When
    ``max_contexts`` is smaller than the n (seq_len - 1) available, ceil(max_contexts / (seq_len - 1)) windows are
    chosen by a permutation seeded with ``seed`` and, in the last chosen one, the positions past ``max_contexts``
    are masked out; otherwise all windows are kept in text order.

    Args:
        texts: the texts, e.g. from ``load_texts``.
        tokenizer: a transformers tokenizer; the models compared must share its vocabulary.
        seq_len: tokens per window, at least 2.
        max_contexts: the most contexts to keep (> 0), or None for all.
        seed: seed of the window choice; same seed, same windows.

    Returns:
        ``ContextWindows`` with (n_windows, seq) ``input_ids`` and ``context_mask``; ``num_contexts`` is
        min(max_contexts, n (seq_len - 1)).

    Raises:
        ValueError: seq_len < 2, max_contexts <= 0, no tokens at all, or fewer tokens than one window.
        TypeError: ``texts`` is a single string.

    Example:
        >>> from transformers import AutoTokenizer
        >>> tokenizer = AutoTokenizer.from_pretrained(folder)  # doctest: +SKIP
        >>> token_windows(["some text"] * 100, tokenizer, seq_len=16, max_contexts=40).num_contexts  # doctest: +SKIP
        40
    """
    _check_window_arguments(texts, seq_len, max_contexts)
    stream = _token_stream(texts, tokenizer)
    n_windows = len(stream) // seq_len
    if len(stream) == 0:
        raise ValueError(
            f"Expected texts that give at least one token, got {len(texts)} texts and 0 tokens. Check the data set "
            "spec given to load_texts (an empty file, or an empty column?)."
        )
    if n_windows == 0:
        raise ValueError(
            f"Expected at least seq_len = {seq_len} tokens to fill one window, got {len(stream)} tokens from "
            f"{len(texts)} texts. Pass seq_len <= {len(stream)}, or more text."
        )

    # (n_tokens,) -> (n_windows, seq), the ragged tail dropped
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
    per_window = seq_len - 1
    available = n_windows * per_window
    if max_contexts is not None and max_contexts > available:
        warnings.warn(
            f"Asked for max_contexts = {max_contexts}, but the data give only {available} contexts ({n_windows} "
            f"windows of {seq_len} tokens); using all of them. Add text or lower max_contexts to silence this.",
            stacklevel=2,
        )
    if max_contexts is None or max_contexts >= available:
        chosen, wanted = torch.arange(n_windows), available
    else:
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(n_windows, generator=generator)[: math.ceil(max_contexts / per_window)]
        wanted = max_contexts

    # Position 0 of a window sees one token only; the excess of the last window is masked from its end.
    input_ids = windows[chosen]  # advanced indexing copies
    context_mask = torch.ones_like(input_ids, dtype=torch.bool)
    context_mask[:, 0] = False
    excess = len(chosen) * per_window - wanted
    if excess:
        context_mask[-1, seq_len - excess :] = False
    logger.info("%d windows of %d tokens, %d contexts, from %d tokens", len(chosen), seq_len, wanted, len(stream))
    return ContextWindows(input_ids=input_ids, context_mask=context_mask)


def _check_window_arguments(texts: Sequence[str], seq_len: int, max_contexts: int | None) -> None:
    if isinstance(texts, str):
        raise TypeError(
            f"Expected a sequence of texts, got a single str of {len(texts)} characters. Wrap it in a list: [text]."
        )
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(
            f"Expected an integer seq_len >= 2 (position 0 of a window is never a context, so a window needs two "
            f"tokens for one context), got {seq_len!r}. Pass e.g. seq_len=128."
        )
    if max_contexts is not None and (
        isinstance(max_contexts, bool) or not isinstance(max_contexts, int) or max_contexts <= 0
    ):
        raise ValueError(
            f"Expected max_contexts to be a positive integer, or None for every available context, got "
            f"{max_contexts!r}. Pass e.g. max_contexts=8192."
        )


def _token_stream(texts: Sequence[str], tokenizer: Any) -> torch.Tensor:
    """(n_tokens,) long: the texts' tokens, without special tokens, joined by eos where the tokenizer has one."""
    if not texts:
        return torch.zeros(0, dtype=torch.long)
    encoded = tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False, verbose=False)
    pieces = [ids for ids in encoded["input_ids"] if ids]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for index, ids in enumerate(pieces):
        if index and eos is not None:
            stream.append(eos)
        stream.extend(ids)
    return torch.tensor(stream, dtype=torch.long)
