"""The `mammoscope` command: a thin dispatcher; each subcommand lives in `pipeline/commands/<name>.py`.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules are
imported only when their command runs, so ``mammoscope --help`` stays fast (no torch, no mlflow).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.errors import MammoscopeError

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "main": ("pipeline.commands.main", "the README's main job: fetch mini-MIAS if absent, train every task's model, register champions"),
    "data": ("pipeline.commands.data", "inspect and fetch datasets: `mammoscope data scan [PATH]`, `data fetch mias`"),
    "train": ("pipeline.commands.train", "train and evaluate an experiment YAML, track it in MLflow"),
    "models": ("pipeline.commands.models", "list registered model versions, aliases and headline metrics"),
    "promote": ("pipeline.commands.promote", "move an alias (champion by default) to a model version"),
    "predict": ("pipeline.commands.predict", "score files, folders or a manifest with registered models"),
    "pacs": ("pipeline.commands.pacs", "score MG studies in a PACS (DICOMweb) and store an SR and maps back"),
    "app": ("pipeline.commands.app", "start the Gradio app on the registry's champions"),
    "ui": ("pipeline.commands.ui", "open the MLflow UI on the tracking store"),
}

EXIT_USAGE = 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Argument parser; only the module of `command` is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="mammoscope", description="Mammography decision support.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(sp)
    return parser


def _command_of(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        build_parser().print_help()
        return EXIT_USAGE
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except MammoscopeError as exc:
        print(f"mammoscope {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
