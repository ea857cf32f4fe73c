"""Wider networks learn closer distributions (d_LLV) and more similar representations (d_fg) (DESIGN.md 1, 4).

Trains ClassifierPair models (M = 2) on radial classification (20000 training points, seed 0; 2000 test
points, seed 1) with the family's negative log-likelihood, Adam, for every number of classes K, width and seed;
then compares every pair of seeds at each (K, width) whose models both exceed the accuracy threshold on the
test set, with compare_representations on test-set f and g, and plots the mean and spread (std over pairs) of
d_LLV and d_fg against width, one line per K.

Outputs: models/radial_K{K}_w{width}_seed{seed}.pt (weights-only state dicts, reused by a later run with the
same training settings), accuracy.md/csv, pairs.csv (every measure of every pair), summary.md/csv,
width_sweep.png, results.json, config.json.

Time on 2 CPU cores (1 torch thread; the seeds of one (K, width) train stacked in one batched model; timed over
500 steps with 5 seeds): about 1.1, 1.3, 1.8, 3.4 and 9-14 ms per step for widths 16, 32, 64, 128 and 256, the
same for K = 4 and K = 18. So the full default (4 K x 5 widths x 5 seeds x 15000 steps) takes about 17 min of
training on an idle machine, 25-35 min while other jobs share the cores, plus under a minute of comparisons.
--quick (K = 4 and 6, widths 16 and 128, 4 seeds, 6000 steps) takes about a minute.

--from-checkpoints DIR skips training: it loads radial_K{K}_w{width}_seed{seed}.pt from DIR (e.g.
tests/data/reference/checkpoints or ../shared/data/reference/checkpoints), compares the pairs at each width, repeats the comparison with
--search-seeds seeds of the random input-set search, and, given reference_K{K}.json (--reference, or found in
DIR or its parent), prints per width the reference mean of d_LLV and d_fg, our mean, and the seed-to-seed
spread (std, min-max) of our mean, and whether each reference mean lies within [min, max]. About 30 s.

    .venv/bin/python recipes/width_sweep.py --quick
    .venv/bin/python recipes/width_sweep.py --from-checkpoints tests/data/reference/checkpoints
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
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
from hf_repsim.classifiers import classifier_representations, radial_data

log = logging.getLogger("recipes")

#: A reference mean equal to the edge of our range up to float rounding counts as inside.
EDGE_RTOL = 1e-9


@dataclass
class Config:
    num_classes: tuple[int, ...] = option((4, 6, 10, 18), "Numbers of classes K.")
    widths: tuple[int, ...] = option((16, 32, 64, 128, 256), "Hidden widths of f and g.")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "Training seeds (initialisation and minibatch order).")
    steps: int = option(15000, "Adam steps per model.")
    lr: float = option(1e-4, "Adam learning rate.")
    batch_size: int = option(128, "Minibatch size.")
    num_train: int = option(20000, "Training points.")
    num_test: int = option(2000, "Test points (the comparisons use them).")
    train_seed: int = option(0, "Seed of the training points.")
    test_seed: int = option(1, "Seed of the test points.")
    min_accuracy: float = option(0.9, "A pair is compared only when both models' test accuracy exceeds this.")
    num_samples: int = option(200, "Random input sets tried in the input-side search of d_LLV.")
    seed: int = option(0, "Seed of the input-set search (the first one with --search-seeds).")
    search_seeds: int = option(
        20, "With --from-checkpoints: repeats of the comparison, search seeds seed, seed+1, ..."
    )
    from_checkpoints: str | None = option(None, "Skip training: load radial_K{K}_w{width}_seed{seed}.pt from here.")
    reference: str | None = option(
        None, "reference_K{K}.json to compare with (default: found beside the checkpoints)."
    )
    threads: int = option(1, "torch threads (1 is fastest for these small matmuls on a shared 2-core machine).")
    output: str | None = option(None, "Output folder (default runs/width_sweep).")
    quick: bool = option(False, "A small configuration for tests (about a minute).")


QUICK = {"num_classes": (4, 6), "widths": (16, 128), "seeds": (0, 1, 2, 3), "steps": 6000}

#: The settings that make a saved checkpoint reusable.
TRAINING_KEYS = ("steps", "lr", "batch_size", "num_train", "train_seed")

PAIR_COLUMNS = {
    "num_classes": "",
    "width": "",
    "seed_a": "",
    "seed_b": "",
    "acc_a": ".4f",
    "acc_b": ".4f",
    "kl": ".4g",
    "kl_reverse": ".4g",
    "d_logit_sq": ".4g",
    "d_llv": ".4f",
    "t1": ".4f",
    "t2": ".4f",
    "t3": ".4g",
    "t4": ".4g",
    "pivot_label": "",
    "left_out_label": "",
    "d_svd_f": ".4f",
    "d_svd_g": ".4f",
    "d_fg": ".4f",
    "m_cca_f": ".4f",
    "d_rep_sq": ".4g",
    "bound_holds": "",
}


# ---------------------------------------------------------------------------------------------- models
def checkpoint_name(num_classes: int, width: int, seed: int) -> str:
    return f"radial_K{num_classes}_w{width}_seed{seed}.pt"


def train_group(config: Config, num_classes: int, width: int, folder: Path) -> dict[int, Path]:
    """Every seed's checkpoint at (K, width): reused when saved with the same training settings, else trained."""
    settings = {k: getattr(config, k) for k in TRAINING_KEYS}
    paths = {s: folder / checkpoint_name(num_classes, width, s) for s in config.seeds}
    missing = [s for s, p in paths.items() if not _reusable(p, settings)]
    if not missing:
        log.info("K=%d width=%d: reusing %d saved models", num_classes, width, len(paths))
        return paths
    x, y = (torch.from_numpy(a) for a in radial_data(config.num_train, num_classes, config.train_seed))
    model = StackedPairs(num_classes, width, missing)
    losses = train_stacked(
        model,
        x,
        cross_entropy,
        y,
        seeds=missing,
        steps=config.steps,
        lr=config.lr,
        batch_size=config.batch_size,
        label=f"K={num_classes} width={width}",
    )
    for seed, state, loss in zip(missing, model.state_dicts(), losses):
        torch.save(state, paths[seed])
        meta = {**settings, "num_classes": num_classes, "width": width, "seed": seed, "final_train_loss": loss}
        paths[seed].with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return paths


