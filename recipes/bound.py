"""d_LLV bounds representational dissimilarity: d_fg <= 2 M d_LLV while d_LLV < 1/(2M) (DESIGN.md 1, result 3).

Three sources of model pairs, all with M = 2:

- ``perturbation``: a random model of the family and a copy with f and g perturbed by relative noise
  (hf_repsim.constructions.perturbation_pair), at each scale and pair seed;
- ``weights``: a reference classifier (radial_K4_w128_seed0.pt) and copies whose every weight is perturbed
  by scale x (that tensor's std) x N(0, 1), compared on the radial test set;
- ``reference``: every pair of seeds of the 20 reference checkpoints at each width.

Plots d_fg against d_LLV (log-log) with the line 2 M d_LLV and the edge d_LLV = 1/(2M) of the region where
the bound says something, and counts the points below the line there (all of them, if the bound holds).
Writes points.csv, summary.md/csv, bound.png, results.json, config.json. About 20 s (--quick: about 5 s).

    .venv/bin/python recipes/bound.py [--quick] [--checkpoints tests/data/reference/checkpoints]
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import REFERENCE, option, parse_config, pyplot, start_run, write_json, write_table

from hf_repsim import compare_representations
from hf_repsim.classifiers import classifier_representations, load_classifier, radial_data
from hf_repsim.constructions import perturbation_pair

log = logging.getLogger("recipes")

#: Where the reference checkpoints lie unless --checkpoints says otherwise.
DEFAULT_CHECKPOINTS = REFERENCE / "checkpoints"

#: d_fg of identical representations is 0 up to rounding; the log-log plot shows such points at this floor.
PLOT_FLOOR = 1e-12

#: The base classifier of the ``weights`` source.
BASE_CHECKPOINT = "radial_K4_w128_seed0.pt"


@dataclass
class Config:
    scales: tuple[float, ...] = option(
        (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.3, 0.5, 1.0), "Relative noise scales."
    )
    pair_seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "Seeds of the perturbations at each scale.")
    num_labels: int = option(10, "Labels of the random perturbation pairs.")
    num_contexts: int = option(1000, "Inputs of the random perturbation pairs.")
    hidden: int = option(2, "M of the random perturbation pairs.")
    checkpoints: str | None = option(None, f"Reference checkpoints (default {DEFAULT_CHECKPOINTS}); none: skipped.")
    num_samples: int = option(200, "Random input sets tried in the input-side search of d_LLV.")
    seed: int = option(0, "Seed of the input-set search (perturbation seeds: --pair-seeds).")
    output: str | None = option(None, "Output folder (default runs/bound).")
    quick: bool = option(False, "Fewer scales and seeds.")


QUICK = {"scales": (1e-3, 1e-2, 0.1, 0.3, 1.0), "pair_seeds": (0, 1)}


def measure(source: str, label: str, pair: tuple, config: Config) -> dict:
    out = compare_representations(*pair, num_samples=config.num_samples, seed=config.seed)
    m = pair[0].shape[1]
    below = out["d_fg"] <= 2 * m * out["d_llv"]
    return {
        "source": source,
        "pair": label,
        "M": m,
        "kl": out["kl"],
        "d_llv": out["d_llv"],
        "d_fg": out["d_fg"],
        "bound": 2 * m * out["d_llv"],
        "below": bool(below),
        "in_region": bool(out["d_llv"] < 1 / (2 * m)),
    }


def perturbation_points(config: Config) -> list[dict]:
    return [
        measure(
            "perturbation",
            f"scale={scale:g} seed={seed}",
            perturbation_pair(config.num_labels, config.hidden, config.num_contexts, scale, seed),
            config,
        )
        for scale in config.scales
        for seed in config.pair_seeds
    ]


def weight_points(config: Config, folder: Path, x: np.ndarray) -> list[dict]:
    """The base classifier against copies with every weight perturbed by scale x its tensor's std."""
    base = load_classifier(folder / BASE_CHECKPOINT)
    f1, g1 = classifier_representations(base, x)
    points = []
    for scale, seed in itertools.product(config.scales, config.pair_seeds):
        generator = torch.Generator().manual_seed(seed)
        state = {
            k: v + scale * v.std() * torch.randn(v.shape, generator=generator, dtype=v.dtype)
            for k, v in base.state_dict().items()
        }
        f2, g2 = classifier_representations(state, x)
        points.append(measure("weights", f"scale={scale:g} seed={seed}", (f1, g1, f2, g2), config))
    return points


