"""Loading models from aliases, folders, GGUF files and the hub cache; refusing what is unsafe or unreadable.

Every model here is a tiny random Llama built from a config, with a word-level tokenizer trained on a few
sentences, saved with save_pretrained into a temporary folder: no hub, no downloads. The real bundled model is
exercised only by the tests marked slow.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_repsim import assets
from hf_repsim.loading import (
    CorruptCheckpointError,
    LoadedModel,
    ModelLoadError,
    UnsafeCheckpointError,
    VocabularyMismatchError,
    check_same_vocabulary,
    load_model,
)

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "hello world"]
OTHER_SENTENCES = ["one two three four five", "six seven eight nine ten", "red green"]


def word_tokenizer(sentences: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is <unk>, <eos> and the words of ``sentences``."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def tiny_llama(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama",
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny(folder: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Save a tiny random Llama and its tokenizer into ``folder`` (safetensors); return the model."""
    tokenizer = word_tokenizer(SENTENCES)
    model = tiny_llama(len(tokenizer)).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[2, 4, 12, 9, 2, 8]])).logits


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, and offline mode, for one test: no test may touch the network or the real cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- loading what is there --------------------------------------------------------------------------------------


def test_safetensors_folder_round_trip_records_sha256(tmp_path):
    folder = tmp_path / "tiny"
    original = save_tiny(folder)

    loaded = load_model(folder)

    # The same weights, in eval mode, with the digest of the file that was read.
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.name == "tiny"
    assert loaded.source == {"kind": "folder", "path": str(folder), "sha256": {"model.safetensors": digest}}
    assert not loaded.model.training
    torch.testing.assert_close(logits(loaded.model), logits(original), rtol=0, atol=0)
    assert loaded.tokenizer.convert_ids_to_tokens([2, 4]) == ["the", "cat"]


def test_a_string_spec_with_a_tilde_is_a_folder(tmp_path, monkeypatch):
    save_tiny(tmp_path / "tiny")
    monkeypatch.setenv("HOME", str(tmp_path))

    assert load_model("~/tiny").source["kind"] == "folder"


@pytest.mark.parametrize(
    ("saved", "asked", "expected"),
    [
        (torch.bfloat16, None, torch.bfloat16),  # its own dtype: no upcast unless asked
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float32, torch.float16, torch.float16),
    ],
)
def test_dtype_argument_is_honoured(tmp_path, saved, asked, expected):
    save_tiny(tmp_path / "tiny", dtype=saved)

    loaded = load_model(tmp_path / "tiny", dtype=asked)

    assert loaded.model.dtype == expected
    assert all(p.dtype == expected for p in loaded.model.parameters())


def test_a_dtype_that_is_no_floating_torch_dtype_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"Expected dtype to be a floating torch.dtype .* got 'float32'"):
        load_model(tmp_path, dtype="float32")
    with pytest.raises(TypeError, match=r"got torch.int64"):
        load_model(tmp_path, dtype=torch.int64)


def test_an_alias_resolves_through_the_assets(tmp_path, monkeypatch):
    # The alias machinery, with the bundled model replaced by a tiny one.
    save_tiny(tmp_path / "tiny")
    monkeypatch.setitem(assets.MODEL_ALIASES, "tiny-alias", lambda: tmp_path / "tiny")

    loaded = load_model("tiny-alias")

    assert loaded.name == "tiny-alias"
    assert loaded.source["kind"] == "alias"
    assert list(loaded.source["sha256"]) == ["model.safetensors"]


def test_a_cached_hub_id_loads_offline(tmp_path, offline_hub):
    # The hub cache layout: models--org--name/refs/main names the snapshot folder that holds the files.
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = offline_hub / "models--local-org--tiny" / "snapshots" / revision
    save_tiny(snapshot)
    (offline_hub / "models--local-org--tiny" / "refs").mkdir()
    (offline_hub / "models--local-org--tiny" / "refs" / "main").write_text(revision)

    loaded = load_model("local-org/tiny")

    digest = hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.name == "local-org/tiny"
    assert loaded.source == {
        "kind": "hub",
        "path": str(snapshot),
        "sha256": {"model.safetensors": digest},
        "revision": revision,
    }


# --- specs that name nothing loadable ---------------------------------------------------------------------------


def test_an_unknown_alias_lists_the_aliases_and_the_accepted_forms(offline_hub):
    with pytest.raises(ModelLoadError) as error:
        load_model("smollm2-135m-base")

    message = str(error.value)
    assert "'smollm2-135m-instruct'" in message
    assert "a local folder with config.json" in message
    assert "a local .gguf file" in message
    assert "got 'smollm2-135m-base': not an alias, not an existing path, and not in the local hub cache" in message
    assert "Fix the spelling" in message


