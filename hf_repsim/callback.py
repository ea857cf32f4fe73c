"""Watch a model's representations drift while it trains: a ``transformers.TrainerCallback``.

:class:`RepSimCallback` snapshots a frozen reference when training begins (by default the model itself, as it is
then) and, every ``every_n_steps`` optimizer steps, compares the model being trained with it on fixed evaluation
windows: both models through :class:`~hf_repsim.adapters.CausalLMAdapter`, one pass of
:func:`~hf_repsim.evaluate.collect_statistics`, then :func:`~hf_repsim.measures.compute_measures`. The chosen
measures go to the Trainer's log as ``repsim/<key>``.

How the measures reach the Trainer's logging. A callback is handed ``args``, ``state``, ``control`` and the model,
never the Trainer, and only ``Trainer.log`` both appends to ``trainer.state.log_history`` and calls ``on_log`` of
every reporter (TensorBoard, W&B, MLflow, ...). Adding keys to the ``logs`` dict inside ``on_log`` would be too
late: ``Trainer.log`` has already copied the dict into ``log_history``, and the reporters, registered before any
user callback, have already run. So the callback keeps the Trainer given to :meth:`RepSimCallback.attach` and calls
``trainer.log(metrics)`` itself, on the main process only: its measures travel the same path as the Trainer's own
loss. (``trainer.log`` clears ``control.should_log``; the callback sets it back, so a Trainer log due at the same
step still happens.) A callback that was never attached still appends its entries to ``state.log_history`` (in the form
``Trainer.log`` uses), but reporters do not see them; it warns once.

Example:
    >>> trainer = Trainer(model=model, args=args, train_dataset=train)  # doctest: +SKIP
    >>> callback = RepSimCallback(eval_windows=windows, every_n_steps=50).attach(trainer)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> [entry["repsim/d_llv"] for entry in trainer.state.log_history if "repsim/d_llv" in entry]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import TrainerCallback

from hf_repsim.adapters import CausalLMAdapter, _copy
from hf_repsim.data import ContextWindows
from hf_repsim.evaluate import collect_statistics
from hf_repsim.measures import MEASURE_KEYS, MeasureConfig, Measures, compute_measures

logger = logging.getLogger(__name__)

#: Logged by default: the distributional distances, the identifiability-aware distances and two baselines.
DEFAULT_KEYS = ("kl", "js", "d_llv", "d_svd_f", "m_cca_f", "d_rep_sq", "procrustes")

#: Measures that are not one number and so cannot be logged.
NOT_SCALAR = ("input_set",)


class RepSimCallback(TrainerCallback):
    """Compare the model being trained with a frozen reference every n steps; log the measures.

    Measured at the start of training (step ``state.global_step``, 0 unless resuming: the model equals the
    reference there, so kl is 0), at every step that is a multiple of ``every_n_steps``, at the last step, and at
    the end of training if it stopped early. Each measurement runs both models in eval mode without gradients on
    ``eval_windows``, then restores each module's training flag as it found it; it draws nothing from the global
    random generators, so training is the same with or without the callback. Model 1 of each pair is the reference:
    ``kl`` is KL(reference || model) and ``d_rep_sq`` is in the reference's coordinates.

    Cost: each measurement is one forward pass of both models over ``eval_windows`` plus the measures (about 10 s
    on 2 CPU cores at a vocabulary of 49k and hidden size 576, whatever the number of contexts); choose
    ``every_n_steps`` and the windows so that it stays a small share of training.

    Every process runs its share of the windows (the Trainer's ``accelerator`` shards them); the measures are
    computed and logged on the main process only. The default reference is a deep copy of the model: it doubles
    the model's memory. Sharded training (DeepSpeed ZeRO-3, FSDP) is not supported.

    Args:
        reference_model: the model to compare against (e.g. the base model of a fine-tune); None snapshots the
            model when training begins. Either way it is frozen, put in eval mode and moved to the trained model's
            device (unless it was dispatched with a device map).
        eval_windows: the fixed windows to evaluate on (e.g. from :func:`hf_repsim.data.token_windows`); at least
            hidden + 1 contexts.
        every_n_steps: measure when ``state.global_step`` is a multiple of this, >= 1.
        batch_size: windows per forward pass, >= 1.
        config: search and sampling settings of the measures (defaults: the paper's).
        prefix: prepended to each key in the log.
        keys: the measures to log, from :data:`~hf_repsim.measures.MEASURE_KEYS` (not ``input_set``); None values
            (e.g. ``d_rep_sq`` for different widths) are left out.
        num_tokens: the tokenizer's length (output rows past it are padding); None: the length of the Trainer's
            ``processing_class`` when it has one and it fits the output layer, else every row.
        reservoir_size: contexts kept for the input side of the measures.

    Attributes:
        history: on the main process, one dict per measurement: ``step``, ``seconds`` and every measure (unprefixed,
            all of :data:`~hf_repsim.measures.MEASURE_KEYS`, not only the logged ones).
        last_measures: the :class:`~hf_repsim.measures.Measures` of the last measurement, with their details.
        reference: the frozen reference model, once training has begun.

    Raises:
        ValueError: a bad argument (what was expected is in the message).
        TypeError: ``eval_windows`` is not a ``ContextWindows``, or ``keys`` is a single string.
    """

    def __init__(
        self,
        reference_model: nn.Module | None = None,
        *,
        eval_windows: ContextWindows,
        every_n_steps: int = 50,
        batch_size: int = 8,
        config: MeasureConfig | None = None,
        prefix: str = "repsim/",
        keys: Sequence[str] = DEFAULT_KEYS,
        num_tokens: int | None = None,
        reservoir_size: int = 4096,
    ) -> None:
        _check_arguments(eval_windows, every_n_steps, batch_size, keys)
        self.reference = reference_model
        self.eval_windows = eval_windows
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.config = config or MeasureConfig()
        self.prefix = prefix
        self.keys = tuple(keys)
        self.num_tokens = num_tokens
        self.reservoir_size = reservoir_size
        self.history: list[dict[str, Any]] = []
        self.last_measures: Measures | None = None
        self._trainer = None
        self._default_accelerator: Accelerator | None = None
        self._last_step: int | None = None
        self._warned_unattached = False

    def attach(self, trainer: Any) -> RepSimCallback:
        """Let the callback log through ``trainer.log`` (so every reporter sees the measures); add it if missing.

        Returns:
            The callback itself, so that ``callback = RepSimCallback(...).attach(trainer)`` reads in one line.
        """
        self._trainer = trainer
        if not any(callback is self for callback in trainer.callback_handler.callbacks):
            trainer.add_callback(self)
        return self

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
            raise NotImplementedError(
                "RepSimCallback reads whole weight matrices and deep-copies the model: sharded training (DeepSpeed, "
                "FSDP) is not supported. Compare saved checkpoints with `hf-repsim compare` instead."
            )
        model = _unwrap(model)
        if self.num_tokens is None and processing_class is not None and hasattr(processing_class, "__len__"):
            rows = model.get_output_embeddings().weight.shape[0]
            self.num_tokens = len(processing_class) if len(processing_class) <= rows else None
        self.reference = self._frozen_reference(model)
        hidden = model.get_output_embeddings().weight.shape[1]
        if self.eval_windows.num_contexts < hidden + 1:
            raise ValueError(
                f"Expected eval_windows with at least hidden + 1 = {hidden + 1} contexts (the input diversity "
                f"condition needs them), got {self.eval_windows.num_contexts}; pass more or longer windows."
            )
        self._measure(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0 or state.global_step == state.max_steps:
            self._measure(state, control, _unwrap(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # Training stopped before a measured step (early stopping): measure where it ended.
        self._measure(state, control, _unwrap(model))

    # ------------------------------------------------------------------ work
    def _frozen_reference(self, model: nn.Module) -> nn.Module:
        """The given reference or a copy of ``model``: no gradients, eval mode, on the model's device."""
        reference = _copy(model) if self.reference is None else self.reference
        reference.requires_grad_(False)
        reference.eval()
        device = next(model.parameters()).device
        if getattr(reference, "hf_device_map", None) is None and next(reference.parameters()).device != device:
            reference.to(device)
        return reference

    def _measure(self, state, control, model: nn.Module) -> None:
        """One comparison of ``model`` with the reference at ``state.global_step``, logged on the main process."""
        if self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        start = time.perf_counter()
        result, heads = self._statistics(model)
        if not state.is_world_process_zero:
            return

        measures = compute_measures(result.state, heads, (0, 1), self.config)
        self.last_measures = measures
        self.history.append({"step": state.global_step, "seconds": time.perf_counter() - start, **measures.values})
        metrics = {self.prefix + key: float(measures[key]) for key in self.keys if measures[key] is not None}
        logger.info(
            "repsim at step %d: %s (%.1f s)",
            state.global_step,
            ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()),
            self.history[-1]["seconds"],
        )
        self._log(state, control, metrics)

    def _statistics(self, model: nn.Module):
        """Both models over the windows, in eval mode without gradients; every module's training flag restored."""
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        adapters = []
        try:
            with torch.no_grad():
                adapters = [CausalLMAdapter(m, num_tokens=self.num_tokens) for m in (self.reference, model)]
                result = collect_statistics(
                    adapters,
                    self.eval_windows,
                    batch_size=self.batch_size,
                    accelerator=self._accelerator(),
                    reservoir_size=self.reservoir_size,
                    seed=self.config.seed,
                    progress=False,
                )
        finally:
            for adapter in adapters:
                adapter.close()
            for module, training in modes:
                module.training = training
        return result, [adapter.head for adapter in adapters]

    def _accelerator(self) -> Accelerator:
        """The Trainer's accelerator when attached; else one default Accelerator (it shares accelerate's state)."""
        accelerator = getattr(self._trainer, "accelerator", None)
        if accelerator is None:
            self._default_accelerator = self._default_accelerator or Accelerator()
            accelerator = self._default_accelerator
        return accelerator

    def _log(self, state, control, metrics: dict[str, float]) -> None:
        """Through ``trainer.log`` when attached; else straight into ``state.log_history`` (no reporter sees it)."""
        if self._trainer is not None:
            # trainer.log resets control.should_log (CallbackHandler.on_log): keep the Trainer's own pending log.
            should_log = control.should_log
            self._trainer.log(dict(metrics))
            control.should_log = should_log
            return
        if not self._warned_unattached:
            self._warned_unattached = True
            warnings.warn(
                "RepSimCallback is not attached to its Trainer: its measures go to trainer.state.log_history but no "
                "reporter (TensorBoard, W&B, ...) sees them. Call callback.attach(trainer) before trainer.train().",
                stacklevel=2,
            )
        entry = dict(metrics)
        if state.epoch is not None:
            entry["epoch"] = state.epoch
        state.log_history.append({**entry, "step": state.global_step})


def _unwrap(model: nn.Module | None) -> nn.Module:
    """The plain model under any accelerate / DDP / compile wrapper."""
    if model is None:
        raise ValueError("Expected the Trainer to pass the model to the callback, got None.")
    return extract_model_from_parallel(model)


def _check_arguments(eval_windows: Any, every_n_steps: int, batch_size: int, keys: Sequence[str]) -> None:
    if not isinstance(eval_windows, ContextWindows):
        raise TypeError(
            f"Expected eval_windows to be a ContextWindows, got {type(eval_windows).__name__}; build it with "
            "hf_repsim.data.token_windows(texts, tokenizer, seq_len=..., max_contexts=...)."
        )
    for name, value in (("every_n_steps", every_n_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected {name} to be an integer >= 1, got {value!r}.")
    if isinstance(keys, str):
        raise TypeError(f"Expected a sequence of measure names for keys, got the single string {keys!r}; wrap it.")
    unknown = [key for key in keys if key not in MEASURE_KEYS or key in NOT_SCALAR]
    if unknown or not keys:
        loggable = [key for key in MEASURE_KEYS if key not in NOT_SCALAR]
        raise ValueError(f"Expected keys among {loggable}, got {list(keys)} (not loggable: {unknown}).")
