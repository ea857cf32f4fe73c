"""Distilling with a logit distance preserves the teacher's representation better than KL (DESIGN.md 1, result 5).

A teacher of the family (ClassifierPair, M = 2) is trained on a seeded 7-arm spiral data set. Students of the
same architecture, from fresh initialisations, are trained on the teacher's outputs at the training inputs with

- ``kl``: KL(teacher || student) of the predicted distributions;
- ``l1``: sum over labels of |c(z_teacher) - c(z_student)|, c the centring over labels (logits are defined
  only up to a per-input shift);
- ``l2``: the squared distance between the centred logit vectors (d_logit^2 per input).

Each student is compared with the teacher on the test inputs (compare_representations, teacher = model 1).
The table gives, per loss, the mean and std over student seeds of the test accuracy, the argmax agreement with
the teacher, mean KL(teacher || student), d_logit^2, m_CCA_f and d_rep^2. Expected: the logit-trained
students have higher mean m_CCA_f and lower mean d_rep^2 than the KL-trained ones.

Writes table.md/csv, students.csv, distillation.png, results.json, config.json, models/. About 4 min with the
defaults on 2 CPU cores (--quick: about 1 min).

    .venv/bin/python recipes/distillation.py [--quick] [--seeds 1 2 3]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import (
    StackedPairs,
    cross_entropy,
    option,
    parse_config,
    pyplot,
    start_run,
    train_stacked,
    write_json,
    write_table,
)

from hf_repsim import compare_representations
from hf_repsim.classifiers import classifier_representations, load_classifier

log = logging.getLogger("recipes")

LOSSES = ("kl", "l1", "l2")
METRICS = ("accuracy", "agreement", "kl", "d_logit_sq", "m_cca_f", "d_rep_sq")


@dataclass
class Config:
    num_classes: int = option(7, "Arms of the spiral (classes).")
    num_train: int = option(10000, "Training points (the students see the teacher's outputs on these).")
    num_test: int = option(2000, "Test points (the comparisons use them).")
    turns: float = option(0.75, "Revolutions of each arm.")
    noise: float = option(0.03, "Std of the Gaussian noise added to every point.")
    width: int = option(64, "Hidden width of f and g (teacher and students).")
    hidden: int = option(2, "M, the representation size.")
    teacher_steps: int = option(30000, "Adam steps of the teacher (cross-entropy on the labels).")
    teacher_lr: float = option(1e-3, "Adam learning rate of the teacher.")
    student_steps: int = option(30000, "Adam steps of each student.")
    student_lr: float = option(3e-3, "Adam learning rate of the students.")
    batch_size: int = option(128, "Minibatch size.")
    losses: tuple[str, ...] = option(LOSSES, "Distillation losses, among kl, l1, l2.")
    seeds: tuple[int, ...] = option((1, 2, 3, 4, 5), "Student seeds (initialisation and minibatch order).")
    num_samples: int = option(200, "Random input sets tried in the input-side search of d_LLV.")
    seed: int = option(0, "Seed of the data (test set: seed + 1), the teacher and the input-set search.")
    threads: int = option(1, "torch threads (1 is fastest for these small matmuls on a shared 2-core machine).")
    output: str | None = option(None, "Output folder (default runs/distillation).")
    quick: bool = option(False, "Fewer steps and 3 student seeds.")


QUICK = {"teacher_steps": 15000, "student_steps": 10000, "seeds": (1, 2, 3)}


# ---------------------------------------------------------------------------------------------- data
def spiral_data(
    num_points: int, num_classes: int = 7, seed: int = 0, turns: float = 0.75, noise: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded spiral: ``num_classes`` arms from near the origin, each point with Gaussian noise.

    Point n belongs to arm k (uniform); at position t ~ U(0, 1) along it, its radius is 0.1 + t and its angle
    2 pi k / num_classes + 2 pi turns t.

    Returns:
        x: (num_points, 2) float32 points and y: (num_points,) int64 labels.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, num_points)
    t = rng.uniform(0, 1, num_points)
    angle = 2 * math.pi * (y / num_classes + turns * t)
    radius = 0.1 + t
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1) + noise * rng.standard_normal(
        (num_points, 2)
    )
    return x.astype(np.float32), y.astype(np.int64)


# ---------------------------------------------------------------------------------------------- losses
def centred(logits: torch.Tensor) -> torch.Tensor:
    """(..., n_labels) logits minus their mean over labels."""
    return logits - logits.mean(-1, keepdim=True)


def distillation_loss(name: str):
    """(S, batch, n_labels) student logits and (S, batch, n_labels) teacher logits -> (S,) batch means."""

    def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        log_t, log_s = teacher.log_softmax(-1), student.log_softmax(-1)
        return (log_t.exp() * (log_t - log_s)).sum(-1).mean(-1)

    def l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (centred(student) - centred(teacher)).abs().sum(-1).mean(-1)

    def l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (centred(student) - centred(teacher)).square().sum(-1).mean(-1)

    found = {"kl": kl, "l1": l1, "l2": l2}
    if name not in found:
        raise ValueError(f"Expected a loss among {sorted(found)}, got {name!r}.")
    return found[name]


# ---------------------------------------------------------------------------------------------- steps
def train_teacher(config: Config, x: torch.Tensor, y: torch.Tensor, folder: Path) -> Path:
    model = StackedPairs(config.num_classes, config.width, [config.seed], hidden=config.hidden)
    train_stacked(
        model,
        x,
        cross_entropy,
        y,
        seeds=[config.seed],
        steps=config.teacher_steps,
        lr=config.teacher_lr,
        batch_size=config.batch_size,
        label="teacher",
    )
    path = folder / "teacher.pt"
    torch.save(model.state_dicts()[0], path)
    return path


def train_students(config: Config, loss: str, x: torch.Tensor, teacher_logits: torch.Tensor, folder: Path) -> list:
    model = StackedPairs(config.num_classes, config.width, config.seeds, hidden=config.hidden)
    train_stacked(
        model,
        x,
        distillation_loss(loss),
        teacher_logits,
        seeds=config.seeds,
        steps=config.student_steps,
        lr=config.student_lr,
        batch_size=config.batch_size,
        label=f"students ({loss})",
    )
    paths = []
    for seed, state in zip(config.seeds, model.state_dicts()):
        paths.append(folder / f"student_{loss}_seed{seed}.pt")
        torch.save(state, paths[-1])
    return paths


def evaluate(config: Config, teacher: tuple, student_path: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """The student's accuracy, agreement with the teacher and the measures with the teacher as model 1."""
    f_t, g_t = teacher
    f_s, g_s = classifier_representations(student_path, x)
    out = compare_representations(f_t, g_t, f_s, g_s, num_samples=config.num_samples, seed=config.seed)
    pred_t, pred_s = (f_t @ g_t.T).argmax(1), (f_s @ g_s.T).argmax(1)
    return {
        "accuracy": float((pred_s == y).mean()),
        "agreement": float((pred_s == pred_t).mean()),
        **{k: out[k] for k in ("kl", "d_logit_sq", "m_cca_f", "d_rep_sq", "d_llv", "d_fg")},
    }


