"""The ``hf-repsim`` command. Its options are generated from :class:`hf_repsim.compare.CompareConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from hf_repsim.compare import CompareConfig, format_pair, run_compare, write_report

#: Errors that carry a message written for the user: shown without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotImplementedError, RuntimeError, TypeError)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, positional: Sequence[str] = ()) -> None:
    """One option per dataclass field (``--max-contexts`` for ``max_contexts``); defaults stay in the dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, help_text = hints[f.name], f.metadata.get("help", "")
        if f.name in positional:
            parser.add_argument(f.name, nargs="*", metavar=f.name.upper()[:-1], help=help_text)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        if type(None) in typing.get_args(hint):  # X | None: an optional X, unset by default
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if hint is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        elif typing.get_origin(hint) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(hint), default=default, help=f"{help_text} ({default})")
        else:
            parser.add_argument(flag, type=hint, default=default, help=f"{help_text} ({default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-repsim",
        description="Are two language models with close output distributions similar inside?",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare",
        help="compare two or more causal LMs on a text data set",
        description="Compare causal LMs (aliases, folders, .gguf files or cached hub ids; SPEC@reparam and "
        "SPEC@q4_0 derive a twin). With no model, the bundled demo: SmolLM2-135M-Instruct, its reparametrized "
        "twin and its Q4_0 requantization on the Canterbury corpus.",
    )
    add_dataclass_arguments(compare, CompareConfig, positional=("models",))
    report = commands.add_parser(
        "report",
        help="rebuild report.md, report.html and the heatmaps of a run from its report.json",
        description="Rebuild the views of a finished comparison from its report.json, without loading any model.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="the --output folder of a comparison")
    return parser


def rebuild_report(run_dir: str) -> None:
    """Rewrite the Markdown, HTML and heatmap views of a run from its report.json."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"Expected a report.json in {run_dir!r}, got none; pass the --output folder of a run.")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"Expected {path} to hold JSON, got a damaged file ({error}).") from None
    write_report(report, Path(run_dir))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "report":
            rebuild_report(args.run_dir)
            print(f"Rebuilt the views of {args.run_dir}")
            return 0
        config = CompareConfig(**{k: v for k, v in vars(args).items() if k != "command"})
        report = run_compare(config)
    except USER_ERRORS as error:
        if os.environ.get("HF_REPSIM_DEBUG"):
            raise
        print(f"hf-repsim: error: {error}", file=sys.stderr)
        return 2
    if report is not None:
        for pair in report["pairs"]:
            print(format_pair(pair) + "\n")
        print(f"Wrote report.json, report.md and report.html to {config.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
