"""The unembedding side of a model of the family p(y|x) = softmax_y(f(x)^T g(y) + b(y))."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Head:
    """The unembedding of one model: its label vectors g and optional biases b.

    Logits are ``features @ weight.T + bias``: any logit scale of the architecture is already folded
    into ``weight`` and ``bias``, and padded vocabulary rows are already removed.

    Attributes:
        weight: (n_labels, hidden) the vectors g(y), one row per label.
        bias: (n_labels,) the biases b(y), or None for a head without bias.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise ValueError(
                f"Expected the unembedding weight to be a 2-d (n_labels, hidden) tensor, got shape "
                f"{tuple(self.weight.shape)}; pass one row per label."
            )
        if self.bias is not None and tuple(self.bias.shape) != (self.weight.shape[0],):
            raise ValueError(
                f"Expected the bias to have shape ({self.weight.shape[0]},) to match the {self.weight.shape[0]} "
                f"unembedding rows, got {tuple(self.bias.shape)}."
            )

    @property
    def num_labels(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the family for (batch, hidden) features: (batch, n_labels), in the dtype of ``weight`` or
        float32 if that is narrower (a bfloat16 product would round the logits far below the measures' needs)."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        logits = features.to(dtype) @ self.weight.to(dtype).T
        return logits if self.bias is None else logits + self.bias.to(dtype)
