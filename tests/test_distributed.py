"""Scale-out: accelerate processes and k models in one pass give the values of one process and of pairs."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
import torch

from hf_repsim.adapters import CausalLMAdapter
from hf_repsim.compare import CompareConfig, run_compare
from hf_repsim.data import load_texts, token_windows
from hf_repsim.evaluate import collect_statistics
from hf_repsim.loading import load_model
from hf_repsim.measures import MeasureConfig, compute_measures
from tests.tiny import corpus, save_tiny

#: Sharding and merging change only the order of float64 additions.
DISTRIBUTED_RTOL = 1e-9
#: The same blocks of the same moments, read from a 2-model or a 3-model state.
K_MODELS_RTOL = 1e-10


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    text = corpus()
    (root / "text.txt").write_text(text)
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        save_tiny(root / name, text, seed=seed, dtype=torch.float64)
    return root


def assert_close_values(a: dict, b: dict, rtol: float) -> None:
    for key, value in a.items():
        if isinstance(value, float) and not isinstance(value, bool):
            assert b[key] == pytest.approx(value, rel=rtol, abs=1e-300), key
        else:
            assert b[key] == value, key


def launch(workspace, processes: int, output: str) -> dict:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "hf_repsim", "compare", str(workspace / "a"), str(workspace / "b"),
        "--dataset", str(workspace / "text.txt"), "--max-contexts", "301", "--seq-len", "16", "--batch-size", "3",
        "--num-samples", "20", "--output", str(workspace / output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workspace / output / "report.json").read_text())


@pytest.mark.multiprocess
def test_two_gloo_processes_give_the_single_process_values(workspace):
    # 301 contexts = 20 windows of 15 contexts and one more: the shards are uneven.
    single, double = launch(workspace, 1, "one"), launch(workspace, 2, "two")
    assert single["contexts"] == double["contexts"] == 301
    assert_close_values(single["pairs"][0]["measures"], double["pairs"][0]["measures"], DISTRIBUTED_RTOL)


def test_k_models_in_one_pass_equal_separate_pairs_with_one_forward_per_batch(workspace):
    loaded = {name: load_model(str(workspace / name)) for name in "abc"}
    windows = token_windows(load_texts(workspace / "text.txt"), loaded["a"].tokenizer, seq_len=16, max_contexts=200)
    calls = {name: 0 for name in loaded}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook

    for name, m in loaded.items():
        m.model.register_forward_hook(counter(name))
    config = MeasureConfig(num_samples=20)
    adapters = {name: CausalLMAdapter(m.model) for name, m in loaded.items()}

    joint = collect_statistics(list(adapters.values()), windows, batch_size=4, progress=False)
    batches = math.ceil(windows.input_ids.shape[0] / 4)
    assert calls == {"a": batches, "b": batches, "c": batches}
    heads = [a.head for a in adapters.values()]
    for i, j in itertools.combinations(range(3), 2):
        names = ("abc"[i], "abc"[j])
        pair = collect_statistics([adapters[n] for n in names], windows, batch_size=4, progress=False)
        separate = compute_measures(pair.state, [adapters[n].head for n in names], config=config).values
        together = compute_measures(joint.state, heads, (i, j), config).values
        assert_close_values(separate, together, K_MODELS_RTOL)


def test_bfloat16_model_against_float32_stays_close_and_finite(tmp_path):
    text = corpus()
    (tmp_path / "text.txt").write_text(text)
    save_tiny(tmp_path / "m", text, seed=0)
    config = CompareConfig(
        models=[str(tmp_path / "m"), f"{tmp_path / 'm'}@bfloat16"], dataset=str(tmp_path / "text.txt"),
        max_contexts=200, seq_len=16, num_samples=20, output=str(tmp_path / "out"),
    )
    report = run_compare(config)
    assert [m["dtype"] for m in report["models"]] == ["float32", "bfloat16"]
    values = report["pairs"][0]["measures"]
    assert values["kl"] < 1e-3
    assert all(math.isfinite(v) for v in values.values() if isinstance(v, float))
    assert bool(torch.isfinite(torch.tensor(report["models"][1]["spectrum"])).all())
