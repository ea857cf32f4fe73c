"""What every recipe shares: a CLI generated from the recipe's config dataclass, the output folder with the
resolved config and package versions, Markdown + CSV tables, matplotlib on the Agg backend, and a trainer
that fits several seeds of one :class:`~hf_repsim.classifiers.ClassifierPair` architecture at once.

Recipes run as scripts (``python recipes/<name>.py``), so this module is imported as ``_common``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import platform
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hf_repsim.classifiers import ClassifierPair

#: Outputs go under <repository>/runs/<recipe> unless --output says otherwise (runs/ is git-ignored).
RUNS = Path(__file__).resolve().parents[1] / "runs"

#: The reference checkpoints and values: $HF_REPSIM_REFERENCE, else the copy in tests/data/reference (as in
#: tests/conftest.py), else the team's shared/data/reference beside the repository.
REFERENCE = next(
    (
        Path(p)
        for p in (
            os.environ.get("HF_REPSIM_REFERENCE"),
            RUNS.parent / "tests/data/reference",
            RUNS.parents[1] / "shared/data/reference",
        )
        if p is not None and Path(p).exists()
    ),
    RUNS.parent / "tests/data/reference",
)

#: The packages whose versions are written beside every result.
VERSIONED = ("torch", "numpy", "hf_repsim", "matplotlib")

log = logging.getLogger("recipes")


# ---------------------------------------------------------------------------------------------- CLI
def option(default: Any, help: str) -> Any:
    """A config field with its default and its --help line (the CLI is generated from these)."""
    return dataclasses.field(default=default, metadata={"help": help})


def parse_config(config_cls: type, quick: dict[str, Any], description: str, argv: Sequence[str] | None = None):
    """The resolved config: the dataclass defaults, then ``quick`` if --quick, then the options given.

    Every field of ``config_cls`` becomes an option ``--field-name`` whose argparse default is None ("unset"),
    so an option given on the command line wins over both the defaults and the --quick values.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        extra = f" (--quick: {quick[field.name]!r})" if field.name in quick else ""
        text = f"{field.metadata.get('help', '')} Default: {field.default!r}{extra}."
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            parser.add_argument(flag, default=None, help=text, **_argparse_type(kind))
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    resolved = dict(quick) if given.get("quick") else {}
    resolved.update(given)
    return dataclasses.replace(
        config_cls(), **{k: tuple(v) if isinstance(v, list) else v for k, v in resolved.items()}
    )


def _argparse_type(kind: Any) -> dict[str, Any]:
    """argparse keywords for a field annotation: int, float, str, ``X | None`` and ``tuple[X, ...]``."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return _argparse_type(next(a for a in args if a is not type(None)))
    if typing.get_origin(kind) is tuple:
        return {"type": args[0], "nargs": "+"}
    if kind in (int, float, str):
        return {"type": kind}
    raise TypeError(f"Expected a config field of type int, float, str, bool, X | None or tuple[X, ...], got {kind}.")


# ---------------------------------------------------------------------------------------------- outputs
def start_run(name: str, config: Any) -> Path:
    """Logging, the output folder (``config.output`` or runs/<name>) and config.json (config + versions).

    Returns:
        The output folder, created.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(config.output) if config.output is not None else RUNS / name
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": name,
        "config": dataclasses.asdict(config),
        "versions": versions(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "config.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s: writing to %s", name, out.resolve())
    return out


