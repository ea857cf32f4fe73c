"""The paper's small classifiers of the family: f and g as MLPs, and the radial-classification data.

Both f and g are four linear layers, in -> width -> width -> width -> M, with LeakyReLU (slope 0.01) after
the first three and no bias on the last. f takes a 2-d point; g takes the label as a one-hot vector with
its last column dropped (so the last class is the zero vector).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    """in -> width -> width -> width -> out, LeakyReLU(0.01) between, no bias on the last layer."""

    def __init__(self, in_features: int, width: int, out_features: int):
        super().__init__()
        self.l1 = nn.Linear(in_features, width)
        self.l2 = nn.Linear(width, width)
        self.l3 = nn.Linear(width, width)
        self.l4 = nn.Linear(width, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_features) -> (batch, out_features)."""
        for layer in (self.l1, self.l2, self.l3):
            x = nn.functional.leaky_relu(layer(x), 0.01)
        return self.l4(x)


class ClassifierPair(nn.Module):
    """A model of the family: logits(x)_y = f(x)^T g(y), with f and g MLPs.

    Args:
        num_classes: K labels.
        width: hidden width of both MLPs.
        hidden: M, the representation size.
        in_features: input dimension of f.
    """

    def __init__(self, num_classes: int, width: int, hidden: int = 2, in_features: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.f_net = MLP(in_features, width, hidden)
        self.g_net = MLP(num_classes - 1, width, hidden)

    def label_inputs(self) -> torch.Tensor:
        """(n_labels, n_labels - 1) one-hot codes with the last column dropped."""
        eye = torch.eye(self.num_classes, dtype=self.f_net.l1.weight.dtype, device=self.f_net.l1.weight.device)
        return eye[:, :-1]

    def g(self) -> torch.Tensor:
        """(n_labels, hidden) unembeddings."""
        return self.g_net(self.label_inputs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_features) points -> (batch, n_labels) logits."""
        return self.f_net(x) @ self.g().T


def load_classifier(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> ClassifierPair:
    """A :class:`ClassifierPair` in float64 from a state dict or a checkpoint file saved on any device.

    The file is read with ``map_location="cpu"`` and ``weights_only=True``. Sizes come from the weights.

    Raises:
        ValueError: the state dict does not have the keys of a ClassifierPair.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        state = torch.load(os.fspath(source), map_location="cpu", weights_only=True)
    expected = set(ClassifierPair(3, 2).state_dict())
    if set(state) != expected:
        raise ValueError(
            f"Expected a classifier state dict with keys {sorted(expected)}, got {sorted(state)}; is this one of "
            f"the paper's f_net/g_net checkpoints?"
        )
    width, in_features = state["f_net.l1.weight"].shape
    hidden = state["f_net.l4.weight"].shape[0]
    num_classes = state["g_net.l1.weight"].shape[1] + 1
    model = ClassifierPair(num_classes, width, hidden, in_features).to(torch.float64)
    model.load_state_dict({k: v.to(torch.float64) for k, v in state.items()})
    return model.eval()


def classifier_representations(
    source: str | os.PathLike | Mapping[str, torch.Tensor] | ClassifierPair, x: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """f on the given inputs and g, in float64.

    Args:
        source: a checkpoint path, a state dict or a loaded :class:`ClassifierPair`.
        x: (n_contexts, in_features) inputs (float32 inputs are promoted to float64 first).

    Returns:
        f: (n_contexts, hidden) and g: (n_labels, hidden) numpy float64 arrays.
    """
    model = source if isinstance(source, ClassifierPair) else load_classifier(source)
    model = model.to(torch.float64)
    with torch.no_grad():
        f = model.f_net(torch.as_tensor(np.asarray(x)).to(torch.float64))
        return f.numpy(), model.g().numpy()


def radial_data(num_points: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Radial classification: N(0, 3^2 I_2) points labelled by the angle bin of their upper-half-plane image.

    A point with a negative second coordinate is reflected through the origin; its label is the index j of the
    bin [j pi/K, (j+1) pi/K) holding its angle to (1, 0), the last bin taking the rest.

    Returns:
        x: (num_points, 2) float32 points and y: (num_points,) int64 labels.
    """
    x = np.random.default_rng(seed).normal(0, 3, (num_points, 2)).astype(np.float32)
    folded = np.where(x[:, 1:2] < 0, -x, x)
    angle = np.arctan2(folded[:, 1], folded[:, 0])
    y = np.minimum(np.floor(angle / (math.pi / num_classes)), num_classes - 1).astype(np.int64)
    return x, y
