"""Reading texts and cutting them into token windows: counts, masks, seeded choices and every error.

A word-level tokenizer (one token per word, ids known in advance) makes every count exact. The real Canterbury
texts and SmolLM2 tokenizer are used only by the test marked slow.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_repsim import data
from hf_repsim.data import ContextWindows, load_texts, token_windows

WORDS = [f"w{i}" for i in range(50)]


def word_tokenizer(eos: bool = True) -> PreTrainedTokenizerFast:
    """One token per word; ids 0 <unk>, 1 <eos>, then w0 .. w49 in some fixed order."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>" if eos else None)


def words(n: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


# --- load_texts -------------------------------------------------------------------------------------------------


def test_a_txt_file_is_one_text_with_lf_line_ends(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("first line\r\nsecond line\r\n\r\nthird \u00e9\r\n".encode())

    assert load_texts(path) == ["first line\nsecond line\n\nthird \u00e9\n"]
    assert load_texts(str(path)) == load_texts(path)


def test_a_jsonl_file_gives_one_text_per_line_and_skips_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "one\r\ntwo", "id": 1}, {"text": ""}, {"text": "three"}]
    path.write_text("\n".join(json.dumps(row) for row in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")

    assert load_texts(path) == ["one\ntwo", "", "three"]


def test_a_dataset_gives_its_text_column():
    dataset = datasets.Dataset.from_dict({"label": ["x", "y"], "text": ["a b", "c"], "n": [1, 2]})

    assert load_texts(dataset) == ["a b", "c"]


def test_a_dataset_without_text_column_gives_its_only_string_column():
    dataset = datasets.Dataset.from_dict({"content": ["a b", "c"], "n": [1, 2]})

    assert load_texts(dataset) == ["a b", "c"]


def test_an_alias_reads_each_of_its_files_as_one_text(tmp_path, monkeypatch):
    # The alias machinery, with the Canterbury files replaced by two small ones.
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_bytes(b"alice\r\nwas here\r\n")
    files[1].write_bytes(b"second file")
    monkeypatch.setitem(data.TEXT_ALIASES, "canterbury", lambda: files)

    assert load_texts("canterbury") == ["alice\nwas here\n", "second file"]


def test_an_unknown_alias_lists_the_aliases_and_the_accepted_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ValueError) as error:
        load_texts("wikitext")

    message = str(error.value)
    assert "Expected a datasets.Dataset with a 'text' column (or a single string column)" in message
    assert "a local .txt file (one text)" in message
    assert "a local .jsonl file (one JSON object with a 'text' string per line)" in message
    assert "or an alias ('canterbury')" in message
    assert f"got 'wikitext' (no such file or alias, resolved to {tmp_path / 'wikitext'})" in message


def test_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"or an alias \('canterbury'\); got '.*missing.txt' \(no such file or alias"):
        load_texts(tmp_path / "missing.txt")


def test_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"; got '.*' \(a folder, resolved to "):
        load_texts(tmp_path)


def test_an_unsupported_suffix(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text\nhello\n")

    with pytest.raises(ValueError, match=r"got the file .*data.csv with the suffix '.csv'. Rename a plain text file"):
        load_texts(path)


def test_an_object_of_another_type():
    with pytest.raises(TypeError, match=r"or an alias \('canterbury'\); got an object of type list"):
        load_texts(["a text"])


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')

    with pytest.raises(
        ValueError, match=r"Expected one JSON object per line in .*bad.jsonl, got invalid JSON on line 2"
    ):
        load_texts(path)


@pytest.mark.parametrize(
    ("line", "got"),
    [
        ('{"body": "x", "id": 3}', "the keys ['body', 'id']"),
        ('{"text": 42}', "a int under 'text'"),
        ('["text"]', "a list"),
    ],
)
def test_a_jsonl_line_without_a_text_string(tmp_path, line, got):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")

    with pytest.raises(ValueError) as error:
        load_texts(path)

    message = str(error.value)
    assert f'Expected a JSON object with a "text" string on every line of {path}, got {got} on line 2' in message
    assert 'Write each record as {"text": "..."}' in message


@pytest.mark.parametrize(
    ("columns", "shown"),
    [
        ({"n": [1, 2]}, "(n: Value('int64'))"),
        ({"title": ["a", "b"], "body": ["c", "d"]}, "(title: Value('string'), body: Value('string'))"),
        ({"text": [1, 2], "body": ["c", "d"]}, "(text: Value('int64'), body: Value('string'))"),
    ],
)
def test_a_dataset_without_a_usable_string_column(columns, shown):
    with pytest.raises(ValueError) as error:
        load_texts(datasets.Dataset.from_dict(columns))

    message = str(error.value)
    assert (
        f"Expected a Dataset with a string column 'text' or exactly one string column, got the columns {shown}"
        in message
    )
    assert "dataset.rename_column('<name>', 'text')" in message


def test_a_dataset_with_missing_texts():
    dataset = datasets.Dataset.from_dict({"text": ["a", None, "c", None]})

    with pytest.raises(ValueError, match=r"got None in 2 rows \(first: row 1\)\. Drop them first"):
        load_texts(dataset)


def test_a_dataset_dict_asks_for_a_split():
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})})

    with pytest.raises(TypeError, match=r"got a DatasetDict with the splits \['train'\]\. Pass one split"):
        load_texts(splits)


