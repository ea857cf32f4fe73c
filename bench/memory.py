"""Benchmark: peak resident memory of a whole comparison at 1x and at 4x the contexts, each in a fresh process.

Target: peak RSS at 4x / peak RSS at 1x <= 1.10 (DESIGN.md section 3: memory is O(M^2 + V), independent of N).

Each size runs ``hf_repsim.compare.run_compare`` (load, evaluate, every measure, the report) in its own child
process; the child reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at its end and its RSS after the imports,
before anything is loaded. The peak ratio is the target; the ratio of the increments (peak - RSS after imports)
shows the same growth without the fixed cost of the interpreter and torch. Models: SmolLM2 and its reparametrized
twin by default (``--models`` for others, e.g. the three demo specs), or with ``--tiny`` a random-initialised
2-layer llama of hidden size 64 over the SmolLM2 tokenizer (full 49,152-token vocabulary), saved to a temporary
folder, and its reparametrized twin: fast, and the (batch, vocab) statistics dominate its memory.

    HF_HUB_OFFLINE=1 python bench/memory.py [--contexts 2048 8192] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TARGET = 1.10
ALIAS = "smollm2-135m-instruct"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--contexts",
        type=int,
        nargs=2,
        default=[2048, 8192],
        metavar=("SMALL", "LARGE"),
        help="the two sizes (the target is stated for LARGE = 4 x SMALL)",
    )
    parser.add_argument("--models", nargs="+", default=[ALIAS, f"{ALIAS}@reparam"], help="model specs")
    parser.add_argument("--tiny", action="store_true", help="a tiny random llama (and its @reparam twin) instead")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rss_now() -> int:
    """Current resident set size in bytes (/proc on Linux, else psutil, else 0)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        return 0


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child(args: argparse.Namespace) -> None:
    """One comparison at args.child contexts; prints one JSON line with the memory figures."""
    import torch  # noqa: F401  (imported before the baseline reading, as run_compare needs it)

    from hf_repsim.compare import CompareConfig, run_compare

    start_rss = rss_now()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as output:
        config = CompareConfig(
            models=list(args.models),
            max_contexts=args.child,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            dtype=args.dtype,
            output=output,
        )
        report = run_compare(config)
    print(
        json.dumps(
            {
                "contexts": report["contexts"],
                "peak": peak_rss(),
                "start": start_rss,
                "seconds": time.perf_counter() - start,
            }
        )
    )


def tiny_model_folder(folder: str) -> str:
    """Save a random 2-layer llama (hidden 64) with the SmolLM2 tokenizer in ``folder``; return the folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_repsim.loading import load_model

    tokenizer = load_model(ALIAS).tokenizer
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_child(n: int, args: argparse.Namespace, models: list[str]) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        str(n),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--dtype",
        args.dtype,
        "--models",
        *models,
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"The child for {n} contexts failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as folder:
        models = [tiny_model_folder(folder), f"{folder}@reparam"] if args.tiny else list(args.models)
        results = [run_child(n, args, models) for n in args.contexts]
    names = ["tiny llama (hidden 64, vocab 49,152)", "its @reparam twin"] if args.tiny else models
    print(f"models: {names}; batch_size={args.batch_size} seq_len={args.seq_len} dtype={args.dtype}")
    print(f"{'contexts':>9} {'peak RSS MiB':>13} {'RSS after imports MiB':>22} {'increment MiB':>14} {'seconds':>8}")
    for r in results:
        print(
            f"{r['contexts']:>9} {r['peak'] / mib:>13.1f} {r['start'] / mib:>22.1f} "
            f"{(r['peak'] - r['start']) / mib:>14.1f} {r['seconds']:>8.1f}"
        )
    small, large = results
    factor = large["contexts"] / small["contexts"]
    print(f"ratio peak RSS {factor:g}x / 1x contexts: {large['peak'] / small['peak']:.3f}  (target <= {TARGET})")
    print(
        f"ratio of increments:             {(large['peak'] - large['start']) / (small['peak'] - small['start']):.3f}"
    )


if __name__ == "__main__":
    main()