def test_a_spec_that_is_no_valid_hub_id(offline_hub):
    with pytest.raises(ModelLoadError, match=r"got 'no such model!', which is none of these .* Check the spelling"):
        load_model("no such model!")


def test_a_missing_folder(tmp_path):
    missing = tmp_path / "models" / "missing"
    with pytest.raises(ModelLoadError) as error:
        load_model(str(missing))

    message = str(error.value)
    assert f"got {str(missing)!r}, which looks like a path but does not exist" in message
    assert "a local folder with config.json" in message
    assert "Check the path for typos" in message


def test_a_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"looks like a path but does not exist"):
        load_model("model.Q4_0.gguf")


def test_a_folder_without_config_points_at_its_gguf(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")

    with pytest.raises(ModelLoadError) as error:
        load_model(tmp_path)

    message = str(error.value)
    assert f"got the folder {tmp_path}, which has no config.json" in message
    assert f"pass that file instead, e.g. {str(tmp_path / 'model.gguf')!r}" in message


def test_a_folder_without_weights(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()

    with pytest.raises(ModelLoadError) as error:
        load_model(tmp_path)

    message = str(error.value)
    assert (
        f"Expected weights (model.safetensors, or sharded model-*.safetensors with their index) in the folder "
        f"{tmp_path}, got: config.json, generation_config.json, tokenizer.json, tokenizer_config.json." in message
    )
    assert "model.save_pretrained(folder)" in message


def test_a_file_that_is_neither_gguf_nor_folder(tmp_path):
    save_tiny(tmp_path)

    with pytest.raises(ModelLoadError, match=r"got the file .*model.safetensors \(.safetensors\). Pass the folder"):
        load_model(tmp_path / "model.safetensors")


# --- pickles ----------------------------------------------------------------------------------------------------


@pytest.fixture
def pickle_folder(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A folder with config.json, a tokenizer and the weights only as pytorch_model.bin."""
    folder = tmp_path / "pickled"
    model = save_tiny(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder, model


def test_a_folder_with_only_a_pickle_checkpoint_is_refused(pickle_folder):
    folder, _ = pickle_folder

    with pytest.raises(UnsafeCheckpointError) as error:
        load_model(folder)

    message = str(error.value)
    assert f"Expected safetensors weights (model.safetensors or model-*.safetensors) in the folder {folder}" in message
    assert "got only pickle checkpoints: pytorch_model.bin" in message
    assert "Unpickling can run arbitrary code" in message
    assert "Convert the checkpoint to safetensors" in message
    assert "pass allow_pickle=True if you trust the file" in message


def test_allow_pickle_loads_the_pickle_checkpoint(pickle_folder):
    folder, original = pickle_folder

    loaded = load_model(folder, allow_pickle=True)

    digest = hashlib.sha256((folder / "pytorch_model.bin").read_bytes()).hexdigest()
    assert loaded.source["sha256"] == {"pytorch_model.bin": digest}
    torch.testing.assert_close(logits(loaded.model), logits(original), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "state.pkl", "pytorch_model.bin"])
def test_a_bare_pickle_file_is_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")

    with pytest.raises(UnsafeCheckpointError, match=rf"got the pickle file .*{name}\. A pickle can run code"):
        load_model(tmp_path / name)


# --- GGUF -------------------------------------------------------------------------------------------------------


def write_gguf(path: Path, architecture: str = "llama") -> None:
    """A small, well-formed GGUF file: a few metadata keys and two float32 tensors (not a loadable model)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x01" * 1000, b"PK\x03\x04 a zip file"], ids=["empty", "binary", "zip"]
)
def test_a_file_that_is_no_gguf_at_all(tmp_path, content):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)

    with pytest.raises(CorruptCheckpointError) as error:
        load_model(path)

    message = str(error.value)
    assert f"Expected a GGUF file starting with the magic bytes b'GGUF', got {path} ({len(content)} bytes)" in message
    assert f"starting with {content[:4]!r}" in message
    assert "download or export it again" in message


def test_a_truncated_gguf(tmp_path):
    whole = tmp_path / "whole.gguf"
    write_gguf(whole)
    data = whole.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: len(data) - 1000])

    with pytest.raises(CorruptCheckpointError) as error:
        load_model(path)

    message = str(error.value)
    assert f"{path} ({len(data) - 1000} bytes)" in message or f"got {path} with {len(data) - 1000} bytes" in message
    assert "truncated" in message
    assert "again" in message
    assert "transformers said:" in message