def reference_points(config: Config, folder: Path, x: np.ndarray) -> list[dict]:
    reps = {}
    for path in sorted(folder.glob("radial_K4_w*_seed*.pt")):
        width, seed = (int(v) for v in path.stem.removeprefix("radial_K4_w").split("_seed"))
        reps[width, seed] = classifier_representations(path, x)
    points = []
    for (w, a), (w2, b) in itertools.combinations(sorted(reps), 2):
        if w == w2:
            points.append(measure("reference", f"w{w} {a}v{b}", (*reps[w, a], *reps[w, b]), config))
    return points


def summarise(points: list[dict]) -> list[dict]:
    rows = []
    for source in [*dict.fromkeys(p["source"] for p in points), "all"]:
        group = [p for p in points if source in ("all", p["source"])]
        region = [p for p in group if p["in_region"]]
        rows.append(
            {
                "source": source,
                "points": len(group),
                "in_region": len(region),
                "below_in_region": sum(p["below"] for p in region),
                "below_overall": sum(p["below"] for p in group),
                "max_ratio_in_region": max((p["d_fg"] / p["bound"] for p in region), default=float("nan")),
            }
        )
    return rows


def plot(points: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for source, marker in zip(dict.fromkeys(p["source"] for p in points), "os^v"):
        group = [p for p in points if p["source"] == source]
        ax.scatter(
            [p["d_llv"] for p in group],
            [max(p["d_fg"], PLOT_FLOOR) for p in group],
            marker=marker,
            s=16,
            alpha=0.7,
            label=source,
        )
    lo = min(p["d_llv"] for p in points) / 2
    hi = max(p["d_llv"] for p in points) * 2
    for m in sorted({p["M"] for p in points}):
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, 2 * m * xs, "k-", lw=1, label=f"$2M\\,d_{{LLV}}$ (M={m})")
        ax.axvline(1 / (2 * m), color="k", ls=":", lw=1, label=f"$d_{{LLV}} = 1/(2M)$ (M={m})")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="$d_{LLV}$",
        ylabel="$d_{f,g}$",
        title="The bound $d_{f,g} \\leq 2M d_{LLV}$",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    config = parse_config(Config, QUICK, __doc__, argv)
    out = start_run("bound", config)
    points = perturbation_points(config)
    folder = Path(config.checkpoints) if config.checkpoints else DEFAULT_CHECKPOINTS
    if (folder / BASE_CHECKPOINT).exists():
        x, _ = radial_data(2000, 4, seed=1)
        points += weight_points(config, folder, x) + reference_points(config, folder, x)
    elif config.checkpoints:
        raise FileNotFoundError(f"Expected the reference checkpoints in {folder}, found no {BASE_CHECKPOINT} there.")
    else:
        log.warning("no reference checkpoints at %s: only the random perturbation pairs", folder)

    write_table(out, "points", points, {k: ".4g" for k in points[0]})
    summary = summarise(points)
    print(write_table(out, "summary", summary, {k: ".3g" for k in summary[0]}))
    write_json(out / "results.json", {"summary": summary, "points": points})
    plot(points, out / "bound.png")
    total = summary[-1]
    print(
        f"{total['below_in_region']} of the {total['in_region']} points with d_LLV < 1/(2M) lie below the line "
        f"2 M d_LLV ({total['below_overall']} of all {total['points']} points)."
    )
    print(f"Outputs in {out}: summary.md/csv, points.md/csv, bound.png, results.json, config.json")


if __name__ == "__main__":
    main()
