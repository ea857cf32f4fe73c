"""Compare pretrained language models, or watch one drift from its starting point while it is fine-tuned.

Compare (default): every pair of the models given (aliases, folders, .gguf files or cached hub ids;
SPEC@reparam and SPEC@q4_0 derive a twin) on --dataset, through hf_repsim.compare.run_compare. With no model,
the bundled demo: SmolLM2-135M-Instruct, its reparametrized twin (expect kl and d_llv at rounding, d_svd_f near 0,
Procrustes well above 0) and its Q4_0 requantization. Writes report.json / report.md and pairs.csv / pairs.md.

Fine-tune (--finetune): trains --model (default the bundled SmolLM2-135M-Instruct, float32) on windows of
--dataset (default the Canterbury corpus) for --steps with hf_repsim.RepSimCallback, which compares the model with
its starting weights on held-out windows at step 0, every --every steps and at the end. Step 0 is the model
against itself (kl 0, d_llv at rounding); both grow as training moves the model. Writes drift.csv / drift.md
(the measures and the training loss per measured step), drift.json (every measure, with the Trainer's log) and
drift.png (d_llv and kl against step).

Both write config.json (resolved config, versions, command). Time on 2 CPU cores: --quick about a minute in either
mode. A measurement (both models over the evaluation contexts, then the measures at a vocabulary of 49k) costs as
much as several training steps: about 50 s for 2048 contexts on free cores (10 s of it the measures; the default
is 1024 contexts), 2 to 4 times that on busy shared cores, where 20 steps measured every 5 took 20 minutes.
Fewer --max-contexts or a larger --every make it cheaper; a GPU makes it fast.

    .venv/bin/python recipes/compare_pretrained.py [MODEL ...] [--quick] [--output DIR]
    .venv/bin/python recipes/compare_pretrained.py --finetune [--steps 20] [--model SPEC] [--dataset SPEC]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import option, pyplot, start_run, write_json, write_table

from hf_repsim import RepSimCallback
from hf_repsim.compare import CompareConfig, format_pair, run_compare
from hf_repsim.data import CausalLMExamples, ContextWindows, load_texts, token_windows
from hf_repsim.loading import load_model

log = logging.getLogger("recipes")


@dataclass
class Config:
    models: tuple[str, ...] = option((), "Models to compare (positional); none: the bundled demo.")
    finetune: bool = option(False, "Fine-tune --model with RepSimCallback instead of comparing models.")
    model: str = option("smollm2-135m-instruct", "With --finetune: the model to fine-tune (alias, folder, .gguf).")
    dataset: str = option("canterbury", "Text to compare on or fine-tune on (alias, .txt or .jsonl file).")
    steps: int = option(20, "With --finetune: optimizer steps.")
    every: int = option(5, "With --finetune: measure (and log the loss) every this many steps.")
    learning_rate: float = option(1e-4, "With --finetune: AdamW learning rate (linear decay).")
    train_batch_size: int = option(4, "With --finetune: windows per training step.")
    batch_size: int = option(8, "Windows per forward pass when measuring.")
    seq_len: int = option(128, "Tokens per window.")
    max_contexts: int = option(1024, "Contexts measured on (with --finetune: held out from training); > hidden.")
    num_samples: int = option(200, "Random input sets tried for the input side of d_LLV.")
    seed: int = option(0, "Seed of the windows, the training order and the measures' random choices.")
    output: str | None = option(None, "Output folder (default runs/compare_pretrained).")
    quick: bool = option(False, "A small run: short windows, few contexts and steps.")


#: Contexts just above SmolLM2's hidden size + 1 (577), short windows, a few steps.
QUICK = {"steps": 6, "every": 2, "train_batch_size": 2, "seq_len": 32, "max_contexts": 640, "num_samples": 50}

#: Written per measured step; the CSV keeps full precision.
DRIFT_COLUMNS = {
    "step": "d",
    "loss": ".4f",
    "kl": ".4g",
    "js": ".4g",
    "d_llv": ".4g",
    "d_svd_f": ".4f",
    "m_cca_f": ".4f",
    "d_rep_sq": ".4g",
    "procrustes": ".4f",
    "seconds": ".1f",
}
PAIR_COLUMNS = {
    "first": "",
    "second": "",
    "kl": ".4g",
    "d_llv": ".4g",
    "d_svd_f": ".4f",
    "m_cca_f": ".4f",
    "cka": ".4f",
    "procrustes": ".4f",
}


# ---------------------------------------------------------------------------------------------- CLI
def parse_config(argv: Sequence[str] | None = None) -> Config:
    """The resolved config: defaults, then QUICK if --quick, then what was given (models are positional)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        extra = f" (--quick: {QUICK[field.name]!r})" if field.name in QUICK else ""
        text = f"{field.metadata['help']} Default: {field.default!r}{extra}."
        kind = hints[field.name]
        if field.name == "models":
            parser.add_argument("models", nargs="*", default=None, metavar="MODEL", help=field.metadata["help"])
        elif kind is bool:
            parser.add_argument("--" + field.name.replace("_", "-"), action="store_true", default=None, help=text)
        else:
            kind = next(a for a in typing.get_args(kind) if a is not type(None)) if typing.get_args(kind) else kind
            parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=None, help=text)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v not in (None, [])}
    resolved = dict(QUICK) if given.get("quick") else {}
    resolved.update(given)
    if "models" in resolved:
        resolved["models"] = tuple(resolved["models"])
    config = dataclasses.replace(Config(), **resolved)
    if config.finetune and config.models:
        parser.error(f"--finetune trains --model; got models to compare as well: {list(config.models)}.")
    for name in ("steps", "every", "train_batch_size", "batch_size", "max_contexts"):
        if getattr(config, name) < 1:
            parser.error(f"Expected --{name.replace('_', '-')} >= 1, got {getattr(config, name)}.")
    return config


