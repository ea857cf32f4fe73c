"""Benchmark: a whole two-model comparison through hf_repsim against bare forward passes of the same models.

Target: (collect_statistics + compute_measures) / (bare forward passes of both models) <= 1.15 (DESIGN.md section 3:
"the whole comparison should cost little more than the forward passes alone").

Both routes see the same token windows (canterbury, seq_len 128, 8192 contexts by default) in the same batches.
The bare route is ``model(input_ids=batch, use_cache=False)`` of each model under ``torch.no_grad``, no hooks,
output dropped (``use_cache=False`` as in the adapter, so both routes run the same forward). The hf_repsim route is
``collect_statistics`` (adapters, statistics update) followed by ``compute_measures`` with the compare defaults.
Machines are shared, so the bare route runs before AND after the hf_repsim route in this one process and the
ratio is taken against their mean; the second ratio divides the hf_repsim route by the forward time measured
inside it (the same work, timed in the same pass). Where the time of the hf_repsim route goes is timed by wrapping
each model's forward, each adapter call and ``RepSimState.update`` (restored afterwards).

    HF_HUB_OFFLINE=1 python bench/end_to_end.py [--max-contexts 8192] [--dtype float32] [--device auto] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from accelerate import Accelerator

from hf_repsim.adapters import CausalLMAdapter
from hf_repsim.compare import CompareConfig, load_specs
from hf_repsim.data import ContextWindows, load_texts, token_windows
from hf_repsim.evaluate import collect_statistics
from hf_repsim.loading import check_same_vocabulary
from hf_repsim.measures import compute_measures
from hf_repsim.stats import RepSimState

TARGET = 1.15


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs=2,
        default=["smollm2-135m-instruct", "smollm2-135m-instruct@reparam"],
        help="two model specs (as hf-repsim compare takes them)",
    )
    parser.add_argument("--dataset", default="canterbury")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-contexts", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float64", "bfloat16", "float16"],
        help="model weights dtype (statistics stay float64)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:i]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for both routes (default: torch's choice); on a shared CPU, 1 "
        "avoids OpenMP oversubscription, which slows LAPACK calls (svdvals, eigh) by 10-100x",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the timed passes, run the hf_repsim route once more under cProfile and print it",
    )
    return parser.parse_args(argv)


class Clock:
    """Accumulates seconds per name; synchronises the GPU before each reading so that times are real."""

    def __init__(self, device: torch.device):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += self.now() - start
                self.calls[name] += 1

        return timed


class TimedAdapter:
    """What collect_statistics uses of an adapter (head, info, call), with the call timed."""

    def __init__(self, adapter: CausalLMAdapter, clock: Clock):
        self.adapter, self.head, self.info = adapter, adapter.head, adapter.info
        self._call = clock.wrap("adapter call", adapter.forward)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return self._call(input_ids, attention_mask)


@contextlib.contextmanager
def timed_internals(models: Sequence[torch.nn.Module], clock: Clock) -> Iterator[None]:
    """Time every model's forward (instance attribute) and RepSimState.update (class attribute); then restore."""
    original_update = RepSimState.update
    for model in models:
        model.forward = clock.wrap("model forward", model.forward)
    RepSimState.update = clock.wrap("statistics update", original_update)
    try:
        yield
    finally:
        RepSimState.update = original_update
        for model in models:
            del model.forward


def batches(windows: ContextWindows, batch_size: int) -> list[torch.Tensor]:
    """(batch, seq) input ids in the order collect_statistics takes them (one process)."""
    return [windows.input_ids[s : s + batch_size] for s in range(0, windows.input_ids.shape[0], batch_size)]


def bare_pass(
    models: Sequence[torch.nn.Module], input_batches: list[torch.Tensor], device: torch.device, clock: Clock
) -> float:
    """Forward passes of every model over every batch, no hooks, output dropped: seconds."""
    start = clock.now()
    with torch.no_grad():
        for input_ids in input_batches:
            input_ids = input_ids.to(device)  # (batch, seq)
            for model in models:
                model(input_ids=input_ids, use_cache=False)
    return clock.now() - start