def summarise(rows: list[dict], losses: tuple[str, ...]) -> list[dict]:
    table = []
    for loss in losses:
        group = [r for r in rows if r["loss"] == loss]
        entry = {"loss": loss, "students": len(group)}
        for key in METRICS:
            values = np.array([r[key] for r in group])
            entry[f"{key}_mean"] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        table.append(entry)
    return table


def finding(table: list[dict]) -> dict:
    """Does every logit-trained loss beat KL on mean m_CCA_f (higher) and mean d_rep^2 (lower)?"""
    by = {row["loss"]: row for row in table}
    if "kl" not in by:
        return {}
    result = {}
    for loss in (name for name in by if name != "kl"):
        result[f"{loss}_higher_m_cca_f_than_kl"] = by[loss]["m_cca_f_mean"] > by["kl"]["m_cca_f_mean"]
        result[f"{loss}_lower_d_rep_sq_than_kl"] = by[loss]["d_rep_sq_mean"] < by["kl"]["d_rep_sq_mean"]
    result["holds"] = all(result.values())
    return result


def plot(x: np.ndarray, y: np.ndarray, rows: list[dict], losses: tuple[str, ...], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    axes[0].scatter(x[:, 0], x[:, 1], c=y, s=3, cmap="tab10")
    axes[0].set(title="spiral test set", aspect="equal")
    for ax, key, name in zip(axes[1:], ("m_cca_f", "d_rep_sq"), ("$m_{CCA,f}$ (higher: closer)", "$d_{rep}^2$")):
        for i, loss in enumerate(losses):
            values = [r[key] for r in rows if r["loss"] == loss]
            ax.scatter(np.full(len(values), i), values, alpha=0.7)
            ax.plot([i - 0.25, i + 0.25], [np.mean(values)] * 2, "k-")
        ax.set_xticks(range(len(losses)), losses)
        ax.set(title=f"{name} to the teacher", xlabel="distillation loss")
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TABLE_COLUMNS = {"loss": "", "students": "", **{f"{k}_{s}": ".4g" for k in METRICS for s in ("mean", "std")}}


def main(argv=None) -> None:
    config = parse_config(Config, QUICK, __doc__, argv)
    if config.seed in config.seeds:
        raise ValueError(
            f"Expected student seeds different from the teacher's seed {config.seed}, got {config.seeds}."
        )
    for loss in config.losses:
        distillation_loss(loss)
    torch.set_num_threads(config.threads)
    out = start_run("distillation", config)
    folder = out / "models"
    folder.mkdir(exist_ok=True)
    shape = {"num_classes": config.num_classes, "turns": config.turns, "noise": config.noise}
    x_train, y_train = spiral_data(config.num_train, seed=config.seed, **shape)
    x_test, y_test = spiral_data(config.num_test, seed=config.seed + 1, **shape)

    # The teacher, and its outputs on the training inputs: the students' only targets.
    teacher_path = train_teacher(config, torch.from_numpy(x_train), torch.from_numpy(y_train), folder)
    teacher = classifier_representations(teacher_path, x_test)
    teacher_accuracy = float(((teacher[0] @ teacher[1].T).argmax(1) == y_test).mean())
    log.info("teacher test accuracy %.4f", teacher_accuracy)
    with torch.no_grad():
        teacher_logits = load_classifier(teacher_path).to(torch.float32)(torch.from_numpy(x_train))

    rows = []
    for loss in config.losses:
        paths = train_students(config, loss, torch.from_numpy(x_train), teacher_logits, folder)
        for seed, path in zip(config.seeds, paths):
            rows.append({"loss": loss, "seed": seed, **evaluate(config, teacher, path, x_test, y_test)})
    write_table(out, "students", rows, {k: ".4g" for k in rows[0]})
    table = summarise(rows, config.losses)
    print(f"Teacher test accuracy: {teacher_accuracy:.4f}")
    print(write_table(out, "table", table, TABLE_COLUMNS))
    result = finding(table)
    print("Finding (logit losses vs KL):", result)
    write_json(
        out / "results.json",
        {"teacher_accuracy": teacher_accuracy, "table": table, "students": rows, "finding": result},
    )
    plot(x_test, y_test, rows, config.losses, out / "distillation.png")
    print(f"Outputs in {out}: table.md/csv, students.csv, distillation.png, results.json, config.json, models/")


if __name__ == "__main__":
    main()
