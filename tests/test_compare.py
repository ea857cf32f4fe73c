"""End to end: the compare pipeline and command on tiny random models and a local text file."""

from __future__ import annotations

import json

import pytest
import torch

from hf_repsim.adapters import CausalLMAdapter, random_invertible, reparametrize
from hf_repsim.cli import main
from hf_repsim.compare import CompareConfig, run_compare
from hf_repsim.data import ContextWindows
from hf_repsim.evaluate import collect_statistics
from hf_repsim.measures import MEASURE_KEYS, MeasureConfig, compute_measures
from tests.test_adapters import ARCHITECTURES, VOCAB, tiny_model
from tests.tiny import corpus, save_tiny

#: A float64 model and its reparametrized twin differ by rounding through A and A^{-1} only.
TWIN_LIMIT = 1e-8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    text = corpus()
    (root / "text.txt").write_text(text)
    save_tiny(root / "model_a", text, seed=0, dtype=torch.float64)
    save_tiny(root / "model_b", text, seed=1, dtype=torch.float64)
    return root


def compare_config(workspace, *models, **overrides) -> CompareConfig:
    settings = dict(
        models=[str(workspace / m) if "/" not in m and not m.startswith("@") else m for m in models],
        dataset=str(workspace / "text.txt"), max_contexts=300, seq_len=16, batch_size=4, num_samples=20,
        output=str(workspace / "out"),
    )
    return CompareConfig(**{**settings, **overrides})


def test_compare_writes_every_measure_for_every_pair(workspace):
    config = compare_config(workspace, "model_a", "model_b", f"{workspace / 'model_a'}@reparam")
    report = run_compare(config)
    assert report["contexts"] == 300
    assert [p["models"] for p in report["pairs"]] == [[0, 1], [0, 2], [1, 2]]
    for pair in report["pairs"]:
        assert list(pair["measures"]) == list(MEASURE_KEYS)
    twin = report["pairs"][1]["measures"]
    assert twin["kl"] < TWIN_LIMIT and twin["d_svd_f"] < TWIN_LIMIT and twin["d_llv"] < 1e-6
    assert twin["m_cca_f"] > 1 - 1e-9 and twin["procrustes"] > 1e-3  # Procrustes sees the coordinates change
    other = report["pairs"][0]["measures"]
    assert other["kl"] > 1e-4 and other["d_svd_f"] > 1e-4
    written = json.loads((workspace / "out" / "report.json").read_text())
    assert written["schema_version"] == 1 and written["pairs"][1]["measures"] == report["pairs"][1]["measures"]
    assert "model_a" in (workspace / "out" / "report.md").read_text()
    assert all(e is not None and e < 1e-10 for e in written["reconstruction_errors"])
    assert written["matrices"]["kl"][0][1] == other["kl"] and written["matrices"]["kl"][1][0] == other["kl_reverse"]


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_reparametrized_twin_of_every_architecture_is_identical_in_distribution(model_type):
    model = tiny_model(model_type, dtype=torch.float64)
    hidden = model.get_output_embeddings().weight.shape[1]
    twin = reparametrize(model, random_invertible(hidden, 10.0, seed=1))
    ids = torch.randint(3, VOCAB, (12, 8), generator=torch.Generator().manual_seed(0))
    windows = ContextWindows(ids, torch.arange(8).expand(12, 8) > 0)
    adapters = [CausalLMAdapter(model), CausalLMAdapter(twin)]
    result = collect_statistics(adapters, windows, batch_size=5, progress=False)
    out = compute_measures(result.state, [a.head for a in adapters], config=MeasureConfig(num_samples=10)).values
    assert result.num_contexts == 12 * 7
    assert out["kl"] < TWIN_LIMIT and out["d_svd_f"] < TWIN_LIMIT


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["compare", *args])
    return code, capsys.readouterr().err


def test_cli_runs_and_prints_the_tables(workspace, capsys):
    code = main(["compare", str(workspace / "model_a"), str(workspace / "model_b"), "--dataset",
                 str(workspace / "text.txt"), "--max-contexts", "100", "--seq-len", "16", "--num-samples", "10",
                 "--output", str(workspace / "cli")])
    out = capsys.readouterr().out
    assert code == 0 and "| d_llv |" in out and (workspace / "cli" / "report.json").exists()


def test_cli_error_different_vocabularies(workspace, tmp_path, capsys):
    save_tiny(tmp_path / "other", corpus(seed=5).replace("cat", "lion"), seed=0)
    code, err = run_cli(capsys, str(workspace / "model_a"), str(tmp_path / "other"), "--dataset",
                        str(workspace / "text.txt"))
    assert code == 2 and "to share one vocabulary" in err and "Traceback" not in err


def test_cli_error_missing_model_path(workspace, capsys):
    code, err = run_cli(capsys, str(workspace / "model_a"), str(workspace / "nowhere"))
    assert code == 2 and "does not exist" in err


def test_cli_error_fewer_contexts_than_hidden_plus_one(workspace, capsys):
    code, err = run_cli(capsys, str(workspace / "model_a"), str(workspace / "model_b"), "--dataset",
                        str(workspace / "text.txt"), "--max-contexts", "10", "--seq-len", "16")
    assert code == 2 and "Expected at least M + 1 = 17 contexts" in err and "got 10" in err


def test_cli_error_zero_max_contexts(workspace, capsys):
    code, err = run_cli(capsys, str(workspace / "model_a"), str(workspace / "model_b"), "--max-contexts", "0")
    assert code == 2 and "Expected --max-contexts >= 1, got 0" in err


def test_cli_error_unknown_dataset_alias(workspace, capsys):
    code, err = run_cli(capsys, str(workspace / "model_a"), str(workspace / "model_b"), "--dataset", "wikitext")
    assert code == 2 and "'canterbury'" in err and "wikitext" in err


def test_cli_error_unknown_derivation(workspace, capsys):
    code, err = run_cli(capsys, str(workspace / "model_a"), f"{workspace / 'model_a'}@q3", "--dataset",
                        str(workspace / "text.txt"))
    assert code == 2 and "Expected a derivation in" in err
