"""Compare k causal LMs on a text data set: load, evaluate in one pass, measure every pair, report.

Model specs are what :func:`hf_repsim.loading.load_model` takes (an alias, a folder, a .gguf file or a
cached hub id), optionally followed by a derivation: ``SPEC@reparam`` (the same distribution in other
coordinates, :func:`hf_repsim.adapters.reparametrize` with a seeded A of condition number 100) or
``SPEC@q4_0`` (and ``@q8_0``, ``@q4_1``, ``@q5_0``: :func:`hf_repsim.adapters.requantize`), or ``SPEC@bfloat16``
(and ``@float16``, ``@float32``, ``@float64``: the same weights in another dtype).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from accelerate import Accelerator

import hf_repsim
from hf_repsim.adapters import QUANT_KINDS, CausalLMAdapter, random_invertible, reparametrize, requantize
from hf_repsim.data import load_texts, token_windows
from hf_repsim.evaluate import EvaluationResult, collect_statistics
from hf_repsim.loading import LoadedModel, check_same_vocabulary, load_model
from hf_repsim.measures import MEASURE_KEYS, MeasureConfig, compute_measures, effective_rank

logger = logging.getLogger(__name__)

DEMO_MODELS = ("smollm2-135m-instruct", "smollm2-135m-instruct@reparam", "smollm2-135m-instruct@q4_0")
CASTS = ("float32", "float64", "bfloat16", "float16")
DERIVATIONS = ("reparam", *QUANT_KINDS, *CASTS)
DType = Literal["auto", "float32", "float64", "bfloat16", "float16"]
REPORT_SCHEMA_VERSION = 1

#: Condition number of the seeded A of ``@reparam``: far from orthogonal, so rotation-only measures notice.
REPARAM_CONDITION = 100.0


@dataclass
class CompareConfig:
    """Settings of a comparison; the command line is generated from these fields."""

    models: list[str] = field(default_factory=list, metadata={"help": "model specs; none: the bundled demo"})
    dataset: str = field(default="canterbury", metadata={"help": "alias, .txt or .jsonl file"})
    max_contexts: int = field(default=8192, metadata={"help": "contexts to evaluate (chosen with --seed)"})
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})
    seq_len: int = field(default=128, metadata={"help": "tokens per window"})
    output: str = field(default="runs/compare", metadata={"help": "folder for report.json and report.md"})
    dtype: DType = field(default="auto", metadata={"help": "model weights dtype (statistics are float64)"})
    seed: int = field(default=0, metadata={"help": "seed of every random choice"})
    reservoir_size: int = field(default=4096, metadata={"help": "contexts kept for the input side"})
    num_pivots: int = field(default=64, metadata={"help": "candidate pivot labels"})
    num_left_out: int = field(default=1, metadata={"help": "labels left out of t1 beside the pivot"})
    num_label_sets: int = field(default=32, metadata={"help": "sampled label sets for d_SVD_f and d_rep"})
    num_samples: int = field(default=200, metadata={"help": "random input sets tried for t2"})
    lam: float = field(default=1e-5, metadata={"help": "weight of the scale terms of d_LLV"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run a model repository's own code"})
    checkpoint_every: int | None = field(default=None, metadata={"help": "save the state every N batches"})
    resume: str | None = field(default=None, metadata={"help": "continue the run in this output folder"})

    def __post_init__(self) -> None:
        if self.resume is not None:
            self.output = self.resume
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"Expected --checkpoint-every >= 1, got {self.checkpoint_every}.")
        for name in ("max_contexts", "batch_size", "reservoir_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected --{name.replace('_', '-')} >= 1, got {getattr(self, name)}.")
        if self.seq_len < 2:
            raise ValueError(f"Expected --seq-len >= 2 (one token of context and one to predict), got {self.seq_len}.")
        if self.dtype not in get_args(DType):
            raise ValueError(f"Expected --dtype in {get_args(DType)}, got {self.dtype!r}.")
        self.measure_config()  # checks the measure settings now, before any model runs

    def measure_config(self) -> MeasureConfig:
        return MeasureConfig(
            lam=self.lam,
            num_samples=self.num_samples,
            seed=self.seed,
            num_pivots=self.num_pivots,
            num_left_out=self.num_left_out,
            num_label_sets=self.num_label_sets,
        )


def torch_dtype(name: DType) -> torch.dtype | None:
    return None if name == "auto" else getattr(torch, name)


def load_specs(specs: Sequence[str], config: CompareConfig) -> list[LoadedModel]:
    """Load every model spec, each base model once, and derive the ``@`` variants from it."""
    bases: dict[str, LoadedModel] = {}
    loaded = []
    for spec in specs:
        base_spec, _, derivation = spec.partition("@")
        if derivation and derivation not in DERIVATIONS:
            raise ValueError(
                f"Expected a derivation in {DERIVATIONS} after '@' in {spec!r}, got {derivation!r}; write e.g. "
                f"{base_spec}@reparam or {base_spec}@q4_0."
            )
        if base_spec not in bases:
            bases[base_spec] = load_model(
                base_spec, dtype=torch_dtype(config.dtype), trust_remote_code=config.trust_remote_code
            )
        base = bases[base_spec]
        if not derivation:
            loaded.append(base)
            continue
        if derivation in CASTS:
            model = copy.deepcopy(base.model).to(getattr(torch, derivation))
        elif derivation == "reparam":
            hidden = base.model.get_output_embeddings().weight.shape[1]
            a = random_invertible(hidden, REPARAM_CONDITION, config.seed, dtype=base.model.dtype)
            model = reparametrize(base.model, a)
        else:
            model = requantize(base.model, derivation)
        source = {**base.source, "derivation": derivation}
        loaded.append(dataclasses.replace(base, name=spec, model=model.eval(), source=source))
    return loaded


def check_finite_weights(loaded: LoadedModel) -> None:
    """Refuse a model with NaN or infinite weights before any forward pass, naming the first such tensor."""
    for name, tensor in itertools.chain(loaded.model.named_parameters(), loaded.model.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"Expected finite weights in {loaded.name!r}, got {bad} NaN or infinite values in {name!r}; the "
                f"checkpoint is damaged or was saved after a diverged training step. Use another checkpoint."
            )


def run_compare(config: CompareConfig, accelerator: Accelerator | None = None) -> dict[str, Any] | None:
    """Run a whole comparison and write its report. Returns the report on the main process, else None."""
    accelerator = accelerator or Accelerator()
    specs = list(config.models) or list(DEMO_MODELS)
    if len(specs) < 2:
        raise ValueError(f"Expected at least two models to compare, got {specs}.")
    output = Path(config.output)
    if accelerator.is_main_process:
        _check_writable(output)

    loaded = load_specs(specs, config)
    for m in loaded:
        check_finite_weights(m)
    check_same_vocabulary(loaded)
    tokenizer = loaded[0].tokenizer
    windows = token_windows(
        load_texts(config.dataset),
        tokenizer,
        seq_len=config.seq_len,
        max_contexts=config.max_contexts,
        seed=config.seed,
    )
    adapters = [CausalLMAdapter(m.model.to(accelerator.device), num_tokens=len(m.tokenizer)) for m in loaded]
    hidden = min(a.head.hidden_size for a in adapters)
    if windows.num_contexts < hidden + 1:
        raise ValueError(
            f"Expected at least M + 1 = {hidden + 1} contexts (M is the hidden size), got {windows.num_contexts} "
            f"from {config.dataset!r}; use a larger data set or raise --max-contexts."
        )
    fingerprint = {
        "models": specs,
        "data": windows.fingerprint,
        "dtype": config.dtype,
        "seed": config.seed,
        "reservoir_size": config.reservoir_size,
    }
    result = collect_statistics(
        adapters,
        windows,
        batch_size=config.batch_size,
        accelerator=accelerator,
        reservoir_size=config.reservoir_size,
        seed=config.seed,
        checkpoint_dir=output,
        checkpoint_every=config.checkpoint_every,
        resume=config.resume is not None,
        fingerprint=fingerprint,
    )
    if not accelerator.is_main_process:
        return None
    report = build_report(config, specs, loaded, adapters, windows, result)
    write_report(report, output)
    return report


def build_report(config, specs, loaded, adapters, windows, result: EvaluationResult) -> dict[str, Any]:
    """Every pair's measures with the provenance of the run, as plain JSON-ready data."""
    heads = [a.head for a in adapters]
    measure_config = config.measure_config()
    tokenizer = loaded[0].tokenizer
    pairs = []
    for i, j in itertools.combinations(range(len(specs)), 2):
        measures = compute_measures(result.state, heads, (i, j), measure_config)
        details = {
            **measures.details,
            "worst_label_tokens": tokenizer.convert_ids_to_tokens(measures.details["worst_labels"]),
        }
        pairs.append(
            {"models": [i, j], "names": [specs[i], specs[j]], "measures": measures.values, "details": details}
        )
    covariance = result.state.covariance()
    spectra = []
    for k in range(len(specs)):
        f_slice, _ = result.state.block(k)
        spectra.append(torch.linalg.eigvalsh(covariance[f_slice, f_slice]).flip(0))
    tokens = int(windows.input_ids.shape[0] * windows.input_ids.shape[1])
    return _jsonable(
        {
            "schema_version": REPORT_SCHEMA_VERSION,
            "models": [
                {
                    "spec": spec,
                    "source": m.source,
                    "dtype": str(m.model.dtype).removeprefix("torch."),
                    "adapter": a.info,
                    "spectrum": spectrum,
                    "effective_rank": effective_rank(spectrum),
                }
                for spec, m, a, spectrum in zip(specs, loaded, adapters, spectra)
            ],
            "data": {
                "dataset": config.dataset,
                "fingerprint": windows.fingerprint,
                "seq_len": config.seq_len,
                "windows": int(windows.input_ids.shape[0]),
                "tokens": tokens,
            },
            "contexts": result.num_contexts,
            "seconds": result.seconds,
            "contexts_per_second": result.contexts_per_second,
            "tokens_per_second": tokens / result.seconds if result.seconds > 0 else None,
            "reconstruction_errors": result.reconstruction_errors,
            "seed": config.seed,
            "config": dataclasses.asdict(config),
            "versions": versions(),
            "pairs": pairs,
            "matrices": measure_matrices(len(specs), pairs),
        }
    )


