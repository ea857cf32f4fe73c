"""The ``hf-repsim`` command. Its options are generated from :class:`hf_repsim.compare.CompareConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Sequence

from hf_repsim.compare import CompareConfig, format_pair, run_compare

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = CompareConfig(**{k: v for k, v in vars(args).items() if k != "command"})
        report = run_compare(config)
    except USER_ERRORS as error:
        print(f"hf-repsim: error: {error}", file=sys.stderr)
        return 2
    if report is not None:
        for pair in report["pairs"]:
            print(format_pair(pair) + "\n")
        print(f"Wrote {config.output}/report.json and {config.output}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
