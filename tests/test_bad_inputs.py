"""The bad-input catalogue: each case gives a clear message (expected, got, what to do) and no traceback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_repsim.cli import main
from tests.tiny import corpus, save_tiny, tiny_llama, word_tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    text = corpus()
    (root / "text.txt").write_text(text)
    save_tiny(root / "a", text, seed=0)
    save_tiny(root / "b", text, seed=1)
    return root


def fails(capsys, *args: str) -> str:
    """Run the command, expect exit code 2, return what it wrote to stderr."""
    code = main(["compare", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("hf-repsim: error: ")]
    assert len(message) == 1 and "xpected" in message[0] and "got" in message[0], err
    return message[0]


def pair(workspace, *extra: str) -> list[str]:
    return [str(workspace / "a"), str(workspace / "b"), "--dataset", str(workspace / "text.txt"), "--seq-len", "16",
            "--max-contexts", "100", "--num-samples", "10", "--output", str(workspace / "out"), *extra]


def test_unknown_model(workspace, capsys):
    err = fails(capsys, "no-such-model-alias", str(workspace / "b"))
    assert "'smollm2-135m-instruct'" in err and "no-such-model-alias" in err


def test_missing_model_folder(workspace, capsys):
    assert "does not exist" in fails(capsys, str(workspace / "a"), str(workspace / "missing" / "model"))


def test_corrupt_gguf(workspace, tmp_path, capsys):
    (tmp_path / "model.gguf").write_bytes(b"not a gguf at all" * 10)
    assert "magic bytes b'GGUF'" in fails(capsys, str(workspace / "a"), str(tmp_path / "model.gguf"))


def test_pickle_checkpoint_is_refused(workspace, tmp_path, capsys):
    folder = tmp_path / "pickled"
    save_tiny(folder, corpus())
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    assert "Unpickling can run arbitrary code" in fails(capsys, str(workspace / "a"), str(folder))


def test_wrong_sha256_of_a_bundled_asset(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_REPSIM_CACHE", str(tmp_path))
    (tmp_path / "canterbury").mkdir()
    for name in ("alice29.txt", "lcet10.txt"):
        (tmp_path / "canterbury" / name).write_text("tampered")
    err = fails(capsys, *pair(workspace, "--dataset", "canterbury"))
    assert "sha256" in err and "tampered" not in err and "delete" in err.lower()


def test_different_vocabularies(workspace, tmp_path, capsys):
    save_tiny(tmp_path / "other", corpus().replace("cat", "lion"))
    assert "to share one vocabulary" in fails(capsys, str(workspace / "a"), str(tmp_path / "other"))


def test_different_tokenizers_with_the_same_vocabulary_size(workspace, tmp_path, capsys):
    save_tiny(tmp_path / "renamed", corpus().replace("cat", "lion").replace("lion", "puma"))
    err = fails(capsys, str(workspace / "a"), str(tmp_path / "renamed"))
    assert "different tokenizers with the same vocabulary size" in err


def test_empty_data_set(workspace, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert "got 1 texts and 0 tokens" in fails(capsys, *pair(workspace, "--dataset", str(tmp_path / "empty.txt")))


def test_data_shorter_than_one_window(workspace, tmp_path, capsys):
    (tmp_path / "short.txt").write_text("the cat sat")
    err = fails(capsys, *pair(workspace, "--dataset", str(tmp_path / "short.txt")))
    assert "to fill one window, got 3 tokens" in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-contexts", "0", "Expected --max-contexts >= 1, got 0"),
        ("--batch-size", "-2", "Expected --batch-size >= 1, got -2"),
        ("--seq-len", "1", "Expected --seq-len >= 2"),
        ("--reservoir-size", "0", "Expected --reservoir-size >= 1, got 0"),
        ("--checkpoint-every", "0", "Expected --checkpoint-every >= 1, got 0"),
        ("--num-samples", "0", "Expected num_samples >= 1, got 0"),
    ],
)
def test_zero_or_negative_sizes(workspace, capsys, flag, value, message):
    assert message in fails(capsys, *pair(workspace, flag, value))


def test_output_folder_that_cannot_be_written(workspace, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    err = fails(capsys, *pair(workspace, "--output", str(tmp_path / "a-file" / "run")))
    assert "Expected a writable output folder" in err


def test_nan_in_a_model_weight(workspace, tmp_path, capsys):
    folder = save_tiny(tmp_path / "nan", corpus())
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if "mlp" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    err = fails(capsys, str(workspace / "a"), str(folder))
    assert "Expected finite weights" in err and name in err


def test_fewer_contexts_than_the_hidden_size(workspace, capsys):
    assert "Expected at least M + 1 = 17 contexts" in fails(capsys, *pair(workspace, "--max-contexts", "10"))


def test_unknown_dataset_alias(workspace, capsys):
    assert "'canterbury'" in fails(capsys, *pair(workspace, "--dataset", "wikitext-103"))


def test_unknown_derivation(workspace, capsys):
    assert "Expected a derivation in" in fails(capsys, str(workspace / "a"), f"{workspace / 'a'}@q2_k")


def test_rank_deficient_model_reports_the_diversity_condition_without_nan(workspace, tmp_path):
    # Model a with hidden unit 1 a copy of unit 0 all along the residual stream: f has a duplicated coordinate.
    text = corpus()
    model = tiny_llama(len(word_tokenizer(text)), seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 1] = model.model.embed_tokens.weight[:, 0]
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[1] = layer.self_attn.o_proj.weight[0]
            layer.mlp.down_proj.weight[1] = layer.mlp.down_proj.weight[0]
        model.model.norm.weight[1] = model.model.norm.weight[0]
    model.save_pretrained(tmp_path / "dup")
    word_tokenizer(text).save_pretrained(tmp_path / "dup")

    assert main(["compare", str(workspace / "a"), str(tmp_path / "dup"), *pair(workspace)[2:-2],
                 "--output", str(tmp_path / "out")]) == 0
    raw = (tmp_path / "out" / "report.json").read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    report = json.loads(raw)
    diversity = report["pairs"][0]["details"]["diversity"]
    assert diversity["holds"] is False and "fails on the input side" in diversity["note"]
    assert "diversity condition fails" in (tmp_path / "out" / "report.md").read_text()
    for key, value in report["pairs"][0]["measures"].items():
        assert not (isinstance(value, float) and not math.isfinite(value)), key