def test_a_readable_gguf_that_transformers_cannot_load(tmp_path):
    path = tmp_path / "odd.gguf"
    write_gguf(path, architecture="no-such-architecture")

    with pytest.raises(ModelLoadError) as error:
        load_model(path)

    assert not isinstance(error.value, CorruptCheckpointError)
    message = str(error.value)
    assert f"{path} is a readable GGUF file, but transformers could not load it as a causal LM" in message
    assert "no-such-architecture" in message


# --- vocabularies -----------------------------------------------------------------------------------------------


def loaded_with(name: str, tokenizer) -> LoadedModel:
    return LoadedModel(name=name, model=None, tokenizer=tokenizer, source={})


def test_the_same_vocabulary_under_other_names_passes():
    check_same_vocabulary([loaded_with("a", word_tokenizer(SENTENCES)), loaded_with("b", word_tokenizer(SENTENCES))])
    check_same_vocabulary([loaded_with("alone", word_tokenizer(SENTENCES))])
    check_same_vocabulary([])


def test_vocabularies_of_different_sizes_show_sizes_and_the_first_difference():
    small = word_tokenizer(SENTENCES)
    large = word_tokenizer(SENTENCES + ["zebra quietly yawned"])
    tokens_small = small.convert_ids_to_tokens(list(range(len(small))))
    tokens_large = large.convert_ids_to_tokens(list(range(len(large))))
    first = next(i for i, (a, b) in enumerate(zip(tokens_small, tokens_large)) if a != b)

    with pytest.raises(VocabularyMismatchError) as error:
        check_same_vocabulary([loaded_with("small", small), loaded_with("large", large)])

    message = str(error.value)
    assert f"got vocabularies of {len(small)} and {len(large)} tokens" in message
    assert (
        f"first difference is at token id {first}: {tokens_small[first]!r} in 'small' vs "
        f"{tokens_large[first]!r} in 'large'" in message
    )
    assert "compare models that use the same tokenizer" in message


def test_a_vocabulary_that_extends_another_reports_the_first_missing_id():
    base = word_tokenizer(SENTENCES)
    extended = word_tokenizer(SENTENCES)
    extended.add_tokens(["<extra>"])

    with pytest.raises(VocabularyMismatchError) as error:
        check_same_vocabulary([loaded_with("base", base), loaded_with("extended", extended)])

    message = str(error.value)
    assert f"got vocabularies of {len(base)} and {len(base) + 1} tokens" in message
    assert f"at token id {len(base)}: '<none: past the end>' in 'base' vs '<extra>' in 'extended'" in message


def test_different_tokenizers_with_the_same_vocabulary_size():
    one, other = word_tokenizer(SENTENCES), word_tokenizer(OTHER_SENTENCES)
    assert len(one) == len(other)

    with pytest.raises(VocabularyMismatchError) as error:
        check_same_vocabulary([loaded_with("one", one), loaded_with("other", other)])

    message = str(error.value)
    assert f"got different tokenizers with the same vocabulary size ({len(one)} tokens)" in message
    expected = f"at token id 2: {one.convert_ids_to_tokens(2)!r} in 'one' vs {other.convert_ids_to_tokens(2)!r}"
    assert expected in message


def test_every_model_is_compared_with_the_first():
    same, different = word_tokenizer(SENTENCES), word_tokenizer(OTHER_SENTENCES)

    with pytest.raises(VocabularyMismatchError, match=r"Expected 'a' and 'c' to share one vocabulary"):
        check_same_vocabulary([loaded_with("a", same), loaded_with("b", same), loaded_with("c", different)])


# --- the bundled model (slow: real weights) ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_bundled_alias_loads():
    loaded = load_model("smollm2-135m-instruct")

    assert loaded.source["kind"] == "alias"
    assert loaded.model.config.hidden_size == 576
    assert len(loaded.tokenizer) == 49152
    assert not loaded.model.training


@pytest.mark.slow
def test_the_bundled_gguf_file_loads_and_shares_the_alias_vocabulary():
    try:
        distribution = importlib.metadata.distribution(assets.SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{assets.SMOLLM2_DISTRIBUTION} is not installed")
    path = Path(distribution.locate_file(assets.SMOLLM2_GGUF))

    loaded = load_model(path)

    assert loaded.source["kind"] == "gguf"
    assert loaded.source["sha256"] == {path.name: assets.SMOLLM2_GGUF_SHA256}
    check_same_vocabulary([loaded, load_model("smollm2-135m-instruct")])


def test_the_source_is_json_serialisable(tmp_path):
    save_tiny(tmp_path / "tiny")

    source = load_model(os.fspath(tmp_path / "tiny")).source

    assert json.loads(json.dumps(source)) == source
