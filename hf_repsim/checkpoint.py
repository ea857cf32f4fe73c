"""Resumable runs: the statistics state and the data position, saved atomically as safetensors plus JSON.

Each process writes ``checkpoint/state-<rank>.safetensors``: the state's tensors, with the state's
configuration, the number of batches done and the run's fingerprint in the file's JSON metadata. The file is
written beside its final name and renamed over it, so a kill leaves either the previous checkpoint or the new
one, never half of one. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from hf_repsim.stats import RepSimState

CHECKPOINT_FOLDER = "checkpoint"


@dataclass
class Progress:
    """Where a process stands: the state so far and how many of its batches it has done."""

    state: RepSimState
    batches_done: int


def checkpoint_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / CHECKPOINT_FOLDER / f"state-{rank}.safetensors"


def save_checkpoint(run_dir: Path, rank: int, state: RepSimState, batches_done: int, fingerprint: dict) -> Path:
    """Write this process's state and position atomically (temporary file, then rename)."""
    path = checkpoint_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, state_meta = state.state_dict()
    metadata = {"state": state_meta, "batches_done": str(batches_done), "run": json.dumps(fingerprint, sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path, rank: int, fingerprint: dict) -> Progress:
    """Read this process's checkpoint of a run with the same fingerprint.

    Raises:
        FileNotFoundError: the folder holds no checkpoint for this process.
        ValueError: the checkpoint is damaged, or belongs to another run (other models, data or settings).
    """
    path = checkpoint_path(run_dir, rank)
    if not path.exists():
        raise FileNotFoundError(
            f"Expected a checkpoint at {path} to resume from, got none; resume a folder written by a run with "
            f"--checkpoint-every, with the same number of processes."
        )
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
        saved_run = json.loads(metadata["run"])
        batches_done = int(metadata["batches_done"])
        state = RepSimState.from_state_dict(tensors, metadata["state"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"Expected a complete checkpoint at {path}, got a damaged file ({type(error).__name__}: {error}); the "
            f"write was probably interrupted. Delete {path.parent} and run again without --resume."
        ) from None
    if saved_run != json.loads(json.dumps(fingerprint, sort_keys=True)):
        differing = sorted(k for k in set(saved_run) | set(fingerprint) if saved_run.get(k) != fingerprint.get(k))
        raise ValueError(
            f"Expected a checkpoint of this run, got one from another run: {', '.join(differing)} differ "
            f"(saved {[saved_run.get(k) for k in differing]}, now {[fingerprint.get(k) for k in differing]}). "
            f"Resume with the same models, data and settings, or choose a new --output."
        )
    return Progress(state, batches_done)