# ---------------------------------------------------------------------------------------------- compare
def compare(config: Config, out: Path) -> list[dict[str, Any]]:
    """run_compare on the models (or the demo); one summary row per pair."""
    report = run_compare(
        CompareConfig(
            models=list(config.models),
            dataset=config.dataset,
            max_contexts=config.max_contexts,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            output=str(out),
            seed=config.seed,
            num_samples=config.num_samples,
        )
    )
    for pair in report["pairs"]:
        print(format_pair(pair) + "\n")
    return [
        {
            "first": p["names"][0],
            "second": p["names"][1],
            **{k: p["measures"][k] for k in PAIR_COLUMNS if k in p["measures"]},
        }
        for p in report["pairs"]
    ]


# ---------------------------------------------------------------------------------------------- fine-tune
def split_windows(windows: ContextWindows, num_contexts: int, seed: int) -> tuple[ContextWindows, torch.Tensor]:
    """Held-out evaluation windows with ``num_contexts`` contexts, and the (n_train, seq) token ids of the rest."""
    n_windows, seq_len = windows.input_ids.shape
    n_eval = math.ceil(num_contexts / (seq_len - 1))
    if n_eval >= n_windows:
        raise ValueError(
            f"Expected more than {n_eval} windows of {seq_len} tokens ({num_contexts} evaluation contexts and some "
            f"to train on), got {n_windows}. Lower --max-contexts or --seq-len, or use more text."
        )
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed))
    evaluation = ContextWindows(windows.input_ids[order[:n_eval]], windows.context_mask[order[:n_eval]].clone())

    # The last evaluation window gives only the contexts still missing.
    excess = n_eval * (seq_len - 1) - num_contexts
    if excess:
        evaluation.context_mask[-1, seq_len - excess :] = False
    return evaluation, windows.input_ids[order[n_eval:]]


def finetune(config: Config, out: Path) -> list[dict[str, Any]]:
    """Train with RepSimCallback; one row per measured step (the measures and the training loss there)."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    loaded = load_model(config.model, dtype=torch.float32)
    windows = token_windows(load_texts(config.dataset), loaded.tokenizer, seq_len=config.seq_len, max_contexts=None)
    evaluation, train = split_windows(windows, config.max_contexts, config.seed)
    log.info("%d evaluation contexts held out, %d windows to train on", evaluation.num_contexts, train.shape[0])
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=config.steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.train_batch_size,
        logging_steps=config.every,
        seed=config.seed,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    # Equal-length windows: stack them (a tokenizer as processing_class would otherwise pick a padding collator).
    trainer = Trainer(
        model=loaded.model,
        args=args,
        train_dataset=CausalLMExamples(train),
        data_collator=default_data_collator,
        processing_class=loaded.tokenizer,
    )
    callback = RepSimCallback(
        eval_windows=evaluation,
        every_n_steps=config.every,
        batch_size=config.batch_size,
        config=CompareConfig(seed=config.seed, num_samples=config.num_samples).measure_config(),
    ).attach(trainer)
    trainer.train()

    losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    rows = [{**h, "loss": losses.get(h["step"])} for h in callback.history]
    write_json(out / "drift.json", {"history": rows, "log_history": trainer.state.log_history})
    plot_drift(rows, out / "drift.png", loaded.name)
    return rows


def plot_drift(rows: list[dict[str, Any]], path: Path, name: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    steps = [r["step"] for r in rows]
    for ax, key, label in zip(axes, ("d_llv", "kl"), ("$d_{LLV}$", "KL(start || model)")):
        ax.plot(steps, [r[key] for r in rows], "o-")
        ax.set(xlabel="training step", ylabel=label)
    fig.suptitle(f"{name}: drift from its starting weights")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    out = start_run("compare_pretrained", config)
    if config.finetune:
        table = write_table(out, "drift", finetune(config, out), DRIFT_COLUMNS)
        files = "drift.csv, drift.md, drift.json, drift.png"
    else:
        table = write_table(out, "pairs", compare(config, out), PAIR_COLUMNS)
        files = "report.json, report.md, pairs.csv, pairs.md"
    print(table)
    print(f"Outputs: {out}/{files}, config.json")


if __name__ == "__main__":
    main()