# --- token_windows ----------------------------------------------------------------------------------------------


def stream_of(texts: list[str], tokenizer) -> list[int]:
    """The expected token stream: each text's ids, <eos> between texts."""
    stream = []
    for index, text in enumerate(texts):
        if index:
            stream.append(tokenizer.eos_token_id)
        stream.extend(tokenizer.convert_tokens_to_ids(text.split()))
    return stream


def test_windows_cut_the_stream_with_eos_between_texts_and_drop_the_tail(tokenizer):
    texts = [words(10), words(7, start=20)]
    stream = stream_of(texts, tokenizer)  # 10 + 1 + 7 = 18 tokens

    windows = token_windows(texts, tokenizer, seq_len=4, max_contexts=None)

    # 4 windows of 4 tokens in text order; the last 2 tokens are dropped.
    assert windows.input_ids.dtype == torch.long
    assert windows.input_ids.tolist() == [stream[i : i + 4] for i in range(0, 16, 4)]
    assert windows.input_ids[2, 2].item() == tokenizer.eos_token_id  # stream position 10
    assert windows.context_mask.dtype == torch.bool
    assert windows.context_mask.tolist() == [[False, True, True, True]] * 4
    assert windows.num_contexts == 4 * 3


def test_no_eos_between_texts_when_the_tokenizer_has_none():
    tokenizer = word_tokenizer(eos=False)
    texts = [words(5), words(5, start=5)]

    windows = token_windows(texts, tokenizer, seq_len=5, max_contexts=None)

    assert windows.input_ids.flatten().tolist() == tokenizer.convert_tokens_to_ids(words(10).split())


def test_empty_texts_add_no_separator(tokenizer):
    windows = token_windows(["", words(3), "", words(3, start=3)], tokenizer, seq_len=7, max_contexts=None)

    assert windows.input_ids.tolist() == [stream_of([words(3), words(3, start=3)], tokenizer)]


def test_max_contexts_masks_the_excess_of_the_last_window(tokenizer):
    texts = [words(40)]  # 10 windows of 4 tokens, 3 contexts each

    windows = token_windows(texts, tokenizer, seq_len=4, max_contexts=5)

    # ceil(5 / 3) = 2 windows; the second keeps 2 of its 3 contexts, the first ones.
    assert windows.input_ids.shape == (2, 4)
    assert windows.context_mask.tolist() == [[False, True, True, True], [False, True, True, False]]
    assert windows.num_contexts == 5