def _reusable(path: Path, settings: dict) -> bool:
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        return False
    saved = json.loads(meta.read_text())
    return all(saved.get(k) == v for k, v in settings.items())


def evaluate(path: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Test-set f, g (float64) and accuracy of one checkpoint, in one full batch."""
    f, g = classifier_representations(path, x)
    accuracy = float(((f @ g.T).argmax(1) == y).mean())
    return {"f": f, "g": g, "accuracy": accuracy}


def find_checkpoints(folder: Path) -> dict[tuple[int, int, int], Path]:
    """(K, width, seed) -> path for every radial_K{K}_w{width}_seed{seed}.pt in the folder."""
    pattern = re.compile(r"radial_K(\d+)_w(\d+)_seed(\d+)\.pt$")
    found = {}
    for path in sorted(folder.glob("radial_K*_w*_seed*.pt")):
        match = pattern.match(path.name)
        if match:
            found[tuple(int(v) for v in match.groups())] = path
    if not found:
        raise FileNotFoundError(
            f"Expected checkpoints radial_K{{K}}_w{{width}}_seed{{seed}}.pt in {folder}, found none."
        )
    return found


# ---------------------------------------------------------------------------------------------- comparisons
def passing_pairs(models: dict[tuple[int, int, int], dict], min_accuracy: float) -> list[tuple]:
    """(K, width, seed_a, seed_b) for seed_a < seed_b whose models both exceed ``min_accuracy``."""
    groups = sorted({(k, w) for k, w, _ in models})
    pairs = []
    for k, w in groups:
        good = sorted(s for kk, ww, s in models if (kk, ww) == (k, w) and models[k, w, s]["accuracy"] > min_accuracy)
        pairs += [(k, w, a, b) for a, b in itertools.combinations(good, 2)]
    return pairs


def compare_pair(models: dict, pair: tuple, num_samples: int, seed: int, **fixed) -> dict:
    k, w, a, b = pair
    ma, mb = models[k, w, a], models[k, w, b]
    out = compare_representations(ma["f"], ma["g"], mb["f"], mb["g"], num_samples=num_samples, seed=seed, **fixed)
    meta = {"num_classes": k, "width": w, "seed_a": a, "seed_b": b, "acc_a": ma["accuracy"], "acc_b": mb["accuracy"]}
    return {**meta, **{key: out[key] for key in PAIR_COLUMNS if key not in meta}, "input_set": out["input_set"]}


def summarise(models: dict, rows: list[dict], min_accuracy: float) -> list[dict]:
    """Per (K, width): models, models passing, pairs, and mean / std / min / max over pairs of d_LLV and d_fg."""
    summary = []
    for k, w in sorted({(k, w) for k, w, _ in models}):
        accs = [m["accuracy"] for (kk, ww, _), m in models.items() if (kk, ww) == (k, w)]
        group = [r for r in rows if (r["num_classes"], r["width"]) == (k, w)]
        entry = {"num_classes": k, "width": w, "models": len(accs), "passing": sum(a > min_accuracy for a in accs)}
        entry["pairs"] = len(group)
        for key in ("d_llv", "d_fg", "kl", "m_cca_f"):
            values = np.array([r[key] for r in group]) if group else np.full(1, np.nan)
            entry[f"{key}_mean"] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(group) > 1 else float("nan")
        summary.append(entry)
    return summary


SUMMARY_COLUMNS = {
    "num_classes": "",
    "width": "",
    "models": "",
    "passing": "",
    "pairs": "",
    "d_llv_mean": ".4f",
    "d_llv_std": ".4f",
    "d_fg_mean": ".4f",
    "d_fg_std": ".4f",
    "kl_mean": ".3g",
    "m_cca_f_mean": ".4f",
}


def plot(summary: list[dict], path: Path, reference: dict[int, dict] | None = None) -> None:
    """d_LLV and d_fg (mean, error bars one std over pairs) against width, one line per K."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, name in zip(axes, ("d_llv", "d_fg"), ("$d_{LLV}$", "$d_{f,g}$")):
        for k in sorted({s["num_classes"] for s in summary}):
            rows = [s for s in summary if s["num_classes"] == k and s["pairs"] > 0]
            widths = [s["width"] for s in rows]
            ax.errorbar(
                widths,
                [s[f"{key}_mean"] for s in rows],
                yerr=[np.nan_to_num(s[f"{key}_std"]) for s in rows],
                marker="o",
                capsize=3,
                label=f"K={k}",
            )
        if reference:
            ax.plot(sorted(reference), [reference[w][key] for w in sorted(reference)], "kx", label="reference K=4")
        widths = sorted({s["width"] for s in summary})
        ax.set_xscale("log", base=2)
        ax.set(xlabel="width", ylabel=name, title=f"{name} between seeds (mean, std over pairs)")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- reproduction
def reference_rows(config: Config, folder: Path, num_classes: int) -> list[dict] | None:
    candidates = (
        [Path(config.reference)]
        if config.reference
        else [folder / f"reference_K{num_classes}.json", folder.parent / f"reference_K{num_classes}.json"]
    )
    for path in candidates:
        if path.exists():
            log.info("reference values: %s", path)
            return json.loads(path.read_text())["pairs"]
    if config.reference:
        raise FileNotFoundError(f"Expected the reference file {config.reference}, found nothing there.")
    return None


def reference_checks(config: Config, models: dict, pairs: list[tuple], ref: dict[tuple, dict]) -> dict:
    """Does the accuracy filter select the reference's pairs, with its accuracies, and do the reference's own
    pivot, left-out label and input set give its d_LLV and d_fg?"""
    k = pairs[0][0]
    ref_pairs = sorted(key for key, r in ref.items() if min(r["acc_a"], r["acc_b"]) > config.min_accuracy)
    acc_error = max(
        abs(models[k, w, s]["accuracy"] - r[f"acc_{side}"])
        for (w, a, b), r in ref.items()
        for side, s in (("a", a), ("b", b))
        if (k, w, s) in models
    )
    fixed = [{key: ref[p[1:]][key] for key in ("pivot_label", "left_out_label", "input_set")} for p in pairs]
    exact = [compare_pair(models, p, config.num_samples, config.seed, **f) for p, f in zip(pairs, fixed)]
    rel_error = max(
        abs(e[key] - ref[p[1:]][key]) / abs(ref[p[1:]][key]) for e, p in zip(exact, pairs) for key in ("d_llv", "d_fg")
    )
    return {
        "same_pairs_as_reference": sorted((w, a, b) for _, w, a, b in pairs) == ref_pairs,
        "max_accuracy_difference": acc_error,
        "max_rel_error_with_reference_choices": rel_error,
    }


def search_spread(config: Config, models: dict, pairs: list[tuple], ref: dict[tuple, dict]) -> list[dict]:
    """Per width: the reference mean of d_LLV and d_fg, our mean over input-search seeds, its std and range."""
    widths = sorted({w for _, w, _, _ in pairs})
    means = {(w, key): [] for w in widths for key in ("d_llv", "d_fg")}
    started = time.perf_counter()
    for seed in range(config.seed, config.seed + config.search_seeds):
        rows = [compare_pair(models, p, config.num_samples, seed) for p in pairs]
        for (w, key), values in means.items():
            values.append(float(np.mean([r[key] for r in rows if r["width"] == w])))
    log.info("%d searches of %d pairs: %.1f s", config.search_seeds, len(pairs), time.perf_counter() - started)

    table = []
    for w in widths:
        row = {"width": w, "pairs": sum(p[1] == w for p in pairs)}
        for key in ("d_llv", "d_fg"):
            values = np.array(means[w, key])
            target = float(np.mean([ref[p[1:]][key] for p in pairs if p[1] == w]))
            low, high, edge = float(values.min()), float(values.max()), EDGE_RTOL * abs(target)
            row[f"{key}_reference"] = target
            row[f"{key}_ours"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{key}_min"], row[f"{key}_max"] = low, high
            row[f"{key}_within"] = low - edge <= target <= high + edge
        table.append(row)
    return table


def report_reproduction(config: Config, out: Path, models: dict, pairs: list[tuple]) -> dict:
    """Compare with reference_K{K}.json when there is one: the table, the checks, and a verdict per width."""
    classes = sorted({k for k, _, _ in models})
    reference = reference_rows(config, Path(config.from_checkpoints), classes[0]) if len(classes) == 1 else None
    if reference is None or not pairs:
        print(
            f"No reference comparison: classes {classes}, {len(pairs)} pairs, reference file found: "
            f"{reference is not None} (pass --reference)."
        )
        return {}
    ref = {(r["width"], r["seed_a"], r["seed_b"]): r for r in reference}
    checks = reference_checks(config, models, pairs, ref)
    table = search_spread(config, models, pairs, ref)
    print(write_table(out, "reproduction", table, REPRODUCTION_COLUMNS))
    print("Checks:", json.dumps(checks))
    for row in table:
        for key in ("d_llv", "d_fg"):
            print(
                f"width {row['width']}: reference mean {key} {row[f'{key}_reference']:.5f} is "
                f"{'within' if row[f'{key}_within'] else 'NOT within'} our range [{row[f'{key}_min']:.5f}, "
                f"{row[f'{key}_max']:.5f}] over {config.search_seeds} input-search seeds "
                f"(our mean {row[f'{key}_ours']:.5f} +- {row[f'{key}_std']:.5f})"
            )
    return {"reproduction": table, "checks": checks}


REPRODUCTION_COLUMNS = {
    "width": "",
    "pairs": "",
    **{
        f"{key}_{part}": spec
        for key in ("d_llv", "d_fg")
        for part, spec in (
            ("reference", ".5f"),
            ("ours", ".5f"),
            ("std", ".5f"),
            ("min", ".5f"),
            ("max", ".5f"),
            ("within", ""),
        )
    },
}


# ---------------------------------------------------------------------------------------------- main
def from_scratch(config: Config, out: Path) -> tuple[dict, list[dict]]:
    folder = out / "models"
    folder.mkdir(exist_ok=True)
    models = {}
    for k in config.num_classes:
        x_test, y_test = radial_data(config.num_test, k, config.test_seed)
        for w in config.widths:
            for s, path in train_group(config, k, w, folder).items():
                models[k, w, s] = evaluate(path, x_test, y_test)
    return models, passing_pairs(models, config.min_accuracy)


def from_checkpoints(config: Config) -> tuple[dict, list[dict]]:
    models, tests = {}, {}
    for (k, w, s), path in find_checkpoints(Path(config.from_checkpoints)).items():
        if k not in tests:
            tests[k] = radial_data(config.num_test, k, config.test_seed)
        models[k, w, s] = evaluate(path, *tests[k])
    return models, passing_pairs(models, config.min_accuracy)


def main(argv=None) -> None:
    config = parse_config(Config, QUICK, __doc__, argv)
    torch.set_num_threads(config.threads)
    out = start_run("width_sweep", config)
    started = time.perf_counter()
    models, pairs = from_checkpoints(config) if config.from_checkpoints else from_scratch(config, out)
    log.info("%d models, %d pairs pass accuracy > %g", len(models), len(pairs), config.min_accuracy)

    accuracy = [
        {"num_classes": k, "width": w, "seed": s, "accuracy": m["accuracy"]} for (k, w, s), m in models.items()
    ]
    write_table(out, "accuracy", accuracy, {"num_classes": "", "width": "", "seed": "", "accuracy": ".4f"})
    rows = [compare_pair(models, p, config.num_samples, config.seed) for p in pairs]
    write_table(out, "pairs", rows, PAIR_COLUMNS)
    summary = summarise(models, rows, config.min_accuracy)
    print(write_table(out, "summary", summary, SUMMARY_COLUMNS))
    results = {"config": asdict(config), "summary": summary, "pairs": rows, "accuracy": accuracy}

    if config.from_checkpoints:
        results.update(report_reproduction(config, out, models, pairs))
    table = results.get("reproduction")
    reference_means = {r["width"]: {k: r[f"{k}_reference"] for k in ("d_llv", "d_fg")} for r in table or []}
    plot(summary, out / "width_sweep.png", reference_means)
    results["wall_seconds"] = time.perf_counter() - started
    write_json(out / "results.json", results)
    print(
        f"Outputs in {out}: summary.md/csv, pairs.csv, accuracy.md/csv, width_sweep.png, results.json, config.json"
        + ("" if config.from_checkpoints else ", models/")
        + (", reproduction.md/csv" if reference_means else "")
    )


if __name__ == "__main__":
    main()
