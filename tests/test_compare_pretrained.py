"""recipes/compare_pretrained.py as a user runs it (a subprocess), on tiny local models and a local text file."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from tests.test_recipes import ROOT, check_provenance, read_csv, run_recipe
from tests.tiny import corpus, save_tiny

#: A float32 model against itself (step 0) and against its reparametrized twin: rounding only.
IDENTICAL_KL = 1e-9
TWIN_KL = 1e-6
#: lr 1e-2 for 6 Adam steps moves the tiny model far from its start (d_LLV about 0.9).
MOVED_D_LLV = 0.1


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_pretrained")
    text = corpus()
    (root / "text.txt").write_text(text)
    save_tiny(root / "model_a", text, seed=0, dtype=torch.float32)
    save_tiny(root / "model_b", text, seed=1, dtype=torch.float32)
    return root


@pytest.fixture(scope="module")
def recipe():
    """The recipe module, imported in process (it imports its sibling _common as a script does)."""
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        yield importlib.import_module("compare_pretrained")
    finally:
        sys.path.remove(str(ROOT / "recipes"))


def test_help_lists_the_options(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.parse_config(["--help"])
    text = capsys.readouterr().out
    for flag in ("--seed", "--output", "--quick", "--finetune", "--steps", "--model", "--dataset", "MODEL"):
        assert flag in text


def test_options_given_win_over_quick_and_models_are_positional(recipe):
    config = recipe.parse_config(["a", "b@reparam", "--quick", "--steps", "3"])
    assert config.models == ("a", "b@reparam") and config.steps == 3 and config.seq_len == recipe.QUICK["seq_len"]
    assert recipe.parse_config([]).models == ()


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["--finetune", "model_a"], "--finetune trains --model"), (["--steps", "0"], "--steps >= 1")],
)
def test_bad_options_are_refused(recipe, capsys, argv, match):
    with pytest.raises(SystemExit):
        recipe.parse_config(argv)
    assert match in capsys.readouterr().err


def test_finetune_records_the_drift_from_the_start(workspace):
    out = workspace / "finetune"
    stdout = run_recipe(
        "compare_pretrained", "--finetune", "--quick", "--model", str(workspace / "model_a"),
        "--dataset", str(workspace / "text.txt"), "--learning-rate", "1e-2", "--output", str(out),
    )  # fmt: skip
    rows = read_csv(out / "drift.csv")

    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6]  # --quick: 6 steps, measured every 2
    assert float(rows[0]["kl"]) < IDENTICAL_KL and float(rows[0]["d_llv"]) < 1e-8
    assert float(rows[-1]["d_llv"]) > float(rows[0]["d_llv"]) + MOVED_D_LLV
    assert float(rows[-1]["kl"]) > IDENTICAL_KL
    assert all(r["loss"] for r in rows[1:])  # the Trainer's loss at every measured step
    drift = json.loads((out / "drift.json").read_text())
    assert [h["step"] for h in drift["history"]] == [0, 2, 4, 6]
    assert sum("repsim/d_llv" in e for e in drift["log_history"]) == 4
    assert (out / "drift.png").stat().st_size > 0
    record = check_provenance(out, "compare_pretrained")
    assert record["config"]["finetune"] and record["config"]["steps"] == 6
    assert f"Outputs: {out}" in stdout


def test_compare_models_given_as_arguments(workspace):
    out = workspace / "compare"
    a, b, text = str(workspace / "model_a"), str(workspace / "model_b"), str(workspace / "text.txt")
    stdout = run_recipe("compare_pretrained", a, b, f"{a}@reparam", "--quick", "--dataset", text, "--output", str(out))
    rows = read_csv(out / "pairs.csv")

    assert [(r["first"], r["second"]) for r in rows] == [(a, b), (a, f"{a}@reparam"), (b, f"{a}@reparam")]
    twin = rows[1]
    assert float(twin["kl"]) < TWIN_KL and float(twin["m_cca_f"]) > 1 - 1e-6
    assert float(rows[0]["kl"]) > 1e-4
    report = json.loads((out / "report.json").read_text())
    assert report["contexts"] == 640  # --quick
    check_provenance(out, "compare_pretrained")
    assert "vs" in stdout and f"Outputs: {out}" in stdout
