"""`mammoscope promote NAME VERSION [--alias champion]`: move an alias to a model version by hand."""
from __future__ import annotations

import argparse

HELP = "move an alias (champion by default) to a model version"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME VERSION [--alias ALIAS]."""
    parser.add_argument("name", help="registered model name, e.g. mammoscope-density")
    parser.add_argument("version", type=int, help="model version number (see `mammoscope models`)")
    parser.add_argument("--alias", default="champion", help="alias to move (default: %(default)s)")
    from pipeline.commands import add_tracking_option

    add_tracking_option(parser)


def run(args: argparse.Namespace) -> int:
    """Set the alias; ModelNotFoundError (exit 1 via the CLI) when the model or version does not exist."""
    from registry.champion import promote
    from registry.store import configure

    configure(args.tracking_uri)
    decision = promote(args.name, args.version, alias=args.alias)
    print(f"{args.name} @{args.alias} -> version {args.version} ({decision.reason})")
    return 0