def hf_repsim_pass(loaded, windows: ContextWindows, args: argparse.Namespace, accelerator: Accelerator, clock: Clock):
    """collect_statistics then compute_measures; returns (seconds of each part, measures)."""
    config = CompareConfig(models=list(args.models), seed=args.seed)
    start = clock.now()
    adapters = [CausalLMAdapter(m.model, num_tokens=len(m.tokenizer)) for m in loaded]
    try:
        result = collect_statistics(
            [TimedAdapter(a, clock) for a in adapters],
            windows,
            batch_size=args.batch_size,
            accelerator=accelerator,
            seed=args.seed,
            progress=False,
        )
        collected = clock.now()
        measures = compute_measures(result.state, [a.head for a in adapters], (0, 1), config.measure_config())
        done = clock.now()
    finally:
        for a in adapters:
            a.close()
    return {"collect": collected - start, "measures": done - collected, "total": done - start}, measures


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.device.type != device.type:
        raise SystemExit(f"Expected accelerate to pick {device}, got {accelerator.device}.")

    # Models (loaded once, shared by both routes) and the common windows.
    loaded = load_specs(args.models, CompareConfig(models=list(args.models), dtype=args.dtype, seed=args.seed))
    check_same_vocabulary(loaded)
    for m in loaded:
        m.model.to(device)
    windows = token_windows(
        load_texts(args.dataset),
        loaded[0].tokenizer,
        seq_len=args.seq_len,
        max_contexts=args.max_contexts,
        seed=args.seed,
    )
    input_batches = batches(windows, args.batch_size)
    models = [m.model for m in loaded]
    clock = Clock(device)

    # Warm-up (not timed): one batch through each model, so that neither route pays first-call costs.
    bare_pass(models, input_batches[:1], device, clock)

    load_before = os.getloadavg()[0]
    bare_before = bare_pass(models, input_batches, device, clock)
    with timed_internals(models, clock):
        parts, measures = hf_repsim_pass(loaded, windows, args, accelerator, clock)
    bare_after = bare_pass(models, input_batches, device, clock)
    report(args, windows, input_batches, device, models, clock, parts, measures, bare_before, bare_after)
    print(
        f"1-minute load average of the machine (other users included): {load_before:.2f} before the timed passes, "
        f"{os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs"
    )

    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        hf_repsim_pass(loaded, windows, args, accelerator, Clock(device))
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        print("\ncProfile of the hf_repsim route (top 25 by own time):")
        print(text.getvalue())


def report(args, windows, input_batches, device, models, clock, parts, measures, bare_before, bare_after) -> None:
    contexts = windows.num_contexts
    bare = 0.5 * (bare_before + bare_after)
    forward = clock.seconds["model forward"]
    adapter_rest = clock.seconds["adapter call"] - forward
    update = clock.seconds["statistics update"]
    loop_rest = parts["collect"] - clock.seconds["adapter call"] - update
    dtype = str(models[0].dtype).removeprefix("torch.")
    print(f"models={args.models} dtype={dtype} device={device} threads={torch.get_num_threads()}")
    print(
        f"contexts={contexts} windows={windows.input_ids.shape[0]} seq_len={args.seq_len} "
        f"batch_size={args.batch_size} batches={len(input_batches)} forward calls per route={2 * len(input_batches)}"
    )
    print(f"bare forward passes, before:          {bare_before:9.2f} s")
    print(
        f"bare forward passes, after:           {bare_after:9.2f} s   (after / before {bare_after / bare_before:.3f})"
    )
    print(f"hf_repsim route total:                {parts['total']:9.2f} s")
    print(f"  collect_statistics:                 {parts['collect']:9.2f} s")
    print(f"    model forward (inside adapters):  {forward:9.2f} s   ({clock.calls['model forward']} calls)")
    print(f"    adapter rest (capture, check):    {adapter_rest:9.2f} s")
    print(f"    statistics update:                {update:9.2f} s   ({clock.calls['statistics update']} calls)")
    print(f"    loop rest (masks, ids, merge):    {loop_rest:9.2f} s")
    print(f"  compute_measures:                   {parts['measures']:9.2f} s")
    print(f"contexts per second: hf_repsim {contexts / parts['total']:.1f}, bare forward {contexts / bare:.1f}")
    print(
        f"ratio hf_repsim / bare forward (mean of before and after): {parts['total'] / bare:.3f}  (target <= {TARGET})"
    )
    print(f"ratio hf_repsim / its own forward time:                    {parts['total'] / forward:.3f}")
    print(f"ratio forward inside hf_repsim / bare forward:             {forward / bare:.3f}")
    v = measures.values
    print(
        f"measures: kl={v['kl']:.3g} d_llv={v['d_llv']:.3g} d_svd_f={v['d_svd_f']:.3g} "
        f"m_cca_f={v['m_cca_f']:.6f} cka={v['cka']:.4f}"
    )


if __name__ == "__main__":
    main()