@pytest.mark.parametrize("seq_len", [2, 3, 7, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_context_counts_for_every_max_contexts(tokenizer, seq_len, seed):
    texts = [words(60), words(45, start=7), words(30, start=3)]
    stream = torch.tensor(stream_of(texts, tokenizer))
    n_windows = len(stream) // seq_len
    available = n_windows * (seq_len - 1)
    full = stream[: n_windows * seq_len].view(n_windows, seq_len)

    for max_contexts in [1, seq_len - 1, seq_len, available // 2 + 1, available - 1, available]:
        windows = token_windows(texts, tokenizer, seq_len=seq_len, max_contexts=max_contexts, seed=seed)

        # Exactly max_contexts contexts, in as few windows as hold them, all distinct windows of the stream.
        assert windows.num_contexts == max_contexts
        assert len(windows.input_ids) == math.ceil(max_contexts / (seq_len - 1))
        assert not windows.context_mask[:, 0].any()
        assert windows.context_mask[:-1].sum() == (len(windows.input_ids) - 1) * (seq_len - 1)
        # (the text repeats, so equal windows can occur: compare as multisets)
        chosen = Counter(tuple(row) for row in windows.input_ids.tolist())
        assert chosen <= Counter(tuple(row) for row in full.tolist())


def test_max_contexts_above_what_is_available_warns_and_keeps_all(tokenizer):
    with pytest.warns(
        UserWarning, match=r"Asked for max_contexts = 100, but the data give only 6 contexts \(3 windows"
    ):
        windows = token_windows([words(10)], tokenizer, seq_len=3, max_contexts=100)

    assert windows.num_contexts == 6
    assert windows.input_ids.flatten().tolist() == tokenizer.convert_tokens_to_ids(words(9).split())


def test_the_same_seed_gives_the_same_windows(tokenizer):
    texts = [words(50), words(50, start=11), words(50, start=29)]

    first = token_windows(texts, tokenizer, seq_len=5, max_contexts=12, seed=7)
    again = token_windows(texts, tokenizer, seq_len=5, max_contexts=12, seed=7)
    other = token_windows(texts, tokenizer, seq_len=5, max_contexts=12, seed=8)

    assert torch.equal(first.input_ids, again.input_ids)
    assert torch.equal(first.context_mask, again.context_mask)
    assert first.fingerprint == again.fingerprint
    assert not torch.equal(first.input_ids, other.input_ids)
    assert first.fingerprint != other.fingerprint


def test_the_fingerprint_follows_ids_and_mask():
    ids = torch.arange(12).view(3, 4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, 0] = False
    base = ContextWindows(ids, mask)

    changed_id = ids.clone()
    changed_id[2, 3] = 99
    changed_mask = mask.clone()
    changed_mask[2, 3] = False

    assert len(base.fingerprint) == 64
    assert base.fingerprint == ContextWindows(ids.clone(), mask.clone()).fingerprint
    assert ContextWindows(changed_id, mask).fingerprint != base.fingerprint
    assert ContextWindows(ids, changed_mask).fingerprint != base.fingerprint
    assert ContextWindows(ids.view(4, 3), mask.view(4, 3)).fingerprint != base.fingerprint


# --- token_windows errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("texts", "n"), [([], 0), (["", "   ", "\n"], 3)])
def test_an_empty_data_set(tokenizer, texts, n):
    with pytest.raises(ValueError) as error:
        token_windows(texts, tokenizer, seq_len=4, max_contexts=None)

    message = str(error.value)
    assert f"Expected texts that give at least one token, got {n} texts and 0 tokens" in message
    assert "Check the data set spec given to load_texts" in message


def test_data_shorter_than_one_window(tokenizer):
    texts = [words(3), words(2)]  # 3 + 1 + 2 = 6 tokens

    with pytest.raises(ValueError) as error:
        token_windows(texts, tokenizer, seq_len=128, max_contexts=None)

    message = str(error.value)
    assert "Expected at least seq_len = 128 tokens to fill one window, got 6 tokens from 2 texts" in message
    assert "Pass seq_len <= 6, or more text" in message


@pytest.mark.parametrize("seq_len", [1, 0, -3, 2.5, True, None])
def test_seq_len_below_two(tokenizer, seq_len):
    with pytest.raises(ValueError) as error:
        token_windows([words(20)], tokenizer, seq_len=seq_len, max_contexts=None)

    message = str(error.value)
    assert "Expected an integer seq_len >= 2 (position 0 of a window is never a context" in message
    assert f"got {seq_len!r}. Pass e.g. seq_len=128." in message


@pytest.mark.parametrize("max_contexts", [0, -1, 1.5, False])
def test_max_contexts_not_positive(tokenizer, max_contexts):
    with pytest.raises(ValueError) as error:
        token_windows([words(20)], tokenizer, seq_len=4, max_contexts=max_contexts)

    message = str(error.value)
    assert "Expected max_contexts to be a positive integer, or None for every available context" in message
    assert f"got {max_contexts!r}. Pass e.g. max_contexts=8192." in message


def test_a_single_string_instead_of_a_list(tokenizer):
    with pytest.raises(TypeError, match=r"Expected a sequence of texts, got a single str of 11 characters. Wrap it"):
        token_windows(words(4), tokenizer, seq_len=2, max_contexts=None)


# --- the bundled texts (slow: real tokenizer and corpus) --------------------------------------------------------


@pytest.mark.slow
def test_canterbury_gives_8192_contexts_of_128_tokens():
    from transformers import AutoTokenizer

    from hf_repsim.assets import smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())

    windows = token_windows(load_texts("canterbury"), tokenizer, seq_len=128, max_contexts=8192)

    assert windows.num_contexts == 8192
    assert windows.input_ids.shape == (math.ceil(8192 / 127), 128)