def versions() -> dict[str, str]:
    """Python, platform and the versions of :data:`VERSIONED`."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_table(out: Path, stem: str, rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """``stem.md`` (formatted) and ``stem.csv`` (full precision) from rows of dicts.

    Args:
        columns: key -> format spec for the Markdown table (e.g. ``".4g"``); the CSV holds every key of
            ``columns`` unformatted, in that order.

    Returns:
        The Markdown table.
    """
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), spec) for key, spec in columns.items()) + " |")
    markdown = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(markdown)
    return markdown


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)) and spec:
        return format(float(value), spec)
    return str(value)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"Cannot write {type(value).__name__} to JSON.")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------- training
class StackedPairs(nn.Module):
    """S models of one ClassifierPair architecture trained side by side with batched matmuls.

    Model s starts from ``ClassifierPair(...)`` built right after ``torch.manual_seed(seeds[s])`` and, because
    Adam and the summed loss act on each model's parameters separately, trains exactly as it would alone
    (up to float rounding): stacking only removes per-step Python overhead, which dominates at these sizes.

    Args:
        num_classes: K labels; width: hidden width; hidden: M; in_features: input dimension of f.
        seeds: one seed per model.
    """

    LAYERS = ("l1", "l2", "l3", "l4")

    def __init__(self, num_classes: int, width: int, seeds: Sequence[int], hidden: int = 2, in_features: int = 2):
        super().__init__()
        self.num_classes, self.width, self.hidden, self.in_features = num_classes, width, hidden, in_features
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(ClassifierPair(num_classes, width, hidden, in_features))
        states = [m.state_dict() for m in models]
        # Weights stored as (S, in, out) for baddbmm; biases as (S, 1, out).
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for net in ("f_net", "g_net"):
            for layer in self.LAYERS:
                key = f"{net}_{layer}"
                self.weights[key] = nn.Parameter(torch.stack([s[f"{net}.{layer}.weight"].T for s in states]))
                if layer != "l4":
                    self.biases[key] = nn.Parameter(torch.stack([s[f"{net}.{layer}.bias"][None] for s in states]))
        self.register_buffer("labels", torch.eye(num_classes)[:, :-1])  # (n_labels, n_labels - 1)

    @property
    def num_models(self) -> int:
        return self.weights["f_net_l1"].shape[0]

    def _mlp(self, net: str, h: torch.Tensor) -> torch.Tensor:
        """(S, batch, in) -> (S, batch, hidden)."""
        for layer in self.LAYERS[:-1]:
            key = f"{net}_{layer}"
            h = nn.functional.leaky_relu(torch.baddbmm(self.biases[key], h, self.weights[key]), 0.01)
        return torch.bmm(h, self.weights[f"{net}_l4"])

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """(S, batch, in_features) or (batch, in_features) shared by all models -> (S, batch, hidden)."""
        if x.ndim == 2:
            x = x.expand(self.num_models, *x.shape)
        return self._mlp("f_net", x)

    def g(self) -> torch.Tensor:
        """(S, n_labels, hidden) unembeddings."""
        return self._mlp("g_net", self.labels.expand(self.num_models, *self.labels.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(S, batch, in_features) or (batch, in_features) -> (S, batch, n_labels) logits."""
        return self.f(x) @ self.g().transpose(1, 2)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One ClassifierPair state dict per model (loadable with ``hf_repsim.classifiers.load_classifier``)."""
        out = []
        for s in range(self.num_models):
            state = {}
            for net in ("f_net", "g_net"):
                for layer in self.LAYERS:
                    key = f"{net}_{layer}"
                    state[f"{net}.{layer}.weight"] = self.weights[key][s].detach().T.contiguous().clone()
                    if layer != "l4":
                        state[f"{net}.{layer}.bias"] = self.biases[key][s, 0].detach().clone()
            out.append(state)
        return out


def train_stacked(
    model: StackedPairs,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    *,
    seeds: Sequence[int],
    steps: int,
    lr: float,
    batch_size: int,
    label: str = "",
) -> list[float]:
    """Adam on every stacked model, each with its own seeded stream of minibatches (sampled with replacement).

    Args:
        model: the stacked models.
        x: (n_train, in_features) training inputs.
        loss_fn: (S, batch, n_labels) logits and (S, batch, ...) targets -> (S,) per-model mean losses.
        targets: (n_train, ...) per-input targets (labels or teacher outputs).
        seeds: one minibatch seed per model.

    Returns:
        The final per-model training loss (mean over the last 100 steps).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    recent = torch.zeros(len(seeds), dtype=torch.float64)
    tail = min(100, steps)
    started = time.perf_counter()
    for step in range(steps):
        idx = torch.stack([torch.randint(0, x.shape[0], (batch_size,), generator=g) for g in generators])  # (S, B)
        losses = loss_fn(model(x[idx]), targets[idx])  # (S,)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        if step >= steps - tail:
            recent += losses.detach().to(torch.float64) / tail
        if (step + 1) % max(1, steps // 4) == 0:
            elapsed = time.perf_counter() - started
            log.info(
                "%s step %d/%d, loss %s, %.0f s (%.2f ms/step)",
                label,
                step + 1,
                steps,
                _fmt(losses),
                elapsed,
                1e3 * elapsed / (step + 1),
            )
    return recent.tolist()


def _fmt(losses: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in losses.tolist()) + "]"


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The family's negative log-likelihood: (S, batch, n_labels) logits, (S, batch) labels -> (S,) means."""
    s, b, k = logits.shape
    flat = nn.functional.cross_entropy(logits.reshape(s * b, k), labels.reshape(s * b), reduction="none")
    return flat.view(s, b).mean(1)