def measure_matrices(k: int, pairs: list[dict]) -> dict[str, list[list[Any]]]:
    """A k x k matrix per numeric measure: entry [i][j] compares model i (first) with model j."""
    matrices = {}
    for key in MEASURE_KEYS:
        if not all(isinstance(p["measures"][key], (int, float)) or p["measures"][key] is None for p in pairs):
            continue
        matrix: list[list[Any]] = [[None] * k for _ in range(k)]
        for p in pairs:
            i, j = p["models"]
            matrix[i][j] = p["measures"][key]
            reverse = {"kl": "kl_reverse", "kl_reverse": "kl"}.get(key, key)
            if key not in ("d_rep_sq", "pivot_label", "left_out_label"):
                matrix[j][i] = p["measures"][reverse]
        matrices[key] = matrix
    return matrices


def versions() -> dict[str, str]:
    import accelerate
    import datasets
    import numpy
    import transformers

    return {
        "hf_repsim": hf_repsim.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


#: The measures shown in a pair's table; the label and input choices go in the provenance line below it.
TABLE_KEYS = tuple(key for key in MEASURE_KEYS if key not in ("pivot_label", "left_out_label", "input_set"))


def format_pair(pair: dict) -> str:
    """A Markdown table of one pair's measures, with the pivot and label-set provenance."""
    values, details = pair["measures"], pair["details"]
    lines = [f"### {pair['names'][0]}  vs  {pair['names'][1]}", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {key} | {_fmt(values[key])} |" for key in TABLE_KEYS]
    provenance = (
        f"Pivot label {values['pivot_label']} (of {details['pivot_candidates']} candidates), left out "
        f"{details['left_out_labels']}, {details['degenerate_labels']} degenerate labels excluded; "
        f"d_SVD_f over {details['label_sets']['count']} label sets of {details['label_sets']['size']} "
        f"(seed {details['label_sets']['seed']}); input set of {len(values['input_set'])} contexts from "
        f"{details['reservoir_contexts']} kept."
    )
    lines += ["", provenance]
    for note in (details["bound_note"], details["diversity"]["note"]):
        if note:
            lines.append(f"Note: {note}.")
    return "\n".join(lines)


def write_report(report: dict[str, Any], output: Path) -> None:
    """report.json, report.md, report.html and one heatmap per measure in ``output``.

    The JSON and Markdown views are written to a temporary file and renamed; the HTML view and the heatmaps need
    matplotlib (the ``plots`` extra) and are skipped with a warning without it.
    """
    output.mkdir(parents=True, exist_ok=True)
    md = [
        "# hf_repsim comparison",
        "",
        f"{report['contexts']} contexts of {report['data']['dataset']} ({report['contexts_per_second']:.0f} contexts/s).",
        "",
    ]
    for m in report["models"]:
        notes = []
        if m["adapter"].get("softcap"):
            notes.append(f"soft-capped logits (cap {m['adapter']['softcap']}): out of the family, measured pre-cap")
        md.append(f"- `{m['spec']}` ({m['dtype']}){': ' + '; '.join(notes) if notes else ''}")
    md.append("")
    md += [format_pair(p) + "\n" for p in report["pairs"]]
    _atomic_write(output / "report.json", json.dumps(report, indent=2, allow_nan=False))
    _atomic_write(output / "report.md", "\n".join(md))
    try:
        from hf_repsim.report import write_heatmaps, write_html

        write_html(report, output / "report.html")
        write_heatmaps(report, output)
    except ImportError as error:
        logger.warning("No report.html or heatmaps: %s", error)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_writable(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"Expected a writable output folder, got {str(output)!r} ({error.strerror}); pass --output with a folder "
            f"you can write to."
        ) from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    """Plain JSON data: ranges become [start, stop], tensors lists, non-finite floats None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, range):
        return [value.start, value.stop]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
