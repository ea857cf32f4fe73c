"""Resumable runs: a comparison killed after its second checkpoint resumes to the uninterrupted values."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from hf_repsim.checkpoint import checkpoint_path
from hf_repsim.cli import main
from tests.tiny import corpus, save_tiny

#: Resuming replays the same batches into the saved float64 state: identical up to the last bit in practice.
RESUME_RTOL = 1e-12

#: Runs the command line, SIGKILLing the process right after its second checkpoint has been written.
KILL_AFTER_SECOND_CHECKPOINT = """
import os, signal, sys
import hf_repsim.evaluate as evaluate
saved = evaluate.save_checkpoint
count = 0
def save_then_maybe_die(*args, **kwargs):
    global count
    path = saved(*args, **kwargs)
    count += 1
    if count == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
evaluate.save_checkpoint = save_then_maybe_die
from hf_repsim.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    text = corpus()
    (root / "text.txt").write_text(text)
    save_tiny(root / "a", text, seed=0, dtype=torch.float64)
    save_tiny(root / "b", text, seed=1, dtype=torch.float64)
    return root


def arguments(workspace, output: str, *extra: str) -> list[str]:
    return [
        "compare", str(workspace / "a"), str(workspace / "b"), "--dataset", str(workspace / "text.txt"),
        "--max-contexts", "200", "--seq-len", "16", "--batch-size", "3", "--num-samples", "20",
        "--output", str(workspace / output), *extra,
    ]


def test_killed_run_resumes_to_the_uninterrupted_values(workspace):
    assert main(arguments(workspace, "whole")) == 0
    whole = json.loads((workspace / "whole" / "report.json").read_text())

    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_SECOND_CHECKPOINT, *arguments(workspace, "killed", "--checkpoint-every", "2")],
        capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint_path(workspace / "killed", 0).exists()
    assert not (workspace / "killed" / "report.json").exists()

    assert main(arguments(workspace, "killed", "--checkpoint-every", "2", "--resume", str(workspace / "killed"))) == 0
    resumed = json.loads((workspace / "killed" / "report.json").read_text())
    assert resumed["contexts"] == whole["contexts"] == 200
    for key, value in whole["pairs"][0]["measures"].items():
        if isinstance(value, float):
            assert resumed["pairs"][0]["measures"][key] == pytest.approx(value, rel=RESUME_RTOL, abs=0), key
        else:
            assert resumed["pairs"][0]["measures"][key] == value, key


def test_resume_refuses_a_folder_from_another_run(workspace, capsys):
    assert main(arguments(workspace, "other", "--checkpoint-every", "1", "--max-contexts", "100")) == 0
    code = main(arguments(workspace, "other", "--checkpoint-every", "1", "--resume", str(workspace / "other")))
    err = capsys.readouterr().err
    assert code == 2 and "got one from another run" in err and "data" in err


def test_resume_refuses_an_interrupted_write(workspace, capsys):
    assert main(arguments(workspace, "torn", "--checkpoint-every", "1", "--max-contexts", "100")) == 0
    path = checkpoint_path(workspace / "torn", 0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = main(arguments(workspace, "torn", "--max-contexts", "100", "--resume", str(workspace / "torn")))
    err = capsys.readouterr().err
    assert code == 2 and "damaged file" in err and "write was probably interrupted" in err


def test_resume_without_a_checkpoint(workspace, capsys):
    code = main(arguments(workspace, "none", "--resume", str(workspace / "nothing-here")))
    assert code == 2 and "Expected a checkpoint at" in capsys.readouterr().err
