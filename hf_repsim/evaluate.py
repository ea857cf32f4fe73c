"""The evaluation loop: token windows through k causal LMs in lockstep, into one statistics state.

It runs under ``accelerate.Accelerator`` from the start. Each process takes its own share of the windows
(``split_between_processes``, no padding duplicates), updates its own state, and the states are merged
once at the end on the main process, in process order. Context ids are global (window * seq_len +
position), so the merged state is the one a single process would have built, to rounding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from hf_repsim.adapters import CausalLMAdapter
from hf_repsim.checkpoint import load_checkpoint, save_checkpoint
from hf_repsim.data import ContextWindows
from hf_repsim.stats import RepSimState

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What a pass over the data produced.

    Attributes:
        state: the merged statistics (complete on the main process; the process's own share elsewhere).
        num_contexts: contexts counted, over all processes.
        seconds: wall time of the pass on this process.
        forward_calls: forward passes run per model on this process (one per batch).
        reconstruction_errors: per model, the largest |f W^T + b - logits| seen on this process.
    """

    state: RepSimState
    num_contexts: int
    seconds: float
    forward_calls: list[int] = field(default_factory=list)
    reconstruction_errors: list[float | None] = field(default_factory=list)

    @property
    def contexts_per_second(self) -> float:
        return self.num_contexts / self.seconds if self.seconds > 0 else float("nan")


def collect_statistics(
    adapters: Sequence[CausalLMAdapter],
    windows: ContextWindows,
    *,
    batch_size: int,
    accelerator: Accelerator | None = None,
    reservoir_size: int = 4096,
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
) -> EvaluationResult:
    """Run every batch of windows through each model once and feed the statistics.

    Args:
        adapters: one adapter per model, all over the same vocabulary (models already on the right device).
        windows: the token windows and which positions are contexts.
        batch_size: windows per forward pass.
        accelerator: the Accelerator to shard over (a default one when None).
        reservoir_size: contexts kept for the input side of the measures.
        seed: seed of the reservoir.
        progress: show a progress bar (main process only).
        checkpoint_dir: the run folder for checkpoints (see :mod:`hf_repsim.checkpoint`).
        checkpoint_every: save the state every this many batches (None: never).
        resume: continue from the checkpoint in ``checkpoint_dir`` instead of starting afresh.
        fingerprint: what identifies the run (models, data, settings): a checkpoint of another run is refused.

    Returns:
        An :class:`EvaluationResult`; its state is merged over all processes on the main process.

    Raises:
        ValueError: batch_size < 1, or models over different numbers of labels.
    """
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, got {batch_size}.")
    accelerator = accelerator or Accelerator()
    num_labels = {a.head.num_labels for a in adapters}
    if len(num_labels) != 1:
        raise ValueError(f"Expected all models to have the same number of labels, got {sorted(num_labels)}.")
    state = RepSimState([a.head.hidden_size for a in adapters], num_labels.pop(), reservoir_size, seed)
    fingerprint = {**(fingerprint or {}), "processes": accelerator.num_processes, "batch_size": batch_size}
    done = 0
    if resume:
        progress_so_far = load_checkpoint(checkpoint_dir, accelerator.process_index, fingerprint)
        state, done = progress_so_far.state, progress_so_far.batches_done
        logger.info("Resuming after %d batches (%d contexts) from %s", done, state.count, checkpoint_dir)
    seq_len = windows.input_ids.shape[1]
    all_windows = list(range(windows.input_ids.shape[0]))
    forward_calls = [0] * len(adapters)

    start = time.perf_counter()
    with accelerator.split_between_processes(all_windows) as mine:
        mine = list(mine)
        local_contexts = int(windows.context_mask[mine].sum()) if mine else 0
        bar = tqdm(
            total=local_contexts,
            initial=state.count,
            unit="ctx",
            desc="contexts",
            disable=not (progress and accelerator.is_main_process),
        )
        for batch_index, first in enumerate(range(0, len(mine), batch_size)):
            if batch_index < done:
                continue
            rows = torch.tensor(mine[first : first + batch_size])
            input_ids = windows.input_ids[rows].to(accelerator.device)  # (batch, seq)
            mask = windows.context_mask[rows]  # (batch, seq)
            positions = rows[:, None] * seq_len + torch.arange(seq_len)  # (batch, seq) global context ids
            features, logits = [], []
            for k, adapter in enumerate(adapters):
                f, z = adapter(input_ids)  # (batch, seq, hidden), (batch, seq, n_labels)
                forward_calls[k] += 1
                features.append(f[mask.to(f.device)])  # (n_contexts, hidden)
                logits.append(z[mask.to(z.device)])  # (n_contexts, n_labels)
            state.update(features, logits, context_ids=positions[mask])
            bar.update(int(mask.sum()))
            bar.set_postfix_str(f"{bar.format_dict['rate'] or 0:.0f} ctx/s", refresh=False)
            if checkpoint_every and (batch_index + 1) % checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, accelerator.process_index, state, batch_index + 1, fingerprint)
        bar.close()
    seconds = time.perf_counter() - start

    merged = _merge_over_processes(state, accelerator)
    total = merged.count if accelerator.is_main_process else state.count
    errors = [a.info.get("max_reconstruction_error") for a in adapters]
    return EvaluationResult(merged, total, seconds, forward_calls, errors)


def _merge_over_processes(state: RepSimState, accelerator: Accelerator) -> RepSimState:
    """One reduction at the end: every process's state to the main process, merged in process order."""
    if accelerator.num_processes == 1:
        return state
    tensors, meta = state.state_dict()
    gathered = gather_object([(tensors, meta)])
    if not accelerator.is_main_process:
        return state
    merged = RepSimState(state.hidden_sizes, state.num_labels, state.reservoir_size, state.seed)
    for tensors, meta in gathered:
        merged.merge(RepSimState.from_state_dict(tensors, meta))
    return merged
